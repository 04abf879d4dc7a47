"""``corral report s3://…`` and ``--report`` with the output on S3 (moto in server mode, real HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.moto
CORRAL = str(Path(sys.executable).with_name("corral"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_report_of_a_run_on_s3_is_written_next_to_its_manifest(s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"the cat\nthe dog\n" * 50)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    out = f"s3://{bucket}/out"
    run = subprocess.run([CORRAL, "run", EXAMPLES / "wordcount.py", f"s3://{bucket}/in/", "--out", out,
                          "--backend", "threads", "--report"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"corral: report at {out}/_corral/report.html" in run.stderr.splitlines()
    first = s3.get_object(Bucket=bucket, Key="out/_corral/report.html")["Body"].read().decode()
    s3.delete_object(Bucket=bucket, Key="out/_corral/report.html")
    again = subprocess.run([CORRAL, "report", out], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{out}/_corral/report.html\n"
    html = s3.get_object(Bucket=bucket, Key="out/_corral/report.html")["Body"].read().decode()
    for page in (first, html):
        assert page.startswith("<!doctype html>") and "http://" not in page and "https://" not in page
        assert f"s3:\\/\\/{bucket}\\/out" in page  # the run's data, with its slashes escaped
    missing = subprocess.run([CORRAL, "report", f"s3://{bucket}/nothing"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr == (f"corral: error: no corral run in s3://{bucket}/nothing: "
                              f"s3://{bucket}/nothing/_corral/manifest.json not found\n")
