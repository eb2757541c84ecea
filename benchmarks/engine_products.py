"""Speed of the engine's exact int8 weight products alone, per instruction-set route.

An int8 (R, K) by (N, K) product (`kernels.int8_matmul`, the loop every `Linear` runs) for
R = 1, 8, 16 and 128 rows, on each route this CPU can run (`--isas`), against float32 `x @ w.t()`
(torch's BLAS, the CPU's best instructions) of the same shape in the same run. The weights are
either one matrix read again and again (`cache`: it stays in the last-level cache, so this
measures the arithmetic) or `--weights` different matrices in turn, more bytes than the cache
holds (`memory`: decode reads every weight once per step from memory, and so does this).

The last column is what batching buys: the rows' throughput against one row on the same route
(R x time of 1 row / time of R rows). Best of `--repeats` timed passes over all the weights
(the minimum is the least disturbed by other work on a shared machine). With one thread the
clock is the process's CPU time by default (`--clock cpu`): time the process waits while other
work runs on its core does not count, which on a loaded machine is most of the wall time.

    .venv/bin/python benchmarks/engine_products.py                        # every route, 1 thread
    .venv/bin/python benchmarks/engine_products.py --isas avx2 --threads 2
    .venv/bin/python benchmarks/engine_products.py --isas avx2 --wide --no-float

`--huge-pages` allocates the weights as the engine does when it loads a model (`hugepages.empty`:
2 MiB pages where the OS gives them), which matters for the memory case. `--wide` times wide rows instead (int16 within +-16383, the inputs of the q/k/v, down and head
projections) through `kernels.linear`, the only kernel that takes them, so its scaling of the
(R, N) products into int64 is included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, wide_console

ROWS = (1, 8, 16, 128)


def best_ms(run, count: int, repeats: int, clock) -> float:  # type: ignore[no-untyped-def]
    """Best time of one call of run(i) for i in range(count), over `repeats` passes, in ms."""
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        for i in range(count):
            run(i)
        best = min(best, (clock() - started) / count)
    return best * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isas", default="all",
                        help="comma-separated routes (scalar, avx2, avx512, avx512vnni), or all the CPU runs")
    parser.add_argument("--k", type=int, default=2048, help="inner dimension K (2048: the 1B shape's q/o)")
    parser.add_argument("--n", type=int, default=2048, help="output columns N")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row counts R")
    parser.add_argument("--weights", type=int, default=24,
                        help="distinct weights for the memory case (24 x 4 MiB: more than a 32 MiB L3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default with 1 thread); wall: elapsed time (default otherwise)")
    parser.add_argument("--no-float", action="store_true", help="skip the float32 reference")
    parser.add_argument("--huge-pages", action="store_true",
                        help="weights in transparent huge pages, as the engine loads them (hugepages.empty)")
    parser.add_argument("--wide", action="store_true",
                        help="wide (int16) rows through kernels.linear instead of int8 rows")
    args = parser.parse_args()
    try:
        rows_list = [int(r) for r in args.rows.split(",") if r]
    except ValueError:
        parser.error("--rows takes comma-separated integers")
    if not rows_list or min(rows_list) < 1 or min(args.k, args.n, args.weights, args.threads, args.repeats) < 1:
        parser.error("--rows, --k, --n, --weights, --threads and --repeats must be positive")

    import torch

    from verinfer.engine import hugepages, kernels

    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    if not kernels.use_fused():
        print("engine_products: the fused kernels are not built (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    runnable = kernels.ISAS[: kernels.ISAS.index(kernels.cpu_isa()) + 1]
    isas = runnable if args.isas == "all" else tuple(args.isas.split(","))
    for name in isas:
        if name not in runnable:
            print(f"engine_products: route {name!r} is not one this CPU runs ({', '.join(runnable)})",
                  file=sys.stderr)
            return 2
    info = machine()
    gen = torch.Generator().manual_seed(0)
    k, n = args.k, args.n
    weights = [torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8) for _ in range(args.weights)]
    if args.huge_pages:
        weights = [hugepages.empty((n, k), torch.int8).copy_(w) for w in weights]
    weights_t = [w.t() for w in weights]  # (K, N) views, as Linear holds them
    if args.wide:
        inputs = {r: torch.randint(-16383, 16384, (r, k), generator=gen, dtype=torch.int16) for r in rows_list}
    else:
        inputs = {r: torch.randint(-127, 128, (r, k), generator=gen, dtype=torch.int8) for r in rows_list}
    mant, shift_base = torch.full((n,), 1 << 15), torch.full((n,), 10)  # column scales for --wide

    def product(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
        if not args.wide:
            return kernels.int8_matmul(x, weight_t)
        xm, xe = torch.full((x.shape[0], 1), 1 << 15), torch.full((x.shape[0], 1), 20)
        return kernels.linear(x, xm, xe, weight_t, mant, shift_base, None)

    table = {}  # (case, route, rows) -> ms
    started_load = info["load"]
    for case, count in (("cache", 1), ("memory", args.weights)):
        for name in isas:
            kernels.set_isa(name)
            for r in rows_list:
                x = inputs[r]
                repeats = args.repeats if r <= 16 else max(2, args.repeats // 2)
                product(x, weights_t[0])  # warm-up
                table[case, name, r] = best_ms(lambda i, x=x: product(x, weights_t[i]), count, repeats, clock)
        if not args.no_float:
            floats = [w.float() for w in weights[:count]]
            for r in rows_list:
                xf = inputs[r].float()
                xf @ floats[0].t()
                table[case, "float32", r] = best_ms(lambda i, xf=xf, floats=floats: xf @ floats[i].t(), count,
                                                    max(2, args.repeats // 2), clock)
    kernels.set_isa(kernels.cpu_isa())

    from rich.table import Table

    title = (f"{'wide (int16)' if args.wide else 'int8'} (R, {k}) x ({n}, {k}) products"
             f"{', weights in huge pages' if args.huge_pages else ''}, {args.threads} thread(s), {clock_name} time; {info['cpu']}, "
             f"{info['cores']} cores, {info['simd']}; load average {started_load} at the start, "
             f"{machine()['load']} at the end")
    out = Table(title=title)
    for column in ("weights", "route", "rows R", "ms", "GB/s of weight", "G int-ops/s",
                   "vs float32", "rows/s vs 1 row"):
        out.add_column(column, justify="left" if column in ("weights", "route") else "right")
    for case in ("cache", "memory"):
        for name in (*isas, *(() if args.no_float else ("float32",))):
            for r in rows_list:
                ms = table[case, name, r]
                ops = 2 * r * k * n / (ms * 1e-3) / 1e9
                gbs = k * n / (ms * 1e-3) / 1e9
                vs_float = "" if name == "float32" else f"{table[case, 'float32', r] / ms:.2f}x" \
                    if not args.no_float else ""
                vs_one = f"{r * table[case, name, rows_list[0]] / ms:.2f}x" if rows_list[0] == 1 else ""
                label = "float32 (BLAS)" if name == "float32" else name
                out.add_row(case, label, str(r), f"{ms:.3f}", f"{gbs:.1f}", f"{ops:.0f}", vs_float, vs_one)
    wide_console().print(out)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
