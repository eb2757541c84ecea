"""Integer kernels of the engine: rounding shifts, scales, row quantization, exp, softmax, SiLU.

Conventions, fixed once for the whole engine:
- Activations between layers are int64 fixed point with `ACT_FRAC` fractional bits.
- A *scale* is a pair of int64 tensors `(mant, exp)` meaning `mant * 2**-exp`, with `mant` in
  `[2**14, 2**16]` (or 0), so two mantissas times an int8 product's accumulator (at most
  K * 127**2 < 2**30 for K <= 2**15) stay below 2**62.
- Rounding is half up (toward +infinity) everywhere: `(x + 2**(s-1)) >> s`.
- Inputs of weight products are rows of int8 (`INT8_LEVELS` steps each side of 0) or *wide*
  rows of int16 (`WIDE_LEVELS` steps), each row with its scale; a wide row's product with an
  int8 weight is two exact int8 products (`wide_matmul`).
Every function is exact integer arithmetic, so its result is the same bytes on any device,
thread count or batch composition. Value bounds that keep int64 from overflowing are stated
where they matter and enforced by saturation (`clamp`), which is itself deterministic.
"""

from __future__ import annotations

from functools import cache

import torch

from verinfer.engine import exactmath

ACT_FRAC = 16  # fractional bits of activations (residual stream, q/k/v, MLP, logits)
MANT_BITS = 15  # scale mantissas have 15 or 16 bits
ACT_LIMIT = (1 << 46) - 1  # |activation| < 2**30 in real units: bounds every product below
PROB_FRAC = 20  # attention probabilities are integers in [0, 2**20]
EXP_FRAC = 30  # fixed-point output of exp / sigmoid
_LOG2E_FRAC = 30
INT8_LEVELS = 127
WIDE_LEVELS = (1 << 14) - 1  # wide rows: |q| <= 16383, so q = 128 * hi + lo with hi, lo int8
WIDE_SCALE_SHIFT = 16  # a wide product times its row mantissa is rounded by 2**16 (see model)


def shift_round(x: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """`x * 2**-shift` rounded half up; a negative shift multiplies. `x` is int64.

    Uses floor(v / 2**s + 1/2) == ((v >> (s - 1)) + 1) >> 1 for s >= 1, which needs no
    per-element rounding constant.
    """
    if isinstance(shift, int):
        if shift > 0:
            return ((x >> (shift - 1)) + 1) >> 1
        return x << -shift if shift < 0 else x
    # Shift amounts stay in [0, 62] so every shift is defined on every backend; for |x| < 2**61
    # a right shift by 62 already rounds to 0, as any larger one would.
    less = shift - 1
    return (((x << (-less).clamp(0, 62)) >> less.clamp(0, 62)) + 1) >> 1


def div_round(num: torch.Tensor, den: torch.Tensor | int) -> torch.Tensor:
    """`num / den` rounded half up, for `den > 0` (exact floor division underneath)."""
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Number of bits of each non-negative int64 (0 for 0).

    A float64 conversion proposes the answer (it can be one too high when rounding carries
    into the next power of two); an integer test then decides, so the result is exact.
    """
    guess = torch.frexp(x.to(torch.float64)).exponent.to(torch.int64)
    too_high = (guess > 0) & ((x >> (guess - 1).clamp(min=0)) == 0)
    return guess - too_high.to(torch.int64)


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """Floor square root of non-negative int64 values below 2**62.

    float64 proposes a root: for x < 2**62 it is within 2**-21 of sqrt(x), so its floor is the
    exact answer or one off either way; one integer correction each way then decides. The
    result is therefore exact, whatever the platform's float square root does in its last bit.
    """
    r = torch.sqrt(x.to(torch.float64)).to(torch.int64)
    r = torch.where(r * r > x, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= x, r + 1, r)


def ratio_to_scale(
    num: torch.Tensor, den: torch.Tensor | int, extra_exp: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale `(mant, exp)` nearest to `num / den * 2**-extra_exp`, for 0 <= num < 2**62, den > 0.

    The exponent comes from the operands' bit lengths, so `mant = round(num * 2**k / den)` lies
    in [2**14, 2**16] (0 for num = 0): 16-bit mantissas, as the products downstream assume.
    """
    den_bits = bit_length(den) if isinstance(den, torch.Tensor) else den.bit_length()
    k = MANT_BITS + den_bits - bit_length(num)
    up = k.clamp(min=0)
    down = (-k).clamp(min=0)
    mant = div_round(num << up, den << down)
    return mant, torch.where(num == 0, 0, k + extra_exp)


def quantize_rows(
    x: torch.Tensor, frac: int, levels: int = INT8_LEVELS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric per-row integers of fixed-point `x` (`frac` fraction bits), with the row scales.

    Returns `(q, mant, exp)` with `x * 2**-frac ~= q * mant * 2**-exp` and |q| <= `levels`: int8
    for `INT8_LEVELS`, int16 (a wide row) for `WIDE_LEVELS`. The row scale comes from the row's
    integer max, never from a float. Needs |x| < 2**46 (`ACT_LIMIT`).
    """
    amax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1)
    q = div_round(levels * x, amax).to(row_dtype(levels))
    mant, exp = ratio_to_scale(amax, levels, frac)
    return q, mant, exp


def row_dtype(levels: int) -> torch.dtype:
    """int8 rows for `INT8_LEVELS`, int16 for `WIDE_LEVELS`."""
    return torch.int8 if levels <= INT8_LEVELS else torch.int16


def dequantize(q: torch.Tensor, mant: torch.Tensor, exp: torch.Tensor, frac: int) -> torch.Tensor:
    """`q * mant * 2**-exp` as int64 fixed point with `frac` fraction bits."""
    return shift_round(q.to(torch.int64) * mant, exp - frac)


def int8_matmul(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 product `x @ w_t` (x: (T, K), w_t: (K, N) column-major view).

    `torch._int_mm` is exact (integer accumulation); on CUDA it wants more than 16 rows and
    multiples of 8, so small batches are padded with zero rows, which changes nothing else.
    """
    rows = x.shape[0]
    if x.is_cuda:
        padded_rows = max(32, (rows + 7) // 8 * 8)
        if padded_rows != rows:
            x = torch.cat([x, x.new_zeros(padded_rows - rows, x.shape[1])])
        return torch._int_mm(x, w_t)[:rows]
    return torch._int_mm(x, w_t)


def wide_matmul(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """Exact product of wide rows x (T, K) int16 with an int8 `w_t` (K, N): (T, N) int64.

    x = 128 * hi + lo with hi = x >> 7 in [-128, 127] and lo = x & 127 in [0, 127] (|x| <=
    WIDE_LEVELS): one int8 product of the 2T stacked rows [hi; lo] reads the weight once.
    """
    rows = x.shape[0]
    halves = torch.cat([x >> 7, x & 127]).to(torch.int8)
    acc = int8_matmul(halves, w_t).to(torch.int64)
    return acc[:rows] * 128 + acc[rows:]


def exact_float_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for int64 operands whose every partial sum stays below 2**53, computed in float64.

    Each product and partial sum is then an integer that float64 represents exactly, so the
    result is exact whatever the summation order, blocking or FMA use of the BLAS underneath.
    Callers guarantee the bound (by saturating their inputs); the result returns as int64.
    """
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)


@cache
def _exp2_tables(device_type: str, index: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    hi = torch.tensor(exactmath.exp2_neg_table(256, 8, EXP_FRAC), dtype=torch.int64, device=device)
    lo = torch.tensor(exactmath.exp2_neg_table(256, 16, EXP_FRAC), dtype=torch.int64, device=device)
    log2e = exactmath.round_to_bits(
        (exactmath.ONE << exactmath.PREC) // exactmath.ln2(), exactmath.PREC, _LOG2E_FRAC
    )
    return hi, lo, log2e


def exp_neg(d: torch.Tensor) -> torch.Tensor:
    """`e**(-d)` in Q30 for fixed-point `d >= 0` (ACT_FRAC bits): 2**-(d log2 e) by two tables."""
    hi_table, lo_table, log2e = _exp2_tables(d.device.type, d.device.index)
    d = d.clamp(max=64 << ACT_FRAC)  # e**-64 is 0 in Q30 anyway; keeps the product in range
    t = shift_round(d * log2e, _LOG2E_FRAC)  # -log2 of the result, ACT_FRAC fraction bits
    whole = (t >> ACT_FRAC).clamp(max=62)
    frac = t & ((1 << ACT_FRAC) - 1)
    mantissa = shift_round(hi_table[frac >> 8] * lo_table[frac & 0xFF], EXP_FRAC)
    return shift_round(mantissa, whole)


def softmax(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Integer softmax over the last axis: probabilities in [0, 2**PROB_FRAC], masked ones 0.

    `scores` are fixed point (ACT_FRAC bits); `visible` is a bool mask broadcastable to them.
    Every row must have at least one visible entry.
    """
    masked = torch.where(visible, scores, torch.iinfo(torch.int64).min)
    top = masked.amax(dim=-1, keepdim=True)
    e = torch.where(visible, exp_neg((top - scores).clamp(min=0)), 0)
    total = e.sum(dim=-1, keepdim=True)  # int64 sum: exact in any order
    return div_round(e << PROB_FRAC, total)


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) in fixed point (ACT_FRAC bits), sigmoid from the integer exp."""
    x = x.clamp(-(1 << (ACT_FRAC + 14)), 1 << (ACT_FRAC + 14))
    e = exp_neg(x.abs())  # e**-|x| in Q30
    one = 1 << EXP_FRAC
    sig_abs = div_round(torch.full_like(e, one << EXP_FRAC), one + e)  # sigmoid(|x|) in Q30
    sig = torch.where(x >= 0, sig_abs, one - sig_abs)
    return shift_round(x * sig, EXP_FRAC)
