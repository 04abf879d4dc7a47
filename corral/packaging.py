"""Deployment packages: one reproducible zip holding everything a remote worker needs to run a job.

The zip holds, at its root (a Lambda or GCF function's code folder):

- the third-party packages: corral's own runtime dependencies (msgpack, pluggy, fsspec; zstandard and
  deflate when installed here; pinned to the versions installed here) and the job's declared requirements,
  installed with ``pip install --target`` for the *target* platform (Linux wheels), cached by
  requirement set under ``~/.cache/corral/wheels`` so that repeat builds are instant;
- the ``corral`` package itself (its source files);
- the job module and the local modules it imports (found by walking its ``import`` statements; only
  modules whose files live under the job's folder or the current folder, never the standard library,
  site-packages or corral itself);
- the files a backend adds (its handler module);
- when the target runs this Python version, every module's bytecode (``compiled``), so that a cold
  start does not compile them all again in a read-only code folder.

Same inputs give the same bytes (sorted entries, fixed timestamps and permissions), hence the same
content hash: a backend compares it with the deployed one and skips uploads of unchanged code.

The target is one or more pip platform tags (``manylinux2014_x86_64``, ``manylinux_2_34_aarch64``…) and
a Python version, whatever the host's: wheels are chosen for the target, never for this machine. When the
target Python is older than the host's, the job's local modules must parse as the target's Python
(``ast`` with ``feature_version``): syntax newer than the target is refused here rather than failing on
the first invocation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.executor import JobSource
from corral.sidefiles import package_files

# ast, io, shutil, site, subprocess, tempfile and zipfile are imported where used: every worker imports
# corral, and only the driver builds packages.

#: The default target: AWS Lambda's python3.11 runtime (and the emulator's Debian bookworm image).
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_PYTHON_VERSION = "3.11"
#: What a worker imports besides the standard library (optional: zstandard only for .zst input; deflate,
#: libdeflate, inflates small gzip files faster, else zlib does).
RUNTIME_DEPENDENCIES = ("msgpack", "pluggy", "fsspec")
OPTIONAL_RUNTIME_DEPENDENCIES = ("zstandard", "deflate")

#: Built zips kept in the cache (``~/.cache/corral/packages``).
ZIP_CACHE_SIZE = 32

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_CORRAL_DIR = Path(__file__).resolve().parent


class PackagingError(CorralError):
    """The package cannot be built (a requirement without a wheel for the target, an unreadable job
    module): a configuration error, exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Package:
    """A built deployment package: the zip's bytes, their sha256 (hex) and the paths it holds."""

    zip_bytes: bytes
    sha256: str
    files: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.zip_bytes)

    def unzipped_sizes(self) -> dict[str, int]:
        """Bytes once unzipped, by top-level entry (``numpy``, ``numpy.libs``, ``myjob.py``…)."""
        import io
        import zipfile

        sizes: dict[str, int] = {}
        with zipfile.ZipFile(io.BytesIO(self.zip_bytes)) as archive:
            for info in archive.infolist():
                top = info.filename.split("/", 1)[0]
                sizes[top] = sizes.get(top, 0) + info.file_size
        return sizes

    @property
    def unzipped_size(self) -> int:
        return sum(self.unzipped_sizes().values())

    def largest(self, count: int = 5) -> list[tuple[str, int]]:
        """The ``count`` largest top-level entries once unzipped: ``[(name, bytes), ...]``."""
        return sorted(self.unzipped_sizes().items(), key=lambda item: (-item[1], item[0]))[:count]


def manylinux_platforms(machine: str, glibc_minor: int) -> list[str]:
    """The pip platform tags of wheels that run on a Linux with glibc 2.``glibc_minor`` on ``machine``
    (``x86_64``, ``aarch64``), newest first: ``manylinux_2_N`` down to 2_18 (pip does not expand those),
    then ``manylinux2014`` (2_17, which pip expands to manylinux2010 and manylinux1).

    A function's runtime decides them (its OS's glibc), not this machine: Lambda's python3.11 runs on
    glibc 2.26, Cloud Functions' python312 on Ubuntu 22.04's 2.35.
    """
    return [*(f"manylinux_2_{n}_{machine}" for n in range(glibc_minor, 17, -1)), f"manylinux2014_{machine}"]


def build_package(
    job: JobSource,
    handler_files: Mapping[str, bytes] | None = None,
    requirements: Sequence[str] = (),
    platform: str | Sequence[str] = DEFAULT_PLATFORM,
    python_version: str = DEFAULT_PYTHON_VERSION,
    cache_dir: str | os.PathLike | None = None,
) -> Package:
    """Build the deployment package of ``job`` for ``platform`` / ``python_version``.

    ``platform`` is a pip platform tag or several (wheels for any of them are accepted).

    ``handler_files`` maps paths inside the zip to contents (a backend's handler module, e.g.
    ``{"corral_lambda/handler.py": b"..."}``). ``requirements`` are extra requirements on top of the
    job's (``JobSource.requirements``) and of the filesystems its locations need (``s3://`` -> s3fs,
    see ``location_requirements``). Raises ``PackagingError`` naming the requirement when one has no
    wheel for the target and is not pure Python, or when a local module's syntax is newer than the target.
    """
    files: dict[str, bytes] = {}
    wanted = [*runtime_requirements(), *location_requirements(job.locations), *job.requirements, *requirements]
    site_dir = install_requirements(wanted, platform, python_version, cache_dir)
    files.update(_prune(_tree(site_dir)))
    files.update(_tree(_CORRAL_DIR, prefix="corral/", suffixes=(".py", ".typed")))
    for arcname, path in local_modules(job.ref).items():
        files[arcname] = path.read_bytes()
        if arcname.endswith(".py"):
            _check_syntax(path, files[arcname], python_version)
    files.update(package_files(job.files))  # the small side files (the others go through the working folder)
    for arcname, data in (handler_files or {}).items():
        arcname = arcname.replace(os.sep, "/").lstrip("/")
        if arcname.startswith("corral/"):
            raise PackagingError(f"a handler file cannot replace corral's own {arcname}")
        files[arcname] = bytes(data)
    return _cached_zip(files, cache_dir, _bytecode_tag(python_version))


def _check_syntax(path: Path, source: bytes, python_version: str) -> None:
    """Refuse a local module whose syntax the target Python cannot parse (when it is older than ours)."""
    import ast

    major, minor = (int(part) for part in python_version.split(".")[:2])
    if (major, minor) >= sys.version_info[:2]:
        return  # the code runs here, on this Python or an older one: newer ones parse it too
    try:
        ast.parse(source, filename=str(path), feature_version=(major, minor))
    except SyntaxError as exc:
        raise PackagingError(
            f"{path}:{exc.lineno}: this module uses syntax that Python {python_version} (the function's "
            f"runtime) cannot run: {exc.msg}"
        ) from None


def _trim(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently written zips of ``folder``."""
    zips = sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in zips[keep:]:
        old.unlink(missing_ok=True)


def _cached_zip(
    files: Mapping[str, bytes], cache_dir: str | os.PathLike | None, bytecode: str | None = None
) -> Package:
    """``make_zip(files)`` (with their bytecode for the interpreter ``bytecode`` names, ``compiled``),
    reusing the zip of identical files built before (compressing and compiling are the slow parts)."""
    digest = hashlib.sha256(f"bytecode:{bytecode}\0".encode() if bytecode else b"")
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    path = cache_root(cache_dir) / "packages" / f"{digest.hexdigest()[:32]}.zip"
    try:
        data = path.read_bytes()
    except OSError:
        package = make_zip({**files, **compiled(files)} if bytecode else files)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}-{os.urandom(4).hex()}.tmp")
            partial.write_bytes(package.zip_bytes)
            os.replace(partial, path)
            _trim(path.parent, keep=ZIP_CACHE_SIZE)
        except OSError:  # a cache we cannot write is no reason to fail
            pass
        return package
    if not bytecode:
        return Package(data, hashlib.sha256(data).hexdigest(), tuple(sorted(files)))
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the bytecode's names too
        return Package(data, hashlib.sha256(data).hexdigest(), tuple(archive.namelist()))


def _bytecode_tag(python_version: str) -> str | None:
    """This interpreter's bytecode tag (``cpython-311``) when the target runs the same Python, else None:
    bytecode is only valid for the interpreter version that compiled it."""
    if sys.implementation.name != "cpython" or sys.implementation.cache_tag is None:
        return None
    if python_version.split(".")[:2] != [str(v) for v in sys.version_info[:2]]:
        return None
    return sys.implementation.cache_tag


def compiled(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The bytecode of every ``.py`` file of ``files`` at ``__pycache__/NAME.TAG.pyc``, as Python would
    write it, checked against the source's hash (PEP 552) rather than its timestamp.

    Why: a function's code folder is read-only (Lambda's /var/task), so without it Python compiles every
    module it imports from source on every cold start: corral, fsspec, s3fs, aiobotocore, botocore, aiohttp
    are ~2 s of CPU at a 512 MB function's share of a vCPU, billed. Checked hash-based .pyc files
    are used wherever the source is unchanged, whatever the unzipped files' timestamps, and the bytes
    are the same for the same source on the same Python (the zip stays reproducible). A file that does
    not compile here is left without (Python then reports its error where it is imported, as before).
    """
    import importlib.util
    import warnings
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]

    out: dict[str, bytes] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a library's invalid escape sequences are its own business
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = files[name]
            try:
                code = compile(source, name, "exec", dont_inherit=True)
            except (SyntaxError, ValueError):
                continue
            pyc = importlib.util.cache_from_source(name)
            out[pyc.replace(os.sep, "/")] = _code_to_hash_pyc(code, importlib.util.source_hash(source), True)
    return out


def make_zip(files: Mapping[str, bytes]) -> Package:
    """A reproducible zip of ``files`` (path -> bytes): sorted, fixed time, fixed permissions."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system = 3  # Unix, so that the permissions below are honoured when unzipping
            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name], compresslevel=6)
    data = buffer.getvalue()
    return Package(data, hashlib.sha256(data).hexdigest(), tuple(sorted(files)))


# --- third-party requirements ---------------------------------------------------------------------
def runtime_requirements() -> list[str]:
    """corral's runtime dependencies, pinned to the versions installed here (optional ones if present)."""
    pinned = []
    for name in (*RUNTIME_DEPENDENCIES, *OPTIONAL_RUNTIME_DEPENDENCIES):
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name in RUNTIME_DEPENDENCIES:
                pinned.append(name)
    return pinned


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$CORRAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/corral`` (``~/.cache/corral``)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("CORRAL_CACHE_DIR"):
        return Path(os.environ["CORRAL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corral"


def install_requirements(
    requirements: Iterable[str],
    platform: str | Sequence[str] = DEFAULT_PLATFORM,
    python_version: str = DEFAULT_PYTHON_VERSION,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A folder holding ``requirements`` installed for the target (cached by requirement set).

    Binary wheels for ``platform`` are preferred; a requirement with only a source distribution is
    built into a wheel here and used if that wheel is pure Python.
    """
    import shutil
    import tempfile

    platforms = [platform] if isinstance(platform, str) else list(platform)
    wanted = sorted({r.strip() for r in requirements if r and r.strip()})
    # a local folder requirement is keyed by its content's state too
    states = [_folder_state(r) for r in wanted if os.path.isdir(r)]
    key = hashlib.sha256("\n".join([*platforms, python_version, *wanted, *states]).encode()).hexdigest()[:24]
    tag = f"{platforms[0]}-cp{python_version.replace('.', '')}"
    target = cache_root(cache_dir) / "wheels" / tag / key
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        site_dir = work / "site"
        if wanted:
            _pip_install(wanted, site_dir, platforms, python_version, work)
        site_dir.mkdir(exist_ok=True)
        (site_dir / ".requirements").write_text("\n".join(wanted) + "\n", encoding="utf-8")
        (site_dir / ".complete").touch()
        try:
            site_dir.rename(target)
        except OSError:  # another build got there first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _folder_state(folder: str) -> str:
    stamps = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not _SKIP_DIRS.intersection(path.parts):
            stat = path.stat()
            stamps.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()


def _pip(args: list[str]) -> Any:
    import subprocess

    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _pip_install(wanted: list[str], dest: Path, platforms: list[str], python_version: str, work: Path) -> None:
    import shutil

    base = [
        "install", "--target", str(dest), "--no-compile", "--no-warn-script-location",
        *[arg for tag in platforms for arg in ("--platform", tag)],
        "--python-version", python_version, "--implementation", "cp", "--only-binary=:all:",
    ]
    done = _pip([*base, *wanted])
    if done.returncode == 0:
        return
    # Fallback for requirements published only as source (or given as a local folder): build wheels
    # here, keep the pure-Python ones (they run anywhere) and install those wheels, resolving the
    # other requirements for the target as before.
    local = work / "built-wheels"
    built = _pip(["wheel", "--wheel-dir", str(local), *wanted])
    pure = sorted(str(w) for w in local.glob("*-none-any.whl")) if built.returncode == 0 else []
    named = [r for r in wanted if not _is_location(r)]
    shutil.rmtree(dest, ignore_errors=True)
    retry = _pip([*base, "--find-links", str(local), *named, *pure]) if pure else None
    if retry is None or retry.returncode != 0:
        failed = retry if retry is not None else (built if built.returncode != 0 else done)
        reason = (failed.stderr or done.stderr).strip().splitlines()
        detail = "\n".join(line for line in reason if not line.startswith("WARNING"))[-2000:]
        culprits = _unsatisfied(failed.stderr or "") or _unsatisfied(done.stderr or "") or wanted
        raise PackagingError(
            f"cannot install {', '.join(culprits)} for {platforms[0]} / Python {python_version}: no wheel "
            f"for that platform and Python, and not pure Python:\n{detail}"
        )


def _unsatisfied(pip_stderr: str) -> list[str]:
    """The requirements pip names in "No matching distribution found for X" (and similar) lines."""
    import re

    found = re.findall(r"(?:No matching distribution found for|satisfies the requirement) ([^\s(]+)", pip_stderr)
    return list(dict.fromkeys(found))


def _is_location(requirement: str) -> bool:
    """A requirement naming a folder, an archive or a URL rather than a project on an index."""
    return "://" in requirement or " @ " in requirement or os.path.exists(requirement)


def location_requirements(locations: Iterable[str]) -> list[str]:
    """The fsspec implementations the job's locations need remotely (``s3://`` -> ``s3fs==<here>``).

    Each is the distribution installed here that provides the protocol, pinned to its version here;
    local paths and protocols built into fsspec need nothing.
    """
    from fsspec.registry import known_implementations

    providers = importlib.metadata.packages_distributions()
    wanted: set[str] = set()
    for location in locations:
        protocol = location.split("://", 1)[0] if "://" in location else "file"
        spec = known_implementations.get(protocol)
        if not spec:
            continue
        top = spec["class"].split(".", 1)[0]
        if top == "fsspec":
            continue
        for dist in providers.get(top, [])[:1]:
            try:
                wanted.add(f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                wanted.add(dist)
    return sorted(wanted)


#: Files of wheels that cannot load without a package that is not there: ``{prefix: needed package}``.
#: zstandard's cffi backend (12 MB) needs ``cffi``; its C backend is the one used.
_UNUSABLE = {"zstandard/_cffi.": "cffi/"}


def _prune(files: dict[str, bytes]) -> dict[str, bytes]:
    unusable = [prefix for prefix, needs in _UNUSABLE.items() if not any(n.startswith(needs) for n in files)]
    return {n: d for n, d in files.items() if not n.startswith(tuple(unusable))}


def _tree(root: Path, prefix: str = "", suffixes: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Every file below ``root`` as ``{prefix + relative path: bytes}`` (no caches, no bytecode)."""
    found: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        rel = Path(folder).relative_to(root)
        for name in names:
            if name.endswith((".pyc", ".pyo")) or (name.startswith(".") and rel == Path(".")):
                continue
            if suffixes is not None and not name.endswith(suffixes):
                continue
            arcname = prefix + (rel / name).as_posix()
            found[arcname] = (Path(folder) / name).read_bytes()
    return found


# --- the job's own modules ------------------------------------------------------------------------
def local_modules(ref: Mapping[str, Any]) -> dict[str, Path]:
    """The job module and the local modules it imports, transitively: ``{path in zip: file}``.

    Local means found under the job's import root (the folder its module name resolves from) or the
    current folder, and not in the standard library, site-packages, or corral itself.
    """
    module = ref["module"]
    path = ref.get("path")
    if path:
        job_file = Path(path).resolve()
    else:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not os.path.exists(spec.origin):
            raise PackagingError(f"cannot find the source of job module {module}")
        job_file = Path(spec.origin).resolve()
    if not job_file.is_file():
        raise PackagingError(f"job module {module}: {job_file} is not a file")
    root = job_file.parent
    for _ in range(module.count(".") + (job_file.name == "__init__.py")):
        root = root.parent
    roots = [root]
    cwd = Path.cwd().resolve()
    if cwd != root and not _is_excluded(cwd):
        roots.append(cwd)
    finder = _LocalFinder(roots)
    found: dict[str, Path] = {}
    start = finder.resolve(module)
    if start is None or start[-1][1] != job_file:
        start = [(job_file.relative_to(root).as_posix(), job_file)]
    queue: list[tuple[str, Path]] = []
    for arcname, file in start:
        found[arcname] = file
    queue.append((module, job_file))
    seen = {module}
    while queue:
        name, file = queue.pop()
        for imported in _imports(name, file):
            if imported in seen:
                continue
            seen.add(imported)
            resolved = finder.resolve(imported)
            if not resolved:
                continue
            for arcname, dep in resolved:
                if arcname not in found:
                    found[arcname] = dep
            if resolved[-1][1].suffix == ".py":
                queue.append((imported, resolved[-1][1]))
    return found


def _excluded_prefixes() -> list[Path]:
    import site

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(_CORRAL_DIR)}
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # some virtualenv versions lack it
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        paths.add(user_site)
    return [Path(p).resolve() for p in paths if p]


def _is_excluded(path: Path) -> bool:
    return any(path == prefix or prefix in path.parents for prefix in _excluded_prefixes())


def _imports(module: str, file: Path) -> list[str]:
    """Absolute names of every module ``file`` may import (relative imports resolved)."""
    import ast

    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError, OSError) as exc:
        raise PackagingError(f"cannot read {file}: {exc}") from None
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) or not parts:
                    continue
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            if not base:
                continue
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


class _LocalFinder:
    """Resolves module names to files under the local roots only (without importing anything)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.excluded = _excluded_prefixes()
        self.cache: dict[str, list[tuple[str, Path]] | None] = {}

    def resolve(self, name: str) -> list[tuple[str, Path]] | None:
        """``[(path in zip, file), ...]``: the packages' ``__init__`` files, then the module's file."""
        if name in self.cache:
            return self.cache[name]
        top = name.partition(".")[0]
        result = None
        if top != "corral" and top not in sys.stdlib_module_names and top not in sys.builtin_module_names:
            for root in self.roots:
                result = self._resolve_in(name, root)
                if result is not None:
                    break
        self.cache[name] = result
        return result

    def _resolve_in(self, name: str, root: Path) -> list[tuple[str, Path]] | None:
        search = [str(root)]
        files: list[tuple[str, Path]] = []
        for part in name.split("."):
            try:
                spec = PathFinder.find_spec(part, search)
            except (ImportError, ValueError):
                return None
            if spec is None:
                return None
            if spec.origin and spec.has_location:
                file = Path(spec.origin).resolve()
                if root not in file.parents or any(p == file or p in file.parents for p in self.excluded):
                    return None
                files.append((file.relative_to(root).as_posix(), file))
            if spec.submodule_search_locations is not None:
                search = list(spec.submodule_search_locations)
            else:
                search = []
        if not files:  # a namespace package: nothing to ship by itself
            return None
        return files
