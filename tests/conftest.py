"""Shared test set-up: offline hub, a persistent repo-local cache, the S1 subject."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

import braindive as bd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
bd.set_cache_dir(REPO / ".cache" / "braindive")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores")
    config.addinivalue_line("markers", "browser: drives headless Chromium through Playwright")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture(scope="session")
def s1():
    return bd.load_subject("S1")


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard) for the whole test session, shut down at its end; its workers
    get ``braindive`` and ``training`` through ``runtime_env`` (``braindive.batch.cluster``)."""
    ray = pytest.importorskip("ray")
    import training
    from braindive.batch.cluster import connect

    connect(num_cpus=2, modules=(bd, training))
    yield ray
    ray.shutdown()
