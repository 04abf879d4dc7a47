"""Typed settings: ``corral.Settings``, options plugins declare (shared or conflicting), and
configuration mistakes that name where the bad value came from."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import corral
from corral.config import load_settings
from corral.options import Option, int_in_range
from corral.settings import CORE_OPTIONS

from .util import EXAMPLES, clean_env, corral_with, install_plugin, manifest, run_command

SAMPLE = EXAMPLES / "data" / "sample.txt"
DEPTH = Option("depth", int_in_range(1), 2, "a plugin's option", "N")


# --- the Settings type ---------------------------------------------------------------------------


def test_settings_defaults_are_the_options_defaults():
    s = corral.Settings()
    assert (s.backend, s.split_size, s.reducers, s.retries, s.arg, s.verbose) == (
        "processes", 64 << 20, None, 3, (), 0)
    assert s.explicit == frozenset() and s.source("backend") == "default"
    for option in CORE_OPTIONS:
        field = getattr(s, option.dest)  # every core option is a field named by its dest
        assert field == option.default and s.value(option) == option.default
    assert [o.name for o in CORE_OPTIONS][:2] == ["backend", "split-size"]


def test_a_plugins_option_reads_typed_with_its_default():
    assert corral.Settings().value(DEPTH) == 2  # no plugin declared it: the Option's default
    s = corral.Settings(plugin_values={"depth": 5})
    assert s.value(DEPTH) == 5
    assert dataclasses.replace(s, reducers=4).reducers == 4


def test_load_settings_remembers_where_each_value_came_from(tmp_path):
    (tmp_path / "corral.toml").write_text('backend = "threads"\nretries = 5\n')
    s = load_settings({"reducers": "3", "split_size": None}, tmp_path, {"CORRAL_RETRIES": "6"})
    assert (s.backend, s.retries, s.reducers) == ("threads", 6, 3)
    assert s.explicit == {"backend", "retries", "reducers"}
    assert s.source("backend") == f"backend in {tmp_path / 'corral.toml'}"
    assert s.source("retries") == "CORRAL_RETRIES" and s.source(CORE_OPTIONS[0]) == s.source("backend")
    assert s.source("reducers") == "--reducers" and s.source("split-size") == "default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.reducers = 4  # type: ignore[misc]


def test_the_manifest_keeps_every_setting(tmp_path):
    done = run_command("corral", "run", EXAMPLES / "wordcount.py", SAMPLE, "--out", tmp_path / "out", "-q",
                       "--arg", "a=1", "--reducers", "2")
    assert done.returncode == 0, done.stderr
    settings = manifest(tmp_path / "out")["settings"]
    assert {o.dest for o in CORE_OPTIONS} | {"progress"} <= set(settings)
    assert (settings["arg"], settings["reducers"], settings["progress"]) == (["a=1"], 2, False)
    assert "explicit" not in settings and "sources" not in settings


# --- options declared by plugins -----------------------------------------------------------------

SHARED = """
    from corral import Option, int_in_range

    DEPTH = Option("depth", int_in_range(1), 2, "how deep (a test plugin's option)", "N")
"""
USES_SHARED = """
    import sys

    from corral import hookimpl
    from shared_options import DEPTH

    @hookimpl
    def corral_options():
        return [DEPTH]

    @hookimpl
    def corral_job_started(event):
        print(f"{__name__}: depth={event.settings.value(DEPTH)}", file=sys.stderr)
"""


def test_the_same_option_from_two_plugins_is_declared_once(tmp_path):
    site = tmp_path / "site"
    install_plugin(site, "corral-shared", "shared_options", SHARED)
    install_plugin(site, "corral-one", "plugin_one", USES_SHARED)
    install_plugin(site, "corral-two", "plugin_two", USES_SHARED)
    done = corral_with(site, "run", "--help")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines() if "how deep" in line] == ["--depth"]
    for argv, env, depth in [((), {}, 2), (("--depth", "3"), {}, 3), ((), {"CORRAL_DEPTH": "4"}, 4)]:
        out = tmp_path / f"out{depth}"
        done = corral_with(site, "run", EXAMPLES / "wordcount.py", SAMPLE, "--out", out, "-q", *argv, **env)
        assert done.returncode == 0, done.stderr
        assert sorted(done.stderr.splitlines()) == [f"plugin_one: depth={depth}", f"plugin_two: depth={depth}"]
        assert manifest(out)["settings"]["depth"] == depth
    done = corral_with(site, "run", EXAMPLES / "wordcount.py", SAMPLE, "--out", tmp_path / "bad", "--depth", "0")
    assert (done.returncode, done.stderr) == (
        2, "corral: error: invalid value for --depth: 0 is out of range (must be at least 1)\n")


def test_two_different_options_with_one_name_are_an_error(tmp_path):
    site = tmp_path / "site"
    for dist, module in [("corral-one", "plugin_one"), ("corral-two", "plugin_two")]:
        install_plugin(site, dist, module, """
            from corral import Option, hookimpl, int_in_range

            @hookimpl
            def corral_options():
                return [Option("depth", int_in_range(1), 2, "how deep", "N")]
        """)
    done = corral_with(site, "run", EXAMPLES / "wordcount.py", SAMPLE, "--out", tmp_path / "out")
    assert (done.returncode, done.stdout) == (2, "")
    first, second = sorted(["plugin 'plugin_one' (corral-one)", "plugin 'plugin_two' (corral-two)"])
    by = done.stderr.split("declared twice, by ")[1].split(":")[0]
    assert sorted(by.split(" and by ")) == [first, second]
    assert done.stderr == (f"corral: error: option --depth is declared twice, by {by}: plugins share an option "
                           "by returning the same Option object\n")
    assert not (tmp_path / "out").exists()


def test_a_plugin_option_named_like_a_core_option_is_an_error(tmp_path):
    install_plugin(tmp_path / "site", "corral-retry", "retry_plugin", """
        from corral import Option, hookimpl, int_in_range

        @hookimpl
        def corral_options():
            return [Option("retries", int_in_range(0), 9, "more retries", "N")]
    """)
    done = corral_with(tmp_path / "site", "run", "--help")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("corral: error: option --retries is declared twice, by corral itself (corral-mapreduce) "
                           "and by plugin 'retry_plugin' (corral-retry): plugins share an option by returning the "
                           "same Option object\n")


# --- configuration errors name their source ---------------------------------------------------------



def available_backends() -> str:
    done = run_command("corral", "backends")
    lines = done.stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("filesystems (URL protocols"))
    return ", ".join(sorted(line.split()[0] for line in lines[1:end]))


@pytest.mark.parametrize(
    ("where", "source"),
    [("toml", "backend in {tmp}/corral.toml"), ("env", "CORRAL_BACKEND"), ("flag", "--backend")],
)
def test_an_unknown_backend_says_where_it_came_from(tmp_path, where, source):
    argv = ["run", EXAMPLES / "wordcount.py", SAMPLE, "--out", tmp_path / "out"]
    env = clean_env()
    if where == "toml":
        (tmp_path / "corral.toml").write_text('backend = "nope"\n')
    elif where == "env":
        env["CORRAL_BACKEND"] = "nope"
    else:
        argv += ["--backend", "nope"]
    done = run_command("corral", *argv, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"corral: error: unknown backend 'nope' (from {source.format(tmp=tmp_path)}; "
                           f"available: {available_backends()})\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("toml", "2.7", "reducers in {tmp}/corral.toml: 2.7 is not a whole number"),
        ("toml", "3.0", "reducers in {tmp}/corral.toml: 3.0 is not a whole number"),
        ("toml", '"2.7"', "reducers in {tmp}/corral.toml: '2.7' is not a whole number"),
        ("env", "2.7", "CORRAL_REDUCERS: '2.7' is not a whole number"),
        ("flag", "2.7", "--reducers: '2.7' is not a whole number"),
        ("flag", "3.0", "--reducers: '3.0' is not a whole number"),
    ],
)
def test_fractional_reducers_are_refused_not_truncated(tmp_path, where, value, message):
    argv = ["run", EXAMPLES / "wordcount.py", SAMPLE, "--out", tmp_path / "out"]
    env = clean_env()
    if where == "toml":
        (tmp_path / "corral.toml").write_text(f"reducers = {value}\n")
    elif where == "env":
        env["CORRAL_REDUCERS"] = value
    else:
        argv += ["--reducers", value]
    done = run_command("corral", *argv, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"corral: error: invalid value for {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "out").exists()


def test_whole_reducers_from_every_source_are_accepted(tmp_path):
    (tmp_path / "corral.toml").write_text("reducers = 3\n")
    assert load_settings({}, tmp_path, {}).reducers == 3
    assert load_settings({}, tmp_path, {"CORRAL_REDUCERS": " 4 "}).reducers == 4
    assert load_settings({"reducers": "5"}, tmp_path, {}).reducers == 5


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["corral", "run", "{job}"],
         "corral run: error: the following arguments are required: INPUT, --out/-o (see: corral run --help)"),
        (["corral", "run", "{job}", "{input}"],
         "corral run: error: the following arguments are required: --out/-o (see: corral run --help)"),
        (["corral", "run"],
         "corral run: error: the following arguments are required: JOB, INPUT, --out/-o (see: corral run --help)"),
        (["corral"], "corral: error: the following arguments are required: COMMAND (see: corral --help)"),
        (["corral", "deploy"],
         "corral deploy: error: the following arguments are required: JOB (see: corral deploy --help)"),
        (["corral", "run", "{job}", "{input}", "--out"],
         "corral run: error: argument --out/-o: expected one argument (see: corral run --help)"),
        ([sys.executable, "{job}"],
         "wordcount.py: error: the following arguments are required: INPUT, --out/-o (see: wordcount.py --help)"),
        ([sys.executable, "{job}", "{input}"],
         "wordcount.py: error: the following arguments are required: --out/-o (see: wordcount.py --help)"),
    ],
)
def test_a_missing_argument_is_one_line_pointing_to_help(tmp_path, argv, line):
    fill = {"job": EXAMPLES / "wordcount.py", "input": SAMPLE}
    done = run_command(*[str(a).format(**fill) for a in argv], cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")
