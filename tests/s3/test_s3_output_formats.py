"""Output formats on S3 (moto in server mode): several gzipped CSV part files per reducer through the
object-store commit, read back from S3 by a later corral job (see tests/object_store_formats.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.object_store_formats import (
    PER_FILE,
    REDUCERS,
    csv_rows,
    expected_parts,
    input_text,
    jsonl_records,
    write_job,
)

pytestmark = pytest.mark.moto


def corral(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([shutil.which("corral"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))
    return {k[len(prefix):]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys
            if k[len(prefix):].startswith("part-")}


def test_csv_gz_parts_per_reducer_commit_on_s3_and_read_back(s3, bucket, tmp_path):
    job = write_job(tmp_path / "job")
    text = input_text()
    s3.put_object(Bucket=bucket, Key="in/words.txt", Body=text.encode())
    done = corral("run", f"{job}:Totals", f"s3://{bucket}/in/", "--out", f"s3://{bucket}/out", "--backend", "processes",
                  "--reducers", str(REDUCERS), "--max-records-per-file", str(PER_FILE), "-q", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    parts = objects(s3, bucket, "out/")
    expected = expected_parts(text)
    assert list(parts) == list(expected)
    assert {name: csv_rows(data) for name, data in parts.items()} == expected
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert "out/_SUCCESS" in keys and not any("/_corral/work" in k for k in keys)

    back = corral("run", f"{job}:Back", f"s3://{bucket}/out/", "--out", f"s3://{bucket}/back", "--backend",
                  "processes", "--reducers", "1", "-q", cwd=tmp_path)
    assert (back.returncode, back.stderr) == (0, "")
    (name, data), = objects(s3, bucket, "back/").items()
    assert name == "part-00000.jsonl.zst"
    rows = sorted(row for rows in expected.values() for row in rows)
    assert jsonl_records(data) == [{"key": w, "value": {"word": w, "count": n, "note": note}} for w, n, note in rows]
