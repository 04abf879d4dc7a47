"""Reading Invoke answers: REPORT lines, X-Corral-* headers, and the kind of each failure."""

from __future__ import annotations

import json

from corral_lambda.results import invoke_stats, outcome_from_invoke, parse_report

from corral import INFRASTRUCTURE, INPUT_ERROR, OUT_OF_MEMORY, TIMEOUT, USER_ERROR

COLD = (
    "START RequestId: 8f5c Version: $LATEST\nhello\nEND RequestId: 8f5c\n"
    "REPORT RequestId: 8f5c\tDuration: 102.25 ms\tBilled Duration: 103 ms\tMemory Size: 128 MB\t"
    "Max Memory Used: 38 MB\tInit Duration: 120.54 ms\t\n"
)
WARM = "REPORT RequestId: 9a1d\tDuration: 1.50 ms\tBilled Duration: 2 ms\tMemory Size: 512 MB\tMax Memory Used: 61 MB\n"


def test_report_line_of_a_cold_start():
    assert parse_report(COLD) == {
        "duration_ms": 102.25, "billed_ms": 103, "memory_size_mb": 128, "max_memory_used_mb": 38,
        "init_ms": 120.54, "cold_start": True,
    }


def test_report_line_of_a_warm_start():
    stats = parse_report(WARM)
    assert stats["cold_start"] is False and "init_ms" not in stats
    assert (stats["duration_ms"], stats["billed_ms"], stats["max_memory_used_mb"]) == (1.5, 2, 61)


def test_no_report_line():
    assert parse_report("just some output\n") == {}
    assert invoke_stats({}, "") == {}


def test_emulator_headers_win_over_the_log():
    headers = {
        "X-Corral-Billed-Duration-Ms": "7", "X-Corral-Max-Memory-Used-Mb": "44",
        "X-Corral-Cold-Start": "false", "X-Corral-Duration-Ms": "6.25", "x-amzn-RequestId": "abc",
    }
    stats = invoke_stats(headers, COLD)
    assert stats["billed_ms"] == 7 and stats["max_memory_used_mb"] == 44 and stats["duration_ms"] == 6.25
    assert stats["cold_start"] is False
    assert stats["request_id"] == "abc"
    assert stats["memory_size_mb"] == 128  # from the log, absent from the headers


def test_cold_start_from_the_header():
    assert invoke_stats({"x-corral-cold-start": "true", "x-corral-init-duration-ms": "150.5"})["init_ms"] == 150.5
    assert invoke_stats({"x-corral-cold-start": "true"})["cold_start"] is True


def result(**fields):
    return json.dumps({"ok": True, "task": "map-0000", "attempt": 1, "seconds": 0.1, **fields}).encode()


def test_success():
    outcome = outcome_from_invoke(result(output="/x"), None, {"billed_ms": 3}, 128, 10)
    assert outcome.ok and outcome.result["output"] == "/x"
    assert outcome.stats["billed_ms"] == 3 and outcome.stats["seconds"] == 0.1


def test_user_error_comes_back_with_the_users_traceback():
    body = json.dumps({"ok": False, "error": {"type": "ValueError", "message": "bad", "kind": "user",
                                              "traceback": "Traceback ...\nValueError: bad\n"}}).encode()
    outcome = outcome_from_invoke(body, None, {}, 128, 10)
    assert outcome.failure.kind == USER_ERROR
    assert outcome.failure.describe() == "ValueError: bad"
    assert "ValueError: bad" in outcome.failure.traceback


def test_input_error():
    body = json.dumps({"ok": False, "error": {"type": "InputError", "message": "/in: bad byte at 7",
                                              "kind": "input"}}).encode()
    assert outcome_from_invoke(body, None, {}, 128, 10).failure.kind == INPUT_ERROR


def test_out_of_memory_from_the_emulator():
    body = json.dumps({"errorType": "Runtime.OutOfMemory",
                       "errorMessage": "RequestId: x Error: Runtime exited with error: signal: killed"}).encode()
    outcome = outcome_from_invoke(body, "Unhandled", {"max_memory_used_mb": 128}, 128, 10)
    failure = outcome.failure
    assert failure.kind == OUT_OF_MEMORY and failure.limit == 128 and failure.peak == 128
    assert failure.describe() == "ran out of memory at the 128 MB limit"
    assert outcome.stats["max_memory_used_mb"] == 128


def test_out_of_memory_as_aws_reports_it():
    body = json.dumps({"errorType": "Runtime.ExitError",
                       "errorMessage": "RequestId: x Error: Runtime exited with error: signal: killed"}).encode()
    assert outcome_from_invoke(body, "Unhandled", {"max_memory_used_mb": 256}, 256, 10).failure.kind == OUT_OF_MEMORY
    # killed well below the limit: not memory
    assert outcome_from_invoke(body, "Unhandled", {"max_memory_used_mb": 40}, 256, 10).failure.kind == INFRASTRUCTURE


def test_memory_error_in_the_task_is_out_of_memory():
    body = json.dumps({"ok": False, "error": {"type": "MemoryError", "message": "", "kind": "user"}}).encode()
    failure = outcome_from_invoke(body, None, {}, 256, 10).failure
    assert failure.kind == OUT_OF_MEMORY and failure.describe() == "ran out of memory at the 256 MB limit"


def test_timeout():
    body = json.dumps({"errorType": "Sandbox.Timedout",
                       "errorMessage": "2024-01-01T00:00:00.000Z 1234 Task timed out after 2.00 seconds"}).encode()
    failure = outcome_from_invoke(body, "Unhandled", {}, 128, 2).failure
    assert failure.kind == TIMEOUT and failure.limit == 2
    assert failure.describe() == "timed out after the 2 s limit"
    # AWS's older shape: no errorType, the message says it
    legacy = json.dumps({"errorMessage": "2024-01-01 x Task timed out after 3.00 seconds"}).encode()
    assert outcome_from_invoke(legacy, "Unhandled", {}, 128, 3).failure.kind == TIMEOUT


def test_runtime_errors_are_infrastructure_with_the_remote_stack():
    body = json.dumps({"errorType": "Runtime.ImportModuleError",
                       "errorMessage": "Unable to import module 'corral_lambda.handler': No module named 'msgpack'",
                       "stackTrace": ['  File "/var/task/x.py", line 1\n']}).encode()
    failure = outcome_from_invoke(body, "Unhandled", {}, 128, 10).failure
    assert failure.kind == INFRASTRUCTURE
    assert "Runtime.ImportModuleError: Unable to import module" in failure.describe()
    assert "/var/task/x.py" in failure.traceback


def test_other_function_errors_are_user_errors():
    body = json.dumps({"errorType": "KeyError", "errorMessage": "'job'", "stackTrace": []}).encode()
    failure = outcome_from_invoke(body, "Unhandled", {}, 128, 10).failure
    assert failure.kind == USER_ERROR and failure.describe() == "KeyError: 'job'"


def test_garbage_answers_are_infrastructure():
    assert outcome_from_invoke(b"not json", None, {}, 128, 10).failure.kind == INFRASTRUCTURE
    assert outcome_from_invoke(b'{"no": "ok"}', None, {}, 128, 10).failure.kind == INFRASTRUCTURE
    assert outcome_from_invoke(b"oops", "Unhandled", {}, 128, 10).failure.kind == USER_ERROR
