"""The built-in FileSystem: any fsspec implementation (local disk, ``memory://``, s3fs, gcsfs…).

Registered as a default plugin; its ``corral_filesystem`` hook answers last, so a plugin can serve a
protocol its own way.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Sequence
from stat import S_ISDIR
from typing import IO, Any

from corral import speedups
from corral.errors import UsageError
from corral.fs import FileInfo, FileSystem, ProtocolInfo
from corral.hookspecs import hookimpl

#: Writes to object stores are uploaded in parts of this size as they are written (S3 multipart: parts of
#: 5 MiB or more), so a writer holds a few parts in memory, never the object. fsspec's defaults (50 MB
#: for s3fs, held in several copies while a part uploads) would not fit a 128 MB Lambda function.
WRITE_BLOCK_SIZE = 8 << 20
#: Server-side copies in flight at once when an object store commits many files (one request each).
MOVE_CONCURRENCY = 32
#: The same against gcsfs's idea of an emulator (not on Google): gcp-storage-emulator serves one
#: connection at a time with a listen backlog of 5, so more in flight only wait for dropped SYNs to be
#: retried; gcsfs deletes 5 at a time there for the same reason.
EMULATOR_MOVE_CONCURRENCY = 4
#: Small objects a map task reads at once from an object store (``FileSystem.read_ahead``); the
#: variable ``CORRAL_READ_AHEAD`` (e.g. set with ``--environment``) overrides it, 0 reading one at a time.
READ_AHEAD = 16
_GLOB_CHARS = "*?["


class FsspecFileSystem(FileSystem):
    """A FileSystem over any fsspec implementation (one instance per fsspec filesystem)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        protocols = _protocols(fs)
        self._local = "file" in protocols
        self._s3 = "s3" in protocols
        self._gcs = "gs" in protocols or "gcs" in protocols
        #: An object store behind an async client (s3fs, gcsfs): copies server-side, many at once.
        self._object_store = not self._local and bool(getattr(fs, "async_impl", False))
        self.move_concurrency = MOVE_CONCURRENCY if getattr(fs, "on_google", True) else EMULATOR_MOVE_CONCURRENCY
        # reads ahead where each read is a request; the GCS emulator serves one connection at a time
        self.read_ahead = 0 if self._local or "memory" in _protocols(fs) else min(_read_ahead(), self.move_concurrency)
        #: S3's ranged reads as single signed GETs past s3fs (corral.filesystems.s3_direct), made on the first read
        self._direct: Any = None if self._s3 else False

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def _url(self, path: str) -> str:
        if self._local:
            return path
        return self.fs.unstrip_protocol(path)

    def expand(self, url: str) -> list[FileInfo]:
        if self._local:
            return self._expand(url)
        # object stores: a listing fresh from the store, and none kept afterwards. fsspec caches
        # listings (s3fs, gcsfs); this process's later lookups (info, exists, the commit's copies)
        # would trust a listing made before worker processes or functions wrote their outputs
        self.fs.invalidate_cache()
        try:
            return self._expand(url)
        finally:
            self.fs.invalidate_cache()

    def _expand(self, url: str) -> list[FileInfo]:
        path = self._path(url)
        if any(ch in path for ch in _GLOB_CHARS):
            found = self.fs.glob(path, detail=True)
            infos = [(p, d) for p, d in found.items() if d.get("type") != "directory"]
            if not infos:
                raise FileNotFoundError(url)
            return sorted(FileInfo(self._url(p), int(d.get("size") or 0), _version(d)) for p, d in infos)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(url) from None
        if info.get("type") != "directory":
            return [FileInfo(self._url(path), int(info.get("size") or 0), _version(info))]
        if self._local:
            return _local_files(path)
        found = self.fs.find(path, detail=True)
        prefix = path.rstrip("/") + "/"
        result = []
        for p, d in found.items():
            relative = p[len(prefix) :] if p.startswith(prefix) else p
            if any(part[:1] in ("_", ".") for part in relative.split("/")):
                continue
            if d.get("type") == "directory":
                continue
            result.append(FileInfo(self._url(p), int(d.get("size") or 0), _version(d)))
        return sorted(result)

    def open(self, url: str, mode: str = "rb") -> IO[bytes]:
        path = self._path(url)
        if "w" in mode and self._local:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if "w" in mode and not self._local:
            return self.fs.open(path, mode, block_size=WRITE_BLOCK_SIZE)
        return self.fs.open(path, mode)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        if self._local:  # straight to the file: fsspec's opener costs more than a small file's read
            return _pread(url if "://" not in url else self._path(url), start, end)
        path = self._path(url)
        if self._direct is None:
            _make_direct_reader(self)
        if self._direct:
            bucket, _, key = path.partition("/")
            data = self._direct.read(bucket, key, start, end)
            if data is not None:
                return data
        return self.fs.cat_file(path, start=start, end=end)

    def move(self, src: str, dst: str) -> None:
        if self._local:  # an atomic rename: a reader sees the old file or the new one, never half of one
            dst_path = self._path(dst)
            os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
            try:
                os.replace(self._path(src), dst_path)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _move_across_devices(self._path(src), dst_path)  # --work-dir on another disk than OUT
        elif self._object_store:
            self.move_many([(src, dst)])
        else:
            self.fs.mv(self._path(src), self._path(dst))

    def move_many(self, moves: Sequence[tuple[str, str]]) -> None:
        """On an object store: server-side copies, ``move_concurrency`` at a time, then bulk deletes.

        Never fsspec's ``mv``: gcsfs's tries GCS's moveTo first, which some stores (the GCS emulator)
        refuse with a 501 that gcsfs retries for about 30 s before it copies anyway.
        """
        if not self._object_store:
            super().move_many(moves)
            return
        if not moves:
            return
        sources = [self._path(src) for src, _ in moves]
        self.fs.copy(sources, [self._path(dst) for _, dst in moves], batch_size=self.move_concurrency)
        try:
            self.fs.rm(sources)  # S3: one DeleteObjects per 1000 keys; GCS: batched or parallel deletes
        except FileNotFoundError:  # copied, and the sources are gone already: the moves are done
            pass

    def remove(self, url: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(self._path(url), recursive=recursive)
        except FileNotFoundError:
            pass

    def exists(self, url: str) -> bool:
        return self.fs.exists(self._path(url))

    def canonical(self, url: str) -> str:
        if self._local:
            return os.path.realpath(self._path(url))
        path = "/".join(p for p in self._path(url).split("/") if p)
        return f"{_protocols(self.fs)[0]}://{path}"

    # --- conditional writes: O_EXCL and a folder lock locally, If-None-Match / If-Match on S3,
    # ifGenerationMatch=0 on GCS (creation only) ---------------------------------------------------
    def append(self, url: str, data: bytes) -> bool:
        return self.append_pieces(url, (data,))

    def append_pieces(self, url: str, pieces: Iterable[bytes]) -> bool:
        if not self._local:
            return False
        path = self._path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as f:  # every byte of each piece, or an error; then one fsync
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(fd)
        return True

    def create_new(self, url: str, data: bytes) -> bool:
        path = self._path(url)
        if self._local:
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
        if self._s3 or self._gcs:
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):  # what stores that ignore the precondition (the GCS emulator) need
                return False
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            finally:
                self.fs.invalidate_cache(path)
            return True
        return super().create_new(url, data)

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        path = self._path(url)
        if self._local:
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    return f.read(), f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
            except FileNotFoundError:
                return None
        if self._s3:
            self.fs.invalidate_cache(path)
            try:
                etag = self.fs.info(path)["ETag"]
                return self.fs.cat_file(path), etag
            except FileNotFoundError:
                return None
        return super().read_versioned(url)

    def replace_if(self, url: str, data: bytes, version: str) -> bool:
        path = self._path(url)
        if self._local:
            return _replace_if_local(path, data, version, self.read_versioned)
        if self._s3:
            try:
                self.fs.pipe_file(path, data, IfMatch=version)
            except FileNotFoundError:
                return False
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # 412 PreconditionFailed: it changed
                    return False
                raise
            finally:
                self.fs.invalidate_cache(path)
            return True
        return super().replace_if(url, data, version)


_direct_lock = threading.Lock()


def _make_direct_reader(wrapper: FsspecFileSystem) -> None:
    """The s3fs instance's DirectReader, or False where s3fs reads everything (made once, by one thread)."""
    with _direct_lock:
        if wrapper._direct is None:
            from corral.filesystems.s3_direct import DirectReader

            wrapper._direct = DirectReader.create(wrapper.fs) or False


def _move_across_devices(src: str, dst: str) -> None:
    """A rename from another disk: copied next to ``dst`` first, then renamed over it (still atomic for
    a reader of ``dst``), then ``src`` removed. A full disk names ``dst``."""
    import secrets
    import shutil

    from corral.fs import disk_full, writing

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


def _replace_if_local(path: str, data: bytes, version: str, read: Any) -> bool:
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


def _version(info: dict[str, Any]) -> str | None:
    """What changes when a file does, from fsspec's details: an ETag, a generation or an mtime."""
    for key in ("ETag", "etag", "generation", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return None


def _read_ahead() -> int:
    """``READ_AHEAD``, or ``CORRAL_READ_AHEAD`` where set (0: small objects one after another)."""
    try:
        return max(0, int(os.environ.get("CORRAL_READ_AHEAD", READ_AHEAD)))
    except ValueError:
        return READ_AHEAD


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


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


# --- hook implementations -----------------------------------------------------------------------

_instances: dict[int, FsspecFileSystem] = {}


def _storage_options(url: str) -> dict[str, Any]:
    """What gs:// needs against a GCS emulator (``STORAGE_EMULATOR_HOST`` set), as Google's own libraries
    do there: no credentials (gcsfs would look for Google's, down to a metadata server), and none of
    gcsfs's experimental bucket features (a gRPC call per bucket the emulator cannot answer, 60 s each;
    read when gcsfs is first imported). A token set in fsspec's configuration wins."""
    protocol = url.split("://", 1)[0] if "://" in url else ""
    if protocol not in ("gs", "gcs") or not os.environ.get("STORAGE_EMULATOR_HOST"):
        return {}
    _gcs_emulator_environment()
    import fsspec.config

    return {} if "token" in fsspec.config.conf.get(protocol, {}) else {"token": "anon"}


def _gcs_emulator_environment() -> None:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@hookimpl(trylast=True)
def corral_filesystem(url: str) -> FileSystem | None:
    import fsspec.core

    try:
        fs, _ = fsspec.core.url_to_fs(url, **_storage_options(url))
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot open {url!r}: {exc}") from None
    key = id(fs)  # fsspec caches its instances, so one wrapper per fsspec instance
    wrapper = _instances.get(key)
    if wrapper is None or wrapper.fs is not fs:
        wrapper = _instances[key] = FsspecFileSystem(fs)
    return wrapper


#: fsspec protocols that hold no data of their own or are no place for a job's data: caches, views and
#: archives wrapping another filesystem, read-only toys (a gist, a GitHub repository, a notebook server).
NOT_DATA = frozenset({
    "async_wrapper", "asyncwrapper", "blockcache", "cached", "data", "dask", "dir", "filecache", "generic",
    "gist", "git", "github", "jlab", "jupyter", "libarchive", "pyscript", "reference", "simplecache", "tar",
    "zip",
})
#: Libraries an fsspec built-in needs beyond fsspec, imported only when used (so the class imports without).
_NEEDS = {"arrow_hdfs": "pyarrow", "hdfs": "pyarrow", "http": "aiohttp", "https": "aiohttp",
          "dbfs": "requests", "webhdfs": "requests"}
#: Protocols corral's own tests run jobs on (the local disk; memory on threads; S3 on moto; GCS on its emulator).
TESTED = frozenset({"file", "local", "memory", "s3", "s3a", "gs", "gcs"})


@hookimpl
def corral_filesystem_protocols() -> list[ProtocolInfo]:
    """Data protocols whose fsspec implementation and libraries import here, aliases together."""
    import importlib
    from importlib.metadata import packages_distributions

    from fsspec.registry import get_filesystem_class, known_implementations

    _gcs_emulator_environment()  # before gcsfs is imported here
    by_class: dict[str, list[str]] = {}
    for protocol in sorted(known_implementations):
        if protocol in NOT_DATA:
            continue
        try:
            if protocol in _NEEDS:
                importlib.import_module(_NEEDS[protocol])
            cls = get_filesystem_class(protocol)
        except Exception:  # its library is missing or broken: not usable here
            continue
        by_class.setdefault(f"{cls.__module__}.{cls.__qualname__}", []).append(protocol)
    dists = packages_distributions()
    infos = []
    for qualname, names in by_class.items():
        module = qualname.split(".", 1)[0]
        library = "fsspec" if module == "fsspec" else dists.get(module, [module])[0]
        names.sort(key=lambda name: (name not in TESTED, len(name), name))  # "s3" before "s3a"
        infos.append(ProtocolInfo(tuple(names), library, tested=any(name in TESTED for name in names)))
    return sorted(infos, key=lambda info: (not info.tested, info.names))
