"""Settlement rules: hand-checked figures, reverts, immutability, conservation, and the vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from verinfer.protocol import settlement as st
from verinfer.protocol.settlement import (
    Batch,
    ChallengeEntry,
    LedgerState,
    Outcome,
    Reputation,
    RequestEntry,
    SettlementParams,
    Unbonding,
)
from verinfer.protocol.settlement_codec import (
    params_from_json,
    run_operations,
    state_from_json,
    state_to_json,
)

VECTORS = Path(__file__).parents[1] / "vectors" / "protocol"
USER = "0x0a00000000000000000000000000000000000001"
A, B, C, D = (f"0x0b{'00' * 18}{i:02x}" for i in range(1, 5))
ROOT = b"\x11" * 32
PARAMS = SettlementParams(
    min_stake=1000, unbonding_delay=100, reward_asserter=10, reward_validators=9, slash=500,
    protocol_fee_bps=1000, discount_bps=5000, challenger_share_bps=5000,
).validate()


def network(user_balance: int = 100, treasury: int = 0) -> LedgerState:
    return LedgerState(balance={USER: user_balance}, stake={n: 1000 for n in (A, B, C, D)},
                       treasury=treasury)


def settle(state: LedgerState, *requests: RequestEntry,
           challenges: tuple[ChallengeEntry, ...] = (), epoch: int = 1) -> LedgerState:
    return st.apply_batch(state, PARAMS, Batch(epoch, ROOT, requests, challenges))


def test_request_splits_fee_between_asserter_and_treasury() -> None:
    after = settle(network(), RequestEntry(USER, A, 100))
    assert (after.balance_of(USER), after.balance_of(A), after.treasury) == (0, 90, 10)
    assert after.reputation_of(A) == Reputation(served=1)
    assert after.epoch_roots == {1: ROOT}


def test_passed_pays_rewards_and_discount_from_treasury() -> None:
    before = network(treasury=1000)
    after = settle(before, challenges=(ChallengeEntry(USER, A, 100, (B, C, D), Outcome.PASSED),))
    # R_A 10, R_V 9 // 3 = 3 each, discount 100 * 50% = 50: 10 + 9 + 50 = 69 out of the treasury.
    assert after.treasury == 1000 - 69
    assert [after.balance_of(x) for x in (USER, A, B, C, D)] == [150, 10, 3, 3, 3]
    assert after.reputation_of(A) == Reputation(challenged=1, passed=1)


def test_asserter_fault_slashes_and_refunds() -> None:
    after = settle(network(), challenges=(
        ChallengeEntry(USER, A, 100, (B, C, D), Outcome.ASSERTER_FAULT),))
    # S 500: refund 100 to the user, rest 400, 400 * 50% // 3 = 66 per validator, 202 to treasury.
    assert after.stake_of(A) == 500
    assert [after.balance_of(x) for x in (USER, B, C, D)] == [200, 66, 66, 66]
    assert after.treasury == 202
    assert after.reputation_of(A) == Reputation(challenged=1, failed=1)
    assert after.reputation_of(A).rep_ppm == 1_000_000 * 1 // 5


def test_slash_reaches_unbonding_stake() -> None:
    state = st.unstake(network(), PARAMS, A, 700, now=0)
    after = settle(state, challenges=(ChallengeEntry(USER, A, 0, (B,), Outcome.ASSERTER_FAULT),))
    assert after.stake_of(A) == 0
    assert after.unbonding_of(A) == Unbonding(500, 100)


def test_validator_fault_slashes_faulty_and_pays_the_rest() -> None:
    after = settle(network(treasury=1000), challenges=(
        ChallengeEntry(USER, A, 100, (B, C, D), Outcome.VALIDATOR_FAULT, (C,)),))
    # Payouts: R_A 10 + 2 honest * 3 + discount 50 = 66 out; slash 500: 250 to A, 250 to treasury.
    assert after.treasury == 1000 - 66 + 250
    assert [after.balance_of(x) for x in (USER, A, B, C, D)] == [150, 260, 3, 0, 3]
    assert after.stake_of(C) == 500
    assert after.reputation_of(C) == Reputation(failed=1)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (ChallengeEntry(USER, A, 0, (), Outcome.PASSED), st.BadValidatorCount),
        (ChallengeEntry(USER, A, 0, (B, B), Outcome.PASSED), st.DuplicateValidator),
        (ChallengeEntry(USER, A, 0, (A, B), Outcome.PASSED), st.AsserterIsValidator),
        (ChallengeEntry(USER, A, 0, (B,), Outcome.VALIDATOR_FAULT, (C,)), st.FaultyNotAValidator),
        (ChallengeEntry(USER, A, 0, (B,), Outcome.PASSED, (B,)), st.BadFaultyValidators),
        (ChallengeEntry(USER, A, 0, (B,), Outcome.VALIDATOR_FAULT), st.BadFaultyValidators),
    ],
)
def test_malformed_challenges_revert(entry: ChallengeEntry, error: type[Exception]) -> None:
    with pytest.raises(error):
        settle(network(treasury=1000), challenges=(entry,))


def test_revert_messages_are_the_contract_strings() -> None:
    with pytest.raises(st.InsufficientTreasury, match="^insufficient treasury$"):
        settle(network(treasury=68), challenges=(
            ChallengeEntry(USER, A, 100, (B, C, D), Outcome.PASSED),))
    with pytest.raises(st.SlashExceedsStake, match="^slash exceeds stake$"):
        settle(LedgerState(stake={A: 499}), challenges=(
            ChallengeEntry(USER, A, 0, (B,), Outcome.ASSERTER_FAULT),))
    once = settle(network(), RequestEntry(USER, A, 1), epoch=3)
    with pytest.raises(st.EpochAlreadySettled, match="^epoch already settled$"):
        settle(once, epoch=3)
    with pytest.raises(st.InsufficientBalance, match="^insufficient balance$"):
        settle(network(user_balance=150), RequestEntry(USER, A, 100), RequestEntry(USER, B, 100))


def test_transitions_leave_their_input_unchanged() -> None:
    before = network(treasury=1000)
    snapshot = state_to_json(before)
    settle(before, RequestEntry(USER, A, 100), challenges=(
        ChallengeEntry(USER, A, 100, (B, C), Outcome.VALIDATOR_FAULT, (B,)),))
    st.withdraw(st.unstake(before, PARAMS, A, 10, 0), A, 10, 200)
    assert state_to_json(before) == snapshot
    with pytest.raises(TypeError):
        before.balance[USER] = 0  # type: ignore[index]


def test_unbonding_release_and_delay() -> None:
    state = st.unstake(network(), PARAMS, A, 400, now=50)
    assert state.unbonding_of(A) == Unbonding(400, 150)
    with pytest.raises(st.InsufficientBalance):
        st.withdraw(state, A, 400, now=149)
    after = st.withdraw(state, A, 300, now=150)
    assert (after.balance_of(A), after.unbonding_of(A), after.stake_of(A)) == (100, Unbonding(), 600)


@pytest.mark.parametrize(
    "changes",
    [{"slash": 1001}, {"unbonding_delay": 0}, {"discount_bps": 10001}, {"reward_asserter": -1}],
)
def test_invalid_params_are_refused(changes: dict[str, int]) -> None:
    fields = {**vars(PARAMS), **changes}
    with pytest.raises(st.InvalidParams):
        SettlementParams(**fields).validate()


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(st.InvalidInput, match="address"):
        st.deposit(LedgerState(), "0xABC", 1)


def _cases() -> list[dict]:
    data = json.loads((VECTORS / "settlement-v1.json").read_text())
    assert data["version"] == 1 and data["spec"] == "docs/settlement-rules.md"
    return data["cases"]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_settlement_vectors(case: dict) -> None:
    params = params_from_json(case["params"]).validate()
    initial = state_from_json(case["initial_state"])
    # The initial state must be reachable from an empty contract by its setup operations.
    built = run_operations(LedgerState(), params, case["setup"])
    assert built.reverts == (None,) * len(case["setup"])
    assert state_to_json(built.state) == case["initial_state"]
    replay = run_operations(initial, params, case["operations"])
    assert list(replay.reverts) == [op.get("revert") for op in case["operations"]]
    assert state_to_json(replay.state) == case["expected_state"]
    # Conservation: funds in the contract change only by deposits and withdrawals.
    flows = sum(op["amount"] for op, r in zip(case["operations"], replay.reverts, strict=True)
                if r is None and op["op"] in ("deposit", "fund_treasury"))
    flows -= sum(op["amount"] for op, r in zip(case["operations"], replay.reverts, strict=True)
                 if r is None and op["op"] == "withdraw")
    assert replay.state.total_funds() == initial.total_funds() + flows


def test_vectors_cover_every_revert_and_outcome() -> None:
    reverts = {op.get("revert") for c in _cases() for op in c["operations"]}
    names = {cls.revert for cls in st.SettlementRevert.__subclasses__()}
    assert names <= reverts
    outcomes = {ch["outcome"] for c in _cases() for op in c["operations"] if op["op"] == "settle"
                for ch in op["batch"]["challenges"]}
    assert outcomes == {o.value for o in Outcome}


def test_vector_file_matches_its_generator() -> None:
    subprocess.run([sys.executable, str(VECTORS / "make_settlement_vectors.py"), "--check"],
                   check=True, env={"PYTHONPATH": str(Path(__file__).parents[2] / "src")})
