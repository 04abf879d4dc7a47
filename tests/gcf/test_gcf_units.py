"""corral-gcf without Docker: settings, the package, the classification of answers, prices, the summary.

Nothing is stood in for here: these are the backend's own decisions on plain data (HTTP statuses,
headers and bodies as Cloud Run sends them, per the wire contract and Google's documentation).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import corral
from corral import INFRASTRUCTURE, OUT_OF_MEMORY, TIMEOUT, USER_ERROR
from corral.config import load_settings
from tests.gcf.conftest import WORDCOUNT, environment
from tests.gcf.conftest import corral as corral_cli

JOB = corral.JobSource({"module": "wordcount", "class": "WordCount", "path": str(WORDCOUNT)}, (),
                       ("gs://b/in/", "gs://b/out", "gs://b/out/_corral/work"), inputs=("gs://b/in/",),
                       output="gs://b/out", work="gs://b/out/_corral/work")


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "in.txt").write_text("a b a\n")
    return tmp_path


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--memory", "40000", "40000 is out of range (must be from 128 to 32768)"),
        ("--timeout", "3601", "3601 is out of range (must be from 1 to 3600)"),
        ("--function-name", "Word_Count", "'Word_Count' is not a Cloud Functions name (1-63 of a-z 0-9 -"),
        ("--environment", "K_SERVICE=x", "K_SERVICE is set by Cloud Functions itself and cannot be configured"),
        ("--environment", "X_GOOGLE_A=1", "X_GOOGLE_A is set by Cloud Functions itself"),
        ("--project", "P", "'P' is not a Google Cloud project id"),
        ("--gcf-endpoint", "localhost:9", "'localhost:9' is not an http(s):// URL"),
        ("--gcf-service-account", "nobody", "'nobody' is not a service account email"),
        ("--runtime", "python3.10", "python3.10 cannot run corral, which needs Python 3.11 or newer"),
    ],
)
def test_settings_cloud_functions_refuses_exit_2_naming_the_option(data, flag, value, message):
    done = corral_cli("run", WORDCOUNT, data / "in.txt", "--out", data / "out", "--backend", "gcf", flag, value,
                  cwd=data, env=environment())
    assert done.returncode == 2, done.stderr
    assert f"invalid value for {flag}: " in done.stderr and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (data / "out").exists()


def test_a_refused_value_names_where_it_came_from(data):
    done = corral_cli("run", WORDCOUNT, "in.txt", "--out", "out", "--backend", "lambda", cwd=data,
                  env=environment(CORRAL_MEMORY="20000"))
    assert done.returncode == 2
    assert ("invalid value for CORRAL_MEMORY: 20000 is out of range for Lambda (must be from 128 to 10240)"
            in done.stderr)


def test_local_paths_are_refused_without_an_endpoint(data):
    done = corral_cli("run", WORDCOUNT, data / "in.txt", "--out", data / "out", "--backend", "gcf", "--project",
                  "my-project", cwd=data, env=environment())
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"corral: error: the gcf backend runs tasks on Google Cloud, which cannot read or write the local path "
        f"'{data / 'in.txt'}': use gs:// URLs (or --backend docker --platform gcf to run the gcf code path locally)")


def test_no_credentials_is_a_usage_error(data, tmp_path):
    """Nothing of Google's standard chain here (no key file, no gcloud login, no metadata server)."""
    env = environment(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    done = corral_cli("deploy", WORDCOUNT, "--backend", "gcf", "--project", "my-project", cwd=data, env=env,
                      timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS" in done.stderr


def test_settings_reach_the_configuration(monkeypatch, tmp_path):
    from corral_gcf.executor import GcfConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORRAL_GCF_ENDPOINT", "http://127.0.0.1:9")
    config = GcfConfig.from_settings(load_settings({"memory": "2048", "region": "europe-west1",
                                                    "environment": ["MODE=fast"], "project": "my-project"}))
    assert (config.memory, config.vcpus, config.region, config.project) == (2048, 1.0, "europe-west1", "my-project")
    assert config.endpoint_url == "http://127.0.0.1:9" and dict(config.environment) == {"MODE": "fast"}


def test_the_options_are_declared_once_however_many_backends_share_them():
    from corral.config import all_options

    names = [o.name for o in all_options()]
    for name in ("memory", "timeout", "environment", "region", "runtime", "function-name", "project",
                 "gcf-endpoint", "gcf-service-account", "platform"):
        assert names.count(name) == 1, name


def test_corral_backends_lists_gcf_and_pip_check_is_clean(tmp_path):
    done = corral_cli("backends", cwd=tmp_path, env=environment())
    (line,) = [line for line in done.stdout.splitlines() if line.split()[:1] == ["gcf"]]
    assert line.split()[1] == "corral-gcf"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def package_files(executor, job=JOB) -> dict[str, bytes]:
    package = executor.build(job)
    archive = zipfile.ZipFile(io.BytesIO(package.zip_bytes))
    return {name: archive.read(name) for name in archive.namelist()}


def test_the_package_holds_the_entry_point_the_job_corral_and_linux_wheels_for_the_runtime(isolated_cwd):
    from corral_gcf.executor import GcfConfig, GcfExecutor

    executor = GcfExecutor(1, GcfConfig(runtime="python3.12", project="my-project"))
    assert executor.wheel_platforms()[0] == "manylinux_2_35_x86_64"  # Ubuntu 22.04's glibc
    files = package_files(executor)
    main = files["main.py"].decode()
    assert "def corral_task(request" in main and "from corral.remote import run_remote" in main
    assert "wordcount.py" in files and "corral/remote.py" in files and "requirements.txt" in files
    assert any(n.startswith("gcsfs/") for n in files)  # gs:// locations: gcsfs ships with the job
    binaries = [n for n in files if n.endswith(".so")]
    assert binaries and all("cpython-312-x86_64-linux-gnu" in n or ".libs/" in n or "abi3" in n for n in binaries)
    assert not any(n.startswith("corral_gcf/") for n in files)  # the driver's side stays home
    executor.close()


def test_a_job_module_named_main_is_refused(tmp_path):
    from corral_gcf.executor import GcfConfig, GcfExecutor

    (tmp_path / "main.py").write_text("import corral\n\nclass J(corral.Job):\n    pass\n")
    job = corral.JobSource({"module": "main", "class": "J", "path": str(tmp_path / "main.py")}, (), ("gs://b/in",))
    with pytest.raises(corral.UsageError, match=r"a job module named main\.py cannot run on Cloud Functions"):
        GcfExecutor(1, GcfConfig(project="my-project")).build(job)


@pytest.fixture
def isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- answers -----------------------------------------------------------------------------------------
def classify(status, body, headers=None, memory=512, timeout=60, **stats):
    from corral_gcf.answers import outcome_from_answer

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return outcome_from_answer(status, headers or {}, data, {"seconds": 0.25, **stats}, memory, timeout)


def test_a_result_is_the_tasks_with_its_billed_time_from_the_handlers_own_duration():
    outcome = classify(200, {"ok": True, "task": "map-0000", "duration_ms": 1234.5, "peak_memory_mb": 61.2,
                             "cold_start": True})
    assert outcome.ok and outcome.stats["billed_ms"] == 1300  # rounded up to 100 ms
    assert (outcome.stats["max_memory_used_mb"], outcome.stats["cold_start"]) == (61.2, True)
    assert outcome.stats["memory_size_mb"] == 512
    measured = classify(200, {"ok": True, "duration_ms": 5}, {"X-Corral-Max-Memory-Used-Mb": "80"},
                        max_memory_used_mb=80)
    assert measured.stats["max_memory_used_mb"] == 80 and measured.stats["billed_ms"] == 100


def test_the_users_exception_comes_back_with_its_traceback():
    error = {"type": "ValueError", "message": "bad", "traceback": 'Traceback…\n  File "job.py", line 3\n'}
    outcome = classify(200, {"ok": False, "error": error})
    assert (outcome.failure.kind, outcome.failure.message) == (USER_ERROR, "ValueError: bad")
    assert "job.py" in outcome.failure.traceback
    crashed = classify(500, {"ok": False, "error": {"type": "SystemExit", "message": "3", "traceback": "T"}},
                       {"X-Google-Status": "crash"})
    assert (crashed.failure.kind, crashed.failure.message, crashed.failure.traceback) == (USER_ERROR, "SystemExit: 3",
                                                                                          "T")
    werkzeug = classify(500, b"500 Internal Server Error: The server encountered an internal error",
                        {"X-Google-Status": "crash"})
    assert werkzeug.failure.kind == USER_ERROR and werkzeug.failure.message.startswith("the function crashed: 500")


def test_out_of_memory_names_the_limit_and_the_peak():
    text = b"Memory limit of 256 MiB exceeded with 263 MiB used. Consider increasing the memory limit, see ..."
    outcome = classify(500, text, memory=256)
    assert outcome.failure.kind == OUT_OF_MEMORY and (outcome.failure.limit, outcome.failure.peak) == (256, 263)
    assert outcome.failure.describe() == "ran out of memory at the 256 MB limit"
    assert outcome.stats["max_memory_used_mb"] == 263
    inside = classify(200, {"ok": False, "error": {"type": "MemoryError", "message": "", "traceback": ""}},
                      memory=128)
    assert inside.failure.kind == OUT_OF_MEMORY and inside.failure.describe() == "ran out of memory at the 128 MB limit"


@pytest.mark.parametrize("status", [504, 408])
def test_a_timeout_names_the_limit_and_bills_all_of_it(status):
    text = (b"The request has been terminated because it has reached the maximum request timeout of 2 seconds "
            b"(2.0 s). To change this limit, see ...")
    outcome = classify(status, text if status == 504 else b"Request Timeout", timeout=2)
    assert outcome.failure.kind == TIMEOUT and outcome.failure.describe() == "timed out after the 2 s limit"
    assert outcome.stats["billed_ms"] == 2000


def test_size_limits_and_nonsense_are_infrastructure():
    too_big = classify(500, b"Response size was too large: 40 MiB, over 32 MiB (33554432 bytes).")
    assert too_big.failure.kind == INFRASTRUCTURE and "Response size was too large" in too_big.failure.message
    assert classify(413, b"Request Entity Too Large").failure.message == "HTTP 413: Request Entity Too Large"
    assert classify(200, b"<html>").failure.message == "unexpected answer from the function: <html>"


def test_throttles_and_server_errors_are_retried_not_answers():
    from corral_gcf.answers import is_answer, is_throttle

    assert is_throttle(429, b"Rate exceeded.")
    assert is_throttle(503, b"The request was aborted because there was no available instance.")
    assert not is_throttle(503, b"The request failed because the instance could not start")
    assert not is_answer(503, {}, b"The request failed because the instance could not start")
    assert not is_answer(500, {}, b"internal")  # a plain 500: a server error, retried
    assert is_answer(500, {"x-google-status": "crash"}, b"")
    assert is_answer(504, {}, b"") and is_answer(200, {}, b"{}")


def test_the_executor_raises_throttles_and_server_errors_for_the_retry_policy():
    from corral_gcf.executor import GcfConfig, GcfExecutor, InvokeError

    from corral import THROTTLED
    from corral.remote import RETRY

    executor = GcfExecutor(1, GcfConfig(project="my-project"))
    assert executor.error_kind(InvokeError(429, "Rate exceeded.", THROTTLED)) == THROTTLED
    assert executor.error_kind(InvokeError(502, "bad gateway", RETRY)) == RETRY
    assert executor.error_kind(InvokeError(401, "no token", None)) is None
    import requests

    assert executor.error_kind(requests.exceptions.ConnectTimeout()) == RETRY
    assert executor.error_kind(requests.exceptions.ReadTimeout()) is None  # the function may still run
    executor.close()


# --- prices and the summary ----------------------------------------------------------------------------
def test_prices_and_the_vcpus_of_each_memory_size():
    from corral_gcf.pricing import PRICE, billed_ms, estimate, vcpus_for

    assert [vcpus_for(m) for m in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)] == [
        0.083, 0.167, 0.333, 0.583, 1.0, 2.0, 2.0, 4.0, 8.0]
    assert vcpus_for(768) == 0.583 and vcpus_for(3000) == 2.0
    assert (billed_ms(1), billed_ms(100), billed_ms(101), billed_ms(0)) == (100, 100, 200, 100)
    cost = estimate(1_000_000, 400_000, 200_000)
    assert cost["estimated_cost_usd"] == pytest.approx(200_000 * 0.000024 + 400_000 * 0.0000025 + 0.40)
    assert (PRICE.vcpu_second, PRICE.gib_second, PRICE.request) == (0.000024, 0.0000025, 0.40 / 1e6)
    assert cost["prices"]["read"] == "2026-12-01"


def test_the_summary_line_adds_up_billed_time_like_lambdas():
    from corral_gcf.executor import GcfConfig, GcfExecutor

    executor = GcfExecutor(2, GcfConfig(project="my-project", memory=1024))
    for billed in (2000, 500):
        executor._count({"throttles": 1}, {"billed_ms": billed, "memory_size_mb": 1024})
    report = executor.report()
    assert report["gb_seconds"] == pytest.approx(2.5) and report["vcpu_seconds"] == pytest.approx(2.5 * 0.583)
    expected = 2.5 * 0.583 * 0.000024 + 2.5 * 0.0000025 + 2 * 0.40 / 1e6
    assert report["estimated_cost_usd"] == pytest.approx(expected, abs=1e-8)
    assert report["summary"] == (
        f"2 invocations, 2.500 GB-s billed (0.583 vCPU, 1024 MB): estimated Cloud Functions cost ${expected:.6f} "
        "at Tier 1 (us-central1) list prices of 2026-12-01; 2 throttled invokes retried")
    assert executor.sizing().vcpu(1024) == 0.583 and executor.sizing().billing_increment_ms == 100
    executor.close()
