"""The local disk as a FileSystem, through the operating system's own calls.

Registered as a default plugin, it answers for paths and ``file://`` / ``local://`` URLs before the
fsspec plugin would. Why not fsspec's LocalFileSystem: importing fsspec (asyncio, ssl, its codecs)
cost every ``corral`` command 40-70 ms of start-up here, for a run that reads and writes a local disk
only, and its per-call layers cost more than reading a small file. Paths are spelled as fsspec
spells them (``file://`` stripped, relative ones made absolute, no trailing slash), so a local run's
listing, manifest and journal read the same; globs go to fsspec's (imported for them only).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from stat import S_ISDIR
from typing import IO

from corral import speedups
from corral.fs import FileInfo, FileSystem, ProtocolInfo, disk_full, writing
from corral.hookspecs import hookimpl

#: The prefixes of a local URL that its path goes without (fsspec's, for its protocols "file" and "local").
LOCAL_PREFIXES = ("file://", "file:", "local://", "local:")
_GLOB_CHARS = "*?["


def is_local(url: str) -> bool:
    """Whether ``url`` is a path on this machine's disk (a path, or a ``file://`` / ``local://`` URL)."""
    return "://" not in url or url.startswith(("file://", "local://"))


def local_path(url: str) -> str:
    """The absolute path ``url`` names, as fsspec's LocalFileSystem strips it: its protocol prefix
    removed, ``~`` expanded, a relative path joined to the working folder (not normalized: ``..``
    stays, as a symbolic link may need it), no trailing slash."""
    for prefix in LOCAL_PREFIXES:
        if url.startswith(prefix):
            url = url[len(prefix):]
            break
    if url.startswith("~"):
        url = os.path.expanduser(url)
    elif not url.startswith("/"):
        relative = "" if url == "." else url.removeprefix("./")
        url = f"{os.getcwd()}/{relative}"
    return url.rstrip("/") or "/"


class LocalFileSystem(FileSystem):
    """This machine's disk: renames that are atomic, appends flushed to disk, O_EXCL creations, and
    compare-and-swap under a folder lock (for the lease)."""

    def expand(self, url: str) -> list[FileInfo]:
        path = local_path(url)
        if any(ch in path for ch in _GLOB_CHARS):  # by fsspec's rules, imported for them only
            import fsspec

            from corral.filesystems.fsspec import glob_files

            return glob_files(fsspec.filesystem("file"), url, path, str)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(url) from None
        if S_ISDIR(stat.st_mode):
            return _local_files(path)
        return [FileInfo(path, stat.st_size, str(stat.st_mtime))]  # the version fsspec gave: its mtime

    def open(self, url: str, mode: str = "rb") -> IO[bytes]:
        path = local_path(url)
        try:
            return open(path, mode)
        except FileNotFoundError:  # writing into a folder not made yet: made then (not before every file)
            if "w" not in mode or not os.path.dirname(path):
                raise
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, mode)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return _pread(url if "://" not in url else local_path(url), start, end)

    def move(self, src: str, dst: str) -> None:
        """An atomic rename: a reader sees the old file or the new one, never half of one."""
        src_path, dst_path = local_path(src), local_path(dst)
        try:
            try:
                os.replace(src_path, dst_path)
            except FileNotFoundError:  # the folder of dst is new (asked after: a commit of 10,000 parts)
                if not os.path.exists(src_path):
                    raise
                os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
                os.replace(src_path, dst_path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _move_across_devices(src_path, dst_path)  # --work-dir on another disk than OUT

    def remove(self, url: str, recursive: bool = False) -> None:
        path = local_path(url)
        try:
            if os.path.isdir(path) and not os.path.islink(path):  # a link goes, never what it points to
                if not recursive:
                    raise IsADirectoryError(errno.EISDIR, "a folder: remove it with recursive=True", url)
                if os.path.abspath(path) == os.getcwd():  # as fsspec's: never the folder the user is in
                    raise ValueError(f"will not remove the working folder {path}")
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    def exists(self, url: str) -> bool:
        return os.path.exists(local_path(url))

    def canonical(self, url: str) -> str:
        return os.path.realpath(local_path(url))

    # --- conditional writes: O_EXCL, appends and a folder lock -----------------------------------
    def append(self, url: str, data: bytes) -> bool:
        return self.append_pieces(url, (data,))

    def append_pieces(self, url: str, pieces: Iterable[bytes]) -> bool:
        path = local_path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as f:  # every byte of each piece, or an error; then one fsync
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(fd)
        return True

    def create_new(self, url: str, data: bytes) -> bool:
        path = local_path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        try:
            with open(local_path(url), "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        except FileNotFoundError:
            return None

    def replace_if(self, url: str, data: bytes, version: str) -> bool:
        return _replace_if(local_path(url), data, version, self.read_versioned)


def _move_across_devices(src: str, dst: str) -> None:
    """A rename from another disk: copied next to ``dst`` first, then renamed over it (still atomic for
    a reader of ``dst``), then ``src`` removed. A full disk names ``dst``."""
    import secrets

    temp = f"{dst}.{secrets.token_hex(3)}.tmp"
    try:
        with writing(dst):
            try:
                shutil.copyfile(src, temp)
            except OSError as exc:
                if disk_full(exc):  # sendfile's error names both files: the full disk is dst's
                    exc.filename = exc.filename2 = None
                raise
        os.replace(temp, dst)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    os.remove(src)


def _replace_if(path: str, data: bytes, version: str, read: Callable[[str], tuple[bytes, str] | None]) -> bool:
    """Compare and swap on a local disk: under an exclusive lock on the folder (which every corral
    process takes for this), check the version, then rename a fully written file over the old one."""
    import fcntl
    import tempfile

    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".replace-")
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        guard = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            current = read(path)
            if current is None or current[1] != version:
                return False
            os.replace(temp, path)
            return True
        finally:
            os.close(guard)  # releases the lock
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _pread(path: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a local file (fewer at its end) with ``os.pread``: no file object, a
    third of the cost of ``open``, ``seek`` and ``read`` for a file of a few KB (20,000 small logs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, end - start, start)
        # a short read is the file's end, but where a store could answer a part (past 2 GiB on Linux, a
        # FUSE filesystem): read on. One byte short is the end a small read asks past (``small_read``
        # reads a file's size and a byte more, which tells whether it grew): no second read for that
        if 1 < end - start - len(data) and data:
            parts = [data]
            position = start + len(data)
            while position < end and (more := os.pread(fd, end - position, position)):
                parts.append(more)
                position += len(more)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def _local_files(folder: str) -> list[FileInfo]:
    """The files below a local folder, as ``expand`` lists them: with ``corral._speedups.scan_tree`` (in
    C, without the GIL; or what ``prefetch_folders`` started), else ``os.scandir`` and a stat per file
    (fsspec's ``find`` costs ten times as much, which 100,000 input files notice). Symbolic links are
    followed (a folder reached twice, by a loop of links, is listed once); a broken one is no file."""
    identity = _identity(os.stat(folder))
    started = _prefetched.pop(identity, None)
    scanned = started.result() if started is not None else None
    if scanned is None and speedups.scan_tree is not None:
        scanned = speedups.scan_tree(folder)
    if scanned is not None:  # FileInfo(folder/path, size, str(mtime_ns)) of each, made in C
        assert speedups.file_infos is not None  # with scan_tree
        found = speedups.file_infos(folder if folder.endswith("/") else folder + "/", scanned[2], FileInfo)
    else:
        found = _walked(folder, identity)
    found.sort(key=_url_of)
    return found


def _walked(folder: str, identity: tuple[int, int]) -> list[FileInfo]:
    """``_local_files`` in Python: a folder at a time, an entry at a time (each holds its stat, ~700 bytes)."""
    found: list[FileInfo] = []
    seen = {identity}
    pending = [folder]
    while pending:
        below = pending.pop()
        prefix = below if below.endswith("/") else below + "/"
        try:
            entries = os.scandir(below)
        except (FileNotFoundError, NotADirectoryError):  # gone since it was listed
            continue
        with entries:
            for entry in entries:
                if entry.name[0] in "_.":  # a name is never empty
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # a broken link, or a file removed meanwhile
                    continue
                if S_ISDIR(stat.st_mode):
                    if (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        pending.append(prefix + entry.name)
                else:
                    found.append(FileInfo(prefix + entry.name, stat.st_size, str(stat.st_mtime_ns)))
    return found


class _Prefetch:
    """``scan_tree`` of one folder, running in a thread of its own (the GIL released all along)."""

    def __init__(self, folder: str) -> None:
        self._folder = folder
        self._scanned: tuple[int, int, list[tuple[str, int, int]]] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._scan, name="corral-listing", daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        assert speedups.scan_tree is not None
        try:
            self._scanned = speedups.scan_tree(self._folder)
        except BaseException as exc:  # the listing raises it, as if it had scanned itself
            self._error = exc

    def result(self) -> tuple[int, int, list[tuple[str, int, int]]] | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._scanned


#: At most this many of the command line's inputs are looked at to be listed ahead.
PREFETCH_INPUTS = 32
#: Folders being listed ahead, by (device, inode): the listing takes each once, however it is spelled.
_prefetched: dict[tuple[int, int], _Prefetch] = {}


def prefetch_folders(paths: Iterable[str]) -> None:
    """Start listing the local folders among ``paths`` (the command line's inputs) in threads, while
    the ``corral`` command goes on starting up: its listing of 20,000 small files waits ~5 ms instead
    of stat-ing them for ~40 ms. What a listing finds is what the folder held when it was read, moments
    before the driver asked; a folder replaced since (another at its path) is listed again. Only with
    the C module, whose walk needs no GIL."""
    if speedups.scan_tree is None:
        return
    for path in list(paths)[:PREFETCH_INPUTS]:  # thousands of inputs (a shell's glob) are files: no stat each
        if "://" in path:
            continue
        try:
            stat = os.stat(path)
        except (OSError, ValueError):  # the listing says what is wrong with it
            continue
        if S_ISDIR(stat.st_mode) and _identity(stat) not in _prefetched:
            _prefetched[_identity(stat)] = _Prefetch(path)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _url_of(info: FileInfo) -> str:
    return info.url


_local = LocalFileSystem()


@hookimpl
def corral_filesystem(url: str) -> FileSystem | None:
    return _local if is_local(url) else None


@hookimpl
def corral_filesystem_protocols() -> list[ProtocolInfo]:
    return [ProtocolInfo(("file", "local"), "corral-mapreduce", tested=True)]
