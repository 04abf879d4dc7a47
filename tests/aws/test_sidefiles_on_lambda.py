"""Side files on ``--backend lambda`` (moto's S3 and IAM, the emulator's Lambda): the small one in the
function's zip, the larger one uploaded to the working folder on S3 once per content hash (a second run
sharing ``--work-dir`` uploads nothing) and downloaded once per container."""

from __future__ import annotations

import io
import urllib.request
import zipfile

import pytest

from tests.aws.conftest import attempts, corral, lambda_client, manifest, parts
from tests.sidefile_job import expected_rows, input_text, rows_of, write_job

pytestmark = [pytest.mark.docker, pytest.mark.moto]


def test_side_files_reach_every_task_on_lambda(emulator, s3, bucket, tmp_path):
    job = write_job(tmp_path / "job")
    text = input_text(600)
    half = len(text.splitlines()) // 2
    lines = text.splitlines(keepends=True)
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body="".join(lines[:half]).encode())
    s3.put_object(Bucket=bucket, Key="in/b.txt", Body="".join(lines[half:]).encode())
    common = ["--backend", "lambda", "--lambda-endpoint", emulator.endpoint, "--split-size", "2KB", "--reducers",
              "2", "--max-concurrency", "2", "--work-dir", f"s3://{bucket}/work", "-v"]
    done = corral("run", job, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = parts(s3, bucket, "out")
    assert list(out) == ["part-00000.csv.gz", "part-00001.csv.gz"]
    assert rows_of(list(out.values())) == expected_rows(text)

    found = [a["stats"] for _, a in attempts(manifest(s3, bucket, "out"))]
    assert [s.get("side_file_downloads", 0) for s in found] == [int(s["cold_start"]) for s in found]
    assert 1 <= sum(s["cold_start"] for s in found) <= 2 < len(found)

    uploaded = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="work/_files/")["Contents"]]
    assert len(uploaded) == 1 and uploaded[0].endswith("/big.tsv")
    assert done.stderr.count("uploaded the side file") == 1
    code = lambda_client(emulator.endpoint).get_function(FunctionName="corral-lookup_job-Lookup")["Code"]["Location"]
    names = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(code).read())).namelist()
    assert [n for n in names if n.startswith("corral_files/")] == [n for n in names if n.endswith("/small.tsv")]
    assert len([n for n in names if n.endswith("/small.tsv")]) == 1 and not any("big.tsv" in n for n in names)

    again = corral("run", job, f"s3://{bucket}/in/", "--out", f"s3://{bucket}/again", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "uploaded the side file" not in again.stderr  # the same content is in the working folder already
    assert parts(s3, bucket, "again") == out
