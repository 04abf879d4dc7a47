"""Side files on ``--backend docker``: a small one inside the deployment package, a larger one through the
working folder, downloaded to the container's /tmp once per container (the manifest counts downloads per
attempt: exactly one in each container's first, cold, invocation); one too big for /tmp is refused."""

from __future__ import annotations

import json

import pytest

from tests.docker.conftest import corral
from tests.sidefile_job import expected_rows, input_text, rows_of, write_job

pytestmark = pytest.mark.docker


def test_side_files_through_the_package_and_the_working_folder(workdir):
    job = write_job(workdir / "job")  # not a folder the containers see
    (workdir / "in").mkdir()
    text = input_text()
    (workdir / "in" / "words.txt").write_text(text, encoding="utf-8")
    done = corral("run", job, workdir / "in", "--out", workdir / "out", "--backend", "docker", "--split-size",
                  "1KB", "--reducers", "3", "--max-concurrency", "2", "-v", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "uploaded the side file" in done.stderr and "big.tsv" in done.stderr
    parts = sorted((workdir / "out").glob("part-*"))
    assert [p.name for p in parts] == [f"part-0000{r}.csv.gz" for r in range(3)]
    assert rows_of([p.read_bytes() for p in parts]) == expected_rows(text)
    # the uploaded copy was in the default working folder, inside OUT: gone with it after the run
    assert [p.name for p in (workdir / "out" / "_corral").iterdir()] == ["manifest.json"]

    m = json.loads((workdir / "out" / "_corral" / "manifest.json").read_text())
    found = [a["stats"] for stage in m["stages"] for t in stage["tasks"].values() for a in t["attempts"]]
    assert len(found) > 4  # several tasks per container
    # big.tsv once per container (its first, cold, task); small.tsv never: it came in the package
    assert [s.get("side_file_downloads", 0) for s in found] == [int(s["cold_start"]) for s in found]
    assert 1 <= sum(s["cold_start"] for s in found) <= 2


def test_a_side_file_too_big_for_tmp_is_refused_before_anything_runs(workdir):
    (workdir / "job").mkdir()
    job = workdir / "job" / "huge.py"
    job.write_text("import corral\n\nclass Huge(corral.Job):\n    files = ['huge.bin']\n")
    with open(workdir / "job" / "huge.bin", "wb") as f:
        f.truncate(600 << 20)  # sparse
    (workdir / "in.txt").write_text("a\n")
    done = corral("run", job, workdir / "in.txt", "--out", workdir / "out", "--backend", "docker", cwd=workdir)
    assert (done.returncode, done.stderr) == (2, (
        "corral: error: the side files downloaded to each function's /tmp need 600.0 MB, more than its 512 MB of "
        "ephemeral storage (--ephemeral-storage): huge.bin (600.0 MB)\n"))
    assert not (workdir / "out" / "_SUCCESS").exists()


def test_the_cloudfront_example_on_docker_equals_processes(workdir):
    """The example's lookup table goes in the package; the gzipped CSV parts equal the processes backend's,
    byte for byte, and so do the counters."""
    from tests.docker.conftest import REPO

    sample = REPO / "examples" / "data" / "cloudfront" / "logs"
    outputs = {}
    for backend in ("processes", "docker"):
        out = workdir / backend
        done = corral("run", REPO / "examples" / "cloudfront.py", sample, "--out", out, "--backend", backend,
                      "--map-bin-size", "256KB", "--max-concurrency", "2", cwd=workdir)
        assert done.returncode == 0, done.stderr[-3000:]
        m = json.loads((out / "_corral" / "manifest.json").read_text())
        outputs[backend] = ({p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}, m["counters"])
    assert outputs["docker"] == outputs["processes"]
    assert len(outputs["docker"][0]) >= 2 and outputs["docker"][1]["cloudfront"]["kept"] > 1000
