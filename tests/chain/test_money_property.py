"""Property: random deposits, stakes, unstakes, batches, slashes and withdrawals conserve money.

Hypothesis drives the contract in titanoboa with random operation sequences (including ones
that must revert). After every step: the contract holds exactly Σ balance + Σ stake +
Σ unbonding + treasury; the ether of all parties plus the contract never changes (nothing is
created, nothing is lost); and the contract's state and revert strings equal those of the
protocol's pure functions run on the same operations.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boa
from boa_driver import apply_op, read_state
from conftest import PARAMS, params_tuple
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from verinfer.chain.artifact import SOURCE_PATH
from verinfer.protocol import settlement as rules
from verinfer.protocol.settlement import LedgerState
from verinfer.protocol.settlement_codec import apply_operation

USERS = [f"0x0a{'00' * 18}{i:02x}" for i in range(1, 4)]
NODES = [f"0x0b{'00' * 18}{i:02x}" for i in range(1, 6)]
PARTIES = USERS + NODES
ROOT = "0x" + "33" * 32
START_ETH = 10**12

# Mostly positive amounts of a useful size; zero (which must revert) now and then.
amounts = st.sampled_from([100 * k for k in range(1, 31)] + [1, 7, 999, 0])
fees = st.integers(min_value=0, max_value=400)


@cache
def _deployer() -> Any:
    return boa.load_partial(str(SOURCE_PATH))


@st.composite
def challenges(draw: st.DrawFn) -> dict[str, Any]:
    asserter = draw(st.sampled_from(NODES))
    others = [n for n in NODES if n != asserter]
    # Mostly well-formed; sometimes the asserter validates itself or a validator repeats.
    pool = draw(st.sampled_from([others, others, others, NODES, others + others[:1]]))
    validators = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=4))
    if draw(st.integers(0, 9)) > 0:
        validators = list(dict.fromkeys(validators)) or [others[0]]
    outcome = draw(st.sampled_from(["PASSED", "ASSERTER_FAULT", "VALIDATOR_FAULT"]))
    faulty: list[str] = []
    if outcome == "VALIDATOR_FAULT" and validators:
        faulty = draw(st.lists(st.sampled_from(validators), min_size=1, max_size=2, unique=True))
    return {
        "user": draw(st.sampled_from(USERS)),
        "asserter": asserter,
        "fee": draw(fees),
        "validators": validators,
        "outcome": outcome,
        "faulty_validators": faulty,
    }


requests = st.fixed_dictionaries(
    {"user": st.sampled_from(USERS), "asserter": st.sampled_from(NODES), "fee": fees}
)


class MoneyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        boa.env.timestamp = 1
        self.now = 1
        self.contract = _deployer().deploy(params_tuple(PARAMS))
        for party in [*PARTIES, boa.env.eoa]:
            boa.env.set_balance(party, START_ETH)
        self.model = LedgerState()
        self.epochs: set[int] = set()
        self.reverts = 0

    @initialize()
    def open_network(self) -> None:
        """A working network to start from, so that most batches can be paid and slashed."""
        for user in USERS:
            self._run({"op": "deposit", "address": user, "amount": 3000})
        for node in NODES:
            self._run({"op": "deposit", "address": node, "amount": 1500})
            self._run({"op": "stake", "node": node, "amount": 1500})
        self._run({"op": "fund_treasury", "amount": 2000})

    def _run(self, op: dict[str, Any]) -> None:
        try:
            expected_revert = None
            next_model = apply_operation(self.model, PARAMS, op)
        except rules.SettlementRevert as exc:
            expected_revert, next_model = str(exc), self.model
        try:
            apply_op(self.contract, op, fund=False)
        except boa.BoaError as exc:
            got = str(exc.stack_trace.last_frame.pretty_vm_reason)
            assert expected_revert is not None, f"{op} reverted on chain ({got}), not in rules"
            assert got == expected_revert, f"{op}: chain says {got!r}, rules {expected_revert!r}"
            self.reverts += 1
        else:
            assert expected_revert is None, f"{op} passed on chain, rules: {expected_revert}"
        self.model = next_model

    @rule(who=st.sampled_from(PARTIES), amount=amounts)
    def deposit(self, who: str, amount: int) -> None:
        self._run({"op": "deposit", "address": who, "amount": amount})

    @rule(amount=amounts)
    def fund_treasury(self, amount: int) -> None:
        self._run({"op": "fund_treasury", "amount": amount})

    @rule(node=st.sampled_from(NODES), amount=amounts)
    def stake(self, node: str, amount: int) -> None:
        self._run({"op": "stake", "node": node, "amount": amount})

    @rule(node=st.sampled_from(NODES), amount=amounts)
    def unstake(self, node: str, amount: int) -> None:
        self._run({"op": "unstake", "node": node, "amount": amount, "time": self.now})

    @rule(who=st.sampled_from(PARTIES), amount=amounts)
    def withdraw(self, who: str, amount: int) -> None:
        self._run({"op": "withdraw", "address": who, "amount": amount, "time": self.now})

    @rule(seconds=st.integers(min_value=0, max_value=150))
    def wait(self, seconds: int) -> None:
        self.now += seconds

    @rule(
        epoch=st.integers(min_value=0, max_value=12),
        reqs=st.lists(requests, max_size=4),
        chals=st.lists(challenges(), max_size=3),
    )
    def settle(self, epoch: int, reqs: list[dict[str, Any]], chals: list[dict[str, Any]]) -> None:
        self.epochs.add(epoch)
        batch = {"epoch": epoch, "receipts_root": ROOT, "requests": reqs, "challenges": chals}
        self._run({"op": "settle", "batch": batch})

    @invariant()
    def money_is_conserved(self) -> None:
        held = boa.env.get_balance(self.contract.address)
        state = read_state(self.contract, PARTIES, self.epochs)
        assert held == state.total_funds()
        outside = sum(boa.env.get_balance(p) for p in [*PARTIES, boa.env.eoa])
        assert outside + held == START_ETH * (len(PARTIES) + 1)
        assert state == self.model


MoneyMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_money_is_conserved = MoneyMachine.TestCase
