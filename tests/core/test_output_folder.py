"""What a run does to its output folder before and at its commit (issue 10, defects 1, 5, 7, 8, 11):
it never deletes an input, refuses an unwritable OUT in one line, replaces the old output only when
the new one is committed, refuses a split size that would make a million splits, and keeps secrets
out of the manifest."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

import corral
from corral.options import Option
from corral.plugins import get_plugin_manager

from . import jobs
from .util import EXAMPLES, cli, counts, manifest, parts, run_command, word_counter

TEXT = "one two three\ntwo three\nthree\n"
EXPECTED = {"one": 1, "two": 2, "three": 3}


def _one_line(err: str) -> str:
    (line,) = err.strip().splitlines()
    return line


# --- defect 1: --overwrite never deletes the input --------------------------------------------------------


def test_the_input_file_as_the_output_is_refused_before_anything_is_deleted(tmp_path, capsys):
    data = tmp_path / "f.txt"
    data.write_text(TEXT)
    err = _refused(capsys, data, data, kept=data)
    assert err == f"corral: error: input {data} is the output folder {data}"


def _refused(capsys, inputs, out, kept):
    """Run the word count on ``inputs`` into ``out`` with --overwrite: exit 2, ``kept`` untouched; the error's line."""
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", inputs, "--out", out, "--overwrite")
    assert code == 2
    assert kept.read_text() == TEXT
    return _one_line(err)


def test_the_input_folder_seen_through_a_symlink_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text(TEXT)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    err = _refused(capsys, tmp_path / "data", tmp_path / "link", kept=(tmp_path / "data" / "f.txt"))
    assert err == (f"corral: error: input {tmp_path / 'data'} is the output folder {tmp_path / 'link'} "
                   f"(both resolve to {tmp_path / 'data'})")


def test_the_input_spelled_another_way_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text(TEXT)
    err = _refused(capsys, f"{tmp_path}/data/../data/f.txt", f"{tmp_path}//data/", kept=(tmp_path / "data" / "f.txt"))
    assert "is inside the output folder" in err


def test_an_input_symlinked_into_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "real.txt").write_text(TEXT)
    (tmp_path / "in.txt").symlink_to(tmp_path / "out" / "real.txt")
    err = _refused(capsys, tmp_path / "in.txt", tmp_path / "out", kept=(tmp_path / "out" / "real.txt"))
    assert err == (f"corral: error: input {tmp_path / 'in.txt'} is inside the output folder "
                   f"{tmp_path / 'out'} (both resolve to {tmp_path / 'out'})")


def test_a_file_of_an_input_folder_as_the_output_is_refused(tmp_path, capsys):
    """The output named as one of the many files of a listed folder (each file is not looked at alone:
    its folder is, once)."""
    (tmp_path / "data").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "data" / name).write_text(TEXT)
    err = _refused(capsys, tmp_path / "data", tmp_path / "data" / "b.txt", kept=(tmp_path / "data" / "b.txt"))
    assert err == f"corral: error: input {tmp_path / 'data' / 'b.txt'} is the output folder " \
                  f"{tmp_path / 'data' / 'b.txt'}"


def test_a_symlink_among_the_files_of_an_input_folder_into_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "real.txt").write_text(TEXT)
    (tmp_path / "data").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "data" / name).write_text(TEXT)
    (tmp_path / "data" / "z.txt").symlink_to(tmp_path / "out" / "real.txt")
    err = _refused(capsys, tmp_path / "data", tmp_path / "out", kept=(tmp_path / "out" / "real.txt"))
    assert err == (f"corral: error: input {tmp_path / 'data' / 'z.txt'} is inside the output folder "
                   f"{tmp_path / 'out'} (both resolve to {tmp_path / 'out'})")


def test_an_input_folder_reached_through_a_symlink_into_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "out" / "sub" / name).write_text(TEXT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in").symlink_to(tmp_path / "out" / "sub")
    err = _refused(capsys, tmp_path / "data", tmp_path / "out", kept=(tmp_path / "out" / "sub" / "a.txt"))
    assert err == (f"corral: error: input {tmp_path / 'data' / 'in' / 'a.txt'} is inside the output "
                   f"folder {tmp_path / 'out'} (both resolve to {tmp_path / 'out'})")


def test_an_output_inside_the_input_folder_is_fine(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text(TEXT)
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", tmp_path / "data", "--out",
                       tmp_path / "data" / "_out", "--backend", "threads", "-q")
    assert (code, err) == (0, "")
    assert counts(tmp_path / "data" / "_out") == EXPECTED


# --- defect 5: an unwritable OUT --------------------------------------------------------------------------


def test_an_earlier_output_inside_the_input_folder_is_refused_as_input(tmp_path, capsys):
    """The second run into ``data/out`` would read the first one's part files as input, then replace
    them: refused, the part kept. (Many files in folders without links are settled a folder at a time:
    here the folder of the part files is inside OUT, and that is seen.)"""
    (tmp_path / "data" / "logs").mkdir(parents=True)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "data" / "logs" / name).write_text(TEXT)
    (tmp_path / "data" / "out").mkdir()
    (tmp_path / "data" / "out" / "part-00000").write_text(TEXT)
    err = _refused(capsys, tmp_path / "data", tmp_path / "data" / "out",
                   kept=(tmp_path / "data" / "out" / "part-00000"))
    assert err == (f"corral: error: input {tmp_path / 'data' / 'out' / 'part-00000'} is inside the output "
                   f"folder {tmp_path / 'data' / 'out'}")


def test_an_output_where_nothing_can_be_written_is_one_line_and_exit_2(tmp_path):
    """/sys refuses to make folders, to root too (a read-only mount behaves the same)."""
    (tmp_path / "in.txt").write_text(TEXT)
    started = time.monotonic()
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", "/sys/corral-out")
    assert done.returncode == 2
    assert done.stderr in ("corral: error: cannot write to the output folder /sys/corral-out: Operation not "
                           "permitted\n", "corral: error: cannot write to the output folder /sys/corral-out: "
                           "Read-only file system\n", "corral: error: cannot write to the output folder "
                           "/sys/corral-out: Permission denied\n")
    assert time.monotonic() - started < 5  # no attempts, no retries


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the /sys test stands in")
def test_a_read_only_output_folder_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", stat.S_IRUSR | stat.S_IXUSR)
    try:
        done = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out")
    finally:
        os.chmod(tmp_path / "out", stat.S_IRWXU)
    assert (done.returncode, done.stderr) == (
        2, f"corral: error: cannot write to the output folder {tmp_path / 'out'}: Permission denied\n")


def test_an_existing_file_as_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "out.txt").write_text("keep me\n")
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out.txt",
                       "--overwrite")
    assert code == 2
    assert _one_line(err) == (f"corral: error: --out {tmp_path / 'out.txt'} is a file: corral writes a folder of part "
                              "files there (choose another --out)")
    assert (tmp_path / "out.txt").read_text() == "keep me\n"


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT)
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--backend", "nope")
    assert code == 2 and "unknown backend 'nope'" in err
    assert not (tmp_path / "out").exists()


# --- defect 7: --overwrite replaces the old output only when the new one commits ----------------------------


def test_a_failing_overwrite_keeps_the_previous_output(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT)
    out = tmp_path / "out"
    code, _, _ = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", out, "--reducers",
                     "3", "--backend", "threads", "-q")
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    old = manifest(out)
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:AlwaysFails", tmp_path / "in.txt", "--out", out,
                       "--overwrite", "--backend", "threads", "--retries", "0")
    assert code == 1 and "cannot parse" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # parts and _SUCCESS
    assert manifest(out) == old  # still the manifest that goes with them
    failed = json.loads((out / "_corral" / "manifest.unfinished.json").read_text())
    assert failed["status"] == "failed" and failed["run_id"] != old["run_id"]


def test_overwrite_replaces_every_old_part_at_the_commit(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT)
    out = tmp_path / "out"
    assert cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", out, "--reducers", "5",
               "--backend", "threads", "-q")[0] == 0
    (out / "notes.txt").write_text("an old file of the output folder\n")
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", out, "--reducers",
                       "2", "--overwrite", "--backend", "threads", "-q")
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_corral", "part-00000", "part-00001"]
    assert counts(out) == EXPECTED
    assert not (out / "_corral" / "manifest.unfinished.json").exists()


def test_overwrite_removes_links_in_the_output_never_what_they_point_to(tmp_path, capsys):
    """A link in OUT (to a folder, to a file) goes with the old output; the files it points to stay. (Listing
    OUT as inputs are listed follows links: the old parts' replacement deleted the files behind them.)"""
    (tmp_path / "in.txt").write_text(TEXT)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    argv = ["run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", out, "--backend", "threads", "-q"]
    assert cli(capsys, *argv)[0] == 0
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not the output's\n")
    (out / "folder-link").symlink_to(elsewhere)
    (out / "file-link").symlink_to(elsewhere / "precious.txt")
    (out / "old-folder").mkdir()
    (out / "old-folder" / "part-00009").write_text("an old part\n")
    assert cli(capsys, *argv, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_corral", "part-00000"]
    assert (elsewhere / "precious.txt").read_text() == "not the output's\n"
    assert counts(out) == EXPECTED


# --- defect 8: split sizes ---------------------------------------------------------------------------------


def test_a_fractional_number_of_bytes_is_refused(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT)
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--split-size", "1.5")
    assert code == 2
    assert _one_line(err) == ("corral: error: invalid value for --split-size: '1.5' is not a whole number of bytes "
                              "(write 1.5KB, 1.5MB…)")
    assert corral.parse_size("1.5KB") == 1536


def test_a_split_size_that_would_cut_a_million_splits_is_refused(tmp_path):
    (tmp_path / "in.txt").write_bytes((b"x" * 1023 + b"\n") * 1024)  # 1 MB
    started = time.monotonic()
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--split-size", "1")
    assert done.returncode == 2
    assert done.stderr == ("corral: error: invalid value for --split-size: 1 bytes would cut the 1048576 bytes of "
                           "input into 1048576 splits; splits under 64KB are allowed up to 10000 (use --split-size "
                           "64KB or more)\n")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists()


def test_small_splits_of_a_small_input_still_work(tmp_path):
    text = "".join(f"w{i % 13} x\n" for i in range(300))
    (tmp_path / "in.txt").write_text(text)
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--split-size", "100", "-q", "--backend", "threads")
    assert (done.returncode, done.stderr) == (0, "")
    assert counts(tmp_path / "out") == word_counter(text)


# --- defect 11: secrets in the manifest ----------------------------------------------------------------------

class SecretOptions:
    """A plugin with two secret options: a value, and repeatable KEY=VALUE items."""

    def __init__(self):
        self.options = [
            Option("api-token", str, None, "a secret of a test plugin", "TOKEN", secret=True),
            Option("header", lambda v: list(v) if isinstance(v, list) else [v], None, "KEY=VALUE", "KEY=VALUE",
                   repeat=True, secret=True),
        ]

    @corral.hookimpl
    def corral_options(self):
        return self.options


@pytest.fixture
def secret_options():
    get_plugin_manager().register(SecretOptions(), name="core-test-secrets")
    try:
        yield
    finally:
        get_plugin_manager().unregister(name="core-test-secrets")


def test_secret_settings_are_redacted_and_the_manifest_is_private(tmp_path, capsys, secret_options):
    (tmp_path / "in.txt").write_text(TEXT)
    code, _, err = cli(capsys, "run", f"{jobs.__file__}:WordCount", tmp_path / "in.txt", "--out", tmp_path / "out",
                       "--backend", "threads", "--api-token", "hunter2", "--header", "X-Key=s3cr3t",
                       "--header", "X-Other=also", "--arg", "visible=yes", "-q")
    assert code == 0, err
    path = tmp_path / "out" / "_corral" / "manifest.json"
    text = path.read_text()
    assert "hunter2" not in text and "s3cr3t" not in text and "also" not in text
    settings = manifest(tmp_path / "out")["settings"]
    assert settings["api_token"] == "<redacted>"
    assert settings["header"] == ["X-Key=<redacted>", "X-Other=<redacted>"]
    assert settings["arg"] == ["visible=yes"]  # --arg values are recorded (the README says so)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(parts(tmp_path / "out")[0].stat().st_mode) & 0o044  # the output itself stays readable


def test_the_environment_of_remote_functions_is_a_secret_option():
    from corral.remote import ENVIRONMENT

    assert ENVIRONMENT.secret is True
