"""benchmarks/pipeline.py: a quick run gives identical tokens and a prediction per route."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_run_is_identical_and_predicts_every_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERINFER_BENCH_DIR", str(tmp_path))
    import importlib

    import _common
    import pipeline

    importlib.reload(_common)
    importlib.reload(pipeline)
    assert pipeline.BENCH_DIR == tmp_path and os.environ["VERINFER_BENCH_DIR"] == str(tmp_path)
    loopback, simulated = pipeline.main(["--quick"])
    assert [r.name for r in loopback] == ["single engine", "pipeline, 2 stages", "pipeline, 3 stages"]
    assert all(r.identical for r in loopback)
    assert [len(r.boundary_bytes) for r in loopback[1:]] == [1, 2]
    assert len(simulated) == 3 and all(r.predicted_s > 0 and r.measured_s > 0 for r in simulated)
