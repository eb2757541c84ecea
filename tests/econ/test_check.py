"""The start-up check: verdicts, remedies that really fix the problem, and the refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from verinfer.econ.calculator import EconParams, minimal_p
from verinfer.econ.check import UnsafeParameters, check_parameters, econ_params_for, enforce
from verinfer.protocol.params import PosParams
from verinfer.protocol.settlement import SettlementParams

SAFE = EconParams(cost=1.0, reward_asserter=1.0, reward_validators=4.0, slash=1000.0)


def test_safe_parameters_pass() -> None:
    verdict = check_parameters(SAFE, 0.01)
    assert verdict.ok and verdict.message.startswith("safe")


def test_low_p_names_p_and_slash_and_the_remedies_work() -> None:
    params = replace(SAFE, slash=99.0)  # p_min = 1 / 100
    verdict = check_parameters(params, 0.005)
    assert not verdict.ok
    remedies = {r.parameter: r for r in verdict.problems[0].remedies}
    assert remedies["p"].required == pytest.approx(0.01)
    assert remedies["slash"].required == pytest.approx(199.0)  # 1 / 0.005 - 1
    assert "raise p from 0.005 to above 0.01" in verdict.message
    assert check_parameters(params, 0.0101).ok
    assert check_parameters(replace(params, slash=199.5), 0.005).ok


def test_more_validators_can_be_the_remedy() -> None:
    params = replace(SAFE, slash=9.0, lazy=0.5, validators=1)  # L = 0.5 * 10 = 5
    verdict = check_parameters(params, 0.15)
    n = {r.parameter: r for r in verdict.problems[0].remedies}["validators"].required
    assert minimal_p(replace(params, validators=int(n))) < 0.15
    assert minimal_p(replace(params, validators=int(n) - 1)) >= 0.15


def test_validator_and_stake_problems() -> None:
    verdict = check_parameters(replace(SAFE, reward_validators=1.0, slash=0.1), 1.0,
                               min_stake=0.05)
    rules = " ".join(p.rule for p in verdict.problems)
    assert "validating loses money" in rules and "min_stake" in rules
    assert "skipping validation pays" in rules


def test_hopeless_collusion_says_so() -> None:
    verdict = check_parameters(replace(SAFE, collusion=0.99), 1.0)
    assert not verdict.ok and "no p, slash or validator count" in verdict.message


def test_enforce_refuses_unless_forced() -> None:
    with pytest.raises(UnsafeParameters, match="--force"):
        enforce(SAFE, 0.0001)
    assert not enforce(SAFE, 0.0001, force=True).ok


def test_margin() -> None:
    assert check_parameters(SAFE, 0.0015).ok
    assert not check_parameters(SAFE, 0.0015, margin=2.0).ok


def test_from_protocol_params() -> None:
    pos = PosParams(10_000, 3, 5, SettlementParams(10**6, 3600, 1000, 4000, 10**6, 1000, 5000,
                                                   5000)).validate()
    econ = econ_params_for(pos, cost=1000)
    assert (econ.slash, econ.validators, econ.challenger_share) == (10**6, 3, 0.5)
    assert check_parameters(econ, pos.challenge_probability).ok
