"""The FileSystem interface corral reads and writes through, and the built-in fsspec implementation.

Every location corral handles is a URL (``/data/in``, ``s3://bucket/in/``, ``gs://…``, ``memory://…``).
The ``corral_filesystem`` hook maps a URL to a FileSystem; the built-in plugin answers for any protocol
fsspec knows, so ``s3://`` works once s3fs is installed.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import IO, Any

from corral.errors import UsageError
from corral.plugins import get_plugin_manager, hookimpl

#: File name endings read transparently through a decompressor (each such file is one split).
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Writes to object stores are uploaded in parts of this size as they are written (S3 multipart: parts of
#: 5 MiB or more), so a writer holds a few parts in memory, never the object. fsspec's defaults (50 MB
#: for s3fs, held in several copies while a part uploads) would not fit a 128 MB Lambda function.
WRITE_BLOCK_SIZE = 8 << 20
_GLOB_CHARS = "*?["


def compression_of(url: str) -> str | None:
    """The compression implied by ``url``'s ending, or None."""
    for suffix, name in COMPRESSIONS.items():
        if url.endswith(suffix):
            return name
    return None


def display(url: str) -> str:
    """``url`` as a user would write it (local paths without ``file://``)."""
    return url[len("file://") :] if url.startswith("file://") else url


@dataclass(frozen=True, order=True)
class FileInfo:
    url: str
    size: int
    #: what changes when the file does, where the store says: its ETag, generation or mtime
    version: str | None = field(default=None, compare=False)


class FileSystem(ABC):
    """What corral needs of a storage system: listing, ranged reads, streaming writes, moves."""

    @abstractmethod
    def expand(self, url: str) -> list[FileInfo]:
        """The files ``url`` names: itself, every file below a folder/prefix, or a glob's matches.

        Files and folders whose name starts with ``_`` or ``.`` inside a folder are skipped (as
        Hadoop does), so a finished job's output folder can be the next job's input.
        Raise ``FileNotFoundError`` when nothing exists there.
        """

    @abstractmethod
    def open(self, url: str, mode: str = "rb") -> IO[bytes]:
        """A file object; ``"wb"`` streams (creating parent folders where the store needs them)."""

    @abstractmethod
    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``url`` (one ranged GET on object stores)."""

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, replacing ``dst`` (a rename where the store has one)."""

    @abstractmethod
    def remove(self, url: str, recursive: bool = False) -> None:
        """Remove a file or, with ``recursive``, everything below a folder/prefix. Missing is fine."""

    @abstractmethod
    def exists(self, url: str) -> bool: ...

    def open_input(self, url: str) -> IO[bytes]:
        """A binary stream of ``url``'s content, decompressed when its name says it is compressed."""
        raw = self.open(url, "rb")
        compression = compression_of(url)
        if compression == "gzip":
            return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
        if compression == "bz2":
            return bz2.BZ2File(raw)  # type: ignore[return-value]
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)  # type: ignore[return-value]
        return raw

    def write_bytes(self, url: str, data: bytes) -> None:
        with self.open(url, "wb") as f:
            f.write(data)

    def read_bytes(self, url: str) -> bytes:
        with self.open(url, "rb") as f:
            return f.read()

    # --- the driver's small files in OUT/_corral (the journal, the lease) ------------------------
    def append(self, url: str, data: bytes) -> bool:
        """Append ``data`` to ``url`` (created if missing) and flush it to stable storage. False where
        the store cannot append (object stores), and the caller writes new objects instead."""
        return False

    def create_new(self, url: str, data: bytes) -> bool:
        """Write ``data`` to ``url`` only if nothing is there; False if something is.

        Atomic where the store has conditional writes; this default is a check then a write."""
        if self.exists(url):
            return False
        self.write_bytes(url, data)
        return True

    def read_versioned(self, url: str) -> tuple[bytes, str] | None:
        """``url``'s content and a token that changes with every write, or None if it does not exist."""
        try:
            data = self.read_bytes(url)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def replace_if(self, url: str, data: bytes, version: str) -> bool:
        """Replace ``url`` with ``data`` if its version (``read_versioned``) is still ``version``; False if
        it changed or is gone. Atomic where the store has conditional writes; this default is a check
        then a write."""
        current = self.read_versioned(url)
        if current is None or current[1] != version:
            return False
        self.write_bytes(url, data)
        return True


class FsspecFileSystem(FileSystem):
    """A FileSystem over any fsspec implementation (one instance per fsspec filesystem)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        protocols = _protocols(fs)
        self._local = "file" in protocols
        self._s3 = "s3" in protocols
        self._gcs = "gs" in protocols or "gcs" in protocols

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def _url(self, path: str) -> str:
        if self._local:
            return path
        return self.fs.unstrip_protocol(path)

    def expand(self, url: str) -> list[FileInfo]:
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
        return self.fs.cat_file(self._path(url), start=start, end=end)

    def move(self, src: str, dst: str) -> None:
        if self._local:
            dst_path = self._path(dst)
            os.makedirs(os.path.dirname(dst_path) or ".", exist_ok=True)
            os.replace(self._path(src), dst_path)
        else:
            self.fs.mv(self._path(src), self._path(dst))

    def remove(self, url: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(self._path(url), recursive=recursive)
        except FileNotFoundError:
            pass

    def exists(self, url: str) -> bool:
        return self.fs.exists(self._path(url))

    # --- conditional writes: O_EXCL and a folder lock locally, If-None-Match / If-Match on S3,
    # ifGenerationMatch=0 on GCS (creation only) ---------------------------------------------------
    def append(self, url: str, data: bytes) -> bool:
        if not self._local:
            return False
        path = self._path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
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
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
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
            import fcntl
            import tempfile

            folder = os.path.dirname(path) or "."
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".replace-")
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            guard = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(guard, fcntl.LOCK_EX)  # every corral process takes it for this swap
                current = self.read_versioned(url)
                if current is None or current[1] != version:
                    os.remove(temp)
                    return False
                os.replace(temp, path)
                return True
            finally:
                os.close(guard)  # releases the lock
        if self._s3:
            import errno

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


def _version(info: dict[str, Any]) -> str | None:
    """What changes when a file does, from fsspec's details: an ETag, a generation or an mtime."""
    for key in ("ETag", "etag", "generation", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def join(base: str, *parts: str) -> str:
    """Join URL path parts with ``/`` (for every protocol, local included)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def canonical(url: str) -> str:
    """``url`` in one spelling, to compare locations: a local path resolved (``..``, symlinks), other
    URLs with their protocol's canonical name and without repeated or trailing slashes."""
    if "://" not in url or url.startswith("file://"):
        return os.path.realpath(display(url))
    fs = get_filesystem(url)
    if isinstance(fs, FsspecFileSystem):
        protocol = _protocols(fs.fs)[0]
        path = "/".join(p for p in fs._path(url).split("/") if p)
        return f"{protocol}://{path}"
    protocol, _, path = url.partition("://")
    return f"{protocol}://{'/'.join(p for p in path.split('/') if p)}"


def get_filesystem(url: str) -> FileSystem:
    """The FileSystem a plugin provides for ``url``; a UsageError naming the URL if none does."""
    fs = get_plugin_manager().hook.corral_filesystem(url=url)
    if fs is None:
        raise UsageError(f"no filesystem for {url!r}: install the fsspec implementation of its protocol")
    return fs


# --- built-in plugin ----------------------------------------------------------------------------

_instances: dict[int, FsspecFileSystem] = {}


@hookimpl(trylast=True)
def corral_filesystem(url: str) -> FileSystem | None:
    import fsspec.core

    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot open {url!r}: {exc}") from None
    key = id(fs)  # fsspec caches its instances, so one wrapper per fsspec instance
    wrapper = _instances.get(key)
    if wrapper is None or wrapper.fs is not fs:
        wrapper = _instances[key] = FsspecFileSystem(fs)
    return wrapper


@hookimpl
def corral_filesystem_protocols() -> list[str]:
    """Protocols whose fsspec implementation imports here (its extra packages are installed)."""
    from fsspec.registry import get_filesystem_class, known_implementations

    protocols = []
    for protocol in sorted(known_implementations):
        try:
            get_filesystem_class(protocol)
        except Exception:  # missing optional dependency: not usable here
            continue
        protocols.append(protocol)
    return protocols
