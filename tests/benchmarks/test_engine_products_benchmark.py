"""benchmarks/engine_products.py: a table per route the CPU runs, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from verinfer.engine import kernels

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_products.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_small_run_prints_every_route_and_the_reference() -> None:
    done = _run("--k", "96", "--n", "40", "--rows", "1,3,9", "--weights", "2", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    routes = kernels.ISAS[: kernels.ISAS.index(kernels.cpu_isa()) + 1]
    for route in (*routes, "float32 (BLAS)"):
        for case in ("cache", "memory"):
            assert sum(1 for line in done.stdout.splitlines() if case in line and f" {route} " in line) == 3
    assert "load average" in done.stdout


def test_bad_options_are_one_line_errors() -> None:
    for args in (("--isas", "sse9"), ("--rows", "1,x"), ("--k", "0")):
        done = _run(*args)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and done.stderr.strip()


def test_wide_rows_run_through_linear() -> None:
    done = _run("--wide", "--huge-pages", "--k", "96", "--n", "40", "--rows", "1,9", "--weights", "2", "--repeats", "1", "--no-float")
    assert done.returncode == 0, done.stderr
    assert "wide (int16) (R, 96) x (40, 96) products" in done.stdout
    routes = kernels.ISAS[: kernels.ISAS.index(kernels.cpu_isa()) + 1]
    for route in routes:
        assert sum(1 for line in done.stdout.splitlines() if "memory" in line and f" {route} " in line) == 2
