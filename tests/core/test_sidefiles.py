"""Side files on the local backends: ``files`` on the Job (relative to its file) and ``--file``, found with
``self.file_path``; used in place; a missing one is a usage error before anything runs; the download path
remote backends take (once per process)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import corral
from corral import sidefiles

from .util import run_command

JOB = '''
import corral


class Enrich(corral.Job):
    """Each word, with its owner from data/owners.tsv and a suffix from the --file given."""

    files = ["data/owners.tsv"]

    def map_init(self):
        with open(self.file_path("owners.tsv"), encoding="utf-8") as f:
            self.owners = dict(line.rstrip("\\n").split("\\t") for line in f)
        assert self.file_path("data/owners.tsv") == self.file_path("owners.tsv")
        self.suffix = open(self.file_path("suffix.txt"), encoding="utf-8").read().strip()

    def map(self, key, line):
        for word in line.split():
            yield word, f"{self.owners.get(word, '?')}{self.suffix}"
'''


@pytest.fixture
def project(tmp_path) -> Path:
    """A job in its own folder with its side file beside it, run from another folder."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "enrich.py").write_text(textwrap.dedent(JOB))
    (folder / "data" / "owners.tsv").write_text("apple\tana\npear\tpiet\nfig\tfé ✓\n", encoding="utf-8")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "suffix.txt").write_text("!\n")
    (tmp_path / "cwd" / "in.txt").write_text("apple fig\npear plum\n")
    return tmp_path


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_side_files_of_the_job_and_of_file_flags_reach_every_task(project, backend):
    done = run_command("corral", "run", project / "project" / "enrich.py", "in.txt", "--out", "out", "--file",
                       "suffix.txt", "--backend", backend, "--split-size", "10", "-q", cwd=project / "cwd")
    assert (done.returncode, done.stderr) == (0, "")
    parts = sorted((project / "cwd" / "out").glob("part-*"))
    assert len(parts) == 2  # two map tasks, each loaded the files in map_init
    assert "".join(p.read_text(encoding="utf-8") for p in parts) == "apple\tana!\nfig\tfé ✓!\npear\tpiet!\nplum\t?!\n"


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda p: (p / "project" / "data" / "owners.tsv").unlink(), [],
         "side file not found: data/owners.tsv (in Enrich.files, relative to {project}/project)"),
        (lambda p: None, ["--file", "nothere.txt"], "side file not found: nothere.txt (given with --file)"),
        (lambda p: (p / "cwd" / "folder").mkdir(), ["--file", "folder"],
         "side file folder is a folder (given with --file): list the files in it"),
        (lambda p: (p / "cwd" / "owners.tsv").write_text("other\n"), ["--file", "owners.tsv"],
         "two side files are named owners.tsv: data/owners.tsv and owners.tsv; file_path('owners.tsv') could not "
         "tell them apart (rename one)"),
    ],
)
@pytest.mark.parametrize("command", ["run", "deploy"])
def test_a_bad_side_file_is_a_usage_error_before_anything_runs(project, setup, args, message, command):
    setup(project)
    out = ["--out", "out"] if command == "run" else []
    inputs = ["in.txt"] if command == "run" else []
    done = run_command("corral", command, project / "project" / "enrich.py", *inputs, *out, "--file", "suffix.txt",
                       *args, "--backend", "processes", cwd=project / "cwd")
    assert (done.returncode, done.stderr) == (2, f"corral: error: {message.format(project=project)}\n")
    assert not (project / "cwd" / "out").exists()


class AsksForAnother(corral.Job):
    files: list[str] = []

    def map(self, key, line):
        yield line, self.file_path("models.tsv")


def test_file_path_of_a_file_not_shipped_names_what_is(tmp_path):
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "a.tsv").write_text("a\n")
    with pytest.raises(corral.JobFailed) as failed:
        corral.run(AsksForAnother, str(tmp_path / "in.txt"), str(tmp_path / "out"), backend="threads", retries=0,
                   file=[str(tmp_path / "a.tsv")])
    assert str(failed.value).splitlines()[0] == (
        "task map-0000 attempt 1: LookupError: no side file named 'models.tsv' (this job's side files: a.tsv; list "
        "it in the Job's files or pass --file PATH)"
    )


class Listed(corral.Job):
    files = ["test_sidefiles.py"]  # this very file, beside the job's module


def test_file_path_outside_a_task_is_the_listed_file_in_place():
    assert Listed().file_path("test_sidefiles.py") == str(Path(__file__).resolve())


# --- the path of remote backends: packaged, or downloaded once per process -----------------------------


def _entry(tmp_path: Path, name: str, data: bytes) -> tuple[dict, Path]:
    """A payload entry for a side file whose driver-side path does not exist where the task runs."""
    uploaded = tmp_path / "work" / "_files" / name
    uploaded.parent.mkdir(parents=True, exist_ok=True)
    uploaded.write_bytes(data)
    (f,) = sidefiles.side_files(corral.Job, [str(uploaded)])
    entry = {**f.to_json(), "path": str(tmp_path / "on-the-driver" / name), "url": str(uploaded)}
    return entry, uploaded


def test_a_side_file_is_downloaded_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_SIDE_FILE_DIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(sidefiles, "_resolved", {})
    entry, uploaded = _entry(tmp_path, "big.bin", os.urandom(3 << 20))
    first, downloads = sidefiles.local_paths([entry])
    assert downloads == 1
    copy = Path(first["big.bin"])
    assert copy.parent == tmp_path / "tmp" / entry["sha256"] and copy.read_bytes() == uploaded.read_bytes()
    for _ in range(3):  # the next tasks of this process (a warm container) use the copy
        again, downloads = sidefiles.local_paths([entry])
        assert (again, downloads) == (first, 0)
    monkeypatch.setattr(sidefiles, "_resolved", {})  # another process of the same container: on disk already
    assert sidefiles.local_paths([entry]) == (first, 0)


def test_a_side_file_missing_everywhere_fails_the_task_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(sidefiles, "_resolved", {})
    entry, uploaded = _entry(tmp_path, "gone.tsv", b"x\n")
    uploaded.unlink()
    with pytest.raises(FileNotFoundError, match=f"side file gone.tsv is not where it was uploaded \\({uploaded}\\)"):
        sidefiles.local_paths([entry])


def test_side_files_that_do_not_fit_in_tmp_are_refused_before_deploying(tmp_path):
    small = tmp_path / "small.tsv"
    small.write_bytes(b"x" * 1000)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(513 << 20)  # sparse: 513 MB of zeros
    files = sidefiles.side_files(corral.Job, [str(small), str(big)])
    sidefiles.check_room(files[:1], 512)  # packaged files take no room in /tmp
    with pytest.raises(corral.UsageError) as refused:
        sidefiles.check_room(files, 512)
    assert str(refused.value) == ("the side files downloaded to each function's /tmp need 513.0 MB, more than its "
                                  "512 MB of ephemeral storage (--ephemeral-storage): big.bin (513.0 MB)")


def test_a_side_file_changed_between_runs_is_uploaded_and_downloaded_anew(tmp_path, monkeypatch):
    """A shared working folder and a warm process (container) across two runs: the changed file has a new
    content hash, so it is uploaded beside the old one and downloaded again; the unchanged one is not."""
    monkeypatch.setenv("CORRAL_SIDE_FILE_DIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(sidefiles, "_resolved", {})
    path = tmp_path / "lookup.bin"
    work = str(tmp_path / "work")

    def shipped(data: bytes) -> tuple[list[str], dict]:
        path.write_bytes(data)
        (f,) = sidefiles.side_files(corral.Job, [str(path)])
        assert not f.packaged
        entry = {**f.to_json(), "path": str(tmp_path / "on-the-driver" / f.name), "url": sidefiles.work_url(work, f)}
        return sidefiles.upload([f], work), entry

    first = os.urandom(sidefiles.PACKAGE_LIMIT + 1)
    uploaded, old = shipped(first)
    assert uploaded == [old["url"]] and shipped(first)[0] == []  # the same content: not uploaded again
    assert sidefiles.local_paths([old])[1] == 1
    changed = bytes([first[0] ^ 1]) + first[1:]  # the same size, another content
    uploaded, new = shipped(changed)
    assert new["sha256"] != old["sha256"] and uploaded == [new["url"]] != [old["url"]]
    paths, downloads = sidefiles.local_paths([new])
    assert downloads == 1 and Path(paths["lookup.bin"]).read_bytes() == changed
    paths, downloads = sidefiles.local_paths([old])
    assert downloads == 0 and Path(paths["lookup.bin"]).read_bytes() == first


def test_a_symlinked_side_file_ships_under_its_own_name(project):
    """``--file link.tsv`` (a symlink to the job's data/owners.tsv): the link's name finds it, and the same
    file listed again through the link's folder is one side file, not two of one name."""
    (project / "cwd" / "link.tsv").symlink_to(project / "project" / "data" / "owners.tsv")
    (project / "cwd" / "data").symlink_to(project / "project" / "data")
    (f_owners, f_link) = sidefiles.side_files(corral.Job, [str(project / "project" / "data" / "owners.tsv"),
                                                           str(project / "cwd" / "data" / "owners.tsv"),
                                                           str(project / "cwd" / "link.tsv")])
    assert (f_owners.name, f_link.name) == ("owners.tsv", "link.tsv") and f_owners.sha256 == f_link.sha256
    done = run_command("corral", "run", project / "project" / "enrich.py", "in.txt", "--out", "out", "--file",
                       "suffix.txt", "--file", "data/owners.tsv", "--backend", "processes", "-q", cwd=project / "cwd")
    assert (done.returncode, done.stderr) == (0, "")
