"""Proof-of-Sampling parameters: challenge probability, committee sizes and settlement params.

Probabilities are integers in parts per million so that every implementation (Python, Vyper,
another client) decides the same way; there is no float on the protocol path.
"""

from __future__ import annotations

from dataclasses import dataclass

from verinfer.protocol.settlement import MAX_VALIDATORS, PPM, InvalidParams, SettlementParams


@dataclass(frozen=True)
class PosParams:
    """`challenge_ppm`: p in parts per million; `validators`: n; `arbitrators`: committee size."""

    challenge_ppm: int
    validators: int
    arbitrators: int
    settlement: SettlementParams

    def validate(self) -> PosParams:
        for name in ("challenge_ppm", "validators", "arbitrators"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidParams(f"{name} must be an integer, got {value!r}")
        if not 0 <= self.challenge_ppm <= PPM:
            raise InvalidParams(f"challenge_ppm must be in 0..{PPM}, got {self.challenge_ppm}")
        if not 1 <= self.validators <= MAX_VALIDATORS:
            raise InvalidParams(
                f"validators must be in 1..{MAX_VALIDATORS}, got {self.validators}"
            )
        # An odd committee always has a strict majority between two answers.
        if self.arbitrators < 1 or self.arbitrators % 2 == 0:
            raise InvalidParams(f"arbitrators must be odd and >= 1, got {self.arbitrators}")
        self.settlement.validate()
        return self

    @property
    def challenge_probability(self) -> float:
        return self.challenge_ppm / PPM


def ppm_from_probability(p: float) -> int:
    """Round a probability to parts per million, upwards, so a safe float `p` stays safe."""
    if not 0.0 <= p <= 1.0:
        raise InvalidParams(f"a probability must be in [0, 1], got {p}")
    scaled = p * PPM
    whole = int(scaled)
    return min(PPM, whole + (scaled > whole))
