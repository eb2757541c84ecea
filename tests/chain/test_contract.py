"""Every function of Settlement.vy in titanoboa, with every revert path and the events it logs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import boa
import pytest
from conftest import PARAMS, params_tuple

from verinfer.chain.client import batch_args, proof_args
from verinfer.protocol.merkle import merkle_proof, merkle_root
from verinfer.protocol.settlement import Batch, ChallengeEntry, Outcome, RequestEntry

ROOT = b"\x11" * 32
PUBKEY = b"\x22" * 32
SETTLER, ARBITER, PAUSER = 1, 2, 4


@pytest.fixture
def c(deploy: Callable[..., Any]) -> Any:
    boa.env.set_balance(boa.env.eoa, 10**24)  # the owner funds the treasury in some tests
    return deploy()


def addr() -> str:
    a = boa.env.generate_address()
    boa.env.set_balance(a, 10**24)
    return str(a).lower()


def funded(c: Any, amount: int) -> str:
    a = addr()
    c.deposit(value=amount, sender=a)
    return a


def staked(c: Any, amount: int = 1000) -> str:
    a = addr()
    c.stake(amount, value=amount, sender=a)
    return a


def settle(c: Any, epoch: int, requests: tuple = (), challenges: tuple = (), **kw: Any) -> None:
    c.settle_batch(*batch_args(Batch(epoch, ROOT, requests, challenges)), **kw)


def event_names(c: Any) -> list[str]:
    """Events of `c`'s last call (so: read right after the transaction)."""
    return [type(e).__name__ for e in c.get_logs()]


def logged(fn: Any, *args: Any, **kwargs: Any) -> list[str]:
    """Send a transaction and return the names of the events it logged, in order."""
    fn(*args, **kwargs)
    return event_names(fn.contract)


def funds_match(c: Any, addresses: list[str]) -> bool:
    held = sum(c.balances(a) + c.stakes(a) + c.unbonding(a)[0] for a in addresses) + c.treasury()
    return boa.env.get_balance(c.address) == held


# ---------------------------------------------------------------- deployment and parameters


def test_deploy_sets_owner_roles_and_params(c: Any) -> None:
    assert c.owner() == boa.env.eoa
    assert c.roles(boa.env.eoa) == SETTLER | ARBITER | PAUSER
    assert c.params() == params_tuple(PARAMS)
    assert not c.paused()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"unbonding_delay": 0}, "unbonding delay must be positive"),
        ({"slash": 1001}, "slash exceeds min stake"),
        ({"protocol_fee_bps": 10_001}, "protocol fee above 10000 bps"),
        ({"discount_bps": 10_001}, "discount above 10000 bps"),
        ({"challenger_share_bps": 10_001}, "challenger share above 10000 bps"),
    ],
)
def test_bad_params_revert_at_deploy_and_on_change(
    settlement_deployer: Any, c: Any, change: dict[str, int], reason: str
) -> None:
    bad = params_tuple(replace(PARAMS, **change))
    with boa.reverts(reason):
        settlement_deployer.deploy(bad)
    with boa.reverts(reason):
        c.set_params(bad)


def test_set_params_is_owner_only_and_logged(c: Any) -> None:
    new = params_tuple(replace(PARAMS, min_stake=2000, slash=700))
    with boa.reverts("caller is not the owner"):
        c.set_params(new, sender=addr())
    assert logged(c.set_params, new) == ["ParamsSet"]
    assert c.params() == new


def test_transfer_ownership(c: Any) -> None:
    new_owner = addr()
    with boa.reverts("caller is not the owner"):
        c.transfer_ownership(new_owner, sender=new_owner)
    with boa.reverts("new owner is the zero address"):
        c.transfer_ownership("0x" + "00" * 20)
    c.transfer_ownership(new_owner)
    assert c.owner().lower() == new_owner
    with boa.reverts("caller is not the owner"):
        c.set_params(params_tuple(PARAMS))


def test_roles_are_granted_and_revoked_by_the_owner_only(c: Any) -> None:
    settler = addr()
    with boa.reverts("caller is not the owner"):
        c.grant_role(settler, SETTLER, sender=settler)
    with boa.reverts("caller is not a settler"):
        settle(c, 1, sender=settler)
    c.grant_role(settler, SETTLER)
    assert "RoleGranted" in event_names(c)
    settle(c, 1, sender=settler)
    with boa.reverts("caller is not the owner"):
        c.revoke_role(settler, SETTLER, sender=settler)
    c.revoke_role(settler, SETTLER)
    assert "RoleRevoked" in event_names(c)
    with boa.reverts("caller is not a settler"):
        settle(c, 2, sender=settler)


# ---------------------------------------------------------------- pausing


def test_pause_blocks_inflows_and_settlement_but_never_withdrawals(c: Any) -> None:
    user = funded(c, 500)
    with boa.reverts("caller is not a pauser"):
        c.pause(sender=user)
    with boa.reverts("not paused"):
        c.unpause()
    assert logged(c.pause) == ["Paused"] and c.paused()
    with boa.reverts("paused"):
        c.pause()
    for action in (
        lambda: c.deposit(value=1, sender=user),
        lambda: c.fund_treasury(value=1),
        lambda: c.stake(1, sender=user),
        lambda: c.unstake(1, sender=user),
        lambda: c.register(PUBKEY, "x", sender=user),
        lambda: c.set_endpoint("x", sender=user),
        lambda: settle(c, 1),
        lambda: c.settle_dispute(b"\x01" * 32, 1, _challenge(user, addr(), (addr(),),
                                                              Outcome.PASSED)),
    ):
        with boa.reverts("paused"):
            action()
    before = boa.env.get_balance(user)
    c.withdraw(500, sender=user)
    assert boa.env.get_balance(user) == before + 500
    with boa.reverts("caller is not a pauser"):
        c.unpause(sender=user)
    assert logged(c.unpause) == ["Unpaused"] and not c.paused()


def _challenge(user: str, asserter: str, validators: tuple[str, ...], outcome: Outcome,
               faulty: tuple[str, ...] = (), fee: int = 100) -> tuple[Any, ...]:
    batch = Batch(0, ROOT, (), (ChallengeEntry(user, asserter, fee, validators, outcome, faulty),))
    return batch_args(batch)[3][0]


# ---------------------------------------------------------------- funds in and out


def test_deposit_for_self_and_for_another(c: Any) -> None:
    user, other = addr(), addr()
    c.deposit(value=70, sender=user)
    assert logged(c.deposit, other, value=30, sender=user) == ["Deposited"]
    assert (c.balances(user), c.balances(other)) == (70, 30)
    with boa.reverts("zero amount"):
        c.deposit(sender=user)
    with boa.reverts("beneficiary is the zero address"):
        c.deposit("0x" + "00" * 20, value=1, sender=user)
    assert funds_match(c, [user, other])


def test_fund_treasury(c: Any) -> None:
    assert logged(c.fund_treasury, value=1234) == ["TreasuryFunded"]
    assert c.treasury() == 1234
    with boa.reverts("zero amount"):
        c.fund_treasury()


def test_withdraw_pays_the_caller_only_what_it_holds(c: Any) -> None:
    user = funded(c, 100)
    before = boa.env.get_balance(user)
    with boa.reverts("zero amount"):
        c.withdraw(0, sender=user)
    with boa.reverts("insufficient balance"):
        c.withdraw(101, sender=user)
    with boa.reverts("insufficient balance"):
        c.withdraw(1, sender=addr())
    c.withdraw(60, sender=user)
    assert c.balances(user) == 40
    assert boa.env.get_balance(user) == before + 60
    assert boa.env.get_balance(c.address) == 40


def test_stake_sends_value_or_uses_balance(c: Any) -> None:
    node = addr()
    with boa.reverts("zero amount"):
        c.stake(0, sender=node)
    with boa.reverts("insufficient balance"):
        c.stake(10, sender=node)
    c.stake(600, value=600, sender=node)
    assert event_names(c) == ["Deposited", "Staked"]
    c.deposit(value=500, sender=node)
    c.stake(400, sender=node)
    assert (c.stakes(node), c.balances(node)) == (1000, 100)
    with boa.reverts("insufficient balance"):
        c.stake(101, sender=node)
    with boa.reverts("insufficient balance"):  # the value sent is refunded by the revert
        c.stake(300, value=100, sender=node)
    assert funds_match(c, [node])


def test_unstake_and_withdraw_only_after_the_delay(c: Any) -> None:
    node = staked(c, 1000)
    boa.env.timestamp = 10_000
    with boa.reverts("zero amount"):
        c.unstake(0, sender=node)
    with boa.reverts("insufficient stake"):
        c.unstake(1001, sender=node)
    assert logged(c.unstake, 300, sender=node) == ["UnstakeRequested"]
    assert c.unbonding(node) == (300, 10_100)
    boa.env.timestamp = 10_050
    with boa.reverts("insufficient balance"):  # still unbonding: nothing withdrawable yet
        c.withdraw(300, sender=node)
    c.unstake(200, sender=node)  # restarts the clock for the whole 500
    assert c.unbonding(node) == (500, 10_150)
    boa.env.timestamp = 10_149
    with boa.reverts("insufficient balance"):
        c.withdraw(1, sender=node)
    boa.env.timestamp = 10_150
    before = boa.env.get_balance(node)
    c.withdraw(450, sender=node)
    assert event_names(c) == ["UnbondingReleased", "Withdrawn"]
    assert boa.env.get_balance(node) == before + 450
    assert (c.unbonding(node), c.balances(node), c.stakes(node)) == ((0, 0), 50, 500)
    assert funds_match(c, [node])


def test_withdraw_is_not_reentrant(c: Any) -> None:
    attacker = boa.loads(
        """
interface Settlement:
    def deposit(): payable
    def withdraw(amount: uint256): nonpayable

target: Settlement
rounds: uint256

@deploy
def __init__(target: address):
    self.target = Settlement(target)

@external
@payable
def attack():
    extcall self.target.deposit(value=msg.value)
    extcall self.target.withdraw(msg.value)

@external
@payable
def __default__():
    if self.rounds < 3:
        self.rounds += 1
        extcall self.target.withdraw(msg.value)
""",
        c.address,
    )
    victim = funded(c, 10_000)
    with boa.reverts():
        attacker.attack(value=100)
    assert c.balances(victim) == 10_000
    assert boa.env.get_balance(c.address) == 10_000


# ---------------------------------------------------------------- node registry


def test_register_and_update_endpoint(c: Any) -> None:
    node = addr()
    with boa.reverts("not registered"):
        c.set_endpoint("http://n", sender=node)
    with boa.reverts("empty public key"):
        c.register(b"\x00" * 32, "http://n", sender=node)
    boa.env.timestamp = 777
    c.register(PUBKEY, "http://n:1", sender=node)
    assert event_names(c) == ["NodeRegistered"]
    assert c.nodes(node) == (PUBKEY, "http://n:1", 777)
    assert (c.node_count(), c.node_at(0).lower()) == (1, node)
    with boa.reverts("already registered"):
        c.register(PUBKEY, "http://n:2", sender=node)
    assert logged(c.set_endpoint, "http://n:2", sender=node) == ["EndpointUpdated"]
    assert c.nodes(node)[1] == "http://n:2"


def test_active_means_registered_with_min_stake(c: Any) -> None:
    node = addr()
    c.stake(1000, value=1000, sender=node)
    assert not c.is_active(node)
    c.register(PUBKEY, "", sender=node)
    assert c.is_active(node)
    c.unstake(1, sender=node)
    assert not c.is_active(node)


# ---------------------------------------------------------------- settlement


def test_batch_settles_once_and_logs(c: Any) -> None:
    user, node = funded(c, 1000), addr()
    settle(c, 5, (RequestEntry(user, node, 100), RequestEntry(user, node, 50)))
    assert event_names(c) == ["BatchSettled"]
    assert (c.balances(user), c.balances(node), c.treasury()) == (850, 135, 15)
    assert c.reputation(node) == (2, 0, 0, 0)
    assert c.epoch_settled(5) and bytes(c.batch_roots(5)) == ROOT and c.last_epoch() == 5
    with boa.reverts("epoch already settled"):
        settle(c, 5, (RequestEntry(user, node, 1),))
    assert c.balances(user) == 850


def test_zero_receipts_root_still_marks_the_epoch(c: Any) -> None:
    c.settle_batch(3, b"\x00" * 32, [], [])
    assert c.epoch_settled(3) and not c.epoch_settled(4)
    with boa.reverts("epoch already settled"):
        c.settle_batch(3, ROOT, [], [])


def test_unpaid_request_reverts_whole_batch(c: Any) -> None:
    user, node = funded(c, 100), addr()
    with boa.reverts("insufficient balance"):
        settle(c, 1, (RequestEntry(user, node, 60), RequestEntry(user, node, 60)))
    assert c.balances(user) == 100 and not c.epoch_settled(1)


def test_passed_challenge_pays_from_treasury(c: Any) -> None:
    user, a = funded(c, 100), staked(c)
    v = (addr(), addr(), addr())
    challenge = ChallengeEntry(user, a, 100, v, Outcome.PASSED)
    with boa.reverts("insufficient treasury"):
        settle(c, 1, challenges=(challenge,))
    c.fund_treasury(value=69)
    settle(c, 1, challenges=(challenge,))
    assert event_names(c) == ["ChallengeSettled", "BatchSettled"]
    assert [c.balances(x) for x in (user, a, *v)] == [150, 10, 3, 3, 3]
    assert c.treasury() == 0 and c.reputation(a) == (0, 1, 1, 0)


def test_asserter_fault_slashes_stake_then_unbonding(c: Any) -> None:
    user, a = funded(c, 100), staked(c, 1000)
    v = (addr(), addr(), addr())
    c.unstake(700, sender=a)
    fault = ChallengeEntry(user, a, 100, v, Outcome.ASSERTER_FAULT)
    settle(c, 1, challenges=(fault,))
    assert event_names(c) == ["Slashed", "ChallengeSettled", "BatchSettled"]
    # S 500 from stake 300 then 200 of the unbonding 700; refund 100; 400 * 50% // 3 = 66 each.
    assert (c.stakes(a), c.unbonding(a)[0]) == (0, 500)
    assert [c.balances(x) for x in (user, *v)] == [200, 66, 66, 66]
    assert c.treasury() == 202 and c.reputation(a) == (0, 1, 0, 1)
    assert funds_match(c, [user, a, *v])


def test_slash_larger_than_stake_reverts(c: Any) -> None:
    user, a = funded(c, 100), staked(c, 499)
    with boa.reverts("slash exceeds stake"):
        settle(c, 1, challenges=(ChallengeEntry(user, a, 1, (addr(),), Outcome.ASSERTER_FAULT),))
    assert c.stakes(a) == 499 and not c.epoch_settled(1)


def test_validator_fault_slashes_the_wrong_validator(c: Any) -> None:
    user, a = funded(c, 100), addr()
    good, bad = addr(), staked(c, 1000)
    c.fund_treasury(value=1000)
    settle(c, 1, challenges=(ChallengeEntry(user, a, 100, (good, bad), Outcome.VALIDATOR_FAULT,
                                            (bad,)),))
    # payouts: R_A 10 + R_V//2 = 4 to the honest one + discount 50; slash 500: 250 to asserter.
    assert [c.balances(x) for x in (user, a, good, bad)] == [150, 260, 4, 0]
    assert c.stakes(bad) == 500 and c.treasury() == 1000 - 64 + 250
    assert c.reputation(a) == (0, 1, 1, 0) and c.reputation(bad) == (0, 0, 0, 1)


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("no validators", "bad validator count"),
        ("17 validators", "bad validator count"),
        ("duplicate", "duplicate validator"),
        ("duplicate faulty", "duplicate validator"),
        ("asserter validates", "asserter is validator"),
        ("stranger faulty", "faulty not a validator"),
        ("faulty on pass", "bad faulty validators"),
        ("no faulty on validator fault", "bad faulty validators"),
        ("unknown outcome", "unknown outcome"),
    ],
)
def test_malformed_challenges_revert(c: Any, shape: str, reason: str) -> None:
    user, a = funded(c, 100), staked(c)
    v1, v2 = staked(c), staked(c)
    c.fund_treasury(value=10_000)
    validators, outcome, faulty = (v1, v2), 0, []
    if shape == "no validators":
        validators = ()
    elif shape == "17 validators":
        validators = tuple(addr() for _ in range(17))
    elif shape == "duplicate":
        validators = (v1, v2, v1)
    elif shape == "duplicate faulty":
        outcome, faulty = 2, [v1, v1]
    elif shape == "asserter validates":
        validators = (v1, a)
    elif shape == "stranger faulty":
        outcome, faulty = 2, [addr()]
    elif shape == "faulty on pass":
        faulty = [v1]
    elif shape == "no faulty on validator fault":
        outcome = 2
    elif shape == "unknown outcome":
        outcome = 3
    entry = (user, a, 100, list(validators), outcome, faulty)
    with boa.reverts(reason):
        c.settle_batch(1, ROOT, [], [entry])


def test_settle_dispute_is_arbiter_only_and_once(c: Any) -> None:
    user, a = funded(c, 100), staked(c)
    v = addr()
    entry = _challenge(user, a, (v,), Outcome.ASSERTER_FAULT, fee=100)
    dispute = b"\x07" * 32
    with boa.reverts("caller is not an arbiter"):
        c.settle_dispute(dispute, 9, entry, sender=v)
    assert logged(c.settle_dispute, dispute, 9, entry) == [
        "Slashed", "ChallengeSettled", "DisputeSettled"
    ]
    assert c.stakes(a) == 500 and c.disputes_settled(dispute)
    with boa.reverts("dispute already settled"):
        c.settle_dispute(dispute, 9, entry)
    assert c.stakes(a) == 500


@pytest.mark.parametrize("n_leaves", [1, 2, 3, 5, 8, 13])
def test_verify_receipt_accepts_protocol_merkle_proofs(c: Any, n_leaves: int) -> None:
    leaves = [f"receipt {i}".encode() * (i + 1) for i in range(n_leaves)]
    root = merkle_root(leaves)
    assert not c.verify_receipt(4, leaves[0], *proof_args(merkle_proof(leaves, 0)))
    c.settle_batch(4, root, [], [])
    for i, leaf in enumerate(leaves):
        proof = proof_args(merkle_proof(leaves, i))
        assert c.verify_receipt(4, leaf, *proof)
        assert not c.verify_receipt(4, leaf + b"x", *proof)
        assert not c.verify_receipt(5, leaf, *proof)
    if n_leaves > 1:
        siblings, bits = proof_args(merkle_proof(leaves, 0))
        assert not c.verify_receipt(4, leaves[0], siblings, bits ^ 1)
