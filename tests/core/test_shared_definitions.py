"""Definitions every backend shares live once, in corral: the default concurrency and the quiet removal
of leftovers."""

from __future__ import annotations

import logging
import os

import corral
from corral.fs import remove_quietly
from corral.settings import Settings
from tests.requirements import need


def test_every_local_backend_defaults_to_the_cpus_this_process_may_use():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert corral.default_concurrency() == expected
    from corral.driver import create_executor

    for backend in ("threads", "processes"):
        executor = create_executor(Settings(backend=backend))
        try:
            assert executor.max_concurrency == expected
        finally:
            executor.close()
    need("corral_docker")
    from corral_docker import executor as docker_executor

    assert not hasattr(docker_executor, "cores")  # its own copy is gone
    docker = docker_executor.create_executor(Settings(backend="docker"))  # nothing starts before deploy
    assert docker.max_concurrency == expected


def test_remove_quietly_removes_and_logs_what_it_cannot(tmp_path, caplog):
    parts = tmp_path / "attempt"
    parts.mkdir()
    (parts / "00000").write_text("x")
    remove_quietly(str(parts), recursive=True)
    assert not parts.exists()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with caplog.at_level(logging.DEBUG, logger="corral"):
        remove_quietly(str(plain / "child"))  # under a file: the filesystem's error is logged, not raised
    assert f"could not remove {plain / 'child'}" in caplog.text
    assert plain.read_text() == "x"
