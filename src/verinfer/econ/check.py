"""The start-up parameter check: refuse parameters under which cheating or laziness pays.

`check_parameters` returns a structured verdict naming each problem, the parameter to raise and
the value to raise it to; `enforce` raises `UnsafeParameters` with a one-line message unless
forced. The gateway runs it at start-up; `verinfer econ check` runs it from the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from verinfer.econ.calculator import Analysis, EconParams, analyse, deterrence, majority_probability
from verinfer.errors import LocalError
from verinfer.protocol.params import PosParams
from verinfer.protocol.settlement import BPS


class UnsafeParameters(LocalError):
    """Parameters under which cheating (or lazy validation) pays."""


@dataclass(frozen=True)
class Remedy:
    """Raise `parameter` from `current` to above `required` (inclusive when `inclusive`)."""

    parameter: str
    current: float
    required: float
    inclusive: bool = False

    def describe(self) -> str:
        word = "at least" if self.inclusive else "above"
        return (f"raise {self.parameter} from {_fmt(self.current)} to {word} "
                f"{_fmt(self.required)} (+{_fmt(self.required - self.current)})")


@dataclass(frozen=True)
class Problem:
    rule: str
    remedies: tuple[Remedy, ...]

    def describe(self) -> str:
        if not self.remedies:
            return f"{self.rule}: no parameter change within range fixes it"
        return f"{self.rule}: " + ", or ".join(r.describe() for r in self.remedies)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    analysis: Analysis
    problems: tuple[Problem, ...]

    @property
    def message(self) -> str:
        if self.ok:
            return (f"safe: p = {_fmt(self.analysis.p)} > p_min = {_fmt(self.analysis.p_min)}")
        return "; ".join(p.describe() for p in self.problems)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def _slash_needed(params: EconParams, target: float) -> float:
    """Smallest S with L(S) > target, L being linear in S; inf when raising S cannot help."""
    v = params.collusion + params.lazy
    a = (1 - v**params.validators) * (1 - majority_probability(params.arbitrators,
                                                               params.collusion))
    b = (majority_probability(params.arbitrators, params.collusion)
         * params.challenger_share * params.validators * (1 - v))
    if a - b <= 0:
        return math.inf
    return max(0.0, (target - a * params.reward_asserter) / (a - b))


def check_parameters(
    params: EconParams, p: float, margin: float = 1.0, min_stake: float | None = None
) -> Verdict:
    """Is honesty the strict best response with `margin` to spare (p > margin * p_min)?"""
    if margin < 1.0:
        raise UnsafeParameters(f"margin must be >= 1, got {margin}")
    analysis = analyse(params, p)
    problems: list[Problem] = []
    needed_p = analysis.p_min * margin
    if not p > needed_p:
        remedies = []
        if needed_p < 1.0:
            remedies.append(Remedy("p", p, needed_p))
        if p > 0:
            slash = _slash_needed(params, params.saved_fraction * params.cost * margin / p)
            if math.isfinite(slash):
                remedies.append(Remedy("slash", params.slash, slash))
        for n in range(params.validators + 1, 17):
            more = replace(params, validators=n)
            if p > margin * params.saved_fraction * params.cost / max(deterrence(more), 1e-300):
                remedies.append(Remedy("validators", params.validators, n, inclusive=True))
                break
        rule = ("cheating pays (p <= p_min)" if margin == 1.0 else
                f"cheating pays or is too close to it (p <= {margin} p_min)")
        if not remedies:
            rule += (f" with collusion {params.collusion} and lazy {params.lazy}, "
                     "which no p, slash or validator count offsets")
        problems.append(Problem(rule, tuple(remedies)))
    share = params.reward_validators / params.validators
    if not analysis.validator_deterred_blind:
        problems.append(Problem("skipping validation pays (C >= R_V/n + S)", (
            Remedy("slash", params.slash, params.cost - share),)))
    if analysis.validator_margin < 0:
        problems.append(Problem("validating loses money (R_V/n < C)", (
            Remedy("reward_validators", params.reward_validators,
                   params.cost * params.validators, inclusive=True),)))
    if min_stake is not None and min_stake < params.slash:
        problems.append(Problem("stake cannot cover a slash (min_stake < S)", (
            Remedy("min_stake", min_stake, params.slash, inclusive=True),)))
    return Verdict(not problems, analysis, tuple(problems))


def econ_params_for(
    pos: PosParams, cost: float, collusion: float = 0.0, lazy: float = 0.0,
    saved_fraction: float = 1.0, fee: float = 0.0,
) -> EconParams:
    """The calculator's view of the protocol's parameters, for the gateway's start-up check."""
    s = pos.settlement
    return EconParams(
        cost=cost, reward_asserter=s.reward_asserter, reward_validators=s.reward_validators,
        slash=s.slash, validators=pos.validators, arbitrators=pos.arbitrators,
        collusion=collusion, lazy=lazy, saved_fraction=saved_fraction,
        challenger_share=s.challenger_share_bps / BPS,
        fee_share=fee * (1 - s.protocol_fee_bps / BPS),
    ).validate()


def enforce(
    params: EconParams, p: float, *, force: bool = False, margin: float = 1.0,
    min_stake: float | None = None,
) -> Verdict:
    """The verdict; raises `UnsafeParameters` with its one-line message unless ok or forced."""
    verdict = check_parameters(params, p, margin, min_stake)
    if not verdict.ok and not force:
        raise UnsafeParameters(verdict.message + " (or pass --force to run anyway)")
    return verdict
