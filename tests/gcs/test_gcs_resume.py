"""The journal and the lease on gs:// (gcp-storage-emulator): journal entries are small objects, the
lock is created with ``ifGenerationMatch=0`` (which Google enforces; the emulator does not, so corral
also checks first) and a stale one is replaced by a read then a write (the README says so)."""

from __future__ import annotations

import json
import time

import pytest

import corral
from tests.core import jobs
from tests.core.util import cli

pytestmark = pytest.mark.gcs


def _put_inputs(gcs, bucket: str) -> None:
    for n in range(3):
        gcs.pipe_file(f"{bucket}/in/f{n}.txt", "".join(f"g{(n + i) % 5} gs\n" for i in range(30)).encode())


@pytest.mark.parametrize("backend", ["threads", "processes"])  # processes: workers write, not the driver
def test_a_failed_run_on_gcs_is_resumed_from_its_journal_objects(gcs_emulator, gcs, gcs_bucket, tmp_path, capsys,
                                                                 backend):
    _put_inputs(gcs, gcs_bucket)
    fail = tmp_path / "fail"
    fail.write_text("")
    argv = ["run", f"{jobs.__file__}:FailReduceWhile", f"gs://{gcs_bucket}/in/", "--out", f"gs://{gcs_bucket}/out",
            "--backend", backend, "--map-bin-size", "1", "--reducers", "2", "--retries", "0", "--arg", f"fail={fail}"]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and "reduce failing on purpose" in err
    gcs.invalidate_cache()
    journal = sorted(gcs.find(f"{gcs_bucket}/out/_corral/journal"))
    assert journal and all(p.endswith(".jsonl") for p in journal)
    assert not gcs.exists(f"{gcs_bucket}/out/_corral/lock")

    fail.unlink()
    code, _, err = cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert ": 3 of 5 tasks already committed" in err
    gcs.invalidate_cache()
    lines = sorted(line for p in sorted(gcs.find(f"{gcs_bucket}/out")) if p.rsplit("/", 1)[-1].startswith("part-")
                   for line in gcs.cat_file(p).decode().splitlines())
    assert lines == ["g0\t18", "g1\t18", "g2\t18", "g3\t18", "g4\t18", "gs\t90"]
    assert sorted(gcs.find(f"{gcs_bucket}/out/_corral")) == [f"{gcs_bucket}/out/_corral/manifest.json"]


def test_a_second_run_on_the_same_gcs_output_is_refused(gcs_emulator, gcs, gcs_bucket, capsys):
    _put_inputs(gcs, gcs_bucket)
    holder = {"run_id": "20260101T000000-gcheld", "host": "elsewhere", "pid": 7, "heartbeat": time.time()}
    gcs.pipe_file(f"{gcs_bucket}/out/_corral/lock", json.dumps(holder).encode())
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", f"gs://{gcs_bucket}/in/", "--out",
                       f"gs://{gcs_bucket}/out", "--backend", "threads")
    assert code == 2
    assert "is in use by run 20260101T000000-gcheld on host elsewhere" in err
    holder["heartbeat"] = time.time() - 3600
    gcs.pipe_file(f"{gcs_bucket}/out/_corral/lock", json.dumps(holder).encode())
    manifest = corral.run(jobs.WordCount, f"gs://{gcs_bucket}/in/", f"gs://{gcs_bucket}/out", backend="threads")
    assert manifest["status"] == "succeeded"
    gcs.invalidate_cache()
    assert not gcs.exists(f"{gcs_bucket}/out/_corral/lock")
