"""Monte Carlo over a network of nodes with stated strategies, driving `verinfer.protocol`.

Every request goes through the protocol's own functions: `select_asserter`, `is_challenged` on a
receipt commitment and a beacon, `select_validators`, `select_committee` for arbitration,
`decide_challenge`, and `apply_batch` on a `LedgerState`. Each request is settled as its own
batch (its index is the batch's epoch number) so that what it did to each node can be read off
the ledger (settled roots are then dropped: the run never re-settles one); an "epoch" of the simulation is a block of `requests_per_epoch` requests, and the
candidates' stakes and reputations are refreshed once per epoch, as a gateway would.

Strategies: honest; always-cheat; cheat with probability q; lazy validator (serves honestly,
copies the asserter's hash when validating, the worst case of the calculator's A3); colluding
(cheats with probability q, vouches for its group's results as validator or arbitrator). A node
whose stake falls below its initial stake after a slash tops it up from outside (not counted as
income), so the network's shares of stake stay as configured. Randomness: SHA-256 of the seed
for protocol draws, numpy's generator seeded explicitly for the nodes' own choices.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from verinfer.errors import LocalError
from verinfer.protocol import settlement as st
from verinfer.protocol.challenge import decide_challenge, is_challenged
from verinfer.protocol.params import PosParams
from verinfer.protocol.selection import (
    Candidate,
    select_asserter,
    select_committee,
    select_validators,
)
from verinfer.protocol.settlement import (
    Batch,
    ChallengeEntry,
    LedgerState,
    Outcome,
    RequestEntry,
)

MAX_REQUESTS = 2_000_000  # bounds a run's time (about 100-200 us per request)
USER = "0x" + "0a" * 20


class SimulationError(LocalError):
    """A simulation's configuration cannot be run."""


class Strategy(enum.Enum):
    HONEST = "honest"
    ALWAYS_CHEAT = "always-cheat"
    RANDOM_CHEAT = "random-cheat"
    LAZY = "lazy"
    COLLUDING = "colluding"


@dataclass(frozen=True)
class NodeSpec:
    strategy: Strategy
    stake: int
    cheat_probability: float = 0.0  # RANDOM_CHEAT and COLLUDING; ALWAYS_CHEAT is 1

    def cheats(self) -> float:
        if self.strategy is Strategy.ALWAYS_CHEAT:
            return 1.0
        if self.strategy in (Strategy.RANDOM_CHEAT, Strategy.COLLUDING):
            return self.cheat_probability
        return 0.0


@dataclass(frozen=True)
class SimConfig:
    """A network, its parameters, the work done, and the seed."""

    nodes: tuple[NodeSpec, ...]
    params: PosParams
    cost: int  # C in wei: a node's compute cost per request
    fee: int  # the user's fee per request
    saved_fraction: float = 1.0  # s: the part of C a cheat saves
    epochs: int = 100
    requests_per_epoch: int = 100
    seed: int = 0

    def validate(self) -> SimConfig:
        self.params.validate()
        if len(self.nodes) < 1 + self.params.validators + self.params.arbitrators:
            raise SimulationError(
                f"{len(self.nodes)} nodes cannot supply an asserter, "
                f"{self.params.validators} validators and {self.params.arbitrators} arbitrators")
        if any(n.stake < self.params.settlement.min_stake for n in self.nodes):
            raise SimulationError("every node's stake must be at least min_stake")
        if self.epochs < 1 or self.requests_per_epoch < 1:
            raise SimulationError("epochs and requests_per_epoch must be >= 1")
        if self.epochs * self.requests_per_epoch > MAX_REQUESTS:
            raise SimulationError(f"at most {MAX_REQUESTS} requests per run")
        if not 0.0 <= self.saved_fraction <= 1.0 or self.cost < 0 or self.fee < 0:
            raise SimulationError("need cost >= 0, fee >= 0 and saved_fraction in [0, 1]")
        for n in self.nodes:
            if not 0.0 <= n.cheat_probability <= 1.0:
                raise SimulationError("cheat probabilities must be in [0, 1]")
        return self


@dataclass
class StrategyStats:
    """Totals for the nodes of one strategy."""

    nodes: int = 0
    served: int = 0
    cheats: int = 0
    caught: int = 0
    profit: float = 0.0  # all roles, all nodes of the strategy
    asserter_profit: float = 0.0  # per served request, summed
    asserter_profit_sq: float = 0.0
    slashed: int = 0

    def mean_asserter_profit(self) -> tuple[float, float]:
        """Mean asserter-role profit per served request and its standard error."""
        if self.served < 2:
            return math.nan, math.nan
        mean = self.asserter_profit / self.served
        var = (self.asserter_profit_sq / self.served - mean * mean) * self.served / (
            self.served - 1)
        return mean, math.sqrt(max(var, 0.0) / self.served)


@dataclass
class SimResult:
    config: SimConfig
    stats: dict[Strategy, StrategyStats]
    bad_results: int = 0
    bad_accepted: int = 0
    challenges: int = 0
    disputes: int = 0
    detection_epochs: list[int] = field(default_factory=list)  # epochs between detections
    detection_cheats: list[int] = field(default_factory=list)  # cheats until detection
    recomputations: int = 0  # validator and arbitrator executions
    final_state: LedgerState = field(default_factory=LedgerState)

    @property
    def requests(self) -> int:
        return self.config.epochs * self.config.requests_per_epoch

    @property
    def accepted_bad_fraction(self) -> float:
        return self.bad_accepted / self.bad_results if self.bad_results else 0.0

    @property
    def overhead(self) -> float:
        """Recomputations per useful request."""
        return self.recomputations / self.requests

    def profit_per_node_epoch(self, strategy: Strategy) -> float:
        s = self.stats[strategy]
        return s.profit / (s.nodes * self.config.epochs) if s.nodes else math.nan


def address_of(index: int) -> str:
    return f"0x0b{index:038x}"


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _wealth(state: LedgerState, address: str) -> int:
    return (state.balance_of(address) + state.stake_of(address)
            + state.unbonding_of(address).amount)


def _computes(node: NodeSpec, allied: bool, voting: bool) -> bool:
    """Whether a validator (or an arbitrator, `voting`) recomputes; if not it echoes the asserter.

    Colluders echo their own group's results; lazy validators echo every asserter; arbitrators
    outside the group compute (calculator assumption A4).
    """
    if allied:
        return False
    return voting or node.strategy is not Strategy.LAZY


def simulate(config: SimConfig, progress: Callable[[int], None] | None = None) -> SimResult:
    """Run the network for `config.epochs` epochs; `progress(epoch)` is called after each."""
    config.validate()
    params, settle = config.params, config.params.settlement
    addresses = [address_of(i) for i in range(len(config.nodes))]
    spec = dict(zip(addresses, config.nodes, strict=True))
    colluders = {a for a, s in spec.items() if s.strategy is Strategy.COLLUDING}
    rng = np.random.default_rng(config.seed)
    seed = config.seed.to_bytes(8, "big")
    requests = config.epochs * config.requests_per_epoch

    ledger = LedgerState(stake={a: s.stake for a, s in spec.items()})
    # The treasury must cover every reward the run could pay; the user every fee.
    ledger = st.fund_treasury(ledger, requests * (settle.reward_asserter
                                                  + settle.reward_validators + config.fee) + 1)
    ledger = st.deposit(ledger, USER, requests * config.fee + 1)

    result = SimResult(config, {s: StrategyStats() for s in Strategy})
    for s in config.nodes:
        result.stats[s.strategy].nodes += 1
    last_detection = dict.fromkeys(addresses, 0)
    cheats_since = dict.fromkeys(addresses, 0)
    good_cost, cheat_cost = config.cost, config.cost * (1 - config.saved_fraction)

    index = 0
    for epoch in range(config.epochs):
        candidates = [Candidate(a, ledger.stake_of(a), ledger.reputation_of(a))
                      for a in addresses]
        for _ in range(config.requests_per_epoch):
            index += 1
            tag = index.to_bytes(8, "big")
            randomness = _h(seed, b"request", tag)
            asserter = select_asserter(candidates, settle.min_stake, randomness)
            node = spec[asserter]
            cheated = bool(rng.random() < node.cheats())
            good = _h(b"output", tag)
            output = _h(b"wrong", tag) if cheated else good
            commitment = _h(b"receipt", tag, bytes.fromhex(asserter[2:]), output)
            costs = {asserter: cheat_cost if cheated else good_cost}
            challenges: tuple[ChallengeEntry, ...] = ()
            outcome = None
            if is_challenged(commitment, _h(seed, b"beacon", tag), params.challenge_ppm):
                result.challenges += 1
                ally = asserter in colluders
                validators = select_validators(candidates, settle.min_stake,
                                               _h(randomness, b"validators"),
                                               params.validators, asserter)
                hashes = []
                for v in validators:
                    computed = _computes(spec[v], v in colluders and ally, voting=False)
                    hashes.append(good if computed else output)
                    costs[v] = good_cost if computed else 0.0
                    result.recomputations += computed
                votes = None
                if any(x != output for x in hashes):
                    result.disputes += 1
                    arbitrators = select_committee(
                        candidates, settle.min_stake, _h(randomness, b"arbitrators"),
                        params.arbitrators, exclude=(asserter, *validators))
                    votes = []
                    for a in arbitrators:
                        computed = _computes(spec[a], a in colluders and ally, voting=True)
                        votes.append(good if computed else output)
                        costs[a] = good_cost if computed else 0.0
                        result.recomputations += computed
                verdict = decide_challenge(output, validators, hashes, votes)
                outcome = verdict.outcome
                challenges = (ChallengeEntry(USER, asserter, config.fee, tuple(validators),
                                             verdict.outcome, verdict.faulty_validators),)
            before = {a: _wealth(ledger, a) for a in costs}
            ledger = st.apply_batch(ledger, settle, Batch(
                index, commitment, (RequestEntry(USER, asserter, config.fee),), challenges))
            # This run never settles an epoch twice; dropping the roots keeps each step O(nodes).
            ledger = replace(ledger, epoch_roots=MappingProxyType({}))
            for a, cost in costs.items():
                gain = _wealth(ledger, a) - before[a] - cost
                stats = result.stats[spec[a].strategy]
                stats.profit += gain
                if a == asserter:
                    stats.served += 1
                    stats.asserter_profit += gain
                    stats.asserter_profit_sq += gain * gain
                deficit = spec[a].stake - ledger.stake_of(a)
                if deficit > 0:
                    stats.slashed += 1
                    ledger = st.stake_funds(st.deposit(ledger, a, deficit), a, deficit)
            if cheated:
                result.bad_results += 1
                result.stats[node.strategy].cheats += 1
                cheats_since[asserter] += 1
                if outcome is Outcome.ASSERTER_FAULT:
                    result.stats[node.strategy].caught += 1
                    result.detection_epochs.append(epoch + 1 - last_detection[asserter])
                    result.detection_cheats.append(cheats_since[asserter])
                    last_detection[asserter], cheats_since[asserter] = epoch + 1, 0
                else:
                    result.bad_accepted += 1
        if progress is not None:
            progress(epoch + 1)
    result.final_state = ledger
    return result


def build_network(
    honest: int = 0,
    always_cheat: int = 0,
    random_cheat: int = 0,
    cheat_probability: float = 0.5,
    lazy: int = 0,
    colluding: int = 0,
    collusion_cheat_probability: float = 1.0,
    stake: int = 10**6,
) -> tuple[NodeSpec, ...]:
    """A network of equal stakes: a group's share of stake is its share of nodes."""
    nodes = [NodeSpec(Strategy.HONEST, stake)] * honest
    nodes += [NodeSpec(Strategy.ALWAYS_CHEAT, stake)] * always_cheat
    nodes += [NodeSpec(Strategy.RANDOM_CHEAT, stake, cheat_probability)] * random_cheat
    nodes += [NodeSpec(Strategy.LAZY, stake)] * lazy
    nodes += [NodeSpec(Strategy.COLLUDING, stake, collusion_cheat_probability)] * colluding
    return tuple(nodes)
