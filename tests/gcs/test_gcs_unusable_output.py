"""A gs:// output nobody answers for is one line naming it and exit 2 (no gcsfs traceback logged first)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import need

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.mark.slow  # gcsfs retries the connection for about 30 s
def test_a_gcs_endpoint_nobody_answers_is_one_line_and_exit_2(tmp_path):
    need("gcsfs")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "in.txt").write_text("a b a\n")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    result = subprocess.run([CORRAL, "run", str(EXAMPLES / "wordcount.py"), str(tmp_path / "in.txt"),
                             "--out", "gs://nowhere/out"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"corral: error: cannot write to the output folder gs://nowhere/out: Cannot connect "
                             f"to host 127.0.0.1:{port} ssl:default [Connect call failed ('127.0.0.1', {port})]\n")
