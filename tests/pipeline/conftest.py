"""Fixtures of the pipeline tests: an 8-layer tiny checkpoint and stage node processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stagefarm import SPLIT_LAYERS, StageFarm

from verinfer.engine import Engine
from verinfer.engine.testing import tiny_config, write_random_checkpoint


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint with 8 layers, to split over up to 4 stages."""
    config = tiny_config(num_hidden_layers=SPLIT_LAYERS)
    return write_random_checkpoint(tmp_path_factory.mktemp("split"), config, seed=3)


@pytest.fixture(scope="session")
def split_engine(split_dir: Path) -> Engine:
    return Engine.load(split_dir)


@pytest.fixture
def stage_farm(split_dir: Path, tmp_path: Path) -> Iterator[StageFarm]:
    farm = StageFarm(split_dir, tmp_path)
    yield farm
    for proc in farm.procs:
        proc.stop()
