"""Start-up self-test: this machine's integer routes must give known answers before it serves.

A node whose arithmetic differs from everyone else's (a BLAS or oneDNN mode that rounds, a
miscompiled kernel, a broken vector route) would serve results that honest validators reject,
and be slashed for them. So before serving, each route the engine can take here — the fused C++
kernels when they are in use, and the torch path always (the reference, the fallback and the
CUDA path) — computes

- exact integer products through `model.Linear`, int8 and wide (15-bit) rows, few rows (the
  decode kernels) and more than 16 (the prefill ones), compared with committed digests of the
  exact products (`tests/engine/test_selftest.py` recomputes them with NumPy integers);
- a tiny golden generation (a random checkpoint built in code, see `testing`), compared with its
  committed model_id, tokens and logits hashes: every step of the engine, on this machine.

`run()` returns a `SelfTestReport` or raises `SelfTestFailed` naming what failed. It changes the
process's kernel route while it runs: call it before serving, not during.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

import torch

from verinfer.engine import fixedpoint as fp
from verinfer.engine import kernels
from verinfer.engine.api import Engine
from verinfer.engine.model import Linear
from verinfer.engine.sampler import SamplingParams
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import LocalError

FUSED, TORCH = "fused", "torch"


@dataclass(frozen=True)
class ProductCase:
    """Rows (rows, k) times an int8 weight (n, k): the SHA-256 of the exact int64 products."""

    levels: int  # fp.INT8_LEVELS (int8 rows) or fp.WIDE_LEVELS (wide rows)
    rows: int
    k: int
    n: int
    digest: str

    @property
    def name(self) -> str:
        kind = "int8" if self.levels == fp.INT8_LEVELS else "wide"
        return f"{kind} product {self.rows}x{self.k} @ {self.k}x{self.n}"


# Odd sizes reach every loop's tail; 16 rows or fewer take the decode kernels, more the prefill ones.
PRODUCTS = (
    ProductCase(fp.INT8_LEVELS, 5, 1000, 67, "3891ac55a9e788c8a7db172a2ca0e61d116f0bd3986913ee6594f81c3de848b9"),
    ProductCase(fp.INT8_LEVELS, 40, 2048, 96, "a8ab7117ab27f6c41aabe6e6ce743e8871dcbfda354791e85d10f5be1a12ecf4"),
    ProductCase(fp.WIDE_LEVELS, 3, 520, 40, "e7c72a8e53f898dad26cc8e12c90b55c0b314c6a10e9e36304a16f5966774019"),
    ProductCase(fp.WIDE_LEVELS, 24, 256, 130, "86a62bd2befa1cc4d0703313cc36b04d7be0cace27adc030c9bdff7970adbc39"),
)

# The golden generation: a tiny random checkpoint, one prompt long enough for the prefill
# kernels (24 tokens) and one short, greedy and sampled, decoded together.
GOLDEN_SEED = 11
GOLDEN_PROMPTS = ([(7 * i + 3) % 256 for i in range(24)], [72, 105, 33, 10, 200])
GOLDEN_PARAMS = (
    SamplingParams(max_tokens=6, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0.9, top_p=0.95, seed=5, ignore_eos=True),
)
GOLDEN_MODEL_ID = "d22f8da980b43dc3ffcabc69a31516575e9938b581e8ff6956df9b4acd5daa3e"
GOLDEN_TOKENS = ((317, 60, 13, 317, 60, 13), (212, 70, 96, 170, 171, 183))
GOLDEN_LOGITS_HASHES = (
    "1a64affab950844139a2b36640aea863fd58fab946a2de24fa88879106109c26",
    "689aa3a6d295d704d0612048591f24c7dc14ff1199e225e30b9080d4944e413a",
)


class SelfTestFailed(LocalError):
    """This machine's arithmetic differs from the known answers: it must not serve."""

    def __init__(self, report: SelfTestReport) -> None:
        self.report = report
        failed = "; ".join(f"{c.route} route: {c.name}: {c.detail}" for c in report.failures)
        super().__init__(
            f"self-test failed on {report.device}, this machine must not serve: {failed}. Its results "
            "would differ from every honest node's and be slashed. Look for settings that change "
            "arithmetic (ONEDNN_*/DNNL_* or ATEN_CPU_CAPABILITY variables, a patched torch), rebuild "
            "the kernels (scripts/bootstrap.sh), or, if only the fused route fails, serve with "
            f"{kernels.ENV_VAR}=torch"
        )


@dataclass(frozen=True)
class Check:
    route: str
    name: str
    passed: bool
    detail: str  # what differed, empty when passed
    seconds: float


@dataclass(frozen=True)
class SelfTestReport:
    device: str
    routes: tuple[str, ...]
    checks: tuple[Check, ...]
    seconds: float

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def product_inputs(case: ProductCase) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (rows, k) int8 or int16 and weight (n, k) int8 from SHAKE-256, with the extreme
    values (+-levels against -127) in the first and last rows."""
    label = f"verinfer-selftest/{case.levels}/{case.rows}x{case.k}x{case.n}".encode()
    width = 1 if case.levels == fp.INT8_LEVELS else 2
    stream = hashlib.shake_256(label).digest(case.rows * case.k * width + case.n * case.k)
    split = case.rows * case.k * width
    dtype = fp.row_dtype(case.levels)
    x = torch.frombuffer(bytearray(stream[:split]), dtype=dtype).view(case.rows, case.k)
    x = (x if width == 1 else x >> 1).clamp(-case.levels, case.levels).to(dtype)
    w = torch.frombuffer(bytearray(stream[split:]), dtype=torch.int8).view(case.n, case.k)
    w = w.clamp(-127, 127).contiguous()
    x[0], x[-1], w[0] = case.levels, -case.levels, -127
    return x, w


def product_digest(products: torch.Tensor) -> str:
    return hashlib.sha256(products.to("cpu", torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _products(case: ProductCase, device: torch.device) -> torch.Tensor:
    """The exact products through `Linear`, with scales that make its output the raw integers:
    row and weight mantissas 2**14 (2**16 for wide rows, whose product is rounded by 2**16 first)
    and exponents that shift the 2**28 back out."""
    x, w = product_inputs(case)
    wide = case.levels != fp.INT8_LEVELS
    ones = torch.ones(case.n, dtype=torch.int64, device=device)
    linear = Linear(weight_t=w.to(device).t(), mant=ones << 14, exp=ones * (fp.ACT_FRAC + 14), bias=None)
    row_scale = torch.ones(case.rows, 1, dtype=torch.int64, device=device)
    xm = row_scale << (16 if wide else 14)
    xe = row_scale * (16 if wide else 14)
    with torch.inference_mode():
        return linear(x.to(device), xm, xe)


@cache
def _golden_engine(device: str) -> Engine:
    with tempfile.TemporaryDirectory(prefix="verinfer-selftest-") as scratch:
        return Engine.load(write_random_checkpoint(scratch, tiny_config(), seed=GOLDEN_SEED), device)


def golden_generation(device: str = "cpu") -> tuple[str, list[list[int]], list[str]]:
    """model_id, tokens and logits hashes of the golden generation on the current route."""
    engine = _golden_engine(device)
    results = engine.generate(list(GOLDEN_PROMPTS), list(GOLDEN_PARAMS))
    return engine.model_id, [r.token_ids for r in results], [r.logits_hash for r in results]


def _check_products(case: ProductCase, device: torch.device) -> str:
    got = product_digest(_products(case, device))
    return "" if got == case.digest else f"wrong integers (digest {got[:16]}, expected {case.digest[:16]})"


def _check_golden(device: torch.device) -> str:
    model_id, tokens, hashes = golden_generation(str(device))
    if model_id != GOLDEN_MODEL_ID:
        return f"model_id {model_id[:16]} (expected {GOLDEN_MODEL_ID[:16]}): quantization differs"
    if tuple(map(tuple, tokens)) != GOLDEN_TOKENS:
        return f"tokens {tokens} (expected {[list(t) for t in GOLDEN_TOKENS]})"
    if tuple(hashes) != GOLDEN_LOGITS_HASHES:
        return f"logits hashes {[h[:16] for h in hashes]} (expected {[h[:16] for h in GOLDEN_LOGITS_HASHES]})"
    return ""


def _timed(route: str, name: str, check: Callable[[], str]) -> Check:
    started = time.perf_counter()
    detail = check()
    return Check(route, name, not detail, detail, time.perf_counter() - started)


def _route_checks(route: str, device: torch.device) -> list[Check]:
    checks = [_timed(route, case.name, partial(_check_products, case, device)) for case in PRODUCTS]
    checks.append(_timed(route, "golden generation", lambda: _check_golden(device)))
    return checks


def active_routes(device: str = "cpu") -> tuple[str, ...]:
    """The routes the engine takes on `device`: the fused kernels (CPU, when built and not
    disabled by VERINFER_KERNELS=torch) and the torch path (always: reference, fallback, CUDA)."""
    if torch.device(device).type == "cpu" and kernels.use_fused():
        return (FUSED, TORCH)
    return (TORCH,)


def run(device: str = "cpu") -> SelfTestReport:
    """Run every check on every active route of `device`; raises SelfTestFailed on a mismatch."""
    started = time.perf_counter()
    dev = torch.device(device)
    routes = active_routes(device)
    checks: list[Check] = []
    for route in routes:
        if route == FUSED:
            checks += _route_checks(route, dev)
        else:
            with kernels.torch_path():
                checks += _route_checks(route, dev)
    report = SelfTestReport(str(dev), routes, tuple(checks), time.perf_counter() - started)
    if report.failures:
        raise SelfTestFailed(report)
    return report


_passed: dict[str, SelfTestReport] = {}


def run_once(device: str = "cpu") -> SelfTestReport:
    """`run(device)`, remembered for the process once it has passed (for repeated start-ups)."""
    if device not in _passed:
        _passed[device] = run(device)
    return _passed[device]
