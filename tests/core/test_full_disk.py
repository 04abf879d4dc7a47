"""A full disk (OUT, the spill folder, or OUT behind a --work-dir on another disk) is one line naming
the path and saying the disk is full; a task's is retried once, not --retries times; the driver's own
write is not retried. The disk is a real tmpfs of 128 KB, mounted in a user and mount namespace of the
run's own (``unshare``), so that no root is needed and nothing of the machine's is touched."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.requirements import unavailable

from . import jobs
from .util import clean_env, corral_command

JOB = f"{jobs.__file__}:Kilobytes"


def _on_small_disk(disk: Path, *argv: object, env: dict[str, str] | None = None,
                   then: str = "") -> subprocess.CompletedProcess:
    """``corral ARGV`` with a 128 KB tmpfs mounted on ``disk`` (seen by it alone); ``then`` runs after it
    in the same namespace (the tmpfs goes with it)."""
    disk.mkdir(exist_ok=True)
    command = " ".join(shlex.quote(str(a)) for a in (corral_command(), *argv))
    script = f"mount -t tmpfs -o size=128k tmpfs {shlex.quote(str(disk))} || exit 99; {command}; code=$?; {then} " \
             "exit $code"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, env=env or clean_env(), timeout=120)
    if done.returncode == 99 or "unshare:" in done.stderr:
        unavailable(f"cannot mount a small tmpfs in a namespace of its own: {done.stderr.strip()}")
    return done


@pytest.fixture
def big_input(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{n}\n" for n in range(600)))  # 600 KB of output
    return path


def test_a_full_output_disk_names_the_file_and_is_retried_once(tmp_path, big_input):
    out = tmp_path / "disk" / "out"
    done = _on_small_disk(tmp_path / "disk", "run", JOB, big_input, "--out", out, "--backend", "processes")
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(
        rf"corral: job failed: task map-0000 attempt 2: the disk is full: no space left on device writing "
        rf"{re.escape(str(out))}/_corral/work/\w+-\w+/stage-0/map-0000\.a2-\w+\.bin\n", done.stderr), done.stderr


def test_a_full_spill_folder_names_it_and_the_setting(tmp_path, big_input):
    spill = tmp_path / "spill"
    done = _on_small_disk(spill, "run", JOB, big_input, "--out", tmp_path / "out", "--backend", "threads",
                          "--memory-budget", "256KB", env=clean_env(CORRAL_SPILL_DIR=str(spill)))
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"corral: job failed: task map-0000 attempt 2: the disk is full: no space left on device "
                           f"writing spill files in {spill} (CORRAL_SPILL_DIR)\n"
                           f"  while reading {big_input} bytes 0 to {big_input.stat().st_size}\n")


def test_the_drivers_own_write_to_a_full_disk_is_one_line(tmp_path, big_input):
    """The tasks write to a --work-dir on another disk; the commit copies their output into OUT."""
    out = tmp_path / "disk" / "out"
    done = _on_small_disk(tmp_path / "disk", "run", JOB, big_input, "--out", out, "--work-dir", tmp_path / "work",
                          "--backend", "threads")
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"corral: job failed: the disk is full: no space left on device writing {out}/part-00000\n"


def test_a_work_dir_on_another_disk_than_the_output_commits(tmp_path):
    """The commit's renames cross the disks: a copy next to the part file, then a rename."""
    (tmp_path / "in.txt").write_text("b a b\n")
    out = tmp_path / "disk" / "out"
    done = _on_small_disk(tmp_path / "disk", "run", JOB, tmp_path / "in.txt", "--out", out, "--work-dir",
                          tmp_path / "work", "--backend", "threads", "-q", then=f"ls -A {out}; cat {out}/part-*;")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "_SUCCESS\n_corral\npart-00000\nb a b\t" + "x" * 1000 + "\n"
