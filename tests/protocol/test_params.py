"""PoS parameters: validation and the ppm rounding that keeps a safe probability safe."""

from __future__ import annotations

import pytest

from verinfer.protocol.params import PosParams, ppm_from_probability
from verinfer.protocol.settlement import InvalidParams, SettlementParams

SETTLEMENT = SettlementParams(1000, 100, 10, 9, 500, 1000, 5000, 5000)


def test_valid_params_pass() -> None:
    params = PosParams(50_000, 3, 5, SETTLEMENT).validate()
    assert params.challenge_probability == 0.05


@pytest.mark.parametrize(
    ("ppm", "validators", "arbitrators"),
    [(-1, 3, 5), (1_000_001, 3, 5), (1, 0, 5), (1, 17, 5), (1, 3, 4), (1, 3, 0)],
)
def test_invalid_params_are_refused(ppm: int, validators: int, arbitrators: int) -> None:
    with pytest.raises(InvalidParams):
        PosParams(ppm, validators, arbitrators, SETTLEMENT).validate()


def test_ppm_rounds_up() -> None:
    assert ppm_from_probability(0.0) == 0
    assert ppm_from_probability(1.0) == 1_000_000
    assert ppm_from_probability(0.0500001) == 50_001
    assert ppm_from_probability(0.05) == 50_000
    with pytest.raises(InvalidParams):
        ppm_from_probability(1.5)
