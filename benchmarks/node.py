"""A node's engine side: continuous-batching throughput and the validator's replay cost.

Two measurements on one model, in this process, below HTTP (the scheduler the node runs):

- **Concurrent streams.** 1, 4 and 8 requests (16-token prompts, `--new-tokens` sampled tokens
  each, end-of-sequence ignored) submitted together to a `Scheduler` with 8 slots and stepped
  to completion; aggregate decode tokens/s, and its ratio to one stream.
- **Replay against serving.** For each of `--replays` requests (16-token prompt, `--new-tokens`
  tokens): the time to serve it (`Engine.generate`: prefill + decode) and the time to check it
  (`Engine.replay`: one teacher-forced prefill over prompt + output, every token checked); the
  ratio replay / serve (the issue's aim at the 1B shape: at most 0.35).

One warm-up round, then `--repeats` timed rounds (stream counts interleaved); medians. Every figure is relative to one
measured in the same run.

    .venv/bin/python benchmarks/node.py                    # demo model
    .venv/bin/python benchmarks/node.py --model 1b         # random TinyLlama-1.1B shape
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEMO_MODEL, machine, random_1b_checkpoint

PROMPT_LEN = 16
STREAMS = (1, 4, 8)


def prompts(vocab: int, count: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(3, vocab) for _ in range(PROMPT_LEN)] for _ in range(count)]


def concurrent_round(engine: object, streams: int, new_tokens: int) -> float:
    """Aggregate decode tokens/s of `streams` requests decoded together."""
    from verinfer.engine import Engine, SamplingParams
    from verinfer.node.scheduler import Scheduler, Submission, run_to_completion

    assert isinstance(engine, Engine)
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=max(STREAMS), max_queue=0)
    produced = [0] * streams

    def sink(index: int) -> object:
        def on_event(event: object) -> None:
            produced[index] += 1
        return on_event

    subs = [
        Submission(p, SamplingParams(max_tokens=new_tokens, temperature=0.8, seed=i, ignore_eos=True),
                   sink(i))  # type: ignore[arg-type]
        for i, p in enumerate(prompts(engine.config.vocab_size, streams))
    ]
    for sub in subs:
        scheduler.max_queue += 1
        scheduler.submit(sub)
    start = time.perf_counter()
    run_to_completion(scheduler, [])
    elapsed = time.perf_counter() - start
    assert produced == [new_tokens] * streams
    return sum(produced) / elapsed


def replay_round(engine: object, count: int, new_tokens: int) -> tuple[float, float]:
    """(seconds serving, seconds replaying) summed over `count` requests."""
    from verinfer.engine import Engine, SamplingParams

    assert isinstance(engine, Engine)
    serve = check = 0.0
    for i, prompt in enumerate(prompts(engine.config.vocab_size, count)):
        params = SamplingParams(max_tokens=new_tokens, temperature=0.8, seed=100 + i, ignore_eos=True)
        start = time.perf_counter()
        result = engine.generate([prompt], params)[0]
        serve += time.perf_counter() - start
        start = time.perf_counter()
        verdict = engine.replay(prompt, result.token_ids, params)
        check += time.perf_counter() - start
        assert verdict.valid and verdict.logits_hash == result.logits_hash
    return serve, check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo, 1b, or a model directory")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--replays", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.replays < 1 or args.repeats < 1:
        parser.error("--new-tokens, --replays and --repeats must be at least 1")

    from verinfer.engine import Engine

    path = {"demo": DEMO_MODEL, "1b": None}.get(args.model, Path(args.model))
    engine = Engine.load(path if path is not None else random_1b_checkpoint())
    info = machine()
    print(f"model {args.model} ({engine.model_id[:18]}...), {info['cpu']}, {info['cores']} cores, "
          f"{info['simd']}, load {info['load']}")

    concurrent_round(engine, 1, 2)  # warm-up: kernels, caches
    # Rounds interleave the stream counts, so a change of machine load hits them all alike.
    samples: dict[int, list[float]] = {s: [] for s in STREAMS}
    for _ in range(args.repeats):
        for streams in STREAMS:
            samples[streams].append(concurrent_round(engine, streams, args.new_tokens))
    rates = {s: statistics.median(v) for s, v in samples.items()}
    print(f"\n{'streams':>8} {'decode tok/s (sum)':>20} {'vs 1 stream':>12}")
    for streams, rate in rates.items():
        print(f"{streams:>8} {rate:>20.1f} {rate / rates[1]:>11.2f}x")

    replay_round(engine, 1, 2)
    rounds = [replay_round(engine, args.replays, args.new_tokens) for _ in range(args.repeats)]
    serve = statistics.median(r[0] for r in rounds)
    check = statistics.median(r[1] for r in rounds)
    print(f"\nreplay vs serving, {args.replays} requests of {PROMPT_LEN} + {args.new_tokens} tokens:")
    print(f"  serve {serve:.3f} s, replay {check:.3f} s, replay / serve = {check / serve:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
