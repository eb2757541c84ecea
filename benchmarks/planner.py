"""The partition planner on generated heterogeneous clusters: plan quality and solve time.

For each cluster size (nodes x layers) and seed, `verinfer.pipeline.testing.random_cluster`
draws nodes from phones to GPU servers over 1-4 sites (LAN inside a site, WAN between) and a
Llama-8B-shaped model with that many layers, sized to need 25-60% of the cluster's memory.
For both objectives it compares the MILP plan's predicted figures with the memory-proportional
split (exo/Petals style), the best single node that holds the model, and the exact optimum of
the Held-Karp dynamic program where that is tractable (up to 8 nodes). Ratios are of predicted
figures, so they do not depend on the machine; solve times do.

    PYTHONPATH=src python benchmarks/planner.py [--seeds 3] [--time-limit 5] [--plot PATH]
        [--reference-limit 120]

Solve times are wall clock (what the time limit bounds) and the process's CPU time over all
its threads (what the solve costs when it has the cores to itself; on a shared machine wall
time is larger).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from _common import machine, wide_console
from verinfer.pipeline import exhaustive
from verinfer.pipeline.planner import Objective, best_single_node, memory_proportional, plan
from verinfer.pipeline.testing import llama_spec, random_cluster

SIZES = ((3, 16), (4, 16), (5, 24), (6, 32), (8, 32), (12, 48), (16, 64), (24, 80), (32, 80))
QUICK_SIZES = ((3, 8), (4, 12), (8, 16))
EXACT_NODES = 8  # the dynamic program is exponential in nodes
SEQUENCES = 8  # generations in flight for the throughput objective (and every KV cache)


@dataclass
class Case:
    nodes: int
    layers: int
    seed: int
    objective: Objective
    plan_value: float  # seconds per token (latency) or per pipeline cycle (throughput)
    proportional: float | None  # None: the split does not fit
    single: float | None  # None: no node holds the model
    exact: float | None  # None: not computed
    reference: float | None  # the MILP's proven optimum with the long limit (None: not needed)
    solve_s: float
    solve_cpu_s: float
    exact_s: float
    status: str
    gap: float
    stages: int


def run_case(nodes: int, layers: int, seed: int, objective: Objective, time_limit: float,
             reference_limit: float = 0.0) -> Case:
    model = llama_spec(layers, sequences=SEQUENCES)
    cluster = random_cluster(1000 * nodes + seed, nodes, model)
    started, cpu = time.perf_counter(), time.process_time()
    best = plan(cluster, model, objective, time_limit)
    solve, solve_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert best.solve is not None
    reference = None
    if best.solve.status != "optimal" and reference_limit > 0:
        long = plan(cluster, model, objective, reference_limit)
        if long.solve is not None and long.solve.status == "optimal":
            reference = long.value
    proportional = memory_proportional(cluster, model, objective)
    single = best_single_node(cluster, model, objective)
    exact, exact_s = None, 0.0
    if nodes <= EXACT_NODES:
        started = time.perf_counter()
        exact = exhaustive.optimum(cluster, model, objective)
        exact_s = time.perf_counter() - started
    return Case(nodes, layers, seed, objective, best.value,
                proportional.value if proportional.fits else None,
                None if single is None else single.value, exact, reference, solve, solve_cpu,
                exact_s,
                best.solve.status, best.solve.gap, len(best.stages))


def _ratio_text(values: list[float], count: int) -> str:
    """Geometric mean [min, max], and on how many of `count` seeds the baseline exists."""
    if not values:
        return f"- (0/{count})"
    return (f"{statistics.geometric_mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]"
            f" ({len(values)}/{count})")


def summary_table(cases: list[Case], objective: Objective) -> Table:
    unit = "per-token latency" if objective == "latency" else "throughput"
    table = Table(title=f"objective: {objective} — predicted {unit} of the plan against the "
                  "baselines (>1: the plan is better; geometric mean \\[min, max] (seeds where "
                  "the baseline fits))")
    for column in ("nodes x layers", "stages", "vs memory-proportional", "vs best single node",
                   "plan/DP optimum - 1", "solve s, max wall / cpu", "proven optimal (max gap)",
                   "unproven: plan/optimum - 1", "exact DP s"):
        table.add_column(column, justify="right")
    sizes = sorted({(c.nodes, c.layers) for c in cases})
    for nodes, layers in sizes:
        group = [c for c in cases if (c.nodes, c.layers) == (nodes, layers)
                 and c.objective == objective]
        prop = [c.proportional / c.plan_value for c in group if c.proportional is not None]
        single = [c.single / c.plan_value for c in group if c.single is not None]
        exact = [c.plan_value / c.exact - 1 for c in group if c.exact is not None]
        late = [c.plan_value / c.reference - 1 for c in group if c.reference is not None]
        proven = sum(c.status == "optimal" for c in group)
        table.add_row(
            f"{nodes} x {layers}", f"{statistics.mean(c.stages for c in group):.1f}",
            _ratio_text(prop, len(group)), _ratio_text(single, len(group)),
            f"{max(exact):.1e}" if exact else "-",
            f"{max(c.solve_s for c in group):.2f} / {max(c.solve_cpu_s for c in group):.2f}",
            f"{proven}/{len(group)} ({max(c.gap for c in group):.1%})",
            ", ".join(f"{x:.2%}" for x in late) or "-",
            f"{statistics.median(c.exact_s for c in group):.2f}" if exact else "-",
        )
    return table


def check_aims(cases: list[Case]) -> list[str]:
    """The issue's aims, each with the measured figure."""
    exact = [c.plan_value / c.exact - 1 for c in cases if c.exact is not None]
    largest = max((c.nodes, c.layers) for c in cases)
    big = [c.solve_s for c in cases if (c.nodes, c.layers) == largest]
    big_cpu = [c.solve_cpu_s for c in cases if (c.nodes, c.layers) == largest]
    worse = [c for c in cases if c.single is not None and c.plan_value > c.single * (1 + 1e-9)]
    lines = []
    if exact:
        lines.append(f"within 1% of the exact optimum: worst {max(exact):.2e} over {len(exact)} "
                     f"cases -> {'met' if max(exact) <= 0.01 else 'MISSED'}")
    lines.append(f"solve time at {largest[0]} nodes x {largest[1]} layers: max {max(big):.2f} s "
                 f"wall, {max(big_cpu):.2f} s cpu -> {'met' if max(big) < 5 else 'MISSED'} "
                 "(aim < 5 s)")
    lines.append(f"never worse than the best single node: {len(worse)} worse cases -> "
                 f"{'met' if not worse else 'MISSED'}")
    return lines


def plot(cases: list[Case], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for objective, marker in (("latency", "o"), ("throughput", "s")):
        group = [c for c in cases if c.objective == objective]
        xs = [c.nodes for c in group if c.proportional is not None]
        ys = [c.proportional / c.plan_value for c in group if c.proportional is not None]
        left.scatter(xs, ys, marker=marker, alpha=0.7, label=f"vs memory-proportional ({objective})")
        xs = [c.nodes for c in group if c.single is not None]
        ys = [c.single / c.plan_value for c in group if c.single is not None]
        left.scatter(xs, ys, marker=marker, alpha=0.7, facecolors="none", edgecolors="k",
                     label=f"vs best single node ({objective})")
        right.scatter([c.nodes for c in group], [c.solve_s for c in group], marker=marker,
                      alpha=0.7, label=f"{objective}, wall")
        right.scatter([c.nodes for c in group], [c.solve_cpu_s for c in group], marker=marker,
                      facecolors="none", edgecolors="k", alpha=0.7, label=f"{objective}, cpu")
    left.set_yscale("log")
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_xlabel("nodes")
    left.set_ylabel("baseline time / plan time (predicted)")
    left.set_title("how much better the MILP plan is")
    left.legend(fontsize=7)
    right.axhline(5.0, color="red", lw=0.8, ls="--", label="aim: 5 s")
    right.set_xlabel("nodes")
    right.set_ylabel("solve time, s")
    right.set_title("MILP solve time (HiGHS, limit 5 s wall)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Case]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="clusters per size")
    parser.add_argument("--time-limit", type=float, default=5.0, help="solver limit, seconds")
    parser.add_argument("--reference-limit", type=float, default=0.0,
                        help="re-solve plans not proven optimal with this limit (seconds) to "
                        "measure how far they were from the optimum")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write the chart here (e.g. docs/pipeline/planner.png)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.time_limit <= 0:
        parser.error("--seeds must be >= 1 and --time-limit > 0")
    console = wide_console()
    console.print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    cases = []
    sizes = QUICK_SIZES if args.quick else SIZES
    with console.status("solving") as status:
        for nodes, layers in sizes:
            for seed in range(args.seeds):
                for objective in ("latency", "throughput"):
                    status.update(f"{nodes} nodes x {layers} layers, seed {seed}, {objective}")
                    cases.append(run_case(nodes, layers, seed, objective, args.time_limit,
                                          args.reference_limit))
    for objective in ("latency", "throughput"):
        console.print(summary_table(cases, objective))
    for line in check_aims(cases):
        console.print(line)
    if args.plot:
        plot(cases, args.plot)
        console.print(f"chart: {args.plot}")
    return cases


if __name__ == "__main__":
    main()
