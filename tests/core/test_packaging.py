"""corral.packaging: reproducible zips of corral, the job, its local modules and Linux wheels (what every
remote backend deploys; the Lambda backend's own use of it is in tests/lambda/test_lambda_packaging.py)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import corral
from corral.packaging import local_modules, location_requirements, make_zip, runtime_requirements
from tests.packaging_project import JOB, make_project, source


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_local_modules_follow_imports_but_not_stdlib_site_packages_or_corral(project, isolated):
    found = local_modules(source(project).ref)
    assert sorted(found) == [
        "helpers.py", "myjob.py", "pkg/__init__.py", "pkg/deep/__init__.py", "pkg/deep/leaf.py",
        "pkg/other.py", "pkg/sub.py",
    ]
    assert all(path.is_file() for path in found.values())


def test_a_dotted_job_module_ships_its_packages(tmp_path, isolated):
    (tmp_path / "app" / "jobs").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "jobs" / "__init__.py").write_text("")
    (tmp_path / "app" / "util.py").write_text("X = 1\n")
    (tmp_path / "app" / "jobs" / "wc.py").write_text("from app import util\nfrom .. import util as u2\n")
    ref = {"module": "app.jobs.wc", "class": "WC", "path": str(tmp_path / "app" / "jobs" / "wc.py")}
    assert sorted(local_modules(ref)) == ["app/__init__.py", "app/jobs/__init__.py", "app/jobs/wc.py", "app/util.py"]


def test_package_is_reproducible_and_complete(project, isolated):
    first = corral.build_package(source(project), {"corral_lambda/handler.py": b"# handler\n"})
    second = corral.build_package(source(project), {"corral_lambda/handler.py": b"# handler\n"})
    assert first.zip_bytes == second.zip_bytes
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    files = set(first.files)
    assert {"myjob.py", "helpers.py", "pkg/sub.py", "pkg/deep/leaf.py", "corral_lambda/handler.py"} <= files
    assert {"corral/__init__.py", "corral/worker.py", "corral/executors/local.py"} <= files
    assert not any(f.startswith(("pytest/", "_pytest/")) or f in ("unused.py", "json.py") for f in files)
    # every module with its bytecode for the target Python (this one), checked against the source's hash
    tag = sys.implementation.cache_tag
    for name in ("myjob.py", "pkg/deep/leaf.py", "corral/worker.py", "msgpack/__init__.py"):
        folder, _, stem = name.rpartition("/")
        assert f"{folder + '/' if folder else ''}__pycache__/{stem[:-3]}.{tag}.pyc" in files, name
    # corral's runtime dependencies, as Linux wheels for the target
    for dist in ("msgpack", "pluggy", "fsspec"):
        assert f"{dist}/__init__.py" in files
    assert any(f.startswith("msgpack/") and f.endswith("x86_64-linux-gnu.so") for f in files)
    assert "deflate/_deflate.abi3.so" in files  # libdeflate, for small gzip files (an optional one, installed here)
    archive = zipfile.ZipFile(io.BytesIO(first.zip_bytes))
    assert [i.filename for i in archive.infolist()] == sorted(files)
    for info in archive.infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644
    assert archive.read("helpers.py") == (project / "helpers.py").read_bytes()


_IMPORT_COUNTING_COMPILES = """
import importlib.machinery, json, sys
root = sys.argv[1]
compiled = []
original = importlib.machinery.SourceFileLoader.source_to_code
def counting(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = counting
sys.path.insert(0, root)
import corral.worker, corral.remote, fsspec, msgpack, pluggy, helpers, pkg.sub, pkg.deep.leaf
print(json.dumps({"compiled": [p for p in compiled if p.startswith(root)],
                  "loaded": sorted(m.__file__ for m in list(sys.modules.values())
                                   if (getattr(m, "__file__", None) or "").startswith(root))}))
"""


def test_a_cold_start_imports_the_package_from_its_bytecode(project, isolated, tmp_path):
    """Unzipped into a read-only folder (as Lambda's /var/task), the package's modules import without
    being compiled: Python would otherwise compile corral, fsspec, s3fs, botocore... on every cold start,
    seconds of billed CPU at a small function's share of a vCPU."""
    import json
    import os
    import stat

    package = corral.build_package(source(project))
    root = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(package.zip_bytes)).extractall(root)
    for folder, _, names in os.walk(root):
        for name in names:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _IMPORT_COUNTING_COMPILES, str(root)],
                              capture_output=True, text=True, timeout=120)
    finally:
        for folder, _, _ in os.walk(root):
            os.chmod(folder, stat.S_IRWXU)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert len(result["loaded"]) > 30 and any(p.endswith("/helpers.py") for p in result["loaded"])
    assert result["compiled"] == []


def test_bytecode_is_only_for_the_python_that_compiled_it():
    from corral.packaging import _bytecode_tag

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert _bytecode_tag(here) == sys.implementation.cache_tag
    assert _bytecode_tag(f"{sys.version_info.major}.{sys.version_info.minor + 1}") is None


def test_hash_follows_the_code(project, isolated):
    before = corral.build_package(source(project))
    helper = project / "helpers.py"
    original = helper.read_text()
    helper.write_text(original + "# changed\n")
    changed = corral.build_package(source(project))
    assert changed.sha256 != before.sha256
    helper.write_text(original)
    assert corral.build_package(source(project)).sha256 == before.sha256
    (project / "myjob.py").write_text(JOB + "\n# the job changed\n")
    assert corral.build_package(source(project)).sha256 != before.sha256


def test_runtime_requirements_are_pinned_to_what_runs_here():
    import importlib.metadata

    pinned = runtime_requirements()
    assert f"msgpack=={importlib.metadata.version('msgpack')}" in pinned
    assert f"fsspec=={importlib.metadata.version('fsspec')}" in pinned
    assert f"deflate=={importlib.metadata.version('deflate')}" in pinned  # a remote worker inflates with it too


def test_location_requirements():
    assert location_requirements(["/data/in", "file:///x", "memory://y"]) == []
    pytest.importorskip("s3fs")
    (s3,) = location_requirements(["s3://bucket/in/", "s3://bucket/out"])
    assert s3.startswith("s3fs==")


def test_make_zip_does_not_depend_on_insertion_order():
    a = make_zip({"b.py": b"2", "a.py": b"1"})
    b = make_zip({"a.py": b"1", "b.py": b"2"})
    assert a.zip_bytes == b.zip_bytes and a.files == ("a.py", "b.py")


def test_a_handler_file_cannot_replace_corral(project, isolated):
    with pytest.raises(corral.PackagingError, match=r"corral/worker\.py"):
        corral.build_package(source(project), {"corral/worker.py": b""})


@pytest.mark.slow
def test_pure_python_requirement_without_a_wheel_is_built_here(project, isolated, tmp_path):
    lib = tmp_path / "purelib"
    lib.mkdir()
    (lib / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "corral-test-purelib"\nversion = "1.0"\n'
        '[tool.setuptools]\npy-modules = ["corral_test_purelib"]\n'
    )
    (lib / "corral_test_purelib.py").write_text("VALUE = 42\n")
    package = corral.build_package(source(project, (str(lib),)), cache_dir=tmp_path / "cache")
    assert "corral_test_purelib.py" in package.files


def test_syntax_newer_than_the_runtime_is_refused(tmp_path):
    from corral.packaging import _check_syntax

    job = tmp_path / "job.py"
    source_text = b"match command:\n    case 'go':\n        pass\n"
    _check_syntax(job, source_text, "3.11")  # this Python and newer: fine
    with pytest.raises(corral.PackagingError, match=r"job\.py:\d+: .*Python 3\.9 \(the function's runtime\)"):
        _check_syntax(job, source_text, "3.9")  # (a runtime corral refuses anyway; the check is generic)


def test_a_requirements_file(tmp_path):
    from corral.driver import read_requirements

    path = tmp_path / "requirements.txt"
    path.write_text("# pinned\nsix==1.16.0\n\nmarkupsafe>=2  # compiled\n")
    assert read_requirements(str(path)) == ["six==1.16.0", "markupsafe>=2"]
    path.write_text("-r other.txt\n")
    with pytest.raises(corral.UsageError, match="line 1: pip options such as -r are not supported"):
        read_requirements(str(path))
    with pytest.raises(corral.UsageError, match="invalid value for --requirements: cannot read"):
        read_requirements(str(tmp_path / "missing.txt"))
