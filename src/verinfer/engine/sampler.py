"""Choosing the next token from integer logits: greedy or seeded sampling, all in integers.

Sampling parameters are canonical integers (temperature in thousandths, top-p in millionths),
so a request commits to them exactly. Probabilities come from the integer exp of
`fixedpoint`; ties are broken by token id; the uniform draw comes from SHA-256 over
(seed, step), a counter-based generator, so a row's tokens depend only on its own request.
"""

from __future__ import annotations

import hashlib
import struct

import torch

from verinfer.engine import fixedpoint as fp
from verinfer.engine.params import TEMPERATURE_UNIT, TOP_P_UNIT, SamplingParams


def uniform_below(bound: int, seed: int, step: int) -> int:
    """A uniform integer in [0, bound) from SHA-256(seed, step); bias below 2**-190."""
    digest = hashlib.sha256(b"verinfer-sample-v1" + struct.pack("<QQ", seed, step)).digest()
    return int.from_bytes(digest, "little") % bound


def argmax_lowest_id(logits: torch.Tensor) -> int:
    """Index of the largest logit; the lowest token id among equals."""
    top = logits.max()
    return int(torch.nonzero(logits == top)[0, 0])


def sample(logits: torch.Tensor, params: SamplingParams, step: int) -> int:
    """Next token for one row of int32 logits (ACT_FRAC fixed point) at generation `step`."""
    logits = logits.cpu()
    if params.greedy:
        return argmax_lowest_id(logits)
    z = logits.to(torch.int64)
    scaled = fp.div_round(z * TEMPERATURE_UNIT, params.temperature_milli)
    # Stable sort by value, descending: equal values keep ascending token-id order.
    order = torch.sort(scaled, descending=True, stable=True).indices
    ranked = scaled[order]
    if params.top_k:
        ranked, order = ranked[: params.top_k], order[: params.top_k]
    weights = fp.exp_neg((ranked[0] - ranked).clamp(min=0))  # Q30, largest = 2**30
    cumulative = torch.cumsum(weights, dim=0)  # int64: exact
    total = int(cumulative[-1])
    if params.top_p_micro < TOP_P_UNIT:
        # Keep the shortest prefix whose mass reaches top_p of the total.
        threshold = -(-params.top_p_micro * total // TOP_P_UNIT)  # ceil, in Python integers
        keep = int(torch.searchsorted(cumulative, torch.tensor(threshold))) + 1
        cumulative = cumulative[:keep]
        total = int(cumulative[-1])
    u = uniform_below(total, params.seed, step)
    chosen = int(torch.searchsorted(cumulative, torch.tensor(u, dtype=torch.int64), right=True))
    return int(order[chosen])
