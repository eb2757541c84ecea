"""Fidelity of the integer engine against the float reference on the trained demo model.

The reference is transformers' own `LlamaForCausalLM` in fp32 on the same checkpoint. Both read
the held-out text (`models/demo/heldout.txt`, never trained on) in windows of `--window` tokens,
each starting with `<s>`, and the benchmark compares, position by position:

- perplexity of each (next-token loss over all windows) and their ratio (aim: within 2%);
- top-1 agreement: how often the most likely next token is the same (aim: at least 97%);
- cosine similarity of the final hidden states (after the final RMSNorm, what the LM head sees);
- the largest absolute difference of the logits.

    /tmp/v1/bin/python benchmarks/fidelity.py                   # 48 windows of 256 tokens
    /tmp/v1/bin/python benchmarks/fidelity.py --windows 8 --json /tmp/fidelity.json

Exit status: 0 when measured (whether or not the aims are met), 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEMO_MODEL, machine, wide_console

PPL_AIM = 0.02
TOP1_AIM = 0.97


@dataclass
class Fidelity:
    windows: int
    tokens: int
    reference_ppl: float
    verinfer_ppl: float
    ppl_ratio: float
    top1_agreement: float
    cosine_mean: float
    cosine_min: float
    max_abs_logit_diff: float
    reference_seconds: float
    verinfer_seconds: float


def windows_of(ids: list[int], bos: int, size: int, count: int) -> list[list[int]]:
    """Consecutive windows of `size` tokens (`<s>` + size - 1 text tokens) from the start."""
    body = size - 1
    available = len(ids) // body
    return [[bos, *ids[i * body : (i + 1) * body]] for i in range(min(count, available))]


def measure(model_dir: Path, window: int, count: int, threads: int) -> Fidelity:
    import torch
    from transformers import LlamaForCausalLM

    from verinfer.engine import Engine

    torch.set_num_threads(threads)
    engine = Engine.load(model_dir)
    reference = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bos = engine.config.bos_token_id if engine.config.bos_token_id is not None else 1
    text = (model_dir / "heldout.txt").read_text(encoding="utf-8")
    windows = windows_of(engine.tokenizer.encode(text).ids, bos, window, count)
    if not windows:
        raise ValueError(f"{model_dir / 'heldout.txt'} is shorter than one window")

    nll_ref = nll_vi = 0.0
    agree = predicted = 0
    cosines: list[torch.Tensor] = []
    max_diff = 0.0
    t_ref = t_vi = 0.0
    for ids in windows:
        started = time.perf_counter()
        with torch.inference_mode():
            out = reference(input_ids=torch.tensor([ids]), output_hidden_states=True)
        ref_logits = out.logits[0].to(torch.float64)  # (T, V)
        ref_hidden = out.hidden_states[-1][0].to(torch.float64)  # (T, D), after the final norm
        t_ref += time.perf_counter() - started

        started = time.perf_counter()
        vi_logits = engine.logits(ids)  # (T, V) float64
        vi_hidden = engine.final_hidden(ids)  # (T, D) float64
        t_vi += time.perf_counter() - started

        targets = torch.tensor(ids[1:])
        nll_ref += torch.nn.functional.cross_entropy(ref_logits[:-1], targets, reduction="sum").item()
        nll_vi += torch.nn.functional.cross_entropy(vi_logits[:-1], targets, reduction="sum").item()
        agree += int((ref_logits.argmax(-1) == vi_logits.argmax(-1)).sum())
        predicted += len(ids)
        cosines.append(torch.nn.functional.cosine_similarity(ref_hidden, vi_hidden, dim=-1))
        max_diff = max(max_diff, (ref_logits - vi_logits).abs().max().item())

    scored = sum(len(w) - 1 for w in windows)
    cos = torch.cat(cosines)
    ref_ppl, vi_ppl = math.exp(nll_ref / scored), math.exp(nll_vi / scored)
    return Fidelity(
        windows=len(windows),
        tokens=scored,
        reference_ppl=ref_ppl,
        verinfer_ppl=vi_ppl,
        ppl_ratio=vi_ppl / ref_ppl,
        top1_agreement=agree / predicted,
        cosine_mean=cos.mean().item(),
        cosine_min=cos.min().item(),
        max_abs_logit_diff=max_diff,
        reference_seconds=t_ref,
        verinfer_seconds=t_vi,
    )


def print_table(result: Fidelity, model_dir: Path, window: int) -> None:
    from rich.table import Table

    ppl_ok = abs(result.ppl_ratio - 1) <= PPL_AIM
    top1_ok = result.top1_agreement >= TOP1_AIM
    table = Table(
        title=f"verinfer vs transformers fp32 on {model_dir} "
        f"({result.windows} windows x {window} tokens of heldout.txt)"
    )
    table.add_column("measure")
    table.add_column("transformers fp32", justify="right")
    table.add_column("verinfer int8", justify="right")
    table.add_column("aim", justify="right")
    table.add_row(
        "perplexity", f"{result.reference_ppl:.3f}", f"{result.verinfer_ppl:.3f}",
        f"ratio {result.ppl_ratio:.4f} {'met' if ppl_ok else 'MISSED'} (within {PPL_AIM:.0%})",
    )
    table.add_row(
        "top-1 next-token agreement", "", f"{result.top1_agreement:.2%}",
        f"{'met' if top1_ok else 'MISSED'} (at least {TOP1_AIM:.0%})",
    )
    table.add_row("final hidden cosine, mean", "", f"{result.cosine_mean:.5f}", "")
    table.add_row("final hidden cosine, min", "", f"{result.cosine_min:.5f}", "")
    table.add_row("max |logit difference|", "", f"{result.max_abs_logit_diff:.4f}", "")
    table.add_row(
        "forward time, all windows", f"{result.reference_seconds:.1f} s",
        f"{result.verinfer_seconds:.1f} s", "",
    )
    wide_console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="HF checkpoint directory")
    parser.add_argument("--window", type=int, default=256, help="tokens per window")
    parser.add_argument("--windows", type=int, default=48, help="number of windows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.window < 2 or args.windows < 1:
        parser.error("--window must be at least 2 and --windows at least 1")
    if not (args.model / "heldout.txt").is_file():
        print(f"error: {args.model}/heldout.txt not found: train the demo model first "
              "(scripts/train_demo.py)", file=sys.stderr)
        return 2
    from verinfer.errors import VerinferError

    try:
        result = measure(args.model, args.window, args.windows, args.threads)
    except (ImportError, OSError, ValueError, VerinferError) as exc:
        print(f"error: cannot run the fidelity benchmark: {exc}", file=sys.stderr)
        return 2
    print_table(result, args.model, args.window)
    if args.json:
        record = {"model": str(args.model), "window": args.window, **asdict(result),
                  "machine": machine()}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
