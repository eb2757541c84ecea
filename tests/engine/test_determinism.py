"""Bit-exactness: the same request gives the same logits bytes and tokens with 1 or 2 threads,
alone or inside a batch of other prompts, with prefill in one chunk or several, in a fresh
process — and reproduces the committed golden vectors on every instruction-set route of the
kernels this CPU can run, on the torch path, and with torch held to its default (no-SIMD) code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from verinfer.engine import Engine, SamplingParams, kernels

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "vectors" / "engine"
sys.path.insert(0, str(GOLDEN_DIR))
import make_golden

PROMPT = "Determinism is sacred: the same request, the same bytes."
SAMPLED = SamplingParams(max_tokens=20, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
GREEDY = SamplingParams(max_tokens=20)

_PROBE = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from verinfer.engine import Engine, SamplingParams
engine = Engine.load(sys.argv[1])
out = []
for params in (SamplingParams(max_tokens=20), SamplingParams(max_tokens=20, temperature=0.9, top_k=50, top_p=0.95, seed=1234)):
    r = engine.generate([sys.argv[3]], params)[0]
    out.append([r.token_ids, r.logits_hash])
print(json.dumps({"threads": torch.get_num_threads(), "results": out}))
"""


def _fingerprint(engine: Engine, **kwargs: object) -> list[list[object]]:
    out = []
    for params in (GREEDY, SAMPLED):
        r = engine.generate([PROMPT], params, **kwargs)[0]  # type: ignore[arg-type]
        out.append([r.token_ids, r.logits_hash])
    return out


def _probe(model_dir: Path, threads: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model_dir), str(threads), PROMPT],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(done.stdout)


def test_thread_count_and_fresh_process_change_nothing(tiny_dir: Path, tiny_engine: Engine) -> None:
    one, two = _probe(tiny_dir, 1), _probe(tiny_dir, 2)
    assert one["threads"] == 1 and two["threads"] == 2
    assert one["results"] == two["results"] == _fingerprint(tiny_engine)


def test_batch_composition_changes_nothing(tiny_engine: Engine) -> None:
    alone = tiny_engine.generate([PROMPT], SAMPLED)[0]
    others = ["x", "a much longer prompt than the others, padded out with words " * 2, "mid"]
    batch = tiny_engine.generate([others[0], PROMPT, others[1], others[2]],
                                 [GREEDY, SAMPLED, SamplingParams(max_tokens=3), SAMPLED])
    assert batch[1].token_ids == alone.token_ids
    assert batch[1].logits_hash == alone.logits_hash


def test_prefill_chunking_changes_nothing(tiny_engine: Engine) -> None:
    reference = _fingerprint(tiny_engine, prefill_chunk=4096)
    for chunk in (1, 3, 16):
        assert _fingerprint(tiny_engine, prefill_chunk=chunk) == reference


def test_logits_hash_covers_every_step(tiny_engine: Engine) -> None:
    short = tiny_engine.generate([PROMPT], SamplingParams(max_tokens=5))[0]
    longer = tiny_engine.generate([PROMPT], SamplingParams(max_tokens=6))[0]
    assert longer.token_ids[:5] == short.token_ids
    assert longer.logits_hash != short.logits_hash


def test_golden_vectors_reproduce() -> None:
    assert make_golden.GOLDEN.exists(), (
        "no golden vectors for this numerics version: write them on purpose (make_golden.py)"
    )
    golden = json.loads(make_golden.GOLDEN.read_text())
    assert golden["version"] == 1
    assert golden["numerics_version"] == make_golden.NUMERICS_VERSION, (
        "numerics changed: regenerate golden vectors on purpose (make_golden.py) with a reason"
    )
    with tempfile.TemporaryDirectory() as scratch:
        fresh = make_golden.compute(Path(scratch))
    assert len(fresh["cases"]) == len(golden["cases"])
    for expected, got in zip(golden["cases"], fresh["cases"], strict=True):
        assert got == expected, f"golden case for {expected['model']} differs"


@pytest.mark.parametrize("route", kernels.ISAS)
def test_golden_vectors_reproduce_on_every_route(route: str) -> None:
    assert kernels.extension() is not None, "the C++ kernels must build on this machine"
    best = kernels.cpu_isa()
    if kernels.ISAS.index(route) > kernels.ISAS.index(best):
        pytest.skip(f"this CPU cannot run the {route} route (its best is {best})")
    before = kernels.isa()
    kernels.set_isa(route)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = make_golden.compute(Path(scratch))
    finally:
        kernels.set_isa(before)
    assert fresh == json.loads(make_golden.GOLDEN.read_text())


@pytest.mark.parametrize("env", [{"VERINFER_KERNELS": "torch"}, {"VERINFER_ISA": "scalar"}],
                         ids=["torch-path", "scalar-route"])
def test_golden_vectors_reproduce_with_torch_default_capability(env: dict[str, str]) -> None:
    """torch's own kernels held to their no-SIMD build (`ATEN_CPU_CAPABILITY=default`), in a
    fresh process, as make_golden.py --check runs them."""
    done = subprocess.run(
        [sys.executable, str(GOLDEN_DIR / "make_golden.py"), "--check"],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ATEN_CPU_CAPABILITY": "default", **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "golden vectors reproduce" in done.stdout


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_golden_models_are_what_the_file_says(model: str, tmp_path: Path) -> None:
    golden = json.loads(make_golden.GOLDEN.read_text())
    ids = {c["model_id"] for c in golden["cases"] if c["model"] == model}
    engine = Engine.load(make_golden.model_dir(model, tmp_path))
    assert ids == {engine.model_id}
