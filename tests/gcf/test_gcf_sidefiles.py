"""Side files on ``--backend docker --platform gcf`` (corral-gcf's code path, the emulator's Cloud Functions
API): the small one inside the function's source, the larger one through the working folder, downloaded
once per instance (its first task); and, as Cloud Functions keep ``/tmp`` in memory, side files that do not
fit in the memory the task's budget leaves are refused before anything is deployed."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from tests.gcf.conftest import corral, environment
from tests.sidefile_job import expected_rows, input_text, rows_of, write_job

pytestmark = [pytest.mark.docker]


def test_side_files_on_docker_platform_gcf(docker_engine, tmp_path):
    job = write_job(tmp_path / "job")  # not a folder the containers see
    (tmp_path / "in").mkdir()
    text = input_text()
    (tmp_path / "in" / "words.txt").write_text(text, encoding="utf-8")
    done = corral("run", job, tmp_path / "in", "--out", tmp_path / "out", "--backend", "docker", "--platform", "gcf",
                  "--split-size", "1KB", "--reducers", "3", "--max-concurrency", "2", "-v", cwd=tmp_path,
                  env=environment(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("uploaded the side file") == 1 and "/big.tsv" in done.stderr
    parts = sorted((tmp_path / "out").glob("part-*"))
    assert [p.name for p in parts] == [f"part-0000{r}.csv.gz" for r in range(3)]
    assert rows_of([p.read_bytes() for p in parts]) == expected_rows(text)
    # the uploaded copy was in the default working folder, inside OUT: gone with it after the run
    assert [p.name for p in (tmp_path / "out" / "_corral").iterdir()] == ["manifest.json"]

    m = json.loads((tmp_path / "out" / "_corral" / "manifest.json").read_text())
    found = [a["stats"] for stage in m["stages"] for t in stage["tasks"].values() for a in t["attempts"]]
    downloads = defaultdict(list)  # instance -> the downloads of its tasks, in the order it ran them
    for stats in sorted(found, key=lambda s: (s["instance"], s["instance_tasks"])):
        downloads[stats["instance"]].append(stats.get("side_file_downloads", 0))
    # big.tsv once per instance, in its first task; small.tsv never (it is in the function's source)
    assert len(found) > len(downloads) and 1 <= len(downloads) <= 2
    assert all(d == [1] + [0] * (len(d) - 1) for d in downloads.values()), downloads


def test_side_files_that_do_not_fit_beside_the_tasks_memory_are_refused(docker_engine, tmp_path):
    (tmp_path / "job").mkdir()
    job = tmp_path / "job" / "huge.py"
    job.write_text("import corral\n\nclass Huge(corral.Job):\n    files = ['huge.bin']\n")
    with open(tmp_path / "job" / "huge.bin", "wb") as f:
        f.truncate(350 << 20)  # sparse; it would fit in Lambda's 512 MB of ephemeral storage
    (tmp_path / "in.txt").write_text("a\n")
    done = corral("run", job, tmp_path / "in.txt", "--out", tmp_path / "out", "--backend", "docker", "--platform",
                  "gcf", "--memory", "512", cwd=tmp_path, env=environment())
    assert (done.returncode, done.stderr) == (2, (
        "corral: error: the side files downloaded to each function's /tmp need 350.0 MB, more than its 307 MB of "
        "memory left beside the task's 40%, as Cloud Functions keep /tmp in memory (--memory): huge.bin "
        "(350.0 MB)\n"))
    assert not (tmp_path / "out" / "_SUCCESS").exists()
