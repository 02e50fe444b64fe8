"""Shared fixtures: real photos (bundled sample, ../shared/data when present), a private cache, one loaded backbone."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

# A run started in the background of a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would every
# command a test starts: Python then never turns Ctrl-C into KeyboardInterrupt, and the interrupt tests would see
# commands run to the end. Give this process Python's own handler; the commands it starts get the default on exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests never touch the user's cache: one private cache folder per test session (set before headstart is imported).
os.environ["HEADSTART_CACHE_DIR"] = tempfile.mkdtemp(prefix="headstart-test-cache-")
atexit.register(shutil.rmtree, os.environ["HEADSTART_CACHE_DIR"], ignore_errors=True)  # no litter left in /tmp
# The per-machine store of converted backbones (shared by every cache folder) is private to the session too.
os.environ["HEADSTART_ENGINE_DIR"] = tempfile.mkdtemp(prefix="headstart-test-engines-")
atexit.register(shutil.rmtree, os.environ["HEADSTART_ENGINE_DIR"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on a network

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "src" / "headstart" / "sample_data" / "pets"


#: Fixtures that run a real backbone (train a model, load the network, serve one): a test that uses one, directly or
#: through another fixture, is marked slow whatever its own decorators say, so `pytest -m "not slow"` (the fast
#: subset, DEVELOPERS.md) never waits on a backbone. Tests that run a backbone themselves carry @pytest.mark.slow.
SLOW_FIXTURES = frozenset({"sample_model", "lite0", "served_models", "server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test cleanly when this clone has none."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not here (fresh clone without ../shared/data)")
    return path


def run_cli(*args: str | Path):
    """Invoke the ``headstart`` CLI in this process, stdout and stderr kept apart (click < 8.2 needs
    ``mix_stderr=False``); exceptions are not caught, so a traceback fails the test."""
    from typer.testing import CliRunner

    from headstart.cli import app

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # (newer click keeps them apart anyway)
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def sample() -> Path:
    """The bundled 12-breed Oxford-IIIT Pet sample (train/ and test/)."""
    return SAMPLE


@pytest.fixture(scope="session")
def lite0():
    """The default offline backbone, loaded once."""
    from headstart.features.backbones import load_backbone

    return load_backbone("tf_efficientnet_lite0")


@pytest.fixture()
def cache(tmp_path: Path):
    """A fresh, empty feature cache for one test."""
    from headstart.features import FeatureCache

    return FeatureCache(tmp_path / "features.sqlite")


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory) -> Path:
    """The probe trained once per test session on the bundled sample's train/ photos (its model file path).

    Tests that need *a* trained model share this one; tests about training itself train their own. On the default
    offline backbone named (not ``auto``): the tests of what a model does were written around lite0's features.
    """
    from headstart.workflows.training import train

    return train(
        SAMPLE / "train",
        backbone="tf_efficientnet_lite0",
        out=tmp_path_factory.mktemp("sample-model") / "pets.safetensors",
    ).model_path


@pytest.fixture()
def cli():
    """Run one ``headstart`` command in this process: ``cli("train", folder, "--json")`` → click's Result, stdout
    and stderr apart (exceptions not caught: a traceback fails the test). Modules call :func:`run_cli` directly."""
    return run_cli
