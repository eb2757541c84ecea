"""Calculator outputs on hand-derived cases, including the boundaries S = 0, p = 1, n = 1, r -> 1."""

from __future__ import annotations

import math

import pytest

from verinfer.econ.calculator import (
    EconParams,
    EconParamsError,
    analyse,
    majority_probability,
    minimal_p,
)


def params(**kw: float) -> EconParams:
    base = {"cost": 1.0, "reward_asserter": 1.0, "reward_validators": 3.0, "slash": 99.0,
            "validators": 1, "arbitrators": 1, "challenger_share": 0.5}
    return EconParams(**{**base, **kw})  # type: ignore[arg-type]


def test_published_form_n1_no_collusion() -> None:
    # p_min = C / (R + S) = 1 / 100.
    assert minimal_p(params()) == pytest.approx(0.01)


def test_published_form_with_collusion_and_honest_arbitration() -> None:
    # n = 1, m = 1, r = 0.2: M = P(the single arbitrator colludes) = 0.2, so
    # L = (1 - 0.2)(1 - 0.2)(1 + 99) - 0.2 * 0.5 * 99 * 1 * 0.8 = 64 - 7.92 = 56.08.
    a = analyse(params(collusion=0.2), 0.05)
    assert a.arbitration_capture == pytest.approx(0.2)
    assert a.deterrence == pytest.approx(56.08)
    assert a.p_min == pytest.approx(1 / 56.08)


def test_three_validators_five_arbitrators() -> None:
    # v = 0.5: v^3 = 0.125; M = P(Bin(5, 0.5) >= 3) = 0.5;
    # L = 0.875 * 0.5 * 100 - 0.5 * 0.5 * 99 * 3 * 0.5 = 43.75 - 37.125 = 6.625.
    e = params(validators=3, arbitrators=5, collusion=0.5)
    assert majority_probability(5, 0.5) == pytest.approx(0.5)
    assert analyse(e, 0.5).deterrence == pytest.approx(6.625)


def test_lazy_validators_act_like_colluders_for_vouching_only() -> None:
    # l = 0.5, r = 0: v^1 = 0.5, M = 0: L = 0.5 * 100 = 50.
    assert minimal_p(params(lazy=0.5)) == pytest.approx(1 / 50)


def test_partial_saving() -> None:
    assert minimal_p(params(saved_fraction=0.25)) == pytest.approx(0.0025)


def test_boundary_zero_slash() -> None:
    # S = 0: only the forgone reward deters: p_min = C / R_A = 1 -> no p < 1 is safe.
    a = analyse(params(slash=0.0), 1.0)
    assert a.p_min == pytest.approx(1.0)
    assert not a.feasible and not a.safe
    assert minimal_p(params(slash=0.0, reward_asserter=0.0)) == math.inf


def test_boundary_p_one() -> None:
    # Every result is challenged: the cheater's gain is C - L = 1 - 100, detection is certain.
    a = analyse(params(), 1.0)
    assert a.cheat_gain == pytest.approx(-99.0)
    assert a.detection_probability == 1.0 and a.mean_requests_to_detection == 1.0
    assert a.overhead == 1.0


def test_boundary_collusion_near_one() -> None:
    assert minimal_p(params(collusion=1.0)) == math.inf
    near = params(collusion=0.999)
    # (1 - 0.999)^2 * 100 - 0.999 * 0.5 * 99 * 0.001 = 1e-4 - 0.04945 < 0: no p deters.
    assert minimal_p(near) == math.inf
    assert analyse(near, 1.0).cheat_gain > 0


def test_profits_and_validator_conditions() -> None:
    a = analyse(params(fee_share=2.0, validators=3, reward_validators=3.0, arbitrators=3), 0.1)
    assert a.honest_profit == pytest.approx(2.0 - 1.0 + 0.1 * 1.0)
    assert a.cheat_profit == pytest.approx(2.0 - 0.1 * 99.0)
    assert a.expected_loss_per_cheat == pytest.approx(10.0)
    assert a.validator_margin == pytest.approx(0.0)
    assert a.validator_deterred_blind
    assert not analyse(params(slash=0.0, reward_validators=0.5), 0.1).validator_deterred_blind


@pytest.mark.parametrize("bad", [{"cost": 0.0}, {"collusion": 1.5}, {"arbitrators": 2},
                                 {"validators": 17}, {"collusion": 0.6, "lazy": 0.6},
                                 {"slash": float("nan")}])
def test_bad_params(bad: dict[str, float]) -> None:
    with pytest.raises(EconParamsError):
        params(**bad).validate()


def test_bad_p() -> None:
    with pytest.raises(EconParamsError):
        analyse(params(), 1.5)
