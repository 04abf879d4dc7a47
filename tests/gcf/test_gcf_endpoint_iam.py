"""``--backend gcf --gcf-endpoint URL`` without ``--gcf-service-account``: corral would manage the
function's service account with Google's IAM API, which an endpoint such as corral-emulator does not
serve. The failure says so in one line and names the flag that does without IAM.

Stood in for: Google's Functions API and token endpoint (corral-emulator); nothing answers for IAM
here (no network: iam.googleapis.com cannot be reached; with a network Google refuses the emulator's
token): the message is the same hint either way."""

from __future__ import annotations

import pytest

from tests.gcf.conftest import PROJECT, WORDCOUNT, corral, environment

pytestmark = [pytest.mark.docker, pytest.mark.gcs]

HINT = ("corral manages the function's service account with Google's IAM API (https://iam.googleapis.com/v1), "
        "which --gcf-endpoint does not change: pass --gcf-service-account EMAIL to run the function as an "
        "existing account (corral then manages no IAM)")


def test_an_endpoint_without_a_service_account_names_the_flag(gcf_emulator, key_file, tmp_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    done = corral("run", WORDCOUNT, tmp_path / "in.txt", "--out", tmp_path / "out", "--backend", "gcf",
                  "--gcf-endpoint", gcf_emulator.endpoint, "--project", PROJECT, cwd=tmp_path,
                  env=environment(key_file, CORRAL_GCF_IAM_SETTLE="0"))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("corral: error: cannot create the service account of the function corral-")
    assert line.endswith(f"; {HINT}"), line
    assert not (tmp_path / "out").exists()
