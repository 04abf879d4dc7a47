"""The built-in FileSystem: any fsspec implementation (``memory://``, s3fs, gcsfs…).

Registered as a default plugin; its ``corral_filesystem`` hook answers last, so a plugin can serve a
protocol its own way (the local disk is ``corral.filesystems.local``'s).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

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
        self._s3 = "s3" in protocols
        self._gcs = "gs" in protocols or "gcs" in protocols
        #: An object store behind an async client (s3fs, gcsfs): copies server-side, many at once.
        self._object_store = bool(getattr(fs, "async_impl", False))
        self.move_concurrency = MOVE_CONCURRENCY if getattr(fs, "on_google", True) else EMULATOR_MOVE_CONCURRENCY
        # reads ahead where each read is a request; the GCS emulator serves one connection at a time
        self.read_ahead = 0 if "memory" in protocols else min(_read_ahead(), self.move_concurrency)
        #: S3's ranged reads as single signed GETs past s3fs (corral.filesystems.s3_direct), made on the first read
        self._direct: Any = None if self._s3 else False

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def _url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def expand(self, url: str) -> list[FileInfo]:
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
            return glob_files(self.fs, url, path, self._url)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(url) from None
        if info.get("type") != "directory":
            return [FileInfo(self._url(path), int(info.get("size") or 0), _version(info))]
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
        if "w" in mode:
            return self.fs.open(path, mode, block_size=WRITE_BLOCK_SIZE)
        return self.fs.open(path, mode)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
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
        if self._object_store:
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
        path = "/".join(p for p in self._path(url).split("/") if p)
        return f"{_protocols(self.fs)[0]}://{path}"

    # --- conditional writes: If-None-Match / If-Match on S3, ifGenerationMatch=0 on GCS (creation only)
    def create_new(self, url: str, data: bytes) -> bool:
        path = self._path(url)
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


def glob_files(fs: Any, url: str, path: str, spell: Callable[[str], str]) -> list[FileInfo]:
    """The files fsspec's ``fs.glob`` matches (``**`` included), sorted, each URL spelled by ``spell``;
    FileNotFoundError naming ``url`` if none. (Also the local disk's globs: ``corral.filesystems.local``.)"""
    found = fs.glob(path, detail=True)
    infos = [FileInfo(spell(p), int(d.get("size") or 0), _version(d))
             for p, d in found.items() if d.get("type") != "directory"]
    if not infos:
        raise FileNotFoundError(url)
    return sorted(infos)


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
TESTED = frozenset({"memory", "s3", "s3a", "gs", "gcs"})
#: The local disk's protocols: ``corral.filesystems.local`` serves them.
LOCAL_PROTOCOLS = frozenset({"file", "local"})


@hookimpl
def corral_filesystem_protocols() -> list[ProtocolInfo]:
    """Data protocols whose fsspec implementation and libraries import here, aliases together."""
    import importlib
    from importlib.metadata import packages_distributions

    from fsspec.registry import get_filesystem_class, known_implementations

    _gcs_emulator_environment()  # before gcsfs is imported here
    by_class: dict[str, list[str]] = {}
    for protocol in sorted(known_implementations):
        if protocol in NOT_DATA or protocol in LOCAL_PROTOCOLS:
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
