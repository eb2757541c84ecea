"""benchmarks/engine.py: prompts, child measurements, ratios, skipping llama.cpp, bad options."""

from __future__ import annotations

from pathlib import Path

import pytest

import _common
import engine


def test_prompts_are_fixed_and_inside_the_vocabulary() -> None:
    a = engine.prompts(vocab=320, batch=3)
    assert a == engine.prompts(vocab=320, batch=3)
    assert len(a) == 3 and all(len(p) == engine.PROMPT_LEN for p in a)
    assert len({tuple(p) for p in a}) == 3
    assert min(min(p) for p in a) >= 3 and max(max(p) for p in a) < 320


def _child(engine_name: str, path: Path, batch: int) -> dict:
    argv = ["--child", engine_name, "--path", str(path), "--batch", str(batch),
            "--new-tokens", "2", "--repeats", "1"]
    result = _common.run_child(argv, timeout=300)
    assert "error" not in result, result
    return result


def test_children_measure_verinfer_and_transformers(tiny_model: Path) -> None:
    alone = _child("verinfer", tiny_model, 1)
    batched = _child("verinfer", tiny_model, 2)
    reference = _child("transformers", tiny_model, 2)
    for result in (alone, batched, reference):
        assert result["prefill_tok_s"] > 0 and result["decode_tok_s"] > 0
        assert result["peak_rss_mb"] > 50  # the child's own peak: torch alone is more
        assert len(result["timings"]) == 1
    # Prompt 0 is the same at both batch sizes, and the engine is exact row by row.
    assert alone["row0_output_hash"] == batched["row0_output_hash"]
    assert alone["model_id"] == batched["model_id"]


def test_ratio_pairs_rows_of_the_same_model_and_batch() -> None:
    rows = [
        {"model": "demo", "batch": 1, "engine": "verinfer", "decode_tok_s": 30.0},
        {"model": "demo", "batch": 1, "engine": "transformers", "decode_tok_s": 10.0},
        {"model": "demo", "batch": 8, "engine": "transformers", "decode_tok_s": 60.0},
    ]
    assert engine.ratio(rows, rows[0], "transformers", "decode_tok_s") == "3.00x"
    assert engine.ratio(rows, rows[0], "llamacpp", "decode_tok_s") == "-"


def test_llama_cpp_is_skipped_with_a_note_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "llama_cpp_available", lambda python: "llama-cpp-python is not installed")
    rows, notes = engine.measure(["demo"], ["llamacpp"], [1], new_tokens=1, repeats=1)
    assert rows == []
    assert notes == ["llama.cpp skipped: llama-cpp-python is not installed"]


def test_isa_restricts_the_verinfer_child(tiny_model: Path) -> None:
    """--isa's environment reaches the child: its kernels and torch run the named route."""
    result = _common.run_child(["--child", "verinfer", "--path", str(tiny_model), "--batch", "1",
                                "--new-tokens", "1", "--repeats", "1"], timeout=300,
                               env={"VERINFER_ISA": "scalar", **engine.ISA_ENV["scalar"]})
    assert "error" not in result, result
    assert result["isa"] == "scalar, torch DEFAULT"
    assert set(engine.ISA_ENV) == set(engine.ISAS) - {"native"}


@pytest.mark.parametrize("argv", [["--engines", "vllm"], ["--models", "7b"], ["--batches", "x"],
                                  ["--new-tokens", "0"], ["--isa", "sse9"]])
def test_bad_options_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        engine.main(argv)
    assert exc.value.code == 2
