"""Fixtures shared by every test directory: a tiny random checkpoint and its engine, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from verinfer.engine import Engine
from verinfer.engine.testing import tiny_config, write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_config(), seed=1)


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir: Path) -> Engine:
    return Engine.load(tiny_dir)
