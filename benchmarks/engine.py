"""Speed of the integer engine: prefill and decode tokens/s and peak memory, against references.

Engines, each on the same checkpoint, each in its own child process (so its peak RSS is its own),
2 threads, greedy decoding that ignores end-of-sequence:

- `verinfer`: `Engine.load` + `Engine.stream` (int8 weights and activations, exact integers);
- `transformers`: `LlamaForCausalLM` in fp32, `generate` with a timing streamer;
- `llamacpp`: llama.cpp with Q8_0 weights through llama-cpp-python's low-level batch API.

Models: `demo` (the trained `models/demo`) and `1b` (random weights in TinyLlama-1.1B's shape,
written once to /tmp/verinfer-bench). Prefill = a 128-token prompt per sequence; decode = the
`--new-tokens` after the first one. Batch 8 = 8 different prompts decoded together. For every
engine, prefill time is from the call until every sequence has its first token, decode time is
from then until the last token; tokens/s of batch 8 count all 8 sequences. One warm-up run, then
`--repeats` timed runs; the median is reported.

    /tmp/v1/bin/python benchmarks/engine.py                              # demo and 1b, all engines
    /tmp/v1/bin/python benchmarks/engine.py --models demo --quick
    /tmp/v1/bin/python benchmarks/engine.py --engines verinfer,llamacpp --json /tmp/engine.json

llama.cpp is optional (not in the lock files); without it that engine is skipped with a note.
To install it and the GGUF converter (a source build of llama.cpp, several minutes on 2 cores;
figures in BENCHMARKS.md used llama-cpp-python 0.3.36):

    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/v1/bin/pip install --no-binary llama-cpp-python \
        llama-cpp-python
    /tmp/v1/bin/pip install sentencepiece        # the converter imports it for Llama models
    /tmp/v1/bin/pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/llama-sdist
    mkdir -p /tmp/verinfer-bench && tar -xzf /tmp/llama-sdist/llama_cpp_python-*.tar.gz \
        -C /tmp/llama-sdist && cp -r /tmp/llama-sdist/llama_cpp_python-*/vendor/llama.cpp \
        /tmp/verinfer-bench/llama.cpp

The benchmark then converts each checkpoint once with that tree's `convert_hf_to_gguf.py
<checkpoint> --outtype q8_0` (its bundled `gguf-py`, so no `gguf` from PyPI is needed) into
/tmp/verinfer-bench/<model>-<fingerprint>-q8_0.gguf. Our BPE tokenizers are not in the
converter's table of known pre-tokenizers, so they are declared GPT-2-like (they are); the
benchmark feeds token ids, so this never touches the figures.

`--isa avx2` (or scalar, avx512, avx512vnni) restricts every engine to that instruction set, so
any x86 machine can measure the class of CPU it names: verinfer's kernels by `VERINFER_ISA`,
torch (transformers, and the torch parts of verinfer) by `ATEN_CPU_CAPABILITY`, MKL by
`MKL_ENABLE_INSTRUCTIONS` and oneDNN by `ONEDNN_MAX_CPU_ISA`. llama.cpp's instruction set is fixed
when it is compiled, so it comes from a second build made without AVX-512, in its own venv
(the one above stays), passed as `--llama-python`; the child reports llama.cpp's own system
info, and a build that still uses AVX-512 is flagged in the notes:

    python3 -m venv /tmp/llama-avx2 && /tmp/llama-avx2/bin/pip install numpy rich
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
        -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF" /tmp/llama-avx2/bin/pip install \
        --no-binary llama-cpp-python llama-cpp-python==0.3.36
    .venv/bin/python benchmarks/engine.py --models 1b --isa avx2 --llama-python /tmp/llama-avx2/bin/python

On a CPU with AVX-512, `--isa avx2` measures the AVX2 route on an AVX-512 machine: the same
instructions as an AVX2-only CPU, not the same memory system or clock. The weight products alone,
per route and row count, are measured by `benchmarks/engine_products.py`.

llama.cpp's worker threads spin while they wait: on a 2-core machine where anything else runs,
its figures collapse. Run the benchmark on an otherwise idle machine (the table's title shows
the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULT_PREFIX,
    gguf_q8_0,
    llama_cpp_available,
    machine,
    model_dir,
    run_child,
    verinfer_quantized,
    wide_console,
)

ENGINES = ("verinfer", "transformers", "llamacpp")
MODELS = ("demo", "1b")
ISAS = ("native", "scalar", "avx2", "avx512", "avx512vnni")  # native: no restriction
# Per --isa: torch's (ATEN_CPU_CAPABILITY), MKL's and oneDNN's name for the same instruction set.
ISA_ENV = {
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
               "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx512vnni": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                   "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
}
PROMPT_LEN = 128
THREADS = 2


def prompts(vocab: int, batch: int, seed: int = 0) -> list[list[int]]:
    """`batch` different prompts of PROMPT_LEN ids, the same for every engine.

    Plain `random`, not torch: the llama.cpp child must not carry torch in its peak RSS.
    """
    rng = random.Random(seed)
    # Ids 0-2 are the special tokens; everything else is ordinary text in every tokenizer here.
    return [[rng.randrange(3, min(vocab, 4096)) for _ in range(PROMPT_LEN)] for _ in range(batch)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# Child side: one engine, one model, one batch size; prints one RESULT line.


def time_verinfer(path: Path, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    import torch

    from verinfer.engine import Engine, SamplingParams, kernels

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    engine = Engine.load(path)
    route = kernels.isa() if kernels.use_fused() else "torch path"
    load_s = time.perf_counter() - started
    ids = prompts(engine.config.vocab_size, batch)

    results: list[Any] = []

    def run(n_new: int) -> tuple[float, float]:
        params = SamplingParams(max_tokens=1 + n_new, ignore_eos=True)
        results.clear()
        t0 = time.perf_counter()
        first = 0.0
        for count, _ in enumerate(engine.stream(ids, params, results=results), start=1):
            if count == batch:  # every row has its first token: prefill is over
                first = time.perf_counter()
        return first - t0, time.perf_counter() - first

    run(2)  # warm-up
    timings = [run(new_tokens) for _ in range(repeats)]
    weights = engine.model.weight_bytes()
    # Row 0 has the same prompt at every batch size: its output must be the same bytes.
    return {"load_s": load_s, "timings": timings, "weights_bytes": weights,
            "row0_output_hash": results[0].output_hash, "model_id": engine.model_id,
            "isa": f"{route}, torch {torch.backends.cpu.get_cpu_capability()}"}


def time_transformers(path: Path, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load_s = time.perf_counter() - started
    input_ids = torch.tensor(prompts(model.config.vocab_size, batch))

    class Clock(BaseStreamer):
        """Notes when the first generated token arrives (the first `put` is the prompt)."""

        def __init__(self) -> None:
            self.puts = 0
            self.first = 0.0

        def put(self, value: torch.Tensor) -> None:
            self.puts += 1
            if self.puts == 2:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    def run(n_new: int) -> tuple[float, float]:
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=1 + n_new,
                min_new_tokens=1 + n_new,
                do_sample=False,
                pad_token_id=0,
                streamer=clock,
            )
        return clock.first - t0, time.perf_counter() - clock.first

    run(2)
    timings = [run(new_tokens) for _ in range(repeats)]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"load_s": load_s, "timings": timings, "weights_bytes": weights,
            "attn": model.config._attn_implementation,
            "isa": f"torch {torch.backends.cpu.get_cpu_capability()}"}


class LlamaCppRunner:
    """Greedy batched decoding with llama.cpp's low-level API: one KV sequence per prompt."""

    def __init__(self, gguf: Path, batch: int, tokens_per_seq: int, threads: int) -> None:
        import llama_cpp as lc

        self.lc, self.batch = lc, batch
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lc.llama_context_default_params()
        params.n_ctx = batch * tokens_per_seq
        params.n_batch = batch * PROMPT_LEN  # the whole batch's prompts in one llama_decode
        params.n_seq_max = batch
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.tokens = lc.llama_batch_init(batch * PROMPT_LEN, 0, 1)
        self.last: list[int] = []
        self.position = 0

    def _submit(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits); then greedy-pick per sequence."""
        b = self.tokens
        b.n_tokens = len(entries)
        outputs = []
        for i, (token, pos, seq, wants) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = token, pos, 1, seq
            b.logits[i] = wants
            if wants:
                outputs.append(i)
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        import numpy as np

        self.last = [
            int(np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i),
                                      shape=(self.vocab_size,)).argmax())
            for i in outputs
        ]

    def prefill(self, prompts: list[list[int]]) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self._submit([(t, p, s, p == len(ids) - 1)
                      for s, ids in enumerate(prompts) for p, t in enumerate(ids)])
        self.position = len(prompts[0])

    def decode(self, n: int) -> None:
        for _ in range(n):
            self._submit([(t, self.position, s, True) for s, t in enumerate(self.last)])
            self.position += 1


def time_llamacpp(gguf: Path, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    runner = LlamaCppRunner(gguf, batch, PROMPT_LEN + new_tokens + 8, THREADS)
    load_s = time.perf_counter() - started
    ids = prompts(runner.vocab_size, batch)

    def run(n_new: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        runner.prefill(ids)
        first = time.perf_counter()
        runner.decode(n_new)
        return first - t0, time.perf_counter() - first

    run(2)
    timings = [run(new_tokens) for _ in range(repeats)]
    system = runner.lc.llama_print_system_info().decode()
    # e.g. "CPU : SSE3 = 1 | ... | AVX2 = 1 | ... | AVX512 = 0 | ...": the features compiled in.
    features = [f.split("=")[0].strip() for f in system.replace("CPU :", "|").split("|")
                if f.strip().endswith("= 1")]
    return {"load_s": load_s, "timings": timings, "weights_bytes": gguf.stat().st_size,
            "isa": " ".join(features)}


def child_main(args: argparse.Namespace) -> int:
    timer = {"verinfer": time_verinfer, "transformers": time_transformers,
             "llamacpp": time_llamacpp}[args.child]
    result = timer(Path(args.path), args.batch, args.new_tokens, args.repeats)
    prefill_s = statistics.median(t[0] for t in result["timings"])
    decode_s = statistics.median(t[1] for t in result["timings"])
    result |= {
        "load_1min": os.getloadavg()[0],
        "prefill_tok_s": args.batch * PROMPT_LEN / prefill_s,
        "decode_tok_s": args.batch * args.new_tokens / decode_s,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# Parent side: prepare checkpoints, run every child, print the table.


def measure(models: list[str], engines: list[str], batches: list[int], new_tokens: int,
            repeats: int, isa: str = "native",
            llama_python: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    env = {} if isa == "native" else {"VERINFER_ISA": isa, **ISA_ENV[isa]}
    llama_missing = None
    if "llamacpp" in engines:
        llama_missing = llama_cpp_available(llama_python)
    if llama_missing:
        notes.append(f"llama.cpp skipped: {llama_missing}")
    for model in models:
        path = model_dir(model)
        gguf = None
        if "llamacpp" in engines and not llama_missing:
            try:
                gguf = gguf_q8_0(model, path)
            except (OSError, RuntimeError) as exc:
                notes.append(f"llama.cpp skipped for {model}: {exc}")
        quantized = verinfer_quantized(model, path) if "verinfer" in engines else None
        for batch in batches:
            for engine in engines:
                if engine == "llamacpp" and gguf is None:
                    continue
                target = {"llamacpp": gguf, "verinfer": quantized}.get(engine, path)
                print(f"  {model} batch {batch}: {engine} ...", flush=True)
                argv = ["--child", engine, "--path", str(target), "--batch", str(batch),
                        "--new-tokens", str(new_tokens), "--repeats", str(repeats)]
                python = llama_python if engine == "llamacpp" else None
                result = run_child(argv, timeout=3600, env=env, python=python)
                rows.append({"model": model, "engine": engine, "batch": batch, **result})
                if "error" in result:
                    notes.append(f"{engine} on {model}, batch {batch} failed: {result['error']}")
                elif engine == "llamacpp" and isa in ("scalar", "avx2") and "AVX512" in result["isa"].split():
                    notes.append(f"llama.cpp is NOT restricted to {isa}: its build uses AVX-512 "
                                 "(pass --llama-python of a build without it)")
        hashes = {r.get("row0_output_hash") for r in rows
                  if r["model"] == model and r["engine"] == "verinfer" and "error" not in r}
        if len(hashes) > 1:
            notes.append(f"verinfer on {model}: prompt 0 gave DIFFERENT tokens across batch sizes")
        elif hashes and len(batches) > 1:
            notes.append(f"verinfer on {model}: prompt 0 gave the same output hash at batch sizes "
                         f"{', '.join(map(str, batches))}")
    return rows, notes


def ratio(rows: list[dict[str, Any]], row: dict[str, Any], engine: str, key: str) -> str:
    for other in rows:
        same = (other["model"], other["batch"], other["engine"]) == (row["model"], row["batch"],
                                                                      engine)
        if same and key in other and key in row:
            return f"{row[key] / other[key]:.2f}x"
    return "-"


def print_table(rows: list[dict[str, Any]], notes: list[str], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for name in ("model", "engine", "batch", "weights", "prefill tok/s", "decode tok/s",
                 "prefill vs HF fp32", "decode vs HF fp32", "prefill vs llama.cpp",
                 "decode vs llama.cpp", "peak RSS", "load", "instruction set"):
        table.add_column(name, justify="left" if name in ("model", "engine") else "right")
    labels = {"verinfer": "verinfer int8", "transformers": "transformers fp32",
              "llamacpp": "llama.cpp Q8_0"}
    for row in rows:
        if "error" in row:
            table.add_row(row["model"], labels[row["engine"]], str(row["batch"]), "failed",
                          *[""] * 9)
            continue
        table.add_row(
            row["model"], labels[row["engine"]], str(row["batch"]),
            f"{row['weights_bytes'] / 1e9:.2f} GB" if row["weights_bytes"] >= 1e8
            else f"{row['weights_bytes'] / 1e6:.1f} MB",
            f"{row['prefill_tok_s']:.1f}", f"{row['decode_tok_s']:.2f}",
            ratio(rows, row, "transformers", "prefill_tok_s"),
            ratio(rows, row, "transformers", "decode_tok_s"),
            ratio(rows, row, "llamacpp", "prefill_tok_s"),
            ratio(rows, row, "llamacpp", "decode_tok_s"),
            f"{row['peak_rss_mb'] / 1024:.2f} GiB", f"{row['load_s']:.1f} s", row.get("isa", "?"),
        )
    console = wide_console()
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,1b", help="comma-separated: demo, 1b")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated: verinfer, transformers, llamacpp")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens after the first")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--quick", action="store_true", help="8 new tokens, one timed run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="restrict every engine to this instruction set (see the module docstring)")
    parser.add_argument("--llama-python", help="python of the venv whose llama-cpp-python to time "
                        "(a build made for --isa); default: this one")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats = 8, 1
    if args.new_tokens < 1 or args.repeats < 1:
        parser.error("--new-tokens and --repeats must be positive")
    if args.child:
        return child_main(args)

    models = [m for m in args.models.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(engines) - set(ENGINES))
    if unknown or not models or not engines:
        parser.error(f"unknown or missing model/engine {unknown}: models are {', '.join(MODELS)};"
                     f" engines are {', '.join(ENGINES)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        parser.error("--batches takes comma-separated integers")
    if not batches or min(batches) < 1:
        parser.error("--batches takes positive integers")

    info = machine()
    print(f"machine: {info}", flush=True)
    rows, notes = measure(models, engines, batches, args.new_tokens, args.repeats, args.isa,
                          args.llama_python)
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    title = (f"instruction set {args.isa}; "
             f"prefill {PROMPT_LEN} tokens, decode {args.new_tokens} tokens, {THREADS} threads, "
             f"median of {args.repeats}; load average {info['load']} at start, {load_end} at end")
    print_table(rows, notes, title)
    if args.json:
        record = {"machine": info, "isa": args.isa, "new_tokens": args.new_tokens, "repeats": args.repeats,
                  "prompt_len": PROMPT_LEN, "threads": THREADS, "rows": rows, "notes": notes}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
