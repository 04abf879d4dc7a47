"""The FileSystem contract corral reads and writes through, and the lookup of the one serving a URL.

Every location corral handles is a URL (``/data/in``, ``s3://bucket/in/``, ``gs://…``, ``memory://…``).
The ``corral_filesystem`` hook maps a URL to a FileSystem; the built-in plugins answer for the local
disk (``corral.filesystems.local``) and for any protocol fsspec knows (``corral.filesystems.fsspec``),
so ``s3://`` works once s3fs is installed.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import IO

from corral.errors import CorralError, UsageError
from corral.plugins import get_plugin_manager

#: File name endings read transparently through a decompressor (each such file is one split).
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Those endings, for ``str.endswith``: ``url.endswith(COMPRESSED_ENDINGS)`` is ``compression_of(url) is
#: not None`` in one call (each ending is a dot and letters), for the planner's pass over 20,000 files.
COMPRESSED_ENDINGS = tuple(COMPRESSIONS)


def compression_of(url: str) -> str | None:
    """The compression implied by ``url``'s ending, or None."""
    # every ending is a dot and letters: what follows the last dot is looked up (the planner asks
    # twice per input file, a worker once per split)
    dot = url.rfind(".")
    return COMPRESSIONS.get(url[dot:]) if dot >= 0 else None


def display(url: str) -> str:
    """``url`` as a user would write it (local paths without ``file://``)."""
    return url[len("file://") :] if url.startswith("file://") else url


@dataclass(frozen=True, order=True, slots=True)
class FileInfo:
    url: str
    size: int
    #: what changes when the file does, where the store says: its ETag, generation or mtime
    version: str | None = field(default=None, compare=False)


#: A FileInfo's url and its size: ``map(file_url, files)`` takes them out of 20,000 files in a C loop.
file_url, file_size = attrgetter("url"), attrgetter("size")


@dataclass(frozen=True)
class ProtocolInfo:
    """What ``corral backends`` shows of a URL protocol a filesystem plugin serves."""

    names: tuple[str, ...]  #: the protocol and its aliases, e.g. ("s3", "s3a")
    library: str  #: the distribution that implements it, e.g. "s3fs"
    tested: bool = False  #: whether corral's own tests run jobs on it


class FileSystem(ABC):
    """What corral needs of a storage system: listing, ranged reads, streaming writes, moves."""

    #: How many ``read_range`` calls a map task may have in flight at once, from threads, to read its
    #: small splits ahead (an object store answers many requests at once, each after a round trip);
    #: 0 reads them one after another (a local disk, memory).
    read_ahead: int = 0

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

    def move_many(self, moves: Sequence[tuple[str, str]]) -> None:
        """Move every ``(src, dst)`` pair, replacing each ``dst``; all moves are done when it returns.

        The driver commits a job's part files with one call, so that a store without a rename (S3,
        GCS) can copy server-side and delete in parallel and in bulk, instead of one round trip after
        another. This default moves them one by one, which is right where ``move`` is a cheap rename
        (a local disk, where each move stays atomic).
        """
        for src, dst in moves:
            self.move(src, dst)

    @abstractmethod
    def remove(self, url: str, recursive: bool = False) -> None:
        """Remove a file or, with ``recursive``, everything below a folder/prefix. Missing is fine."""

    @abstractmethod
    def exists(self, url: str) -> bool: ...

    def open_input(self, url: str) -> IO[bytes]:
        """A binary stream of ``url``'s content, decompressed when its name says it is compressed."""
        return decompressing(self.open(url, "rb"), compression_of(url))

    def write_bytes(self, url: str, data: bytes) -> None:
        with self.open(url, "wb") as f:
            f.write(data)

    def read_bytes(self, url: str) -> bytes:
        with self.open(url, "rb") as f:
            return f.read()

    def canonical(self, url: str) -> str:
        """``url`` in one spelling, to compare locations (the input against the output): here without
        repeated or trailing slashes; a local path is resolved (``..``, symlinks)."""
        protocol, sep, path = url.partition("://")
        if not sep:
            return os.path.realpath(url)
        return f"{protocol}://{'/'.join(p for p in path.split('/') if p)}"

    # --- the driver's small files in OUT/_corral (the journal, the lease) ------------------------
    def append(self, url: str, data: bytes) -> bool:
        """Append ``data`` to ``url`` (created if missing) and flush it to stable storage. False where
        the store cannot append (object stores), and the caller writes new objects instead."""
        return False

    def append_pieces(self, url: str, pieces: Iterable[bytes]) -> bool:
        """``append`` of the bytes of ``pieces``, one after another: a store that appends needs never
        hold all of them (the journal's record of 10,000 committed tasks). False as ``append``."""
        return self.append(url, b"".join(pieces))

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


def canonical(url: str) -> str:
    """``url`` in one spelling, as its FileSystem compares locations (``FileSystem.canonical``)."""
    if "://" not in url:
        return os.path.realpath(url)
    return get_filesystem(url).canonical(url)


def decompressing(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    """A binary stream of what ``raw`` holds compressed with ``compression`` (None: ``raw`` itself)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(raw)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def join(base: str, *parts: str) -> str:
    """Join URL path parts with ``/`` (for every protocol, local included)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def remove_quietly(url: str, recursive: bool = False) -> None:
    """Remove ``url`` (a folder of part files too, with ``recursive``) where failing to is harmless: a
    leftover nothing reads (an uncommitted attempt, a payload passed by reference). A failure is
    logged at debug level, never raised."""
    try:
        get_filesystem(url).remove(url, recursive=recursive)
    except OSError as exc:
        logging.getLogger("corral").debug("could not remove %s: %s", url, exc)


#: Exceptions that are a bug in whoever raised them, never a store's answer.
_BUGS = (ArithmeticError, AssertionError, AttributeError, LookupError, NameError, TypeError)


def store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a store's failure (no credentials, unreachable, access denied, no such bucket)
    rather than a bug: an OSError, or an error of the store's own library (botocore, aiohttp, google-auth),
    which are no OSError."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, (CorralError, *_BUGS))


def store_reason(exc: BaseException) -> str:
    """Why a store failed, in a few words (``Unable to locate credentials``, ``Access Denied``); a library's
    own OSError (aiohttp's) says more than its strerror (the host it could not reach)."""
    if isinstance(exc, OSError) and exc.strerror and type(exc).__module__ == "builtins":
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """A store's failure inside the block becomes one line, ``doing: reason`` (a UsageError, exit 2): the
    place named in ``doing`` cannot be used as configured. A bug's exception goes through as it is."""
    try:
        yield
    except Exception as exc:
        if not store_failure(exc):
            raise
        raise UsageError(f"{doing}: {store_reason(exc)}") from None


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a disk (or a store's quota) is full: ENOSPC, or EDQUOT."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def writing(path: str | None, what: str | None = None) -> Iterator[None]:
    """A full disk met in the block names ``path`` (a write's OSError names no file), the file written
    or the folder of temporary files; ``what`` says it in words (the worker's message reads it)."""
    try:
        yield
    except OSError as exc:
        if path and disk_full(exc) and not exc.filename:
            exc.filename = display(path)
            exc.corral_writing = what or display(path)  # type: ignore[attr-defined]
        raise


def get_filesystem(url: str) -> FileSystem:
    """The FileSystem a plugin provides for ``url``; a UsageError naming the URL if none does."""
    fs = get_plugin_manager().hook.corral_filesystem(url=url)
    if fs is None:
        raise UsageError(f"no filesystem for {url!r}: install the fsspec implementation of its protocol")
    return fs
