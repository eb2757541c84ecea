"""benchmarks/fidelity.py: window cutting, figures on a tiny random model, clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fidelity


def test_windows_start_with_bos_and_tile_the_text() -> None:
    windows = fidelity.windows_of(list(range(10, 30)), bos=1, size=5, count=100)
    assert windows == [[1, 10, 11, 12, 13], [1, 14, 15, 16, 17], [1, 18, 19, 20, 21],
                       [1, 22, 23, 24, 25], [1, 26, 27, 28, 29]]
    assert fidelity.windows_of(list(range(10, 30)), bos=1, size=5, count=2) == windows[:2]


def test_measures_engine_against_transformers(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "fidelity.json"
    argv = ["--model", str(tiny_model), "--window", "64", "--windows", "3", "--json", str(out)]
    assert fidelity.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["windows"] == 3 and record["tokens"] == 3 * 63
    # The integer engine tracks the float model closely even on random weights; a benchmark
    # that misaligned positions or compared the wrong tensors would land far from these.
    assert abs(record["ppl_ratio"] - 1) < 0.05
    assert record["top1_agreement"] > 0.8
    assert record["cosine_mean"] > 0.99
    assert record["verinfer_ppl"] > 1 and record["reference_ppl"] > 1


def test_missing_heldout_text_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fidelity.main(["--model", str(tmp_path)]) == 2
    assert "heldout.txt not found" in capsys.readouterr().err


def test_text_shorter_than_a_window_is_a_clear_error(tiny_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"
    short.mkdir()
    for f in tiny_model.iterdir():
        (short / f.name).write_bytes(f.read_bytes())
    (short / "heldout.txt").write_text("too short")
    assert fidelity.main(["--model", str(short), "--window", "256", "--windows", "1"]) == 2
    assert "shorter than one window" in capsys.readouterr().err
