"""What a request asks for: its sampling parameters, as the canonical integers it commits to.

Torch-free on purpose: the gateway, the verifier and the API schemas build and commit to
parameters without loading the engine. `sampler` turns them into tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
