"""``corral report gs://…`` and ``--report`` of a failed run with its output on GCS (gcp-storage-emulator,
real HTTP): the report is written next to the manifest, and the failure is in it."""

from __future__ import annotations

import json

import pytest

from tests.core import jobs
from tests.core.util import cli

pytestmark = pytest.mark.gcs


def test_report_of_a_failed_run_on_gcs(gcs_emulator, gcs, gcs_bucket, tmp_path, capsys):
    for n in range(3):
        gcs.pipe_file(f"{gcs_bucket}/in/f{n}.txt", "".join(f"g{(n + i) % 5} gs\n" for i in range(30)).encode())
    fail = tmp_path / "fail"
    fail.write_text("")
    out = f"gs://{gcs_bucket}/out"
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:FailReduceWhile", f"gs://{gcs_bucket}/in/", "--out", out,
                       "--backend", "threads", "--reducers", "2", "--retries", "0", "--arg", f"fail={fail}",
                       "--report")
    assert code == 1 and "reduce failing on purpose" in err
    assert f"corral: report at {out}/_corral/report.html" in err.splitlines()
    gcs.invalidate_cache()
    first = gcs.cat_file(f"{gcs_bucket}/out/_corral/report.html").decode()
    gcs.rm_file(f"{gcs_bucket}/out/_corral/report.html")

    code, printed, err = cli(capsys, "report", out)
    assert (code, printed) == (0, f"{out}/_corral/report.html\n"), err
    gcs.invalidate_cache()
    again = gcs.cat_file(f"{gcs_bucket}/out/_corral/report.html").decode()
    manifest = json.loads(gcs.cat_file(f"{gcs_bucket}/out/_corral/manifest.json"))
    assert manifest["status"] == "failed"
    for html in (first, again):
        assert html.startswith("<!doctype html>") and "http://" not in html and "https://" not in html
        assert f"gs:\\/\\/{gcs_bucket}\\/out" in html  # the run's data, its slashes escaped
        assert "reduce failing on purpose" in html

    code, _, err = cli(capsys, "report", f"gs://{gcs_bucket}/nothing")
    assert code == 2
    assert err == (f"corral: error: no corral run in gs://{gcs_bucket}/nothing: "
                   f"gs://{gcs_bucket}/nothing/_corral/manifest.json not found\n")
