"""The local listing: the C walk (``corral._speedups.scan_tree``, without the GIL) and the Python one give
the same files of the same tree, links, loops and names to skip included; the ``corral`` command starts
listing its input folders while it starts up (``prefetch_folders``), and what it lists is still the
folder as it is when the driver asks."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from corral import speedups
from corral.filesystems import local

from .test_speedups import _compiled
from .util import clean_env, counts, run_command

#: A job that counts each distinct line.
LINES_JOB = """import corral
class Lines(corral.Job):
    def map(self, key, line):
        yield line, 1
    def reduce(self, key, values):
        yield key, sum(values)
"""


def _tree(root):
    """Files, folders to skip, a link to a file, to a folder, a loop of links, a broken link, and a name
    that is not UTF-8."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("1\n")
    (root / "a" / "b" / "two.txt").write_text("22\n")
    (root / "_skipped").mkdir()
    (root / "_skipped" / "no.txt").write_text("no\n")
    (root / ".hidden").write_text("no\n")
    (root / "a" / "_SUCCESS").write_text("")
    (root / "empty.txt").write_text("")
    os.symlink(root / "a" / "one.txt", root / "link-to-file.txt")
    os.symlink(root / "a" / "b", root / "link-to-folder")  # b listed once (by whichever path comes first)
    os.symlink(root, root / "a" / "b" / "loop")  # a loop: never followed twice
    os.symlink(root / "missing", root / "broken.txt")
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("x\n")  # Latin-1 bytes: a surrogate in the name


def _python(folder):
    return sorted(local._walked(folder, local._identity(os.stat(folder))))


def test_the_c_walk_lists_what_the_python_walk_lists(tmp_path):
    _compiled()
    _tree(tmp_path)
    folder = str(tmp_path)
    found = local._local_files(folder)
    assert found == _python(folder)
    assert [f.version for f in found] == [f.version for f in _python(folder)]
    names = {os.path.relpath(f.url, folder) for f in found}
    assert names >= {"a/one.txt", "empty.txt", "link-to-file.txt", os.fsdecode(b"caf\xe9.txt")}
    assert not any(n.startswith(("_", ".")) or "/_" in n or "broken" in n for n in names)
    assert len([n for n in names if n.endswith("two.txt")]) == 1  # b's file once, through one path
    by_url = {f.url: f for f in found}
    assert by_url[f"{folder}/link-to-file.txt"].size == 2  # a link is its target's size


def test_the_c_walk_says_what_is_wrong_with_the_folder(tmp_path):
    scan_tree = _compiled().scan_tree
    with pytest.raises(FileNotFoundError) as missing:
        scan_tree(str(tmp_path / "nowhere"))
    assert missing.value.filename == str(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        scan_tree(str(tmp_path / "file"))


def test_symbolic_links_names_the_links_of_a_folder(tmp_path):
    links = _compiled().symbolic_links
    _tree(tmp_path)
    with os.scandir(tmp_path) as entries:
        expected = {e.name for e in entries if e.is_symlink()}
    assert set(links(str(tmp_path))) == expected == {"link-to-file.txt", "link-to-folder", "broken.txt"}
    assert links(str(tmp_path / "a")) == []


def test_a_prefetched_folder_is_listed_once_whatever_its_spelling(tmp_path, monkeypatch):
    _compiled()
    monkeypatch.setattr(local, "_prefetched", {})
    (tmp_path / "logs").mkdir()
    for i in range(50):
        (tmp_path / "logs" / f"{i:02d}.log").write_text("x" * i)
    monkeypatch.chdir(tmp_path)
    local.prefetch_folders(["logs", "nowhere", "s3://bucket/logs"])  # what is no local folder is left alone
    assert list(local._prefetched) == [local._identity(os.stat("logs"))]
    calls = []
    monkeypatch.setattr(speedups, "scan_tree", lambda path: calls.append(path))  # the listing must not scan
    found = local._local_files(f"{tmp_path}/logs/")
    assert calls == [] and local._prefetched == {}
    assert [f.url for f in found] == [f"{tmp_path}/logs/{i:02d}.log" for i in range(50)]
    assert [f.size for f in found] == list(range(50))
    assert all(t.name != "corral-listing" for t in threading.enumerate())  # joined: workers fork from here


def test_a_folder_replaced_after_its_prefetch_is_listed_as_it_is_now(tmp_path, monkeypatch):
    _compiled()
    monkeypatch.setattr(local, "_prefetched", {})
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "old.log").write_text("old\n")
    local.prefetch_folders([str(logs)])
    logs.rename(tmp_path / "before")
    logs.mkdir()
    (logs / "new.log").write_text("new\n")
    assert [os.path.basename(f.url) for f in local._local_files(str(logs))] == ["new.log"]


def test_a_prefetch_that_failed_fails_the_listing_as_a_scan_would(tmp_path, monkeypatch):
    _compiled()
    monkeypatch.setattr(local, "_prefetched", {})
    (tmp_path / "logs").mkdir()

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(speedups, "scan_tree", denied)
    local.prefetch_folders([str(tmp_path / "logs")])
    with pytest.raises(PermissionError):
        local._local_files(str(tmp_path / "logs"))


@pytest.mark.parametrize("setting", ["0", "1"])
def test_the_corral_command_lists_a_tree_of_links_the_same_with_and_without_the_c_module(tmp_path, setting):
    if setting == "1":
        _compiled()
    data = tmp_path / "data"
    data.mkdir()
    _tree(data)
    out = tmp_path / "out"
    job = tmp_path / "job.py"
    job.write_text(LINES_JOB)
    done = run_command("corral", "run", job, data, "--out", out, "-q", env=clean_env(CORRAL_SPEEDUPS=setting))
    assert done.returncode == 0, done.stderr
    # one.txt twice (itself, and the link to it); two.txt once (its folder is reached twice); café once
    assert counts(out) == {"1": 2, "22": 1, "x": 1}


@pytest.mark.parametrize("argv, inputs", [
    (["run", "job.py", "logs", "more/", "--out", "out"], ["logs", "more/"]),
    (["run", "job.py", "logs"], ["logs"]),
    (["run", "--backend", "threads", "job.py", "logs"], []),  # an option first: the parsed inputs, later
    (["run", "job.py", "--arg", "x=1", "logs", "--out", "o"], []),
    (["deploy", "job.py", "s3://bucket/in"], []),
    (["run", "job.py"], []),
])
def test_the_command_lists_ahead_only_what_the_parser_takes_as_inputs(argv, inputs):
    from corral.cli import _leading_inputs

    assert _leading_inputs(argv) == inputs


def test_an_input_folder_named_twice_is_read_once(tmp_path):
    """``corral run JOB logs ./logs/`` (listed ahead, then spelled again): each file once, as before."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.txt").write_text("x\ny\n")
    job = tmp_path / "job.py"
    job.write_text(LINES_JOB)
    done = run_command("corral", "run", job, "logs", "./logs/", tmp_path / "logs", "--out", "out", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert counts(tmp_path / "out") == {"x": 1, "y": 1}


# --- the local disk without fsspec -------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [
    "in/x.txt", "./in/x.txt", ".", "~/in", "/a/b/", "/a//b", "/", "a/../b", "file:///a/b", "file:/a/b",
    "local:///a/b", "local:/a", "file://in/x.txt",
])
def test_a_local_url_names_the_path_fsspec_named(spelling, tmp_path, monkeypatch):
    """The listing, manifest and journal of a local run spell each path as they did through fsspec's
    LocalFileSystem (``--resume`` compares a journal's paths with the new listing's)."""
    from fsspec.implementations.local import LocalFileSystem

    monkeypatch.chdir(tmp_path)
    assert local.local_path(spelling) == LocalFileSystem._strip_protocol(spelling)


def test_a_local_run_does_not_import_fsspec(tmp_path):
    """fsspec (asyncio, ssl, its codecs) cost every run 40-70 ms of start-up: a run that reads and writes
    the local disk only never imports it, in the driver or its workers."""
    job = tmp_path / "lines.py"
    job.write_text(LINES_JOB + "import sys\nclass Modules(Lines):\n    def map(self, key, line):\n"
                   "        yield f'fsspec in the worker: {\"fsspec\" in sys.modules}', 1\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x\ny\n")
    script = ("import sys\nfrom corral.cli import main\n"
              f"code = main(['run', {str(job) + ':Modules'!r}, {str(tmp_path / 'in')!r}, '--out', "
              f"{str(tmp_path / 'out')!r}, '-q'])\n"
              "print(code, 'fsspec' in sys.modules)\n")
    done = run_command(sys.executable, "-c", script)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0 False\n", "")
    assert counts(tmp_path / "out") == {"fsspec in the worker: False": 2}


def test_removing_a_link_to_a_folder_removes_the_link_only(tmp_path):
    """What corral removes on the local disk is its own (a working folder, an attempt's output): a
    symbolic link among them goes, never what it points to; a folder goes only when asked recursively."""
    target = tmp_path / "users-data"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    (tmp_path / "link").symlink_to(target)
    fs = local.corral_filesystem(str(tmp_path / "link"))
    fs.remove(str(tmp_path / "link"), recursive=True)
    assert not (tmp_path / "link").exists() and (target / "keep.txt").read_text() == "mine\n"
    with pytest.raises(IsADirectoryError):
        fs.remove(str(target))
    assert (target / "keep.txt").exists()
    fs.remove(f"file://{target}", recursive=True)
    assert not target.exists()
    fs.remove(str(tmp_path / "never-there"), recursive=True)  # missing is fine
