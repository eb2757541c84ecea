"""Write (or check) the engine's golden vectors: request -> tokens, logits hash, model_id.

    python tests/vectors/engine/make_golden.py          # rewrite golden-v<NUMERICS_VERSION>.json
    python tests/vectors/engine/make_golden.py --check  # exit 1 if anything differs
    python tests/vectors/engine/make_golden.py --check --device cuda  # the CPU <-> GPU check

Models are either tiny random checkpoints defined by (config, seed) — rebuilt identically on any
machine — or the committed demo model. The file is named after the engine's numerics version:
changing what the engine computes is a deliberate act — bump `NUMERICS_VERSION` in
verinfer/engine/quantize.py, write the new file, remove the old one, say why in the commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from verinfer.engine import Engine, SamplingParams
from verinfer.engine.quantize import NUMERICS_VERSION
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import VerinferError

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).with_name(f"golden-v{NUMERICS_VERSION}.json")

MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": {"random": tiny_config(), "seed": 1},
    "tiny-qwen2": {
        "random": tiny_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                              attention_bias=True, tie_word_embeddings=True),
        "seed": 2,
    },
    "demo": {"path": "models/demo"},
}

REQUESTS: list[dict[str, Any]] = [
    {"model": "tiny-llama", "prompts": ["The quick brown fox"], "params": {"max_tokens": 24}},
    {"model": "tiny-llama", "prompts": ["Sampling, seeded:"],
     "params": {"max_tokens": 24, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 42}},
    {"model": "tiny-llama", "prompts": ["a", "a longer prompt, of another length", "mid length"],
     "params": {"max_tokens": 12, "temperature": 1.0, "seed": 7}},
    {"model": "tiny-qwen2", "prompts": ["Qwen-style biases"], "params": {"max_tokens": 16}},
    {"model": "demo", "prompts": ["The import statement"], "params": {"max_tokens": 32}},
    {"model": "demo", "prompts": ["A class is"],
     "params": {"max_tokens": 32, "temperature": 0.7, "top_p": 0.95, "seed": 2026}},
]


def model_dir(name: str, scratch: Path) -> Path:
    spec = MODELS[name]
    if "path" in spec:  # committed with the repository: its absence is an error, not a skip
        return ROOT / spec["path"]
    target = scratch / name
    if not target.exists():
        write_random_checkpoint(target, spec["random"], seed=spec["seed"])
    return target


def compute(scratch: Path, device: str = "cpu") -> dict[str, Any]:
    engines: dict[str, Engine] = {}
    cases = []
    for request in REQUESTS:
        name = request["model"]
        if name not in engines:
            engines[name] = Engine.load(model_dir(name, scratch), device=device)
        engine = engines[name]
        params = SamplingParams(**request["params"])
        prompt_ids = [engine.encode(p) for p in request["prompts"]]
        results = engine.generate(prompt_ids, params)
        cases.append({
            "model": name,
            "model_id": engine.model_id,
            "params": params.canonical(),
            "requests": [
                {"prompt_ids": ids, "token_ids": r.token_ids, "logits_hash": r.logits_hash,
                 "output_hash": r.output_hash, "finish_reason": r.finish_reason}
                for ids, r in zip(prompt_ids, results, strict=True)
            ],
        })
    return {"version": 1, "numerics_version": NUMERICS_VERSION, "models": MODELS, "cases": cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: only with --check)")
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            data = compute(Path(scratch), args.device)
    except VerinferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.device != "cpu" and not args.check:
        parser.error("golden vectors are written on the CPU; use --check with --device")
    if args.check:
        same = json.loads(GOLDEN.read_text()) == data
        print("golden vectors reproduce" if same else "golden vectors DIFFER")
        return 0 if same else 1
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(data['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
