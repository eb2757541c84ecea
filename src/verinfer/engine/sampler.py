"""Choosing the next token from integer logits: greedy or seeded sampling, all in integers.

Sampling parameters are canonical integers (temperature in thousandths, top-p in millionths),
so a request commits to them exactly. Probabilities come from the integer exp of
`fixedpoint`; ties are broken by token id; the uniform draw comes from SHA-256 over
(seed, step), a counter-based generator, so a row's tokens depend only on its own request.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch

from verinfer.engine import fixedpoint as fp
from verinfer.errors import GenerationParamsError

TEMPERATURE_UNIT = 1000  # temperature is committed in thousandths
TOP_P_UNIT = 1_000_000  # top-p is committed in millionths
MAX_SEED = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks for. `temperature == 0` means greedy decoding."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise GenerationParamsError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0 or self.temperature > 100:
            raise GenerationParamsError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if self.temperature > 0 and self.temperature_milli == 0:
            raise GenerationParamsError("temperature must be 0 (greedy) or at least 0.001")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationParamsError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise GenerationParamsError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_p_micro == 0:
            raise GenerationParamsError("top_p must be at least 0.000001")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise GenerationParamsError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise GenerationParamsError("stop sequences must be non-empty strings")

    @property
    def temperature_milli(self) -> int:
        return round(self.temperature * TEMPERATURE_UNIT)

    @property
    def top_p_micro(self) -> int:
        return round(self.top_p * TOP_P_UNIT)

    @property
    def greedy(self) -> bool:
        return self.temperature_milli == 0

    def canonical(self) -> dict[str, object]:
        """The integer form a request commits to."""
        return {
            "max_tokens": self.max_tokens,
            "temperature_milli": self.temperature_milli,
            "top_k": self.top_k,
            "top_p_micro": self.top_p_micro,
            "seed": self.seed,
            "stop": list(self.stop),
            "ignore_eos": self.ignore_eos,
        }


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
