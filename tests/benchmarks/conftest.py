"""Makes the benchmark scripts importable and gives them a tiny random checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from verinfer.engine.testing import tiny_config, write_random_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint with a held-out text, like models/demo but random."""
    out = write_random_checkpoint(tmp_path_factory.mktemp("bench-tiny"), tiny_config(), seed=3)
    text = "The return value is a list of the names in the module, sorted by name. " * 8
    (out / "heldout.txt").write_text(text, encoding="utf-8")
    return out
