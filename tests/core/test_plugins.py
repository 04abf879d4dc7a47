"""Plugins as third parties ship them: an entry point of the group ``corral`` in an installed
distribution (here a ``*.dist-info`` folder on PYTHONPATH, which is what pip installs), loaded by the
real ``corral`` command. Mistakes in a plugin are one-line usage errors naming it, never tracebacks."""

from __future__ import annotations

from .util import EXAMPLES, corral_with, install_plugin


def test_a_misspelt_hook_is_an_error_naming_plugin_distribution_and_hook(tmp_path):
    install_plugin(tmp_path / "site", "corral-typo", "typo_plugin", """
        from corral import hookimpl

        @hookimpl
        def corral_filesytem(url):
            return None
    """)
    done = corral_with(tmp_path / "site", "backends")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("corral: error: plugin 'typo_plugin' (distribution corral-typo 0.1) implements "
                           "'corral_filesytem', which is not a corral hook (see corral.hookspecs)\n")


def test_a_hook_with_wrong_arguments_is_an_error_too(tmp_path):
    install_plugin(tmp_path / "site", "corral-badargs", "badargs_plugin", """
        from corral.plugins import hookimpl  # the old import still works

        @hookimpl
        def corral_filesystem(url, mode):
            return None
    """)
    done = corral_with(tmp_path / "site", "run", EXAMPLES / "wordcount.py", EXAMPLES / "data" / "sample.txt",
                       "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr == ("corral: error: plugin 'badargs_plugin' (distribution corral-badargs 0.1): invalid "
                           "implementation of 'corral_filesystem': Argument(s) {'mode'} are declared in the "
                           "hookimpl but can not be found in the hookspec\n")
    assert not (tmp_path / "out").exists()


def test_a_correct_plugin_loads(tmp_path):
    install_plugin(tmp_path / "site", "corral-fine", "fine_plugin", """
        import corral

        @corral.hookimpl
        def corral_executors():
            return [corral.ExecutorSpec("fine", lambda settings: None, "a test plugin")]
    """)
    done = corral_with(tmp_path / "site", "backends")
    assert done.returncode == 0, done.stderr
    assert any(line.split()[:2] == ["fine", "corral-fine"] for line in done.stdout.splitlines())


def test_hookimpl_is_one_marker_everywhere():
    import corral
    import corral.hookspecs
    import corral.plugins

    assert corral.hookimpl is corral.hookspecs.hookimpl is corral.plugins.hookimpl
