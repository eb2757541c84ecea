"""Shared fixtures: a tiny random checkpoint, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from verinfer.engine import Engine
from verinfer.engine.testing import tiny_config, write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path: Path = write_random_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_config(), seed=1)
    return Engine.load(path)
