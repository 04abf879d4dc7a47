"""The word count on an awkward input (unicode, CRLF, a 2 MB line, .gz, many small files) equals
``collections.Counter`` exactly, on the Cloud Functions code path both ways a user runs it:

- ``--backend gcf --gcf-endpoint URL`` on ``gs://`` data: stood in for are Google's control plane and
  token endpoint (corral-emulator, whose functions run in Docker under functions-framework) and Cloud
  Storage (gcp-storage-emulator, reached from the functions too);
- ``--backend docker --platform gcf`` on local folders: corral starts the emulator itself and mounts
  the folders at the same paths.
"""

from __future__ import annotations

import json

import pytest

from tests.awkward import write_awkward_input
from tests.gcf.conftest import WORDCOUNT, attempts, corral, environment, gcf_flags, manifest_of
from tests.gcs.test_gcs import output_counts, upload
from tests.manifests import committed_once

pytestmark = [pytest.mark.docker, pytest.mark.gcs]


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward") / "in"
    return folder, write_awkward_input(folder)


def check_attempts(manifest: dict, memory: int) -> int:
    """Every task committed once, with its billed time and memory, as the manifest records for Lambda;
    return how many tasks there were."""
    found = committed_once(manifest)  # one per task; no attempt failed
    for task, attempt in found:
        stats = attempt["stats"]
        assert stats["billed_ms"] >= 100 and stats["billed_ms"] % 100 == 0, (task, stats)
        assert 0 < stats["max_memory_used_mb"] < memory and stats["memory_size_mb"] == memory, (task, stats)
        assert isinstance(stats["cold_start"], bool) and stats["duration_ms"] > 0, (task, stats)
    return len(found)


def test_wordcount_on_gs_with_the_gcf_backend_equals_counter(gcf_emulator, key_file, gcs, gcs_bucket, awkward,
                                                           tmp_path):
    folder, expected = awkward
    upload(gcs, folder, f"{gcs_bucket}/in")
    done = corral("run", WORDCOUNT, f"gs://{gcs_bucket}/in/", "--out", f"gs://{gcs_bucket}/out",
                  *gcf_flags(gcf_emulator), "--split-size", "256KB", "--reducers", "3", "--max-concurrency", "4",
                  "-vvv", cwd=tmp_path, env=environment(key_file), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert output_counts(gcs, f"{gcs_bucket}/out") == expected
    manifest = json.loads(gcs.cat_file(f"{gcs_bucket}/out/_corral/manifest.json"))
    assert manifest["backend"] == "gcf" and manifest["stages"][0]["map_tasks"] > 3
    tasks = check_attempts(manifest, 512)
    report = manifest["report"]
    assert tasks <= report["invocations"] <= len(attempts(manifest)) and report["vcpus"] == 0.333
    line = f"corral: {report['summary']}"
    assert line in done.stderr and "estimated Cloud Functions cost $" in line
    assert line.split(" invocations, ")[0] == f"corral: {report['invocations']}"
    # tokens and keys never show, even at -vvv: no JWT (ID and access tokens), no part of the key
    key = json.loads(key_file.read_text())
    for secret in ("eyJ", key["private_key_id"], key["private_key"].splitlines()[1]):
        assert secret not in done.stderr and secret not in json.dumps(manifest)
    assert not gcs.exists(f"{gcs_bucket}/out/_corral/work")


def test_wordcount_on_local_folders_with_docker_platform_gcf_equals_counter(docker_engine, awkward, tmp_path):
    folder, expected = awkward
    done = corral("run", WORDCOUNT, folder, "--out", tmp_path / "out", "--backend", "docker", "--platform", "gcf",
                  "--split-size", "256KB", "--reducers", "3", "--max-concurrency", "2", "--memory", "256",
                  cwd=tmp_path, env=environment(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = {}
    for part in sorted((tmp_path / "out").glob("part-*")):
        for line in part.read_text(encoding="utf-8").split("\n")[:-1]:
            word, _, count = line.rpartition("\t")
            assert word not in counts
            counts[word] = int(count)
    assert counts == expected
    manifest = manifest_of(tmp_path / "out")
    assert manifest["backend"] == "docker"
    check_attempts(manifest, 256)
    assert "(0.167 vCPU, 256 MB): estimated Cloud Functions cost $" in done.stderr
