"""Settlement v2 attacked by each role: what a malicious owner, settler, arbitrator, pauser, user
or node tries, and the bound that holds (docs/settlement-rules.md, "Who can do what").

Each test is written as the attack: the attacker's own keys and roles, real EIP-712 signatures,
the real contract in titanoboa. It asserts what the attacker got is within the bound.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from v2kit import (
    ACCUSE,
    ACCUSED,
    APPEAL,
    CLEARED,
    EPOCH,
    LAPSED,
    MAX_PAUSE,
    OPEN,
    PARAMS,
    PARAMS_DELAY,
    PASS,
    PASSED,
    SLASHED,
    Net,
    Party,
    compiled,
    deploy,
    params_tuple,
    with_params,
)

from verinfer.protocol.selection import ARBITRATOR_TAG, is_drawn


@pytest.fixture
def net(settlement_deployer: Any) -> Net:
    boa.env.timestamp = 1_000_000
    return deploy(settlement_deployer)


@pytest.fixture
def challenging(settlement_deployer: Any) -> Net:
    """Every receipt is challenged (challenge_ppm = 100%)."""
    boa.env.timestamp = 1_000_000
    return deploy(settlement_deployer, with_params(challenge_ppm=1_000_000))


def spendable(net: Net, who: str) -> int:
    return int(net.c.balances(who))


def conserved(net: Net) -> None:
    assert boa.env.get_balance(net.c.address) == net.funds()


# ---------------------------------------------------------------- settler


def test_settler_takes_at_most_the_signed_cap_per_epoch(net: Net) -> None:
    node = net.node()
    victim = net.user(deposit=10_000, cap=300)
    # The settler serves (or claims to serve) 5 requests of 100 to the victim in one epoch.
    receipts = [net.receipt(node, victim) for _ in range(5)]
    net.settle(receipts)
    assert spendable(net, victim.address) == 10_000 - 300
    assert net.c.unpaid(victim.address) == 200
    conserved(net)


def test_settler_cannot_debit_a_user_who_signed_no_allowance(net: Net) -> None:
    node = net.node()
    victim = Party(900)
    net.c.deposit(victim.address, value=5000, sender=victim.address)
    net.settle([net.receipt(node, victim, fee=5000)])
    assert spendable(net, victim.address) == 5000


def test_settler_cannot_use_an_allowance_given_to_another_settler(net: Net) -> None:
    honest_gateway = Party(901)
    net.c.grant_role(honest_gateway.address, 1)
    node = net.node()
    victim = net.user(cap=10_000, settler=honest_gateway.address)
    net.settle([net.receipt(node, victim, fee=1000)])  # the owner's settler role
    assert spendable(net, victim.address) == 10_000


def test_settler_cannot_forge_an_allowance(net: Net) -> None:
    victim = Party(902)
    attacker = Party(903)
    allowance = {"user": victim.address, "settler": net.owner, "capPerEpoch": 10**18,
                 "expiry": boa.env.timestamp + 10**6, "nonce": 1}
    with boa.reverts("bad allowance signature"):
        net.c.set_allowance(tuple(allowance.values()), net.sign(attacker, "Allowance", allowance))


def test_settler_cannot_replay_or_shrink_an_allowance_to_take_more(net: Net) -> None:
    victim = net.user(cap=100)
    old = {"user": victim.address, "settler": net.owner, "capPerEpoch": 100,
           "expiry": boa.env.timestamp + 10**6, "nonce": net.nonce}
    with boa.reverts("allowance nonce too low"):
        net.c.set_allowance(tuple(old.values()), net.sign(victim, "Allowance", old))


def test_settler_cannot_settle_receipts_it_did_not_commit(net: Net) -> None:
    node = net.node()
    user = net.user()
    committed = [net.receipt(node, user, fee=10)]
    e = net.commit(committed)
    swapped = [net.receipt(node, user, fee=5000)]
    with boa.reverts("receipts differ from commitment"):
        net.c.settle_epoch(e, [r.args() for r in swapped])


def test_settler_cannot_settle_an_epoch_twice_or_a_receipt_twice(net: Net) -> None:
    node = net.node()
    user = net.user()
    r = net.receipt(node, user, fee=100)
    e = net.settle([r])
    with boa.reverts("epoch already settled"):
        net.c.settle_epoch(e, [r.args()])
    with boa.reverts("epoch already committed"):
        net.c.commit_epoch(e, net.root([r]), 1)
    # The same receipt listed twice in one epoch is refused (digests strictly increasing).
    boa.env.time_travel(seconds=EPOCH)
    twice = [r, r]
    with boa.reverts("receipt outside its epoch"):
        net.settle(twice)


def test_settler_cannot_list_a_receipt_twice_in_its_epoch(net: Net) -> None:
    node = net.node()
    user = net.user()
    r = net.receipt(node, user, fee=100)
    net.c.commit_epoch(net.epoch(), net.root([r, r]), 2)
    boa.env.time_travel(blocks=2)
    with boa.reverts("receipts not in digest order"):
        net.c.settle_epoch(net.epoch(), [r.args(), r.args()])


def test_settler_cannot_commit_a_future_or_stale_epoch(net: Net) -> None:
    e = net.epoch()
    with boa.reverts("epoch in the future"):
        net.c.commit_epoch(e + 1, b"\x00" * 32, 0)
    boa.env.time_travel(seconds=3 * EPOCH)
    with boa.reverts("commit window closed"):
        net.c.commit_epoch(e, b"\x00" * 32, 0)


def test_settler_cannot_credit_the_zero_address(net: Net) -> None:
    user = net.user()
    zero = Party(904)
    zero.address = "0x" + "00" * 20
    with boa.reverts("zero address in receipt"):
        net.settle([net.receipt(zero, user)])


def test_settler_cannot_choose_which_receipts_are_challenged(settlement_deployer: Any) -> None:
    """At 50% the beacon (a block hash after the commit) decides; recomputed, it agrees."""
    from verinfer.protocol.challenge import is_challenged

    boa.env.timestamp = 1_000_000
    net = deploy(settlement_deployer, with_params(challenge_ppm=500_000))
    node = net.node()
    user = net.user(cap=10**6)
    receipts = net.ordered([net.receipt(node, user, fee=1) for _ in range(16)])
    e = net.settle(receipts)
    beacon = bytes(net.c.commitments(net.owner, e)[3])
    assert beacon != b"\x00" * 32
    opened = [net.c.case_of(e, net.digest(r.message()))[0] == OPEN for r in receipts]
    expected = [is_challenged(net.digest(r.message()), beacon, 500_000) for r in receipts]
    assert opened == expected and 0 < sum(opened) < 16


def test_settler_cannot_pass_a_challenge_with_its_own_verdicts(challenging: Net) -> None:
    net = challenging
    node, validator = net.node(), net.node()
    user = net.user()
    r = net.receipt(node, user)
    e = net.settle([r])
    settler_key = Party(905)  # not a staked node: never drawn
    with boa.reverts("not drawn by the sortition"):
        net.evidence(PASS, e, r, [validator, settler_key])


# ---------------------------------------------------------------- arbitrators


def test_a_single_arbitrator_cannot_take_a_wei(challenging: Net) -> None:
    net = challenging
    honest, judge = net.node(), net.node()
    user = net.user()
    r = net.receipt(honest, user)
    e = net.settle([r])
    before = spendable(net, judge.address)
    with boa.reverts("too few verdicts"):
        net.evidence(ACCUSE, e, r, [judge], signer=honest, valid=False)
    assert spendable(net, judge.address) == before
    assert net.c.stakes(honest.address) == 2000


def test_a_framing_committee_not_drawn_by_the_rules_is_refused(settlement_deployer: Any) -> None:
    boa.env.timestamp = 1_000_000
    # Expected committee of 1 among 8 equal stakes: most nodes are not drawn for a receipt.
    net = deploy(settlement_deployer, with_params(challenge_ppm=1_000_000), (255, 2, 1, 3))
    honest = net.node()
    others = [net.node() for _ in range(8)]
    user = net.user()
    r = net.receipt(honest, user)
    e = net.settle([r])
    beacon = bytes(net.c.commitments(net.owner, e)[3])
    digest = net.digest(r.message())
    total = int(net.c.commitments(net.owner, e)[4])
    undrawn = [p for p in others if not is_drawn(ARBITRATOR_TAG, beacon, digest,
                                                 p.address.lower(), 2000, total, 1)]
    assert len(undrawn) >= 3
    with boa.reverts("not drawn by the sortition"):
        net.evidence(ACCUSE, e, r, undrawn[:3], signer=honest, valid=False)


def test_stake_bonded_after_the_commit_does_not_buy_a_seat(challenging: Net) -> None:
    net = challenging
    honest = net.node()
    user = net.user()
    r = net.receipt(honest, user)
    receipts = net.ordered([r])
    e = net.commit(receipts)
    late = [net.node() for _ in range(3)]  # staked after the commit
    net.c.settle_epoch(e, [x.args() for x in receipts])
    with boa.reverts("not drawn by the sortition"):
        net.evidence(ACCUSE, e, r, late, signer=honest, valid=False)


def test_an_accusation_needs_the_accused_own_signed_receipt(challenging: Net) -> None:
    net = challenging
    honest = net.node()
    judges = [net.node() for _ in range(3)]
    user = net.user()
    r = net.receipt(honest, user)
    e = net.settle([r])
    forger = Party(906)
    with boa.reverts("bad receipt signature"):
        net.evidence(ACCUSE, e, r, judges, signer=forger, valid=False)


def test_a_framed_node_wins_its_appeal_and_the_framers_pay(challenging: Net) -> None:
    net = challenging
    honest = net.node()
    framers = [net.node() for _ in range(3)]
    witnesses = [net.node() for _ in range(4)]
    user = net.user()
    r = net.receipt(honest, user)
    e = net.settle([r])
    digest = net.digest(r.message())
    net.evidence(ACCUSE, e, r, framers, signer=honest, valid=False)
    assert net.c.case_of(e, digest)[0] == ACCUSED
    with boa.reverts("appeal window open"):
        net.c.finalize(e, digest)
    with boa.reverts("appeal needs more arbitrators"):
        net.evidence(APPEAL, e, r, witnesses[:3])
    net.evidence(APPEAL, e, r, witnesses)
    assert net.c.case_of(e, digest)[0] == CLEARED
    assert net.c.stakes(honest.address) == 2000
    assert all(net.c.stakes(f.address) == 1500 for f in framers)
    conserved(net)


def test_a_cheating_asserter_is_slashed_after_the_appeal_window(challenging: Net) -> None:
    net = challenging
    cheat = net.node()
    judges = [net.node() for _ in range(3)]
    user = net.user()
    r = net.receipt(cheat, user, fee=100)
    e = net.settle([r])
    digest = net.digest(r.message())
    assert spendable(net, user.address) == 10_000 - 100  # escrowed
    net.evidence(ACCUSE, e, r, judges, signer=cheat, logits=b"\x99" * 32)
    boa.env.time_travel(seconds=PARAMS.appeal_window + 1)
    net.c.finalize(e, digest)
    assert net.c.case_of(e, digest)[0] == SLASHED
    assert net.c.stakes(cheat.address) == 2000 - PARAMS.slash
    # Fee back plus up to the fee again; the arbitrators share half the rest.
    assert spendable(net, user.address) == 10_000 + 100
    share = (PARAMS.slash - 100) * PARAMS.challenger_share_bps // 10_000 // 3
    assert all(spendable(net, j.address) == share for j in judges)
    conserved(net)


WRONG_VERDICT = 3


def test_a_validator_who_vouched_for_a_cheat_is_slashed_once(challenging: Net) -> None:
    net = challenging
    cheat = net.node()
    judges = [net.node() for _ in range(3)]
    voucher = net.node()
    user = net.user()
    r = net.receipt(cheat, user, fee=100)
    e = net.settle([r])
    digest = net.digest(r.message())
    with boa.reverts("no arbitration outcome"):  # open: nothing is decided yet
        net.evidence(WRONG_VERDICT, e, r, [voucher])
    net.evidence(ACCUSE, e, r, judges, signer=cheat, logits=b"\x99" * 32)
    with boa.reverts("no arbitration outcome"):  # accused: it may still be appealed
        net.evidence(WRONG_VERDICT, e, r, [voucher])
    boa.env.time_travel(seconds=PARAMS.appeal_window + 1)
    net.c.finalize(e, digest)
    treasury = net.c.treasury()
    net.evidence(WRONG_VERDICT, e, r, [voucher])  # it signed "valid" on the cheat
    assert net.c.stakes(voucher.address) == 2000 - PARAMS.slash
    assert net.c.treasury() == treasury + PARAMS.slash
    assert net.c.reputation(voucher.address)[3] == 1
    with boa.reverts("verdict already slashed"):
        net.evidence(WRONG_VERDICT, e, r, [voucher])
    with boa.reverts("verdict against the claim"):  # the arbitrators' verdicts stand
        net.evidence(WRONG_VERDICT, e, r, [judges[0]], logits=b"\x99" * 32)
    conserved(net)


def test_a_validator_who_accused_an_honest_node_is_slashed_after_the_appeal(
        challenging: Net) -> None:
    net = challenging
    honest = net.node()
    framers = [net.node() for _ in range(3)]
    witnesses = [net.node() for _ in range(4)]
    liar = net.node()
    user = net.user()
    r = net.receipt(honest, user)
    e = net.settle([r])
    net.evidence(ACCUSE, e, r, framers, signer=honest, valid=False)
    net.evidence(APPEAL, e, r, witnesses)
    net.evidence(WRONG_VERDICT, e, r, [liar], valid=False)
    assert net.c.stakes(liar.address) == 2000 - PARAMS.slash
    with boa.reverts("verdict against the claim"):  # an agreeing verdict was right
        net.evidence(WRONG_VERDICT, e, r, witnesses[:1])
    conserved(net)


def test_a_pass_quorum_cannot_slash_a_dissenting_validator(challenging: Net) -> None:
    net = challenging
    node = net.node()
    passers = [net.node() for _ in range(2)]
    dissenter = net.node()
    user = net.user()
    r = net.receipt(node, user)
    e = net.settle([r])
    net.evidence(PASS, e, r, passers)
    with boa.reverts("no arbitration outcome"):
        net.evidence(WRONG_VERDICT, e, r, [dissenter], valid=False)
    assert net.c.stakes(dissenter.address) == 2000


# ---------------------------------------------------------------- nodes


def test_a_node_with_an_open_challenge_cannot_leave(challenging: Net) -> None:
    net = challenging
    node = net.node()
    user = net.user()
    net.settle([net.receipt(node, user)])
    with boa.reverts("open challenge"):
        net.c.unstake(2000, sender=node.address)


def test_unstaking_does_not_escape_a_slash(challenging: Net) -> None:
    net = challenging
    cheat = net.node()
    judges = [net.node() for _ in range(3)]
    net.c.unstake(1900, sender=cheat.address)  # before the epoch: still slashable
    user = net.user()
    r = net.receipt(cheat, user)
    e = net.settle([r])
    net.evidence(ACCUSE, e, r, judges, signer=cheat, valid=False)
    boa.env.time_travel(seconds=PARAMS.appeal_window + 1)
    with boa.reverts("withdrawal not due"):
        net.c.withdraw(1900, sender=cheat.address)
    net.c.finalize(e, net.digest(r.message()))
    assert net.c.stakes(cheat.address) + net.c.unbonding(cheat.address)[0] == 2000 - 500
    conserved(net)


def test_a_slash_beyond_what_is_left_takes_what_is_left(settlement_deployer: Any) -> None:
    boa.env.timestamp = 1_000_000
    net = deploy(settlement_deployer, with_params(challenge_ppm=1_000_000, min_stake=100,
                                                  slash=100))
    cheat = net.node(stake=100)
    judges = [net.node() for _ in range(3)]
    user = net.user()
    r1, r2 = net.receipt(cheat, user), net.receipt(cheat, user)
    e = net.settle([r1, r2])
    for r in (r1, r2):
        net.evidence(ACCUSE, e, r, judges, signer=cheat, valid=False)
    boa.env.time_travel(seconds=PARAMS.appeal_window + 1)
    net.c.finalize(e, net.digest(r1.message()))
    net.c.finalize(e, net.digest(r2.message()))  # nothing left: no revert
    assert net.c.stakes(cheat.address) == 0
    conserved(net)


def test_a_node_registers_once_per_key(net: Net) -> None:
    node = net.node()
    with boa.reverts("already registered"):
        net.c.register("http://elsewhere", sender=node.address)


# ---------------------------------------------------------------- users


def test_a_user_cannot_escape_paying_by_withdrawing(net: Net) -> None:
    node = net.node()
    user = net.user(deposit=1000)
    r = net.receipt(node, user, fee=1000)
    net.c.request_withdrawal(1000, sender=user.address)
    with boa.reverts("withdrawal not due"):
        net.c.withdraw(1000, sender=user.address)
    net.settle([r])  # served before; settled while the withdrawal waits
    boa.env.time_travel(seconds=PARAMS.withdrawal_delay)
    with boa.reverts("insufficient balance"):
        net.c.withdraw(1000, sender=user.address)
    assert net.c.balances(node.address) == 900


def test_one_users_shortfall_does_not_revert_the_batch(net: Net) -> None:
    node = net.node()
    broke = net.user(deposit=10)
    payer = net.user(deposit=1000)
    net.settle([net.receipt(node, broke, fee=100), net.receipt(node, payer, fee=100)])
    assert net.c.unpaid(broke.address) == 90
    assert spendable(net, payer.address) == 900
    assert net.c.balances(node.address) == 9 + 90  # paid what was collected, less the cut


def test_a_user_cannot_escape_paying_by_moving_to_another_settler(net: Net) -> None:
    node = net.node()
    other_gateway = Party(904)
    start = int(net.c.GENESIS()) + net.epoch() * EPOCH
    user = net.user(deposit=1000, cap=1000, expiry=start + EPOCH - 1)
    served = net.receipt(node, user, fee=100)
    boa.env.time_travel(seconds=EPOCH)  # the allowance expired; the user moves on
    net.allow(user, cap=1000, settler=other_gateway.address)
    assert net.c.allowance_of(user.address) == (other_gateway.address, 1000,
                                                boa.env.timestamp + 10**6)
    net.settle([served], epoch=net.epoch() - 1)  # served under the old grant: paid
    assert spendable(net, user.address) == 900
    # The old grant covers no epoch that began after it expired.
    net.settle([net.receipt(node, user, fee=100)])
    assert spendable(net, user.address) == 900
    assert net.c.unpaid(user.address) == 100


def test_a_user_cannot_shrink_its_allowance_before_it_expires(net: Net) -> None:
    user = net.user(cap=1000)
    with boa.reverts("allowance can only grow until it expires"):
        net.allow(user, cap=0)


# ---------------------------------------------------------------- treasury and rewards


def test_a_pass_with_an_empty_treasury_pays_what_it_can(challenging: Net) -> None:
    net = challenging
    node = net.node()
    validators = [net.node() for _ in range(2)]
    user = net.user()
    r = net.receipt(node, user, fee=100)
    e = net.settle([r])
    assert net.c.treasury() == 0
    net.evidence(PASS, e, r, validators)
    assert net.c.case_of(e, net.digest(r.message()))[0] == PASSED
    # The fee less the cut, then R_A from the only money the treasury had (that cut); the
    # validators' rewards and the discount go unpaid instead of reverting.
    assert net.c.balances(node.address) == 90 + 10
    assert net.c.treasury() == 0
    assert all(net.c.balances(v.address) == 0 for v in validators)
    conserved(net)


def test_a_challenge_nobody_answers_lapses_into_a_plain_fee(challenging: Net) -> None:
    net = challenging
    node = net.node()
    user = net.user()
    r = net.receipt(node, user, fee=100)
    e = net.settle([r])
    digest = net.digest(r.message())
    with boa.reverts("deadline not passed"):
        net.c.finalize(e, digest)
    boa.env.time_travel(seconds=PARAMS.challenge_window + 1)
    net.c.finalize(e, digest)
    assert net.c.case_of(e, digest)[0] == LAPSED
    assert net.c.balances(node.address) == 90
    with boa.reverts("nothing to finalize"):
        net.c.finalize(e, digest)


# ---------------------------------------------------------------- batched passes
# `pass_challenges` carries many passes in one transaction. Each case must be checked as
# strictly as alone, and a batch is all or nothing: in every attack below the bad case comes
# last, after good ones that would have been paid had the batch not reverted whole.


def batch_world(net: Net) -> tuple[int, list[Any], list[Party], Party]:
    """Three challenged receipts of one epoch by one asserter, three validators, a funded
    treasury: (epoch, receipts, validators, asserter)."""
    node = net.node()
    validators = [net.node() for _ in range(3)]
    user = net.user()
    net.c.fund_treasury(value=10_000)
    receipts = [net.receipt(node, user, fee=100) for _ in range(3)]
    return net.settle(receipts), receipts, validators, node


def ledger(net: Net, epoch: int, receipts: list[Any]) -> tuple[Any, ...]:
    parties = [p.address for p in net.nodes + net.users]
    return (tuple(net.c.balances(a) for a in parties), net.c.treasury(), net.c.escrow_total(),
            tuple(tuple(net.c.reputation(a)) for a in parties),
            tuple(net.c.case_of(epoch, net.digest(r.message()))[0] for r in receipts))


def refused_whole(net: Net, epoch: int, receipts: list[Any], cases: list[Any], reason: str,
                  sender: str | None = None) -> None:
    before = ledger(net, epoch, receipts)
    with boa.reverts(reason):
        net.pass_batch(epoch, cases, sender=sender)
    assert ledger(net, epoch, receipts) == before
    assert all(net.c.case_of(epoch, net.digest(r.message()))[0] == OPEN for r in receipts)
    conserved(net)


def test_a_batch_pays_each_pass_exactly_as_alone(settlement_deployer: Any) -> None:
    boa.env.timestamp = 1_000_000
    worlds = [deploy(settlement_deployer, with_params(challenge_ppm=1_000_000))
              for _ in range(2)]
    outcomes = []
    for batched, net in zip((False, True), worlds, strict=True):
        e, receipts, validators, _ = batch_world(net)
        judges = [validators[:2], validators[1:], validators]
        if batched:
            net.pass_batch(e, [net.pass_case(r, j) for r, j in zip(receipts, judges, strict=True)])
        else:
            for r, j in zip(receipts, judges, strict=True):
                net.evidence(PASS, e, r, j)
        outcomes.append(ledger(net, e, receipts))
        conserved(net)
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][-1] == (PASSED, PASSED, PASSED)


def test_a_batch_cannot_pass_one_case_twice(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, _ = batch_world(net)
    r = receipts[0]
    twice = [net.pass_case(r, validators[:2]), net.pass_case(r, validators[1:])]
    refused_whole(net, e, receipts, twice, "wrong challenge state")
    net.pass_batch(e, twice[:1])  # alone, once: paid
    with boa.reverts("wrong challenge state"):
        net.pass_batch(e, twice[1:])


def test_a_batch_cannot_carry_a_case_of_another_epoch(challenging: Net) -> None:
    net = challenging
    node, validators, user = net.node(), [net.node() for _ in range(2)], net.user()
    boa.env.time_travel(seconds=EPOCH)
    earlier = net.receipt(node, user, epoch=net.epoch() - 1)
    e0 = net.settle([earlier], epoch=net.epoch() - 1)  # within its commit grace
    current = net.receipt(node, user)
    e1 = net.settle([current])
    assert e0 != e1
    both = [net.pass_case(current, validators), net.pass_case(earlier, validators)]
    refused_whole(net, e1, [current], both, "no challenge")
    refused_whole(net, e0, [earlier], both[::-1], "no challenge")
    net.pass_batch(e0, both[1:])
    net.pass_batch(e1, both[:1])


def test_a_batch_cannot_carry_verdicts_for_another_gateway(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, _ = batch_world(net)
    elsewhere = Party(906)
    cases = [net.pass_case(receipts[0], validators[:2]),
             net.pass_case(receipts[1], validators[:2], gateway=elsewhere.address)]
    refused_whole(net, e, receipts, cases, "verdict names another gateway")


def test_a_batch_cannot_carry_a_verdict_of_a_non_member(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, node = batch_world(net)
    outsider = Party(907)  # holds a key, never staked: never drawn
    cases = [net.pass_case(receipts[0], validators[:2]),
             net.pass_case(receipts[1], [validators[0], outsider])]
    refused_whole(net, e, receipts, cases, "not drawn by the sortition")
    cases[1] = net.pass_case(receipts[1], [validators[0], node])
    refused_whole(net, e, receipts, cases, "asserter in committee")


def test_a_batch_cannot_pass_a_case_past_its_deadline(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, _ = batch_world(net)
    cases = [net.pass_case(r, validators[:2]) for r in receipts]
    boa.env.time_travel(seconds=PARAMS.challenge_window + 1)
    refused_whole(net, e, receipts, cases, "deadline passed")


def test_a_batch_cannot_pass_on_too_few_or_disagreeing_verdicts(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, _ = batch_world(net)
    good = net.pass_case(receipts[0], validators[:2])
    refused_whole(net, e, receipts, [good, net.pass_case(receipts[1], validators[:1])],
                  "too few verdicts")
    refused_whole(net, e, receipts, [good, net.pass_case(receipts[1], validators[:2],
                                                         logits=b"\x09" * 32)],
                  "verdict against the claim")
    forged = net.pass_case(receipts[1], validators[:2])
    forged[2][1] = forged[2][0]  # validator 1's verdict under validator 0's signature
    refused_whole(net, e, receipts, [good, forged], "bad verdict signature")


def test_a_batch_cannot_pass_an_accused_case(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, node = batch_world(net)
    net.evidence(ACCUSE, e, receipts[1], validators, signer=node, valid=False)
    cases = [net.pass_case(receipts[0], validators[:2]), net.pass_case(receipts[1], validators[:2])]
    before = ledger(net, e, receipts)
    with boa.reverts("wrong challenge state"):
        net.pass_batch(e, cases)
    assert ledger(net, e, receipts) == before


def test_an_empty_or_paused_batch_is_refused(challenging: Net) -> None:
    net = challenging
    e, receipts, validators, _ = batch_world(net)
    with boa.reverts("no evidence"):
        net.pass_batch(e, [])
    net.c.pause()
    refused_whole(net, e, receipts, [net.pass_case(receipts[0], validators[:2])], "paused")


# ---------------------------------------------------------------- pauser


def test_a_pauser_cannot_lock_stakes_forever(net: Net) -> None:
    node = net.node()
    net.c.unstake(2000, sender=node.address)
    net.c.pause()
    boa.env.time_travel(seconds=MAX_PAUSE)  # the pause ran out on its own
    assert not net.c.paused()
    with boa.reverts("pause cooldown"):
        net.c.pause()
    boa.env.time_travel(seconds=PARAMS.unbonding_delay)
    net.c.withdraw(2000, sender=node.address)
    assert net.c.unbonding(node.address)[0] == 0


def test_the_unbonding_clock_stops_while_paused(net: Net) -> None:
    node = net.node()
    net.c.unstake(2000, sender=node.address)
    net.c.pause()
    boa.env.time_travel(seconds=PARAMS.unbonding_delay)
    net.c.unpause()
    with boa.reverts("withdrawal not due"):
        net.c.withdraw(2000, sender=node.address)


def test_a_pauser_cannot_move_money(net: Net) -> None:
    pauser = Party(907)
    net.c.grant_role(pauser.address, 2)
    user = net.user(deposit=500)
    net.c.pause(sender=pauser.address)
    for action in (lambda: net.c.commit_epoch(net.epoch(), b"\x00" * 32, 0, sender=pauser.address),
                   lambda: net.c.withdraw(1, sender=pauser.address)):
        with pytest.raises(boa.BoaError):
            action()
    assert spendable(net, user.address) == 500


# ---------------------------------------------------------------- owner


def test_the_owner_cannot_change_parameters_of_an_inflight_epoch(challenging: Net) -> None:
    net = challenging
    cheat = net.node()
    judges = [net.node() for _ in range(3)]
    user = net.user()
    r = net.receipt(cheat, user)
    e = net.settle([r])
    net.evidence(ACCUSE, e, r, judges, signer=cheat, valid=False)
    net.c.propose_params(params_tuple(with_params(slash=2000, min_stake=2000)))
    assert net.c.params()[5] == PARAMS.slash  # not before the delay
    boa.env.time_travel(seconds=PARAMS_DELAY)
    assert net.c.params()[5] == 2000
    net.c.finalize(e, net.digest(r.message()))
    assert net.c.stakes(cheat.address) == 2000 - PARAMS.slash  # the epoch's own slash


def test_ownership_moves_in_two_steps_with_the_roles(net: Net) -> None:
    heir, thief = Party(908), Party(909)
    net.c.transfer_ownership(heir.address)
    with boa.reverts("not the pending owner"):
        net.c.accept_ownership(sender=thief.address)
    net.c.accept_ownership(sender=heir.address)
    assert net.c.owner() == heir.address
    assert net.c.roles(heir.address) == 3 and net.c.roles(net.owner) == 0


def test_the_owner_has_no_function_that_moves_a_balance(net: Net) -> None:
    money_movers = {"withdraw", "settle_epoch", "submit_evidence", "finalize"}
    owner_only = {"propose_params", "transfer_ownership", "grant_role", "revoke_role"}
    abi_names = {f["name"] for f in compiled()[0] if f.get("type") == "function"}
    assert owner_only <= abi_names and money_movers <= abi_names
    user = net.user(deposit=700)
    with boa.reverts("withdrawal not due"):
        net.c.withdraw(700, sender=net.owner)
    assert spendable(net, user.address) == 700
