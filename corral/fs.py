"""The FileSystem interface corral reads and writes through, and the built-in fsspec implementation.

Every location corral handles is a URL (``/data/in``, ``s3://bucket/in/``, ``gs://…``, ``memory://…``).
The ``corral_filesystem`` hook maps a URL to a FileSystem; the built-in plugin answers for any protocol
fsspec knows, so ``s3://`` works once s3fs is installed.
"""

from __future__ import annotations

import bz2
import gzip
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import IO, Any

from corral.errors import UsageError
from corral.hookspecs import hookimpl
from corral.plugins import get_plugin_manager

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
            return bz2.BZ2File(raw)
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return raw

    def write_bytes(self, url: str, data: bytes) -> None:
        with self.open(url, "wb") as f:
            f.write(data)

    def read_bytes(self, url: str) -> bytes:
        with self.open(url, "rb") as f:
            return f.read()


class FsspecFileSystem(FileSystem):
    """A FileSystem over any fsspec implementation (one instance per fsspec filesystem)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self._local = "file" in _protocols(fs)

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
            return sorted(FileInfo(self._url(p), int(d.get("size") or 0)) for p, d in infos)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(url) from None
        if info.get("type") != "directory":
            return [FileInfo(self._url(path), int(info.get("size") or 0))]
        found = self.fs.find(path, detail=True)
        prefix = path.rstrip("/") + "/"
        result = []
        for p, d in found.items():
            relative = p[len(prefix) :] if p.startswith(prefix) else p
            if any(part[:1] in ("_", ".") for part in relative.split("/")):
                continue
            if d.get("type") == "directory":
                continue
            result.append(FileInfo(self._url(p), int(d.get("size") or 0)))
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


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def join(base: str, *parts: str) -> str:
    """Join URL path parts with ``/`` (for every protocol, local included)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


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
