"""The Proof-of-Sampling calculator: minimal challenge probability, overhead, loss per cheat.

Derivation (single-shot game of one request; settlement rules v1, docs/settlement-rules.md)
-------------------------------------------------------------------------------------------
Symbols: C compute cost of one request; s the fraction of C a cheater saves (1: returns
garbage, 0.5: e.g. runs a smaller model); p challenge probability; n validators; m arbitrators
(odd); R_A reward of an asserter whose challenged result passed; R_V validators' reward (shared);
S slash; sigma = challenger_share_bps / 10^4; f the asserter's share of the fee.

Assumptions, each named so that a test or a reader can point at it:
  A1 (commit before challenge) the asserter learns whether it is challenged only after its
     result is committed, so the challenge is independent of the cheat; challenges happen with
     probability exactly p (`verinfer.protocol.challenge`).
  A2 (independent draws) each validator and arbitrator is, independently, a member of the
     cheater's colluding group with probability r (its share of the other nodes' stake) and a
     lazy copier with probability l. Draws are in fact without replacement; the error is of
     order n/N for N nodes.
  A3 (who vouches) colluders vouch for their group's wrong results and compute honestly
     otherwise; lazy validators copy the asserter's hash (the worst case: they can see it);
     every other validator recomputes and, by bit-exact determinism, disagrees with a wrong
     result and agrees with a right one.
  A4 (arbitration) arbitrators compute; a colluding arbitrator votes for its group's result.
     The dispute goes the colluders' way when they hold a strict majority of the m seats:
     M = P(Binomial(m, r) > m/2).
  A5 (single shot) the asserter maximises its expected profit on this request alone; later
     work lost through a lower reputation (weight stake * rep_ppm) is not counted, which makes
     the bound conservative. Stake always covers S (min_stake >= S, spec).
  A6 (individual profit) what colluders other than the asserter gain or save is not counted.

Outcomes of a challenged wrong result. With v = r + l the chance that one validator vouches:
  all n vouch (probability v^n): PASSED, the asserter earns R_A;
  otherwise arbitration: colluders win (M): VALIDATOR_FAULT, the asserter earns R_A plus sigma*S
  for each honest validator slashed; honest win (1 - M): ASSERTER_FAULT, the asserter loses S.
Since the number h of honest validators is 0 exactly when all vouch, E[h] = n(1 - v), and

  honest asserter:  pi_H = f - C + p R_A                                   (a right result passes)
  cheater:          pi_X = f - (1-s) C + p [ R_A (v^n + (1-v^n) M) + M sigma S n (1-v)
                                              - (1-v^n)(1-M) S ]
  pi_X - pi_H = s C - p L,   L = (1 - v^n)(1 - M)(R_A + S) - M sigma S n (1 - v).

Honest behaviour is the asserter's strict best response (a Nash equilibrium of the one-shot
game, given everybody else's strategy) iff p > p_min = s C / L; when L <= 0, or s C / L > 1, no
challenge probability deters cheating. With n = 1, l = 0, M = 0 and s = 1 this is the
published form p > C / ((1 - r)(R + S)), R being the asserter's reward for a passed challenge;
n validators replace (1 - r) by (1 - (r + l)^n), and a colluding arbitration majority subtracts
what the cheater then gains and keeps.

Validators. A validator who skips the work saves C. If it cannot see the asserter's hash
(blind challenges), its guess disagrees with a right result, arbitration finds it faulty and it
loses its reward share and S: honest iff C < R_V / n + S (independent of p). If it can see the
hash and copies it, settlement v1 never slashes it (a copied right result is right; a copied
wrong one is either accepted or settled as ASSERTER_FAULT, which slashes no validator): copying
is then not deterred at any p, and lazy validators act like colluders in v above. Blind
challenges are therefore a requirement on the gateway. A validator takes part willingly iff
R_V / n >= C.

Overhead: the honest network recomputes each challenged request n times, p n of the useful
compute; each dispute adds m recomputations (arbitration by bisection costs far less).
Detection: a wrong result is caught with probability d = p (1 - v^n)(1 - M); an asserter who
cheats on every request is first caught after a geometric number of its requests, mean 1/d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from verinfer.errors import LocalError


class EconParamsError(LocalError):
    """Economic parameters out of range."""


@dataclass(frozen=True)
class EconParams:
    """Inputs of the calculator. Amounts are in any one unit (wei, or multiples of C)."""

    cost: float  # C
    reward_asserter: float  # R_A
    reward_validators: float  # R_V, shared by the n validators
    slash: float  # S
    validators: int = 3  # n
    arbitrators: int = 5  # m, odd
    collusion: float = 0.0  # r
    lazy: float = 0.0  # l
    saved_fraction: float = 1.0  # s
    challenger_share: float = 0.5  # sigma
    fee_share: float = 0.0  # f, the asserter's part of the fee (absolute profits only)

    def validate(self) -> EconParams:
        for name in ("cost", "reward_asserter", "reward_validators", "slash", "fee_share"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise EconParamsError(f"{name} must be a finite number >= 0, got {value}")
        if self.cost <= 0:
            raise EconParamsError(f"cost must be > 0, got {self.cost}")
        for name in ("collusion", "lazy", "saved_fraction", "challenger_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EconParamsError(f"{name} must be in [0, 1], got {value}")
        if self.collusion + self.lazy > 1.0:
            raise EconParamsError("collusion + lazy must not exceed 1")
        if not 1 <= self.validators <= 16:
            raise EconParamsError(f"validators must be in 1..16, got {self.validators}")
        if self.arbitrators < 1 or self.arbitrators % 2 == 0:
            raise EconParamsError(f"arbitrators must be odd and >= 1, got {self.arbitrators}")
        return self


def majority_probability(m: int, r: float) -> float:
    """M = P(Binomial(m, r) > m / 2): colluders hold a strict majority of the committee."""
    return sum(math.comb(m, k) * r**k * (1 - r) ** (m - k) for k in range(m // 2 + 1, m + 1))


@dataclass(frozen=True)
class Analysis:
    """The calculator's answer for one set of parameters (at challenge probability `p`)."""

    params: EconParams
    p: float
    vouch_probability: float  # v = r + l
    all_vouch_probability: float  # v^n
    arbitration_capture: float  # M
    deterrence: float  # L: expected loss per unit of p when cheating
    p_min: float  # math.inf when no p deters
    honest_profit: float  # pi_H per request
    cheat_profit: float  # pi_X per request
    expected_loss_per_cheat: float  # p L: slash and forgone reward, in expectation
    detection_probability: float  # d
    overhead: float  # p n (honest network)
    validator_margin: float  # R_V / n - C, what an honest validation earns
    validator_deterred_blind: bool  # C < R_V / n + S

    @property
    def feasible(self) -> bool:
        """Some p <= 1 makes honesty the strict best response."""
        return self.p_min < 1.0

    @property
    def cheat_gain(self) -> float:
        """pi_X - pi_H = s C - p L: positive means cheating pays."""
        return self.cheat_profit - self.honest_profit

    @property
    def safe(self) -> bool:
        return self.p > self.p_min

    @property
    def mean_requests_to_detection(self) -> float:
        return math.inf if self.detection_probability == 0 else 1 / self.detection_probability


def deterrence(params: EconParams) -> float:
    """L = (1 - v^n)(1 - M)(R_A + S) - M sigma S n (1 - v)."""
    v = params.collusion + params.lazy
    q = v**params.validators
    m = majority_probability(params.arbitrators, params.collusion)
    return (1 - q) * (1 - m) * (params.reward_asserter + params.slash) - (
        m * params.challenger_share * params.slash * params.validators * (1 - v)
    )


def minimal_p(params: EconParams) -> float:
    """p_min = s C / L; math.inf when L <= 0 (no challenge probability deters cheating)."""
    loss = deterrence(params.validate())
    if loss <= 0:
        return math.inf
    return params.saved_fraction * params.cost / loss


def analyse(params: EconParams, p: float) -> Analysis:
    """Everything the calculator states for `params` at challenge probability `p`."""
    params.validate()
    if not 0.0 <= p <= 1.0:
        raise EconParamsError(f"p must be in [0, 1], got {p}")
    v = params.collusion + params.lazy
    q = v**params.validators
    m = majority_probability(params.arbitrators, params.collusion)
    loss = deterrence(params)
    c, ra, s = params.cost, params.reward_asserter, params.slash
    honest = params.fee_share - c + p * ra
    cheat = (params.fee_share - (1 - params.saved_fraction) * c + p * (
        ra * (q + (1 - q) * m)
        + m * params.challenger_share * s * params.validators * (1 - v)
        - (1 - q) * (1 - m) * s))
    share = params.reward_validators / params.validators
    return Analysis(
        params=params, p=p, vouch_probability=v, all_vouch_probability=q,
        arbitration_capture=m, deterrence=loss, p_min=minimal_p(params),
        honest_profit=honest, cheat_profit=cheat, expected_loss_per_cheat=p * loss,
        detection_probability=p * (1 - q) * (1 - m), overhead=p * params.validators,
        validator_margin=share - c, validator_deterred_blind=c < share + s,
    )
