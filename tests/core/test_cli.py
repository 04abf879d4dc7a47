"""The ``corral`` command: job references, exit codes, settings and their sources, user mistakes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from corral.config import load_settings

from .util import EXAMPLES, clean_env, cli, corral_command, counts, install_plugin, manifest, parts, run_command

WORDS = "b a\nc b a\n"
COUNTS = {"a": 2, "b": 2, "c": 1}

TWO_JOBS = """\
import corral


class Upper(corral.Job):
    def map(self, key, line):
        yield None, line.upper()


class Lower(corral.Job):
    def map(self, key, line):
        yield None, line.lower()
"""


@pytest.fixture
def words(tmp_path):
    (tmp_path / "in.txt").write_text(WORDS)
    return tmp_path / "in.txt"


@pytest.fixture
def two_jobs(tmp_path):
    folder = tmp_path / "jobs_pkg"
    folder.mkdir()
    (folder / "casejobs.py").write_text(TWO_JOBS)
    return folder


def one_line_error(err: str) -> str:
    """The single stderr line of a usage error (no traceback)."""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- JOB forms and exit codes (real commands) ------------------------------------------------------


def test_run_job_file_as_a_command(words, tmp_path):
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", words, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert counts(tmp_path / "out") == COUNTS
    assert done.stderr.startswith("corral: job succeeded in ")
    assert done.stderr.rstrip().endswith(f"output in {tmp_path / 'out'}")


def test_run_job_file_with_class_and_module_with_class(words, two_jobs, tmp_path):
    done = run_command("corral", "run", f"{two_jobs / 'casejobs.py'}:Upper", words, "--out", tmp_path / "upper", "-q")
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "upper" / "part-00000").read_text() == WORDS.upper()
    done = run_command(
        "corral", "run", "casejobs:Lower", words, "--out", tmp_path / "lower", "-q",
        env=clean_env(PYTHONPATH=str(two_jobs)),
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "lower" / "part-00000").read_text() == WORDS.lower()


def test_module_with_class_from_the_current_folder(words, two_jobs, tmp_path):
    done = run_command("corral", "run", "casejobs:Lower", words, "--out", tmp_path / "lower", "-q", cwd=two_jobs)
    assert (done.returncode, done.stderr) == (0, "")


def test_exit_codes_and_messages_as_commands(words, tmp_path):
    ok = run_command("corral", "run", EXAMPLES / "wordcount.py", words, "--out", tmp_path / "ok", "-q")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    failed = run_command(
        "corral", "run", EXAMPLES / "wordcount.py", tmp_path / "bad.txt", "--out", tmp_path / "failed", "--retries", "0"
    )
    assert failed.returncode == 1
    assert f"corral: job failed: task map-0000 attempt 1: {tmp_path / 'bad.txt'}: invalid UTF-8 at byte offset 3 " in (
        failed.stderr
    )
    missing = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "nope.txt", "--out", tmp_path / "x")
    assert missing.returncode == 2
    assert one_line_error(missing.stderr) == f"corral: error: input not found: {tmp_path / 'nope.txt'}"
    assert not (tmp_path / "x").exists()


def test_the_command_exits_quickly_but_runs_atexit_handlers_and_flushes_its_output(words, tmp_path):
    """``corral`` skips the interpreter's teardown after a run (corral.cli.console_main): what a plugin
    registered with atexit still runs, and what it printed at the job's end without a newline (after the
    worker processes were forked, which flushes) still arrives."""
    marker = tmp_path / "atexit-ran"
    install_plugin(tmp_path / "site", "corral-noisy", "noisy_plugin", f"""
        import atexit, sys
        from corral.hookspecs import hookimpl

        atexit.register(lambda: open({str(marker)!r}, "w").write("yes"))

        @hookimpl
        def corral_job_finished(event):
            sys.stdout.write("finished " + str(event.ok))  # buffered: lost by an exit that does not flush
    """)
    env = clean_env(PYTHONPATH=str(tmp_path / "site"))
    env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as it is for most users
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", words, "--out", tmp_path / "out", "-q", env=env)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "finished True")
    assert marker.read_text() == "yes"
    marker.unlink()
    (tmp_path / "bad.txt").write_bytes(b"\xff\n")
    failed = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "bad.txt", "--out", tmp_path / "bad",
                         "-q", "--retries", "0", env=env)
    assert (failed.returncode, failed.stdout, marker.read_text()) == (1, "finished False", "yes")


def test_output_piped_into_a_reader_that_stopped_ends_quietly():
    """``corral backends | head -1``: the pipe closes before corral writes; no traceback, exit 1."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader stopped before the command wrote its first line
    done = subprocess.run([corral_command(), "backends"], stdout=writer, stderr=subprocess.PIPE, text=True,
                          env=clean_env(), timeout=120)
    os.close(writer)
    assert (done.returncode, done.stderr) == (1, "")


def test_a_broken_pipe_that_is_not_stdouts_is_not_swallowed():
    """A worker's pipe breaking is corral's error to show, not a reader of its output that stopped."""
    from corral.cli import _guard

    def broken() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        _guard(broken)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_is_not_a_success():
    """``corral backends > /dev/full``: buffered, the listing waits in stdout until the exit, whose flush
    fails: exit 120, as Python's own exit, not 0; unbuffered, the first print fails: one line, exit 1."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([corral_command(), "backends"], stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**clean_env(), "PYTHONUNBUFFERED": ""}, timeout=120)
    assert done.returncode == 120, done.stderr
    with open("/dev/full", "w") as full:  # unbuffered: the first line fails as it is printed
        done = subprocess.run([corral_command(), "backends"], stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**clean_env(), "PYTHONUNBUFFERED": "1"}, timeout=120)
    assert (done.returncode, done.stderr) == (1, "corral: error: cannot write: [Errno 28] No space left on device\n")


def test_a_store_that_refuses_the_listing_is_one_line_naming_the_input(tmp_path):
    """No credentials for s3:// (none in the environment, no files, no instance metadata): the store's
    error in one line with the input's URL, exit 1, nothing written."""
    from tests.requirements import need

    need("s3fs")
    env = clean_env(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                    AWS_EC2_METADATA_DISABLED="true")
    env = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                     "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", "s3://corral-no-such-bucket/in/", "--out",
                       tmp_path / "out", "--backend", "threads", env=env)
    assert done.returncode == 1
    assert one_line_error(done.stderr) == ("corral: error: cannot list input s3://corral-no-such-bucket/in/: "
                                           "NoCredentialsError: Unable to locate credentials")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing_job.py"], "corral: error: job file not found: missing_job.py"),
        (["NOJOB"], "corral: error: {tmp}/nojob.py defines no corral.Job subclass"),
        (["{jobs}/casejobs.py"], "corral: error: {jobs}/casejobs.py defines several Job subclasses (Lower, Upper): "
                                 "name one as {jobs}/casejobs.py:Class"),
        (["{jobs}/casejobs.py:Title"], "corral: error: {jobs}/casejobs.py has no Job subclass named Title"),
        (["no_such_module:Job"], "corral: error: cannot import job module no_such_module: No module named "
                                 "'no_such_module'"),
        (["BROKEN"], "corral: error: cannot import job file {tmp}/broken.py: ZeroDivisionError: division by zero"),
        (["{ex}/wordcount.py", "--split-size", "abc"],
         "corral: error: invalid value for --split-size: 'abc' is not a size like 64MB"),
        (["{ex}/wordcount.py", "--memory-budget", "0"],
         "corral: error: invalid value for --memory-budget: '0' must be larger than 0 bytes"),
        (["{ex}/wordcount.py", "--reducers", "0"],
         "corral: error: invalid value for --reducers: 0 is out of range (must be at least 1)"),
        (["{ex}/wordcount.py", "--retries", "many"],
         "corral: error: invalid value for --retries: 'many' is not a whole number"),
        (["{ex}/wordcount.py", "--backend", "cloud9"],
         "corral: error: unknown backend 'cloud9' (from --backend; available: ..."),
        (["{ex}/wordcount.py", "--arg", "novalue"],
         "corral: error: invalid value for --arg: 'novalue' is not KEY=VALUE"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(words, two_jobs, tmp_path, capsys, argv, message):
    (tmp_path / "nojob.py").write_text("import corral\nx = corral.Job\n")
    (tmp_path / "broken.py").write_text("1 / 0\n")
    fill = {"tmp": tmp_path, "jobs": two_jobs, "ex": EXAMPLES}
    argv = [a.format(**fill) for a in argv]
    argv[0] = {"NOJOB": str(tmp_path / "nojob.py"), "BROKEN": str(tmp_path / "broken.py")}.get(argv[0], argv[0])
    code, out, err = cli(capsys, "run", argv[0], words, "--out", tmp_path / "out", *argv[1:])
    assert (code, out) == (2, "")
    expected = message.format(**fill)
    if expected.endswith("..."):  # other installed plugins may add backends
        assert one_line_error(err).startswith(expected[:-3]) and "processes, threads" in err
    else:
        assert one_line_error(err) == expected
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_user_mistakes_as_commands_have_no_traceback(words, tmp_path):
    (tmp_path / "nojob.py").write_text("x = 1\n")
    for argv, message in [
        ([tmp_path / "missing.py", words], f"job file not found: {tmp_path / 'missing.py'}"),
        ([tmp_path / "nojob.py", words], f"{tmp_path / 'nojob.py'} defines no corral.Job subclass"),
        ([EXAMPLES / "wordcount.py", words, "--split-size", "12XB"], "invalid value for --split-size: '12XB'"),
    ]:
        done = run_command("corral", "run", *argv, "--out", tmp_path / "out")
        assert done.returncode == 2
        assert one_line_error(done.stderr).startswith("corral: error: " + message)


def test_argument_errors_exit_2(capsys, words):
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words)
    assert code == 2 and "the following arguments are required: --out/-o" in err
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", "x", "--no-such-flag")
    assert code == 2 and "unrecognized arguments: --no-such-flag" in err
    code, _, err = cli(capsys)
    assert code == 2


# --- the output folder -----------------------------------------------------------------------------


def test_existing_output_needs_overwrite(words, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", out, "--reducers", "3", "-q",
                     "--backend", "threads")
    assert code == 0 and len(parts(out)) == 3
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", out, "--backend", "threads")
    assert code == 2
    assert one_line_error(err) == (
        f"corral: error: output folder {out} already holds output (use --overwrite to replace it)"
    )
    assert len(parts(out)) == 3 and (out / "_SUCCESS").exists()  # untouched
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", out, "--reducers", "1",
                       "--overwrite", "-q", "--backend", "threads")
    assert (code, err) == (0, "")
    assert [p.name for p in parts(out)] == ["part-00000"]
    assert counts(out) == COUNTS


def test_overwrite_with_a_missing_input_keeps_the_old_output(words, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", out, "-q", "--backend", "threads")[0] == 0
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", tmp_path / "typo.txt", "--out", out, "--overwrite")
    assert code == 2
    assert one_line_error(err) == f"corral: error: input not found: {tmp_path / 'typo.txt'}"
    assert counts(out) == COUNTS  # a mistyped input must not cost the previous output


def test_an_input_inside_the_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "in.txt").write_text(WORDS)
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", out / "in.txt", "--out", out, "--overwrite")
    assert code == 2
    assert one_line_error(err) == f"corral: error: input {out / 'in.txt'} is inside the output folder {out}"
    assert (out / "in.txt").read_text() == WORDS


def test_an_existing_empty_output_folder_is_fine(words, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", tmp_path / "out", "-q",
                       "--backend", "threads")
    assert (code, err) == (0, "")
    assert counts(tmp_path / "out") == COUNTS


# --- Job.main and `corral backends` ------------------------------------------------------------------


def test_python_job_file_runs_the_job(words, tmp_path):
    done = run_command(sys.executable, EXAMPLES / "wordcount.py", words, "--out", tmp_path / "out", "-q")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert counts(tmp_path / "out") == COUNTS
    assert manifest(tmp_path / "out")["settings"]["backend"] == "processes"
    done = run_command(sys.executable, EXAMPLES / "wordcount.py", tmp_path / "missing", "--out", tmp_path / "o2")
    assert done.returncode == 2
    assert one_line_error(done.stderr) == f"corral: error: input not found: {tmp_path / 'missing'}"


FILESYSTEMS_HEADER = "filesystems (URL protocols; tested = corral's tests run jobs on it):"
PROTOCOL_LINE = re.compile(
    r"  (?P<names>[\w-]+(?:, [\w-]+)*) +(?P<dist>\S+) +via (?P<library>\S+)(?: +(?P<tested>tested))?"
)


def backends_listing() -> tuple[dict[str, str], dict[str, dict[str, str | None]]]:
    """``corral backends`` as (executor -> distribution, protocol -> its line's fields)."""
    done = run_command("corral", "backends")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == "executors (--backend):"
    split = lines.index(FILESYSTEMS_HEADER)
    executors = {line.split()[0]: line.split()[1] for line in lines[1:split]}
    filesystems = {}
    for line in lines[split + 1 :]:
        match = PROTOCOL_LINE.fullmatch(line)
        assert match, f"unexpected line {line!r}"
        for name in match["names"].split(", "):
            filesystems[name] = match.groupdict()
    return executors, filesystems


def test_backends_lists_executors_and_filesystems():
    executors, filesystems = backends_listing()
    assert executors["processes"] == executors["threads"] == "corral-mapreduce"
    assert filesystems["file"] == filesystems["local"]  # aliases share one line
    assert filesystems["file"]["names"] == "file, local"
    assert filesystems["file"]["dist"] == filesystems["memory"]["dist"] == "corral-mapreduce"
    assert filesystems["file"]["library"] == "corral-mapreduce"  # the local disk through os calls, not fsspec
    assert filesystems["memory"]["library"] == "fsspec"
    assert filesystems["file"]["tested"] == filesystems["memory"]["tested"] == "tested"


def test_backends_lists_only_data_protocols_whose_library_imports():
    _, filesystems = backends_listing()
    # fsspec's wrappers, caches, archives and toys hold no data of a job's
    for wrapper in ("blockcache", "cached", "filecache", "simplecache", "reference", "dir", "generic",
                    "async_wrapper", "tar", "zip", "jlab", "jupyter", "gist", "github", "data"):
        assert wrapper not in filesystems
    # a protocol whose library does not import here is not offered
    for protocol, module in (("hdfs", "pyarrow"), ("arrow_hdfs", "pyarrow"), ("sftp", "paramiko"),
                             ("abfs", "adlfs"), ("smb", "smbprotocol")):
        assert (protocol in filesystems) == (importlib.util.find_spec(module) is not None), protocol
    for protocol, library in (("s3", "s3fs"), ("gs", "gcsfs")):
        if importlib.util.find_spec(library) is None:
            assert protocol not in filesystems
        else:
            assert filesystems[protocol]["library"] == library
            assert filesystems[protocol]["tested"] == "tested"
    assert filesystems.get("s3", {}).get("names") in (None, "s3, s3a")
    assert filesystems.get("gs", {}).get("names") in (None, "gs, gcs")
    assert filesystems["http"]["tested"] is None  # listed, usable, but no test of corral's runs a job on it


# --- settings sources and precedence ---------------------------------------------------------------


def write_config(folder, pyproject=None, corral_toml=None):
    if pyproject is not None:
        (folder / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.corral]\n' + pyproject)
    if corral_toml is not None:
        (folder / "corral.toml").write_text(corral_toml)


def test_defaults(tmp_path):
    s = load_settings({}, tmp_path, {})
    assert (s.backend, s.split_size, s.map_bin_size, s.reduce_bin_size) == ("processes", 64 << 20, 64 << 20, 256 << 20)
    assert (s.reducers, s.retries, s.memory_budget) == (None, 3, 256 << 20)
    assert (s.keep_intermediate, s.overwrite, s.quiet, s.work_dir) == (False, False, False, None)
    assert s.explicit == set()


def test_each_source_overrides_the_one_below(tmp_path):
    write_config(tmp_path, pyproject='retries = 5\nsplit-size = "1MB"\nreducers = 2\nbackend = "threads"\n')
    s = load_settings({}, tmp_path, {})
    assert (s.retries, s.split_size, s.reducers, s.backend) == (5, 1 << 20, 2, "threads")
    assert s.explicit == {"retries", "split_size", "reducers", "backend"}

    write_config(tmp_path, corral_toml="retries = 6\nsplit_size = 2048\n")
    s = load_settings({}, tmp_path, {})
    assert (s.retries, s.split_size, s.reducers) == (6, 2048, 2)  # corral.toml over pyproject.toml

    env = {"CORRAL_RETRIES": "7", "CORRAL_KEEP_INTERMEDIATE": "yes"}
    s = load_settings({}, tmp_path, env)
    assert (s.retries, s.split_size, s.keep_intermediate) == (7, 2048, True)  # environment over files

    s = load_settings({"retries": "8", "split_size": None}, tmp_path, env)
    assert (s.retries, s.split_size, s.reducers) == (8, 2048, 2)  # flags over everything; None = not given


def test_precedence_through_the_command(words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, pyproject='backend = "threads"\nretries = 5\nreducers = 2\nmemory-budget = "5MB"\n',
                 corral_toml="retries = 6\nreducers = 3\n")
    monkeypatch.setenv("CORRAL_REDUCERS", "4")
    monkeypatch.setenv("CORRAL_MAP_BIN_SIZE", "2KB")
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", "out", "--map-bin-size", "3KB", "-q")
    assert (code, err) == (0, "")
    settings = manifest(tmp_path / "out")["settings"]
    assert settings["backend"] == "threads"  # pyproject.toml
    assert settings["memory_budget"] == 5 << 20  # pyproject.toml
    assert settings["retries"] == 6  # corral.toml
    assert settings["reducers"] == 4  # environment
    assert settings["map_bin_size"] == 3072  # flag
    assert len(parts(tmp_path / "out")) == 4


@pytest.mark.parametrize(
    ("files", "env", "message"),
    [
        ({"corral_toml": "colour = 'blue'\n"}, {}, "corral: error: unknown setting 'colour' in {tmp}/corral.toml"),
        ({"pyproject": "retires = 3\n"}, {}, "corral: error: unknown setting 'retires' in {tmp}/pyproject.toml"),
        ({"pyproject": "retries = -2\n"}, {},
         "corral: error: invalid value for retries in {tmp}/pyproject.toml: -2 is out of range (must be at least 0)"),
        ({"corral_toml": "split-size = 'big'\n"}, {},
         "corral: error: invalid value for split-size in {tmp}/corral.toml: 'big' is not a size like 64MB"),
        ({}, {"CORRAL_RETRIES": "-1"},
         "corral: error: invalid value for CORRAL_RETRIES: -1 is out of range (must be at least 0)"),
        ({}, {"CORRAL_SPLIT_SIZE": "1.5 parsecs"},
         "corral: error: invalid value for CORRAL_SPLIT_SIZE: '1.5 parsecs' is not a size like 64MB"),
        ({}, {"CORRAL_OVERWRITE": "maybe"},
         "corral: error: invalid value for CORRAL_OVERWRITE: 'maybe' is not true or false"),
    ],
)
def test_invalid_settings_name_the_setting_and_exit_2(words, tmp_path, monkeypatch, capsys, files, env, message):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, **files)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", "out")
    assert (code, out) == (2, "")
    assert one_line_error(err) == message.format(tmp=tmp_path)
    assert not (tmp_path / "out").exists()


def test_unreadable_config_file(words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corral.toml").write_text("retries = = 3\n")
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", words, "--out", "out")
    assert code == 2
    assert one_line_error(err).startswith(f"corral: error: cannot read {tmp_path / 'corral.toml'}: ")


def test_invalid_environment_setting_as_a_command(words, tmp_path):
    done = run_command(
        "corral", "run", EXAMPLES / "wordcount.py", words, "--out", tmp_path / "out",
        env=clean_env(CORRAL_RETRIES="-1"),
    )
    assert done.returncode == 2
    assert one_line_error(done.stderr) == (
        "corral: error: invalid value for CORRAL_RETRIES: -1 is out of range (must be at least 0)"
    )
