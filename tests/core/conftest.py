import os

import pytest


@pytest.fixture(scope="package", autouse=True)
def _isolated_settings(tmp_path_factory):
    """Every core test runs from an empty folder with no ``CORRAL_*`` variables, so that no
    pyproject.toml / corral.toml / environment of the developer changes the settings under test."""
    home = tmp_path_factory.mktemp("cwd")
    old_cwd = os.getcwd()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CORRAL_")}
    os.chdir(home)
    yield home
    os.chdir(old_cwd)
    os.environ.update(saved)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty folder of the test's own, made the current one (``_isolated_settings`` cleared CORRAL_*)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
