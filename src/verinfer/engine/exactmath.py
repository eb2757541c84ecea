"""Exact big-integer math for building the engine's constant tables (exp2, RoPE, rsqrt).

Every table the engine uses is computed here with Python integers only: fixed-point values with
`PREC` fractional bits, series summed with floor divisions. No float, no libm, no `decimal`
("almost always correctly rounded" is not the same bytes everywhere). The results are therefore
identical on every machine and Python build; their accuracy (far below the final rounding to
30-odd bits) only matters for fidelity, never for determinism.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

PREC = 192  # fractional bits of the intermediate fixed-point values
ONE = 1 << PREC


def round_to_bits(x: int, from_bits: int, to_bits: int) -> int:
    """Round fixed-point `x` (with `from_bits` fraction bits) to `to_bits`, half away from zero."""
    shift = from_bits - to_bits
    if shift <= 0:
        return x << -shift
    half = 1 << (shift - 1)
    return (x + half) >> shift if x >= 0 else -((-x + half) >> shift)


def fixed_from_fraction(q: Fraction) -> int:
    """`q` as a PREC-bit fixed-point integer, rounded half away from zero."""
    magnitude = (2 * abs(q.numerator) * ONE + q.denominator) // (2 * q.denominator)
    return magnitude if q >= 0 else -magnitude


def _mul(a: int, b: int) -> int:
    return (a * b) >> PREC


@lru_cache(maxsize=1)
def ln2() -> int:
    """ln 2 = sum_{k>=1} 1 / (k 2^k)."""
    total, k = 0, 1
    while True:
        term = ONE // (k << k)
        if term == 0:
            return total
        total += term
        k += 1


@lru_cache(maxsize=1)
def pi() -> int:
    """pi by Machin's formula: 16 atan(1/5) - 4 atan(1/239)."""

    def atan_inv(n: int) -> int:
        total, power, k, sign = 0, ONE // n, 1, 1
        n2 = n * n
        while power:
            total += sign * (power // k)
            power //= n2
            k += 2
            sign = -sign
        return total

    return 16 * atan_inv(5) - 4 * atan_inv(239)


def exp(x: int) -> int:
    """e^x for fixed-point x: range-reduced by ln 2, then a Taylor series."""
    l2 = ln2()
    k = x // l2  # floor, so r in [0, ln2)
    r = x - k * l2
    total, term, n = ONE, ONE, 1
    while term:
        term = _mul(term, r) // n
        total += term
        n += 1
    return total << k if k >= 0 else total >> -k


def ln(x: int) -> int:
    """ln x for fixed-point x > 0: x = m 2^k with m in [1, 2), ln m = 2 atanh((m-1)/(m+1))."""
    if x <= 0:
        raise ValueError("ln of a non-positive number")
    k = x.bit_length() - 1 - PREC
    m = x >> k if k >= 0 else x << -k
    z = ((m - ONE) << PREC) // (m + ONE)
    z2 = _mul(z, z)
    total, power, n = 0, z, 1
    while power:
        total += power // n
        power = _mul(power, z2)
        n += 2
    return 2 * total + k * ln2()


def cos_sin(x: int) -> tuple[int, int]:
    """(cos x, sin x) for fixed-point x: reduced to [-pi, pi], Taylor series on |x|."""
    x = (x + pi()) % (2 * pi()) - pi()
    ax = abs(x)
    cos_total, sin_total = 0, 0
    term, n = ONE, 0  # term = |x|^n / n!, never negative, so floors cannot loop
    while term:
        sign = 1 if n % 4 < 2 else -1
        if n % 2 == 0:
            cos_total += sign * term
        else:
            sin_total += sign * term
        n += 1
        term = _mul(term, ax) // n
    return cos_total, (sin_total if x >= 0 else -sin_total)


def exp2_neg_table(entries: int, step_bits: int, out_bits: int) -> list[int]:
    """[round(2^(-j / 2^step_bits) * 2^out_bits) for j in range(entries)]."""
    l2 = ln2()
    return [
        round_to_bits(exp(-(j * l2) >> step_bits), PREC, out_bits) for j in range(entries)
    ]


def pow_fraction(base: Fraction, exponent: Fraction) -> int:
    """base^exponent as a PREC-bit fixed-point integer (base > 0)."""
    return exp(_mul(ln(fixed_from_fraction(base)), fixed_from_fraction(exponent)))
