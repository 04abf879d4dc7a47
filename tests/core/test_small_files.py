"""Many small files: each read in one request (``small_read``), compressed ones decompressed in memory,
and on stores that answer requests at once, read ahead of the map by a bounded pool of threads.

The latency store below is a real FileSystem plugin (the local disk behind a ``slow://`` protocol whose
every read waits 20 ms, as a request to an object store does) registered like any other; it counts the
calls the tasks make."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter

import pytest

import corral
from corral.filesystems.local import corral_filesystem as local_filesystem
from corral.fs import FileInfo, FileSystem
from corral.planner import make_splits
from corral.plugins import get_plugin_manager
from corral.split import iter_line_chunks, read_ahead

from . import jobs
from .util import counts, lines, run, word_counter


class LatencyStore(FileSystem):
    """``slow:///PATH`` is the local file PATH, every read 20 ms late; calls and reads in flight counted."""

    read_ahead = 16

    def __init__(self) -> None:
        self.local = local_filesystem(url="/")
        self.calls: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def _local(self, url: str) -> str:
        return url.removeprefix("slow://")

    def expand(self, url):
        return [FileInfo("slow://" + f.url, f.size) for f in self.local.expand(self._local(url))]

    def open(self, url, mode="rb"):
        self.calls["open"] += 1
        return self.local.open(self._local(url), mode)

    def read_range(self, url, start, end):
        with self.lock:
            self.calls["read_range"] += 1
            self.reads[url] += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.02)
            return self.local.read_range(self._local(url), start, end)
        finally:
            with self.lock:
                self.in_flight -= 1

    def move(self, src, dst):
        self.local.move(self._local(src), self._local(dst))

    def remove(self, url, recursive=False):
        self.local.remove(self._local(url), recursive)

    def exists(self, url):
        return self.local.exists(self._local(url))


@pytest.fixture
def latency_store():
    store = LatencyStore()

    class Plugin:
        @corral.hookimpl(tryfirst=True)
        def corral_filesystem(self, url):
            return store if url.startswith("slow://") else None

    plugin = Plugin()
    get_plugin_manager().register(plugin)
    try:
        yield store
    finally:
        get_plugin_manager().unregister(plugin)


def small_logs(folder, files=40):
    """``files`` gzip files of a few lines each; returns their text, concatenated."""
    folder.mkdir()
    text = ""
    for n in range(files):
        content = "".join(f"file{n} line{i} word{(n * i) % 7}\n" for i in range(n % 5 + 1))
        (folder / f"log-{n:03d}.txt.gz").write_bytes(gzip.compress(content.encode()))
        text += content
    return text


def test_small_objects_are_read_once_each_and_ahead_of_the_map_at_most_16_at_once(tmp_path, latency_store):
    text = small_logs(tmp_path / "logs")
    run(jobs.WordCount, f"slow://{tmp_path / 'logs'}", tmp_path / "out", max_concurrency=1, reducers=1)
    assert counts(tmp_path / "out") == word_counter(text)
    # one read of each object (whole: the listing gave its size), none opened, several at once
    assert latency_store.calls == Counter({"read_range": 40})
    assert set(latency_store.reads.values()) == {1}
    assert 8 <= latency_store.most_in_flight <= 16


def test_a_filesystem_without_read_ahead_is_read_one_split_after_another(tmp_path, latency_store):
    text = small_logs(tmp_path / "logs", files=10)
    latency_store.read_ahead = 0
    run(jobs.WordCount, f"slow://{tmp_path / 'logs'}", tmp_path / "out", max_concurrency=1, reducers=1)
    assert counts(tmp_path / "out") == word_counter(text)
    assert latency_store.calls == Counter({"read_range": 10}) and latency_store.most_in_flight == 1


def test_read_ahead_stops_at_a_big_split_and_keeps_the_order(tmp_path, latency_store, monkeypatch):
    monkeypatch.setattr(corral.split, "SMALL_READ", 100)
    for n in range(6):
        (tmp_path / f"{n}.txt").write_text(f"small {n}\n" if n != 2 else "big\n" * 100)
    urls = [f"slow://{tmp_path / f'{n}.txt'}" for n in range(6)]
    splits = make_splits([FileInfo(u, (tmp_path / f"{n}.txt").stat().st_size) for n, u in enumerate(urls)], 1000)
    seen = []
    for split, fs, data in read_ahead(splits, lambda url: latency_store):
        assert (data is None) == (split.url == urls[2])  # the big one is streamed when its turn comes
        seen.append(b"".join(chunk for _, chunk in iter_line_chunks(fs, split, data)))
    assert seen == [(tmp_path / f"{n}.txt").read_bytes() for n in range(6)]
    assert latency_store.calls == Counter({"read_range": 5, "open": 1})


def test_a_small_text_split_is_one_read_its_last_line_read_on_only_when_longer(tmp_path, latency_store):
    content = b"aa\nbbbb\ncc" + b"x" * 50 + b"\ndd\n"
    (tmp_path / "f.txt").write_bytes(content)
    url = f"slow://{tmp_path / 'f.txt'}"
    got = []
    for split in make_splits([FileInfo(url, len(content))], 4):
        got += [chunk for _, chunk in iter_line_chunks(latency_store, split)]
    # lines start at 0, 3 (both in split [0, 4)), 8 and 61
    assert got == [b"aa\nbbbb\n", b"cc" + b"x" * 50 + b"\n", b"dd\n"]
    # 16 splits of 4 bytes, a read each (bytes [start - 1, end + 1)); the splits whose last line goes on
    # past end + 1 ([0, 4) and [8, 12)) read on once each, to its newline
    assert latency_store.calls == Counter({"read_range": 16 + 2})


def test_a_compressed_file_that_grew_since_it_was_listed_is_read_whole(tmp_path):
    path = tmp_path / "in.txt.gz"
    path.write_bytes(gzip.compress(b"a\nb\n"))
    listed = path.stat().st_size
    with open(path, "ab") as f:  # another member appended after the listing
        f.write(gzip.compress(b"c\n"))
    fs = local_filesystem(url=str(path))
    (split,) = make_splits([FileInfo(str(path), listed)], 100)
    assert [chunk for _, chunk in iter_line_chunks(fs, split)] == [b"a\nb\nc\n"]


@pytest.mark.parametrize("size", [1, 3 << 20])
def test_gzip_of_many_blocks_and_members_from_memory_is_whole_and_line_aligned(tmp_path, size):
    """A small .gz may hold much more than its size: it is decompressed a block at a time."""
    text = b"".join(b"%d %s\n" % (i, b"y" * (i % 50)) for i in range(200_000))[:size * 2] + b"tail"
    data = gzip.compress(text[: len(text) // 3]) + b"\0\0" + gzip.compress(text[len(text) // 3 :])
    path = tmp_path / "in.gz"
    path.write_bytes(data)
    fs = local_filesystem(url=str(path))
    (split,) = make_splits([FileInfo(str(path), len(data))], 100)
    chunks = list(iter_line_chunks(fs, split))
    assert b"".join(c for _, c in chunks) == text
    assert all(c.endswith(b"\n") for _, c in chunks[:-1]) and len(chunks) >= (2 if size > 1 else 1)
    assert [o for o, _ in chunks] == [sum(len(c) for _, c in chunks[:i]) for i in range(len(chunks))]


def test_many_small_gzip_files_on_processes(tmp_path):
    text = small_logs(tmp_path / "logs", files=300)
    run(jobs.Cat, tmp_path / "logs", tmp_path / "out", backend="processes")
    assert lines(tmp_path / "out") == text.splitlines()  # in input order


def test_corral_read_ahead_sets_how_many_small_objects_are_read_at_once(monkeypatch):
    from corral.filesystems.fsspec import READ_AHEAD, _read_ahead

    for value, expected in (("0", 0), ("4", 4), ("-3", 0), ("many", READ_AHEAD)):
        monkeypatch.setenv("CORRAL_READ_AHEAD", value)
        assert _read_ahead() == expected
    monkeypatch.delenv("CORRAL_READ_AHEAD")
    assert _read_ahead() == READ_AHEAD == 16


def test_an_empty_gzip_file_is_a_file_of_no_lines(tmp_path):
    """A log of an hour without requests: a valid gzip member with nothing in it, read whole from memory."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "00.gz").write_bytes(gzip.compress(b""))
    (logs / "01.gz").write_bytes(gzip.compress(b"a b\n"))
    (logs / "02.gz").write_bytes(gzip.compress(b"") + gzip.compress(b"b\n"))  # an empty member, then one
    fs = local_filesystem(url=str(logs))
    (split,) = make_splits([FileInfo(str(logs / "00.gz"), (logs / "00.gz").stat().st_size)], 100)
    assert list(iter_line_chunks(fs, split)) == []
    run(jobs.WordCount, logs, tmp_path / "out")
    assert counts(tmp_path / "out") == {"a": 1, "b": 2}


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "bad method"])
def test_a_damaged_small_gzip_file_is_an_input_error_naming_it(tmp_path, damage):
    data = gzip.compress(b"a\nb\n" * 10)
    data = {"truncated": data[:-6], "not gzip": b"plain text\n", "bad method": data[:2] + b"\x07" + data[3:]}[damage]
    path = tmp_path / "in.gz"
    path.write_bytes(data)
    fs = local_filesystem(url=str(path))
    (split,) = make_splits([FileInfo(str(path), len(data))], 100)
    with pytest.raises(corral.InputError, match=rf"^{path}: cannot read it as gzip data \("):
        list(iter_line_chunks(fs, split))


def test_a_small_read_past_a_files_end_is_one_read(tmp_path, monkeypatch):
    """``small_read`` asks for a file's size and a byte more (did it grow?): that byte short is the end."""
    import os

    from corral.filesystems import local

    path = tmp_path / "in.gz"
    path.write_bytes(gzip.compress(b"a\n"))
    size = path.stat().st_size
    preads = []
    real = os.pread

    def counted(fd, n, offset):
        preads.append((n, offset))
        return real(fd, n, offset)

    monkeypatch.setattr(local.os, "pread", counted)
    assert local._pread(str(path), 0, size + 1) == path.read_bytes()
    assert preads == [(size + 1, 0)]
    preads.clear()
    assert local._pread(str(path), 0, size + 10) == path.read_bytes()  # further short: read on, to the end
    assert preads == [(size + 10, 0), (10, size)]
