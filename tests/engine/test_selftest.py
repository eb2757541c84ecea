"""The start-up self-test: its known answers are right, it passes here, and it catches a route
that computes wrong integers (a kernel off by one, a wrong exp table, a broken torch product)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from verinfer.engine import fixedpoint as fp
from verinfer.engine import kernels, selftest


@pytest.fixture(autouse=True)
def _fused_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "_fused", None)
    assert kernels.extension() is not None, "the C++ kernels must build on this machine"
    yield


@pytest.mark.parametrize("case", selftest.PRODUCTS, ids=lambda case: case.name)
def test_committed_digests_are_the_exact_products(case: selftest.ProductCase) -> None:
    x, w = selftest.product_inputs(case)
    assert x.dtype == fp.row_dtype(case.levels) and x.shape == (case.rows, case.k)
    assert int(x.abs().max()) == case.levels and int(w.abs().max()) == 127
    exact = x.numpy().astype(np.int64) @ w.numpy().astype(np.int64).T  # NumPy integers, no BLAS
    assert hashlib.sha256(exact.astype("<i8").tobytes()).hexdigest() == case.digest


def test_cases_cover_decode_and_prefill_rows_of_both_kinds() -> None:
    kinds = {(case.levels, case.rows > 16) for case in selftest.PRODUCTS}
    assert kinds == {(fp.INT8_LEVELS, False), (fp.INT8_LEVELS, True), (fp.WIDE_LEVELS, False),
                     (fp.WIDE_LEVELS, True)}
    assert any(len(prompt) > 16 for prompt in selftest.GOLDEN_PROMPTS)


def test_passes_on_this_machine_on_both_routes() -> None:
    report = selftest.run()
    assert report.routes == (selftest.FUSED, selftest.TORCH)
    assert len(report.checks) == 2 * (len(selftest.PRODUCTS) + 1)
    assert all(check.passed and check.detail == "" for check in report.checks)
    assert report.failures == []
    assert kernels.use_fused(), "the route is restored after the torch-path checks"


def test_without_the_fused_kernels_only_the_torch_path_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    report = selftest.run()
    assert report.routes == (selftest.TORCH,)
    assert {check.route for check in report.checks} == {selftest.TORCH}


def _off_by_one_past_16_rows(real: Any) -> Any:
    def linear(xq: torch.Tensor, *args: Any) -> torch.Tensor:
        out = real(xq, *args)
        if xq.reshape(-1, xq.shape[-1]).shape[0] > 16:
            out += 1
        return out
    return linear


def test_a_fused_kernel_off_by_one_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "linear", _off_by_one_past_16_rows(kernels.linear))
    with pytest.raises(selftest.SelfTestFailed) as caught:
        selftest.run()
    failed = {(check.route, check.name) for check in caught.value.report.failures}
    assert failed == {("fused", "int8 product 40x2048 @ 2048x96"), ("fused", "wide product 24x256 @ 256x130"),
                      ("fused", "golden generation")}
    message = str(caught.value)
    assert "must not serve" in message and "fused route: int8 product 40x2048 @ 2048x96: wrong integers" in message
    assert f"{kernels.ENV_VAR}=torch" in message


def test_a_broken_torch_product_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fp.int8_matmul
    monkeypatch.setattr(fp, "int8_matmul", lambda x, w_t: real(x, w_t) + (x.shape[0] <= 16))
    with pytest.raises(selftest.SelfTestFailed) as caught:
        selftest.run()
    failures = caught.value.report.failures
    assert {check.route for check in failures} == {"torch"}
    assert {check.name for check in failures} >= {"int8 product 5x1000 @ 1000x67", "golden generation"}


def test_a_wrong_exp_table_is_caught_on_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fp._exp2_tables

    def wrong_tables(device_type: str, index: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        hi, lo, log2e = real(device_type, index)
        hi = hi.clone()
        hi[1:] -= 1  # one unit off in the last place of every entry but e**0
        return hi, lo, log2e

    monkeypatch.setattr(fp, "_exp2_tables", wrong_tables)
    with pytest.raises(selftest.SelfTestFailed) as caught:
        selftest.run()
    failures = caught.value.report.failures
    assert [(check.route, check.name) for check in failures] == [("fused", "golden generation"),
                                                                 ("torch", "golden generation")]
    assert "logits hashes" in failures[0].detail or "tokens" in failures[0].detail


def test_run_once_remembers_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "_passed", {})
    first = selftest.run_once()
    monkeypatch.setattr(kernels, "linear", _off_by_one_past_16_rows(kernels.linear))
    assert selftest.run_once() is first
    with pytest.raises(selftest.SelfTestFailed):
        selftest.run()


def _cli(*args: str, patch: str = "") -> subprocess.CompletedProcess[str]:
    """`verinfer ARGS` in a new process, after running `patch` (to break a route on purpose)."""
    code = f"import sys\n{patch}\nfrom verinfer.cli import main\nsys.argv = ['verinfer', *{list(args)!r}]\nmain()\n"
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV_VAR}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          check=False, env=env)


BREAK_FUSED = """
from verinfer.engine import kernels
real = kernels.linear
def linear(xq, *args):
    return real(xq, *args) + 1
kernels.linear = linear
"""


def test_cli_reports_the_checks() -> None:
    done = _cli("selftest")
    assert done.returncode == 0, done.stderr
    assert "self-test passed: 10 checks on routes fused, torch (cpu)" in done.stdout
    assert "golden generation" in done.stderr
    as_json = _cli("selftest", "--json")
    report = json.loads(as_json.stdout)
    assert report["routes"] == ["fused", "torch"] and all(c["passed"] for c in report["checks"])


def test_cli_refuses_a_broken_machine_with_one_line() -> None:
    done = _cli("selftest", patch=BREAK_FUSED)
    assert done.returncode == 2
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "self-test failed on cpu" in error and "fused route: int8 product 5x1000" in error
    assert "Traceback" not in done.stderr and "FAILED" in done.stderr


def test_generate_runs_the_self_test_first(tiny_dir: Path) -> None:
    done = _cli("generate", "--model", str(tiny_dir), "--max-tokens", "3", "hello", patch=BREAK_FUSED)
    assert done.returncode == 2
    assert "self-test failed" in done.stderr and "output_hash" not in done.stdout
