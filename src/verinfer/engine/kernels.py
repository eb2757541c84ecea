"""Fused C++ CPU kernels (csrc/int_kernels.cpp): built at set-up, loaded once, the choice per call.

Each kernel equals a torch function of `model` byte for byte; those torch functions stay the
reference and the path for CUDA tensors, for `VERINFER_KERNELS=torch`, and for machines where the
extension cannot be built (one warning, then the torch path). The set-up (`scripts/bootstrap.sh`)
compiles it; `kernel_build` caches the build per source and loads it, safe against killed builds.

Inside the extension, each kernel has routes per instruction set (`ISAS`; all compute the same
integers): the CPU's best runs unless `VERINFER_ISA` names another, read once per process when
the extension loads; a route the CPU cannot run is refused with a clear error.
"""

from __future__ import annotations

import os
import platform
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from verinfer.engine import fixedpoint as fp
from verinfer.errors import LocalError

SOURCE = Path(__file__).resolve().parent / "csrc" / "int_kernels.cpp"
EXTENSION_NAME = "verinfer_int_kernels"
ENV_VAR = "VERINFER_KERNELS"  # "torch" selects the reference torch path
ISA_ENV_VAR = "VERINFER_ISA"  # forces one of ISAS (for tests and benchmarks)
# The extension's routes on this machine's architecture, slowest first (csrc/int_kernels.cpp).
_ROUTES = {
    "x86_64": ("scalar", "avx2", "avx512", "avx512vnni"),
    "aarch64": ("scalar", "neon", "neon-dotprod"),
}
_ROUTES["amd64"], _ROUTES["arm64"] = _ROUTES["x86_64"], _ROUTES["aarch64"]
ISAS = _ROUTES.get(platform.machine().lower(), ("scalar",))

_lock = threading.Lock()
_extension: ModuleType | None = None
_tried = False
_fused: bool | None = None  # see use_fused


def build() -> ModuleType:
    """Load the cached build of the extension, compiling it first if needed; raises on failure."""
    from verinfer.engine import kernel_build

    return kernel_build.build(EXTENSION_NAME, [SOURCE])


def extension() -> ModuleType | None:
    """The loaded extension, building it on the first call; None if it cannot be built."""
    global _extension, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                _extension = build()
            # kernel_build reports a missing compiler, a failed compile or a bad library as
            # KernelBuildError (a LocalError); an unwritable cache directory as OSError.
            except (LocalError, OSError) as exc:
                # A failed compile's message carries the whole compiler log: keep its first line.
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                warnings.warn(
                    f"verinfer: fused CPU kernels unavailable, using the slower torch path ({reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if _extension is not None and os.environ.get(ISA_ENV_VAR):
                try:
                    set_isa(os.environ[ISA_ENV_VAR], _extension)
                except LocalError:
                    _extension, _tried = None, False  # every later use raises the same error
                    raise
        return _extension


def set_isa(name: str, ext: ModuleType | None = None) -> None:
    """Run the kernels on route `name` (one of ISAS) from now on in this process; raises
    LocalError for an unknown route or one this CPU cannot run."""
    ext = ext or _ext()
    if name not in ISAS:
        raise LocalError(f"{ISA_ENV_VAR}={name} is not a route: use one of {', '.join(ISAS)}")
    best = ext.isa_info()["cpu"]
    if ISAS.index(name) > ISAS.index(best):
        raise LocalError(
            f"{ISA_ENV_VAR}={name}: this CPU cannot run that route (its best is {best}); "
            f"use one of {', '.join(ISAS[: ISAS.index(best) + 1])}"
        )
    ext.set_isa(name)


def isa() -> str:
    """The route the kernels run on now."""
    return str(_ext().isa_info()["active"])


def cpu_isa() -> str:
    """The best route this CPU can run."""
    return str(_ext().isa_info()["cpu"])


def use_fused() -> bool:
    """Whether CPU work goes to the fused kernels: `VERINFER_KERNELS` is not "torch" and the
    extension builds. Decided at the first call and kept for the process (`enabled` runs for
    every step of every layer; reading the environment each time cost ~1 ms per decode step)."""
    global _fused
    if _fused is None:
        _fused = os.environ.get(ENV_VAR, "") != "torch" and extension() is not None
    return _fused


def reload_setting() -> None:
    """Forget the decision of `use_fused`, so the next use reads `VERINFER_KERNELS` again."""
    global _fused
    _fused = None


@contextmanager
def torch_path() -> Iterator[None]:
    """Within the block, CPU work takes the reference torch path (the self-test checks both)."""
    global _fused
    saved, _fused = _fused, False
    try:
        yield
    finally:
        _fused = saved


def enabled(x: torch.Tensor) -> bool:
    """Whether work on `x` goes to the fused kernels: a CPU tensor and `use_fused()`."""
    return x.is_cpu and use_fused()


def _ext() -> ModuleType:
    ext = extension()
    if ext is None:
        raise RuntimeError("the fused CPU kernels are not available")
    return ext


def _exp2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    return fp._exp2_tables(x.device.type, x.device.index)


def rms_norm_quantize(
    h: torch.Tensor, gain: torch.Tensor, eps_scaled: int, levels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model.rms_norm_quantize`."""
    q, mant, exp = _ext().rms_norm_quantize(h.contiguous(), gain.contiguous(), eps_scaled, levels)
    return q, mant, exp


def int8_matmul(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """`fp.int8_matmul` (w_t: the (K, N) transposed view of a contiguous (N, K) weight)."""
    return _ext().int8_matmul(x.contiguous(), w_t.t().contiguous())


def linear(
    xq: torch.Tensor,
    xm: torch.Tensor,
    xe: torch.Tensor,
    weight_t: torch.Tensor,
    mant: torch.Tensor,
    shift_base: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`model.Linear.__call__` on int8 or wide rows xq (..., K) with scales (..., 1): (..., N);
    with `residual` (..., N), the clamped sum. The extension makes its inputs contiguous itself."""
    return _ext().linear(xq, xm, xe, weight_t, mant, shift_base, bias, residual)


def rope_to_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """`model._rope_to_cache`: rotated q (B, T, H, hd); k and v written to the caches."""
    return _ext().rope_to_cache(
        qkv.contiguous(), cos, sin, positions.contiguous(), rows.contiguous(), k_cache, v_cache, heads
    )


def attend(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
    inv_sqrt_mant: int,
    inv_sqrt_exp: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model._attend`: quantized attention output rows (B, T, H hd) with their scales."""
    hi, lo, log2e = _exp2(q)
    oq, om, oe = _ext().attend(
        q.contiguous(), k_cache, v_cache, positions.contiguous(), rows.contiguous(),
        inv_sqrt_mant, inv_sqrt_exp, hi, lo, log2e,
    )
    return oq, om, oe


def swiglu_quantize(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model._swiglu_quantize`."""
    hi, lo, log2e = _exp2(gate_up)
    q, mant, exp = _ext().swiglu_quantize(gate_up.contiguous(), hi, lo, log2e)
    return q, mant, exp
