"""An output on S3 that cannot be used (no credentials, an endpoint nobody answers, reads denied) is one
line naming it and exit 2, before anything is deployed or written (moto in server mode; the denial comes
from a proxy in front of it, as a bucket policy would answer)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3.faulty_proxy import FaultyProxy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))
WORDCOUNT = str(EXAMPLES / "wordcount.py")

pytestmark = pytest.mark.moto


def _without_credentials() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k.startswith("AWS_ENDPOINT_URL")}
    missing = str(Path(os.devnull).with_name("corral-no-such-file"))
    env.update(AWS_SHARED_CREDENTIALS_FILE=missing, AWS_CONFIG_FILE=missing, AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1")
    return env


def _corral(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=timeout)


def _keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_an_s3_output_without_credentials_is_one_line_and_exit_2(s3, bucket, tmp_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    result = _corral("run", WORDCOUNT, str(tmp_path / "in.txt"), "--out", f"s3://{bucket}/out",
                     "--backend", "processes", env=_without_credentials())
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"corral: error: cannot write to the output folder s3://{bucket}/out: " \
                            "Unable to locate credentials\n"
    assert _keys(s3, bucket) == []


def test_a_working_folder_on_s3_without_credentials_is_refused_before_the_job_starts(s3, bucket, tmp_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    out = tmp_path / "out"
    result = _corral("run", WORDCOUNT, str(tmp_path / "in.txt"), "--out", str(out), "--work-dir",
                     f"s3://{bucket}/work", "--backend", "threads", env=_without_credentials())
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"corral: error: cannot use the working folder s3://{bucket}/work (--work-dir): " \
                            "Unable to locate credentials\n"
    assert not out.exists()  # its lease taken and given back: nothing left


@pytest.mark.slow  # botocore tries to connect a few times (about 10 s)
def test_an_s3_endpoint_nobody_answers_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "in.txt").write_text("a b a\n")
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    result = _corral("run", WORDCOUNT, str(tmp_path / "in.txt"), "--out", "s3://nowhere/out", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("corral: error: cannot write to the output folder s3://nowhere/out: Could not connect "
                             f'to the endpoint URL: "http://127.0.0.1:{port}/nowhere/out/_corral/lock"\n')


def test_a_journal_that_cannot_be_read_on_resume_is_one_line_and_exit_2(moto_server, s3, bucket, tmp_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    s3.put_object(Bucket=bucket, Key="out/_corral/journal/000001.jsonl", Body=b'{"t": "run"}\n')

    def journal_reads(method: str, path: str) -> bool:  # the lock may be written, the journal not read
        return method == "GET" and "/_corral/journal/" in path

    with FaultyProxy(moto_server["AWS_ENDPOINT_URL_S3"], every=0, deny=journal_reads) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url}
        result = _corral("run", WORDCOUNT, str(tmp_path / "in.txt"), "--out", f"s3://{bucket}/out", "--resume",
                         env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"corral: error: cannot read the output folder s3://{bucket}/out: Access Denied\n"
    assert _keys(s3, bucket) == ["out/_corral/journal/000001.jsonl"]  # the lease given back; nothing else
