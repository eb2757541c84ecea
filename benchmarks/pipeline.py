"""benchmarks/pipeline.py: split inference over stage processes against the single engine, and
the planner's predicted per-token latency against a simulated cluster.

1. Loopback: the same greedy generation on the single engine (in this process, 1 thread) and
   over 2 and 3 `verinfer node --layers` processes (1 thread each) on 127.0.0.1: decode
   latency per token, throughput, and whether the tokens and logits hash are identical.
2. Bytes sent per token across each stage boundary (decode frames), and the frame's dtype.
3. A simulated cluster: the frame transport holds each message back by its link's latency and
   bandwidth (`transport.DelayLine`), and one node is slowed (`--throttle-ms`, a slower
   device). The planner is given measured figures only (each stage's compute per layer, the
   loopback and driver overhead per hop, the frames' real sizes) and its predicted per-token
   latency is checked against the measured one for its own plan and two other routes
   (aim: within 15%).

    .venv/bin/python benchmarks/pipeline.py            # the figures in BENCHMARKS.md
    .venv/bin/python benchmarks/pipeline.py --quick    # a smoke run (tiny model, few tokens)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.table import Table

from _common import BENCH_DIR, REPO, machine, wide_console
from verinfer.engine import Engine
from verinfer.engine.params import SamplingParams
from verinfer.engine.quantize import quantize_checkpoint, save_quantized
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.pipeline import frames
from verinfer.pipeline.cluster import DRIVER, Cluster, Link, NodeSpec, model_spec_from_config
from verinfer.pipeline.driver import PipelineResult, RouteDriver, StageSpec, even_split
from verinfer.pipeline.planner import Plan, evaluate, memory_proportional, plan, stage_memory
from verinfer.pipeline.rebalance import Rebalancer, node_name
from verinfer.pipeline.transport import DelayLine

AIM = 0.15
REPEATS = 3  # each figure: the least disturbed of this many runs (the machine is shared)
# A TinyLlama-like layer at a quarter of the width: compute per layer is milliseconds, so the
# pipeline's own overheads are measured against real work.
BENCH_CONFIG = tiny_config(vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                           num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                           max_position_embeddings=512)
QUICK_CONFIG = tiny_config(num_hidden_layers=6)
PROMPT = [256, *b"Split inference across nodes gives the same bytes as one node."]
SLOW_NODE_MS = 2.0  # the simulated slow device: this much more per layer per step
REBALANCE_THROTTLE_MS = 5.0  # the stage that turns out slower than its profile claimed
# The simulated network (one-way latency seconds, bandwidth bytes/s), by pair of parties.
SIM_LINKS = {
    (DRIVER, "a"): (0.002, 50e6), (DRIVER, "b"): (0.004, 50e6), (DRIVER, "c"): (0.001, 50e6),
    ("a", "b"): (0.003, 12.5e6), ("a", "c"): (0.006, 12.5e6), ("b", "c"): (0.002, 25e6),
}


def checkpoint(quick: bool) -> Path:
    """The benchmark model, quantized once under BENCH_DIR (reused by later runs)."""
    config = QUICK_CONFIG if quick else BENCH_CONFIG
    name = "pipeline-quick" if quick else "pipeline-1024x8"
    out = BENCH_DIR / f"{name}-verinfer"
    if (out / "verinfer-model.json").is_file():
        return out
    raw = write_random_checkpoint(BENCH_DIR / name, config, seed=7)
    save_quantized(quantize_checkpoint(raw), out, raw / "tokenizer.json")
    return out


class StageProcs:
    """`verinfer node --layers` processes on 127.0.0.1, one thread each."""

    def __init__(self, model: Path, count: int, layers: int, throttle: dict[int, float]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.procs, self.endpoints = [], []
        state = BENCH_DIR / "pipeline-keys"
        for i, spec in enumerate(even_split([StageSpec("", 0, 0, 0)] * count, layers)):
            cmd = [sys.executable, "-m", "verinfer.cli", "node", "--model", str(model), "--layers",
                   f"{spec.start}:{spec.end}", "--port", "0", "--threads", "1",
                   "--data-dir", str(state / f"stage{i}")]
            if i in throttle:
                cmd += ["--throttle-ms", str(throttle[i])]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if len(line) < 8 or not line[7].startswith("tcp://"):
                self.stop()
                raise RuntimeError(f"a stage did not start: {' '.join(line)!r}")
            host, port = line[7].removeprefix("tcp://").rsplit(":", 1)
            self.endpoints.append((host, int(port)))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.communicate(timeout=30)  # reaps it and closes its stdout pipe


def drive(engine: Engine, route: list[StageSpec], tokens: int, links: object = None) -> PipelineResult:
    driver = RouteDriver(route, engine.config, engine.tokenizer, links=links)  # type: ignore[arg-type]
    try:
        return driver.generate([PROMPT], [SamplingParams(max_tokens=tokens, ignore_eos=True)])
    finally:
        driver.close()


@dataclass
class LoopbackRow:
    name: str
    step_s: float
    tokens_per_s: float
    identical: bool
    boundary_bytes: list[float]
    int32_share: float


def decode_frames(result: PipelineResult, boundary: int, prefill_steps: int) -> list[bytes]:
    kept = result.frames.get(boundary, {})
    return [kept[s] for s in sorted(kept) if s >= prefill_steps]


def loopback(engine: Engine, model_dir: Path, stage_counts: Sequence[int], tokens: int,
             reference_steps: list[float], repeats: int) -> list[LoopbackRow]:
    expected = engine.generate([PROMPT], SamplingParams(max_tokens=tokens, ignore_eos=True))[0]
    rows = [LoopbackRow("single engine", statistics.median(reference_steps),
                        1 / statistics.median(reference_steps), True, [], 1.0)]
    layers = engine.config.num_hidden_layers
    for count in stage_counts:
        procs = StageProcs(model_dir, count, layers, {})
        try:
            route = even_split([StageSpec(h, p, 0, 0) for h, p in procs.endpoints], layers)
            drive(engine, route, 2)  # warm-up: connections, first-call costs
            result = min((drive(engine, route, tokens) for _ in range(repeats)),
                         key=lambda r: statistics.median(r.step_seconds))
        finally:
            procs.stop()
        got = result.results[0]
        prefill = -(-len(PROMPT) // 128)
        boundaries = [s.end for s in route[:-1]]
        sizes, int32 = [], 0
        for b in boundaries:
            decoded = decode_frames(result, b, prefill)
            sizes.append(statistics.mean(len(f) for f in decoded))
            int32 += sum(f[6] == frames.Dtype.INT32 for f in decoded)
        total = sum(len(decode_frames(result, b, prefill)) for b in boundaries)
        rows.append(LoopbackRow(f"pipeline, {count} stages", statistics.median(result.step_seconds),
                                1 / statistics.median(result.step_seconds),
                                got.token_ids == expected.token_ids
                                and got.logits_hash == expected.logits_hash,
                                sizes, int32 / total if total else 0.0))
    return rows


def reference_steps(engine: Engine, tokens: int) -> list[float]:
    """Per-token decode times of the single engine (the same loop as generate, timed)."""
    stamps = []
    for _ in engine.stream([PROMPT], SamplingParams(max_tokens=tokens, ignore_eos=True)):
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


@dataclass
class SimRow:
    name: str
    route: str
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        return (self.measured_s - self.predicted_s) / self.predicted_s


def simulated(engine: Engine, model_dir: Path, tokens: int,
              repeats: int) -> tuple[list[SimRow], dict[str, float]]:
    """Calibrate on loopback, plan, then run routes through the delay lines."""
    layers = engine.config.num_hidden_layers
    names = ["a", "b", "c"]
    procs = StageProcs(model_dir, 3, layers, {2: SLOW_NODE_MS})
    try:
        endpoint = dict(zip(names, procs.endpoints, strict=True))
        # Calibration on loopback, no delay lines: compute per layer of each node, the hop
        # overhead (round trip minus the stage's compute) and the driver's own work per step.
        even = even_split([StageSpec(*endpoint[n], 0, 0) for n in names], layers)
        drive(engine, even, 2)
        runs = []
        for _ in range(repeats):  # the least disturbed run (other work shares the machine)
            driver = RouteDriver(even, engine.config, engine.tokenizer)
            try:
                run = driver.generate([PROMPT], [SamplingParams(max_tokens=tokens, ignore_eos=True)])
                runs.append((statistics.median(run.step_seconds), run, [s.stats for s in driver.live]))
            finally:
                driver.close()
        _, calib, stats = min(runs, key=lambda r: r[0])
        prefill = -(-len(PROMPT) // 128)
        per_layer = {n: statistics.median(st.compute_s[prefill:]) / (s.end - s.start)
                     for n, st, s in zip(names, stats, even, strict=True)}
        hop = statistics.median(rt - c for st in stats
                                for rt, c in zip(st.round_trip_s[prefill:], st.compute_s[prefill:],
                                                 strict=True))
        step = statistics.median(calib.step_seconds)
        round_trips = sum(statistics.median(st.round_trip_s[prefill:]) for st in stats)
        driver_s = max(step - round_trips, 0.0)
        hidden_frame = statistics.mean(len(f) for f in decode_frames(calib, even[0].end, prefill))
        token_frame = frames.HEADER.size + 8 + 4
        logits_frame = frames.HEADER.size + 8 + 4 * engine.config.vocab_size
        figures = {"hop_ms": hop * 1e3, "driver_ms": driver_s * 1e3, "frame_bytes": hidden_frame,
                   **{f"{n}_layer_ms": v * 1e3 for n, v in per_layer.items()}}

        spec = replace(model_spec_from_config(engine.config, sequences=1),
                       activation_bytes=round(hidden_frame), input_bytes=token_frame,
                       result_bytes=logits_frame)
        free = stage_memory(spec, 5, True, True)  # each node holds at most 5 of the 8 layers
        # Measured overheads ride on the links (the planner has no term of its own for them):
        # every hop into a stage costs `hop` on loopback, and the driver's work per step is
        # paid on the way back to it.
        links = {}
        for (a, b), (latency, bandwidth) in SIM_LINKS.items():
            if a == DRIVER:
                links[(DRIVER, b)] = Link(latency + hop, bandwidth)
                links[(b, DRIVER)] = Link(latency + driver_s, bandwidth)
            else:
                links[(a, b)] = links[(b, a)] = Link(latency + hop, bandwidth)
        cluster = Cluster(tuple(NodeSpec(n, per_layer[n], 0.0, free) for n in names),
                          links).validate()
        candidates: list[tuple[str, Plan]] = [("MILP plan", plan(cluster, spec, time_limit=5.0))]
        proportional = memory_proportional(cluster, spec)
        candidates.append(("memory-proportional", proportional))
        third = 3 * layers // 8
        candidates.append(("slow node first", evaluate(
            cluster, spec, [("c", third), ("b", third), ("a", layers - 2 * third)])))

        def delay_lines(route: Sequence[StageSpec], index: int) -> tuple[DelayLine, DelayLine | None]:
            by_port = {endpoint[n][1]: n for n in names}
            here = by_port[route[index].port]
            before = DRIVER if index == 0 else by_port[route[index - 1].port]
            latency, bandwidth = SIM_LINKS.get((before, here)) or SIM_LINKS[(here, before)]
            out = None
            if index == len(route) - 1:
                out_latency, out_bandwidth = SIM_LINKS[(DRIVER, here)]
                out = DelayLine(out_latency, out_bandwidth)
            return DelayLine(latency, bandwidth), out

        rows = []
        for name, candidate in candidates:
            route = [StageSpec(*endpoint[s.node], s.start, s.end) for s in candidate.stages]
            measured = min(statistics.median(drive(engine, route, tokens, delay_lines).step_seconds)
                           for _ in range(repeats))
            rows.append(SimRow(name, " ".join(f"{s.node}={s.start}:{s.end}" for s in candidate.stages),
                               candidate.latency_s, measured))
        return rows, figures
    finally:
        procs.stop()


@dataclass
class RebalanceRow:
    phase: str
    route: str
    predicted_tps: float
    measured_tps: float

    @property
    def error(self) -> float:
        return (self.measured_tps - self.predicted_tps) / self.predicted_tps


def rebalanced(engine: Engine, model_dir: Path, tokens: int,
               figures: dict[str, float]) -> tuple[list[RebalanceRow], str]:
    """Must-show 3 with measured figures: three stages planned as equals from the calibration
    (compute per layer, hop and driver overheads), the last one in fact slowed by
    `REBALANCE_THROTTLE_MS` per layer; the Rebalancer notices, re-plans, layers move, and each
    route's throughput is measured against what the planner predicted for it."""
    layers = engine.config.num_hidden_layers
    procs = StageProcs(model_dir, 3, layers, {2: REBALANCE_THROTTLE_MS})
    try:
        names = [node_name(h, p) for h, p in procs.endpoints]
        claimed = min(figures["a_layer_ms"], figures["b_layer_ms"]) / 1e3
        hop, driver_s = figures["hop_ms"] / 1e3, figures["driver_ms"] / 1e3
        links = {(a, b): Link(driver_s if b == DRIVER else hop, float("inf"))
                 for a in [DRIVER, *names] for b in [DRIVER, *names] if a != b}
        spec = replace(model_spec_from_config(engine.config, sequences=1),
                       activation_bytes=round(figures["frame_bytes"]))
        free = stage_memory(spec, 5, True, True)  # each node holds at most 5 of the 8 layers
        cluster = Cluster(tuple(NodeSpec(n, claimed, 0.0, free) for n in names), links).validate()
        third = 3 * layers // 8
        start = evaluate(cluster, spec, [(names[0], third), (names[1], third),
                                         (names[2], layers - 2 * third)])
        rebalancer = Rebalancer(start, cluster, spec, margin=0.5, window=3, time_limit=5.0)
        route = [StageSpec(*procs.endpoints[i], s.start, s.end) for i, s in enumerate(start.stages)]
        drive(engine, even_split([StageSpec(h, p, 0, 0) for h, p in procs.endpoints], layers), 2)
        expected = engine.generate([PROMPT], SamplingParams(max_tokens=tokens, ignore_eos=True))[0]
        driver = RouteDriver(route, engine.config, engine.tokenizer, rebalance=rebalancer)
        try:
            result = driver.generate([PROMPT], [SamplingParams(max_tokens=tokens, ignore_eos=True)])
        finally:
            driver.close()
    finally:
        procs.stop()
    moved = [h for h in rebalancer.history if h.moved]
    got = result.results[0]
    identical = got.token_ids == expected.token_ids and got.logits_hash == expected.logits_hash
    if not moved or moved[0].before is None:  # the old route could not run: nothing to compare
        return [], f"no re-plan happened (history: {rebalancer.history}); identical: {identical}"
    event = moved[0]
    old_route = event.before
    assert old_route is not None
    short = {n: chr(ord("a") + i) for i, n in enumerate(names)}

    def describe(plan: Plan) -> str:
        return " ".join(f"{short[s.node]}={s.start}:{s.end}" for s in plan.stages)

    before = statistics.median(result.step_seconds[1:event.decode_step])  # step 0: the prefill
    after = statistics.median(result.step_seconds[event.decode_step + 1:])  # +1: caches rebuilt
    rows = [RebalanceRow("before (c measured slow)", describe(old_route),
                         old_route.throughput_tps, 1 / before),
            RebalanceRow("after the re-plan", describe(event.after), event.after.throughput_tps,
                         1 / after)]
    note = (f"re-planned after decode step {event.decode_step}: c measured "
            f"{event.measured_s * 1e3:.1f} ms per step against {event.planned_s * 1e3:.1f} ms "
            f"planned; tokens and logits hash identical to the single engine: "
            f"{'yes' if identical else 'NO'}")
    return rows, note


def main(argv: list[str] | None = None) -> tuple[list[LoopbackRow], list[SimRow]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens (smoke run)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per figure (the best)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    tokens = 8 if args.quick else args.tokens
    console = wide_console()
    console.print(machine())
    torch.set_num_threads(1)  # as each stage process: the comparison is per core
    model_dir = checkpoint(args.quick)
    engine = Engine.load(model_dir)
    reference_steps(engine, 2)
    steps = min((reference_steps(engine, tokens) for _ in range(repeats)), key=statistics.median)

    rows = loopback(engine, model_dir, [2, 3], tokens, steps, repeats)
    table = Table(title=f"loopback, batch 1, {tokens} tokens, 1 thread per process "
                        f"(hidden {engine.config.hidden_size}, {engine.config.num_hidden_layers} layers)")
    for col in ("run", "decode ms/token", "tok/s", "vs single engine", "identical tokens+logits",
                "bytes/token/boundary", "int32 frames"):
        table.add_column(col)
    for row in rows:
        table.add_row(row.name, f"{row.step_s * 1e3:.2f}", f"{row.tokens_per_s:.1f}",
                      f"{row.tokens_per_s / rows[0].tokens_per_s:.2f}x", "yes" if row.identical else "NO",
                      " / ".join(f"{b:.0f}" for b in row.boundary_bytes) or "-",
                      f"{row.int32_share:.0%}" if row.boundary_bytes else "-")
    console.print(table)
    d = engine.config.hidden_size
    console.print(f"residual payload per token: int32 {4 * d} B, int64 {8 * d} B "
                  f"(+ {frames.HEADER.size + 8} B header and index per frame)")

    sim, figures = simulated(engine, model_dir, tokens, repeats)
    console.print("calibration (loopback): " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    table = Table(title=f"simulated cluster: delay lines, node c slowed by {SLOW_NODE_MS} ms/layer")
    for col in ("route", "layers", "predicted ms/token", "measured ms/token", "error", "aim 15%"):
        table.add_column(col)
    for sim_row in sim:
        table.add_row(sim_row.name, sim_row.route, f"{sim_row.predicted_s * 1e3:.1f}",
                      f"{sim_row.measured_s * 1e3:.1f}", f"{sim_row.error:+.1%}",
                      "met" if abs(sim_row.error) <= AIM else "MISSED")
    console.print(table)

    moves, note = rebalanced(engine, model_dir, tokens, figures)
    table = Table(title=f"rebalancing: three stages planned as equals, c in fact slowed by "
                        f"{REBALANCE_THROTTLE_MS} ms/layer (loopback, measured figures)")
    for col in ("phase", "route", "predicted tok/s", "measured tok/s", "error", "aim 15%"):
        table.add_column(col)
    for move in moves:
        table.add_row(move.phase, move.route, f"{move.predicted_tps:.1f}",
                      f"{move.measured_tps:.1f}", f"{move.error:+.1%}",
                      "met" if abs(move.error) <= AIM else "MISSED")
    console.print(table)
    console.print(note)
    return rows, sim


if __name__ == "__main__":
    main()
