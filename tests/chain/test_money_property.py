"""Property: random operations of settlement v2 conserve money, and the contract equals the rules.

Hypothesis drives the contract in titanoboa through deposits, stakes, unstakes, withdrawal
requests and withdrawals, committed and settled epochs (half of the receipts challenged by the
beacon), passes on validators' verdicts (alone and in batches), accusations, appeals, finalizations, slashes of
validators whose verdicts arbitration refuted, pauses and waits,
with real EIP-712 signatures, including operations that must revert. After every step: the
contract holds exactly Σ balance + Σ stake + Σ unbonding + Σ escrow + treasury; the ether of
all parties plus the contract never changes; and balances, stakes, unbonding, treasury,
escrow, unpaid fees and reputation equal those of `verinfer.protocol.ledger` run on the same
operations, with the same revert strings.
"""

from __future__ import annotations

import re
from typing import Any

import boa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from v2kit import ACCUSE, APPEAL, EPOCH, MAX_PAUSE, PASS, Net, deploy, with_params

from verinfer.protocol import ledger as rules
from verinfer.protocol.challenge import is_challenged
from verinfer.protocol.selection import ARBITRATOR_TAG, VALIDATOR_TAG, is_drawn
from verinfer.protocol.settlement import Reputation, SettlementRevert, Unbonding

PARAMS = with_params(challenge_ppm=500_000)
START_ETH = 10**12
amounts = st.sampled_from([100 * k for k in range(1, 31)] + [1, 7, 999, 0])
# Fees near 2^256 too: a shortfall that large saturates `unpaid`, never reverts the batch.
fees = st.integers(min_value=0, max_value=400) | st.just(rules.UINT256_MAX)


def revert_reason(exc: boa.BoaError) -> str:
    """The revert string of a failed call to the (ABI-loaded) contract."""
    match = re.search(r"^\s*\[E\].*<(.+)>\s*$", str(exc), re.MULTILINE)
    assert match, str(exc)
    return match.group(1)


class MoneyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        boa.env.timestamp = 1_000_000
        self.net: Net = deploy(None, PARAMS)
        self.model = rules.Ledger(pauses=rules.PauseClock(max_pause=MAX_PAUSE))
        self.settled: set[int] = set()
        self.receipts: dict[bytes, Any] = {}
        self.epochs: dict[bytes, int] = {}
        self.stake_block: dict[str, int] = {}

    # -------------------------------------------------------------- clock and plumbing

    def now(self) -> int:
        """The contract's clock, as the rules keep it (wall time less paused time)."""
        return rules.clock(self.model, boa.env.timestamp)

    def is_paused(self) -> bool:
        return rules.paused(self.model, boa.env.timestamp)

    def running(self) -> rules.Ledger:
        """The model, or the rules' refusal while paused."""
        return rules.running(self.model, boa.env.timestamp)

    def _run(self, chain_call: Any, model_call: Any) -> None:
        try:
            expected_revert, next_model = None, model_call()
        except (SettlementRevert, rules.Refused) as exc:
            expected_revert, next_model = str(exc), self.model
        try:
            chain_call()
        except boa.BoaError as exc:
            got = revert_reason(exc)
            assert expected_revert is not None, f"reverted on chain ({got}), not in the rules"
            assert got == expected_revert, f"chain says {got!r}, rules {expected_revert!r}"
        else:
            assert expected_revert is None, f"passed on chain, rules: {expected_revert}"
        self.model = next_model

    @initialize()
    def open_network(self) -> None:
        net = self.net
        for _ in range(6):
            node = net.node(stake=1500)
            self.model = rules.deposit(self.model, node.address, 1500)
            self.model = rules.stake(self.model, node.address, 1500)
        for _ in range(3):
            user = net.user(deposit=3000, cap=1000)
            self.model = rules.deposit(self.model, user.address, 3000)
            self.model = rules.set_allowance(self.model, user.address, net.owner, 1000,
                                             boa.env.timestamp + 10**6, net.nonce,
                                             boa.env.timestamp)
        net.c.fund_treasury(value=2000)
        self.model = rules.fund_treasury(self.model, 2000)
        self.parties = [p.address for p in net.nodes + net.users]
        for who in self.parties:
            boa.env.set_balance(who, START_ETH)
        boa.env.set_balance(net.owner, START_ETH)

    # -------------------------------------------------------------- funds and stake

    @rule(who=st.integers(0, 8), amount=amounts)
    def deposit(self, who: int, amount: int) -> None:
        a = self.parties[who]
        if amount == 0:
            return  # the contract's zero check; covered in the attack suite
        self._run(lambda: self.net.c.deposit(a, value=amount, sender=a),
                  lambda: rules.deposit(self.running(), a, amount))

    @rule(node=st.integers(0, 5), amount=amounts)
    def stake(self, node: int, amount: int) -> None:
        a = self.parties[node]
        before = self.model
        self._run(lambda: self.net.c.stake(amount, sender=a),
                  lambda: rules.stake(self.running(), a, amount))
        if self.model is not before:
            self.stake_block[a] = boa.env.evm.patch.block_number
        boa.env.time_travel(blocks=1)

    @rule(node=st.integers(0, 5), amount=amounts)
    def unstake(self, node: int, amount: int) -> None:
        a = self.parties[node]
        self._run(lambda: self.net.c.unstake(amount, sender=a),
                  lambda: rules.unstake(self.model, PARAMS, a, amount, self.now()))

    @rule(who=st.integers(0, 8), amount=amounts)
    def request_withdrawal(self, who: int, amount: int) -> None:
        a = self.parties[who]
        self._run(lambda: self.net.c.request_withdrawal(amount, sender=a),
                  lambda: rules.request_withdrawal(self.model, PARAMS, a, amount, self.now()))

    @rule(who=st.integers(0, 8), amount=amounts)
    def withdraw(self, who: int, amount: int) -> None:
        a = self.parties[who]
        self._run(lambda: self.net.c.withdraw(amount, sender=a),
                  lambda: rules.withdraw(self.model, a, amount, self.now()))

    @rule(seconds=st.sampled_from([1, 20, 60, 150, 450, 600]))
    def wait(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @rule()
    def pause(self) -> None:
        self._run(self.net.c.pause, lambda: rules.pause(self.model, boa.env.timestamp))

    @rule()
    def unpause(self) -> None:
        self._run(self.net.c.unpause, lambda: rules.unpause(self.model, boa.env.timestamp))

    # -------------------------------------------------------------- epochs and evidence

    @rule(entries=st.lists(st.tuples(st.integers(0, 5), st.integers(6, 8), fees),
                           min_size=1, max_size=5))
    def settle(self, entries: list[tuple[int, int, int]]) -> None:
        net = self.net
        if self.is_paused():
            self._run(lambda: net.c.commit_epoch(net.epoch(), b"\0" * 32, 0),
                      self.running)
            return
        if net.epoch() in self.settled:
            boa.env.time_travel(seconds=EPOCH)
        epoch = net.epoch()
        parties = net.nodes + net.users
        receipts = net.ordered([net.receipt(parties[n], parties[u], fee=f) for n, u, f in entries])
        net.commit(receipts, epoch)
        net.c.settle_epoch(epoch, [r.args() for r in receipts])
        self.settled.add(epoch)
        beacon = bytes(net.c.commitments(net.owner, epoch)[3])
        settled = []
        for r in receipts:
            rid = net.digest(r.message())
            self.receipts[rid], self.epochs[rid] = r, epoch
            settled.append(rules.SettledReceipt(rid, r.node, r.user, r.fee,
                                                is_challenged(rid, beacon, PARAMS.challenge_ppm)))
        start = int(net.c.GENESIS()) + epoch * EPOCH
        self.model = rules.settle_epoch(self.model, PARAMS, net.owner, epoch, start, settled,
                                        self.now())

    def _case_ids(self) -> list[bytes]:
        return sorted(self.model.cases)

    def _judges(self, rid: bytes, tag: bytes, count: int) -> list[Any] | None:
        """`count` members the rules draw for the receipt (staked before the commit, ticket
        below their share), in increasing address; None if there are fewer."""
        r, epoch = self.receipts[rid], self.epochs[rid]
        commitment = self.net.c.commitments(self.net.owner, epoch)
        beacon, commit_block, total = bytes(commitment[3]), commitment[2], commitment[4]
        judges = [p for p in self.net.nodes if p.address != r.node
                  and self.stake_block.get(p.address, 0) < commit_block
                  and is_drawn(tag, beacon, rid, p.address.lower(),
                               self.model.stake.get(p.address, 0), total, 255)]
        if len(judges) < count:
            return None
        return sorted(judges, key=lambda p: int(p.address, 16))[:count]

    @precondition(lambda self: bool(self.model.cases))
    @rule(pick=st.integers(0, 10**6), kind=st.sampled_from([PASS, ACCUSE, APPEAL]))
    def evidence(self, pick: int, kind: int) -> None:
        rid = self._case_ids()[pick % len(self.model.cases)]
        r, epoch = self.receipts[rid], self.epochs[rid]
        tag = VALIDATOR_TAG if kind == PASS else ARBITRATOR_TAG
        chosen = self._judges(rid, tag, {PASS: 2, ACCUSE: 3, APPEAL: 4}[kind])
        if chosen is None:
            return
        names = [p.address for p in chosen]
        signer = next(p for p in self.net.nodes if p.address == r.node)
        call = {PASS: rules.pass_challenge, ACCUSE: rules.accuse, APPEAL: rules.appeal}[kind]
        self._run(
            lambda: self.net.evidence(kind, epoch, r, chosen, signer=signer,
                                      valid=kind != ACCUSE),
            lambda: call(self.running(), PARAMS, rid, names, self.now()),
        )

    @precondition(lambda self: bool(self.model.cases))
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
    def pass_batch(self, picks: list[int]) -> None:
        """Passes of one epoch's cases in one transaction (a case may come twice)."""
        ids = self._case_ids()
        epoch = self.epochs[ids[picks[0] % len(ids)]]
        of_epoch = [rid for rid in ids if self.epochs[rid] == epoch]
        batch = []
        for pick in picks:
            rid = of_epoch[pick % len(of_epoch)]
            chosen = self._judges(rid, VALIDATOR_TAG, 2)
            if chosen is not None:
                batch.append((rid, chosen))
        if not batch:
            return
        net = self.net
        self._run(
            lambda: net.pass_batch(epoch, [net.pass_case(self.receipts[rid], chosen)
                                           for rid, chosen in batch]),
            lambda: rules.pass_challenges(self.running(), PARAMS,
                                          [(rid, [p.address for p in chosen])
                                           for rid, chosen in batch], self.now()),
        )

    @precondition(lambda self: bool(self.model.cases))
    @rule(pick=st.integers(0, 10**6), who=st.integers(0, 5))
    def wrong_verdict(self, pick: int, who: int) -> None:
        """A drawn validator's verdict that the case's arbitration outcome contradicts."""
        rid = self._case_ids()[pick % len(self.model.cases)]
        r, epoch = self.receipts[rid], self.epochs[rid]
        commitment = self.net.c.commitments(self.net.owner, epoch)
        judge = self.net.nodes[who]
        if judge.address == r.node or self.stake_block.get(judge.address, 0) >= commitment[2] \
                or not is_drawn(VALIDATOR_TAG, bytes(commitment[3]), rid, judge.address.lower(),
                                self.model.stake.get(judge.address, 0), commitment[4], 255):
            return
        agree = self.model.cases[rid].status != rules.CLEARED
        self._run(
            lambda: self.net.evidence(3, epoch, r, [judge], valid=agree),
            lambda: rules.slash_wrong_verdicts(self.running(), PARAMS, rid, [judge.address]),
        )

    @precondition(lambda self: bool(self.model.cases))
    @rule(pick=st.integers(0, 10**6))
    def finalize(self, pick: int) -> None:
        rid = self._case_ids()[pick % len(self.model.cases)]
        self._run(lambda: self.net.c.finalize(self.epochs[rid], rid),
                  lambda: rules.finalize(self.running(), PARAMS, rid, self.now()))

    # -------------------------------------------------------------- the property

    @invariant()
    def money_is_conserved_and_the_contract_follows_the_rules(self) -> None:
        c = self.net.c
        held = boa.env.get_balance(c.address)
        assert held == self.model.total_funds()
        assert held == self.net.funds()
        outside = sum(boa.env.get_balance(p) for p in [*self.parties, self.net.owner])
        assert outside + held == START_ETH * (len(self.parties) + 1) + 6 * 1500 + 3 * 3000 + 2000
        m = self.model
        for a in self.parties:
            assert c.balances(a) == m.balance.get(a, 0), a
            assert c.stakes(a) == m.stake.get(a, 0), a
            u = m.unbonding.get(a, Unbonding())
            assert tuple(c.unbonding(a)) == (u.amount, u.release_time), a
            assert c.unpaid(a) == m.unpaid.get(a, 0), a
            r = m.reputation.get(a, Reputation())
            assert tuple(c.reputation(a)) == (r.served, r.challenged, r.passed, r.failed), a
        assert c.treasury() == m.treasury
        assert c.paused() == self.is_paused()
        assert c.escrow_total() == m.escrow()
        for rid, case in m.cases.items():
            assert c.case_of(self.epochs[rid], rid)[0] == case.status


MoneyMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_money_is_conserved = MoneyMachine.TestCase
