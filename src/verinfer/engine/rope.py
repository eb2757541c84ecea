"""Rotary position tables (cos, sin) in fixed point, built with exact integer arithmetic.

Frequencies follow the config (`rope_theta`, and `rope_scaling` of type linear or llama3) and
are computed from exact fractions; cos/sin of each position come from repeated rotation in
192-bit fixed point, rounded once to `ROPE_FRAC` bits. Pure Python integers throughout, so the
tables are the same bytes on every machine.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from verinfer.engine import exactmath as xm
from verinfer.engine.config import ModelConfig

ROPE_FRAC = 24


def inverse_frequencies(config: ModelConfig) -> list[int]:
    """theta^(-2i/d) for i < d/2, adjusted by rope_scaling, as PREC-bit fixed point."""
    d = config.head_dim
    theta = config.rope_theta_fraction()
    freqs = [xm.pow_fraction(theta, Fraction(-2 * i, d)) for i in range(d // 2)]
    scaling = config.rope_scaling
    if scaling is None:
        return freqs
    factor = Fraction(str(scaling["factor"]))
    if scaling["rope_type"] == "linear":
        return [round(Fraction(f) / factor) for f in freqs]
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    low = Fraction(str(scaling.get("low_freq_factor", 1)))
    high = Fraction(str(scaling.get("high_freq_factor", 4)))
    original = Fraction(int(scaling.get("original_max_position_embeddings", 8192)))
    two_pi = 2 * xm.pi()
    out = []
    for f in freqs:
        wavelen = Fraction(two_pi, f)  # both in PREC-bit units: the ratio is the wavelength
        if wavelen < original / high:
            out.append(f)
        elif wavelen > original / low:
            out.append(round(Fraction(f) / factor))
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(round((1 - smooth) * Fraction(f) / factor + smooth * f))
    return out


def rope_tables(config: ModelConfig, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (positions, head_dim // 2), int64 with ROPE_FRAC fraction bits."""
    cos_rows: list[list[int]] = [[] for _ in range(positions)]
    sin_rows: list[list[int]] = [[] for _ in range(positions)]
    for f in inverse_frequencies(config):
        c1, s1 = xm.cos_sin(f)
        c, s = xm.ONE, 0
        for p in range(positions):
            cos_rows[p].append(xm.round_to_bits(c, xm.PREC, ROPE_FRAC))
            sin_rows[p].append(xm.round_to_bits(s, xm.PREC, ROPE_FRAC))
            c, s = (c * c1 - s * s1) >> xm.PREC, (s * c1 + c * s1) >> xm.PREC
    return torch.tensor(cos_rows, dtype=torch.int64), torch.tensor(sin_rows, dtype=torch.int64)
