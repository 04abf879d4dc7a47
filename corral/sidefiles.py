"""Side files (Hadoop's distributed cache, mrjob's ``--files``): read-only files shipped to every task.

A job lists them in ``files`` (paths relative to the job's file) and ``--file PATH`` adds more; a task
finds each with ``self.file_path(name)``. The driver resolves them before anything runs (a missing one
is a usage error naming it) and puts their name, size and content hash in every task's payload.

Where a task finds a file, in this order:

1. inside the deployment package (``corral_files/<hash>/<name>``), where remote backends put the
   files of up to ``PACKAGE_LIMIT`` bytes;
2. at its own path, when that path holds it: local backends use the file in place;
3. in the working folder, at ``<work root>/_files/<sha256>/<name>``, where remote backends upload the
   larger files once per content hash: the task downloads it to local disk (``/tmp`` on a function)
   once per process, so once per warm container, not once per task.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.errors import UsageError
from corral.job import listed

MiB = 1 << 20
#: Side files up to this size go inside a remote backend's deployment package; larger ones go
#: through the working folder.
PACKAGE_LIMIT = 4 * MiB
PACKAGE_FOLDER = "corral_files"
#: The folder beside ``corral`` in a deployment package (a function's code folder).
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_COPY_BLOCK = 8 * MiB


@dataclass(frozen=True)
class SideFile:
    """One side file: its name (what ``file_path`` takes), where it is on the driver's machine, its size
    and its content's sha256, and the path as the user listed it (``file_path`` takes that too)."""

    name: str
    path: str
    size: int
    sha256: str
    listed: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideFile:
        return cls(data["name"], data["path"], int(data["size"]), data["sha256"], data.get("listed", data["name"]))

    @property
    def packaged(self) -> bool:
        """Whether a remote backend ships it inside the deployment package."""
        return self.size <= PACKAGE_LIMIT

    @property
    def package_path(self) -> str:
        return f"{PACKAGE_FOLDER}/{self.sha256[:16]}/{self.name}"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _job_folder(job_class: type) -> str:
    module = sys.modules.get(job_class.__module__)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()


def side_files(job_class: type, extra: Sequence[str] = ()) -> tuple[SideFile, ...]:
    """The job's side files: its ``files`` (relative to its file), then ``extra`` (``--file``, relative
    to the current folder), hashed. A UsageError names a file that is missing, a folder or unreadable,
    and two different files of one name (``file_path`` could not tell them apart)."""
    folder = _job_folder(job_class)
    wanted = [(entry, os.path.join(folder, entry), f"in {job_class.__qualname__}.files, relative to {folder}")
              for entry in listed(job_class, "files", "paths")]
    wanted += [(str(entry), os.path.abspath(entry), "given with --file") for entry in extra]
    found: dict[str, SideFile] = {}
    for entry, path, where in wanted:
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise UsageError(f"side file not found: {entry} ({where})")
        if os.path.isdir(path):
            raise UsageError(f"side file {entry} is a folder ({where}): list the files in it")
        try:
            digest = _sha256(path)
        except OSError as exc:
            raise UsageError(f"cannot read side file {entry} ({where}): {exc.strerror or exc}") from None
        name = os.path.basename(path)
        known = found.get(name)
        if known is not None:
            if os.path.realpath(known.path) == os.path.realpath(path):
                continue
            raise UsageError(f"two side files are named {name}: {known.listed} and {entry}; file_path({name!r}) "
                             "could not tell them apart (rename one)")
        found[name] = SideFile(name, path, os.path.getsize(path), digest, entry)
    return tuple(found.values())


def work_url(work_root: str, side_file: SideFile) -> str:
    """Where remote backends upload a side file that does not go in the package (by content hash)."""
    return f"{work_root.rstrip('/')}/_files/{side_file.sha256}/{side_file.name}"


def package_files(files: Sequence[SideFile]) -> dict[str, bytes]:
    """The side files that go inside a deployment package, by their path in it."""
    return {f.package_path: Path(f.path).read_bytes() for f in files if f.packaged}


def check_room(files: Sequence[SideFile], tmp_mb: int, option: str = "--ephemeral-storage",
               room: str = "ephemeral storage") -> None:
    """The side files a function downloads must fit in the ``tmp_mb`` MB its ``/tmp`` has for them (a
    UsageError naming them, the sizes, what the room is and the option to raise, before anything is
    deployed)."""
    downloaded = [f for f in files if not f.packaged]
    total = sum(f.size for f in downloaded)
    if total > tmp_mb * MiB:
        names = ", ".join(f"{f.name} ({f.size / MiB:.1f} MB)" for f in downloaded)
        raise UsageError(f"the side files downloaded to each function's /tmp need {total / MiB:.1f} MB, more than "
                         f"its {tmp_mb} MB of {room} ({option}): {names}")


def upload(files: Sequence[SideFile], work_root: str) -> list[str]:
    """Upload the side files that do not go in the package to ``work_root`` (each content hash once:
    one already there with its size is left as it is); the URLs uploaded."""
    from corral.fs import get_filesystem

    uploaded = []
    for f in files:
        if f.packaged:
            continue
        url = work_url(work_root, f)
        fs = get_filesystem(url)
        try:
            if [info.size for info in fs.expand(url)] == [f.size]:
                continue  # uploaded before (by an earlier run sharing the working folder)
        except (FileNotFoundError, OSError):
            pass
        local = "://" not in url or url.startswith("file://")
        # an object store's PUT appears whole; on a disk, a run sharing the folder must not see half a file
        target = f"{url}.{os.getpid()}-{threading.get_ident()}.part" if local else url
        with open(f.path, "rb") as src, fs.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
        if local:
            fs.move(target, url)
        uploaded.append(url)
    return uploaded


# --- in the task ------------------------------------------------------------------------------------

_lock = threading.Lock()
_resolved: dict[str, str] = {}  # content hash -> local path, for this process (a warm container)


def download_dir() -> str:
    """Where downloaded side files go: ``CORRAL_SIDE_FILE_DIR``, else ``<temp>/corral-files``."""
    return os.environ.get("CORRAL_SIDE_FILE_DIR") or os.path.join(tempfile.gettempdir(), "corral-files")


def _holds(path: str, size: int) -> bool:
    try:
        return os.path.isfile(path) and os.path.getsize(path) == size
    except OSError:
        return False


def _download(f: SideFile, url: str) -> tuple[str, bool]:
    """The local copy of ``f`` (downloading it from ``url`` unless this machine has it), and whether it
    was downloaded now."""
    from corral.fs import get_filesystem

    folder = os.path.join(download_dir(), f.sha256)
    target = os.path.join(folder, f.name)
    if _holds(target, f.size):  # another process of this container got it already
        return target, False
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < f.size:
        raise OSError(f"side file {f.name} ({f.size / MiB:.1f} MB) does not fit in {download_dir()}: "
                      f"{free / MiB:.1f} MB free (raise the function's ephemeral storage)")
    partial = f"{target}.{os.getpid()}-{threading.get_ident()}.part"
    try:
        with get_filesystem(url).open(url, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"side file {f.name} is not where it was uploaded ({url})") from None
    except OSError as exc:
        if os.path.exists(partial):
            os.remove(partial)
        if exc.errno == 28:  # ENOSPC
            raise OSError(f"side file {f.name} ({f.size / MiB:.1f} MB) does not fit in {download_dir()}: no space "
                          "left (raise the function's ephemeral storage)") from None
        raise
    if os.path.getsize(partial) != f.size:
        os.remove(partial)
        raise OSError(f"side file {f.name}: downloaded {url}, but it does not hold the {f.size} bytes shipped")
    os.replace(partial, target)
    return target, True


def local_paths(entries: Sequence[dict[str, Any]]) -> tuple[dict[str, str], int]:
    """For a task's payload entries: ``{name and listed path: local path}`` and how many files this
    call downloaded (0 once the process has them)."""
    paths: dict[str, str] = {}
    downloads = 0
    for entry in entries:
        f = SideFile.from_json(entry)
        with _lock:
            path = _resolved.get(f.sha256)
            if path is None or not _holds(path, f.size):
                packaged = str(_PACKAGE_ROOT / f.package_path)
                if _holds(packaged, f.size):
                    path = packaged
                elif _holds(f.path, f.size):
                    path = f.path
                elif entry.get("url"):
                    path, downloaded = _download(f, entry["url"])
                    downloads += downloaded
                else:
                    raise FileNotFoundError(f"side file {f.name}: not found at {f.path}, nor shipped with the job")
                _resolved[f.sha256] = path
        paths[f.name] = paths[f.listed] = path
    return paths, downloads


def find_side_file(job: Any, name: str) -> str:
    """``Job.file_path``: the local path of the side file ``name``. Outside a task (in the driver, or a
    test calling the job's methods), the job's own ``files`` in place."""
    paths = job._side_files
    if paths is None:
        paths = {}
        for f in side_files(type(job)):
            paths[f.name] = paths[f.listed] = f.path
        job._side_files = paths
    path = paths.get(name)
    if path is None:
        shipped = ", ".join(sorted({os.path.basename(p) for p in paths.values()})) or "none"
        raise LookupError(f"no side file named {name!r} (this job's side files: {shipped}; list it in the "
                          "Job's files or pass --file PATH)")
    return path
