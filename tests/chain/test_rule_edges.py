"""Edges of the rules, run on the contract and on `verinfer.protocol.ledger` alike: fees near
and above 2^256, a pause nobody ends; and the commit grace of short epochs."""

from __future__ import annotations

import json
from typing import Any

import boa
import pytest
from eth.codecs.abi.exceptions import EncodeError
from eth_abi import encode as abi_encode
from v2kit import (
    ALL_DRAWN,
    EPOCH,
    MAX_PAUSE,
    PARAMS,
    PARAMS_DELAY,
    Net,
    compiled,
    deploy,
    params_tuple,
)

from verinfer.protocol import ledger as rules
from verinfer.protocol.merkle import merkle_root
from verinfer.protocol.settlement import commit_grace


@pytest.fixture
def net() -> Net:
    boa.env.timestamp = 1_000_000
    return deploy()


def test_fees_near_uint256_saturate_unpaid_on_both(net: Net) -> None:
    node = net.node()
    user = net.user(deposit=100, cap=50)
    model = rules.set_allowance(rules.deposit(rules.Ledger(), user.address, 100), user.address,
                                net.owner, 50, boa.env.timestamp + 10**6, net.nonce,
                                boa.env.timestamp)
    receipts = net.ordered([net.receipt(node, user, fee=rules.UINT256_MAX) for _ in range(2)])
    epoch = net.settle(receipts)  # two shortfalls of ~2^256: no overflow, no revert
    model = rules.settle_epoch(
        model, PARAMS, net.owner, epoch, int(net.c.GENESIS()) + epoch * EPOCH,
        [rules.SettledReceipt(net.digest(r.message()), r.node, r.user, r.fee, False)
         for r in receipts], now=boa.env.timestamp)
    assert net.c.unpaid(user.address) == model.unpaid[user.address] == rules.UINT256_MAX
    assert net.c.balances(user.address) == model.balance[user.address] == 50
    assert net.c.balances(node.address) == model.balance[node.address] == 45


def test_a_fee_above_uint256_is_refused_by_both(net: Net) -> None:
    node = net.node()
    user = net.user()
    receipt = net.receipt(node, user, fee=rules.UINT256_MAX + 1)
    epoch = net.commit([])
    # The contract cannot be handed one: its ABI encoding refuses it before anything is sent.
    with pytest.raises(EncodeError, match="uint256"):
        net.c.settle_epoch(epoch, [receipt.args()])
    assert net.c.balances(user.address) == 10_000
    with pytest.raises(rules.Refused, match="fee above uint256"):
        rules.settle_epoch(rules.Ledger(), PARAMS, net.owner, epoch, 0, [
            rules.SettledReceipt(b"\x01" * 32, receipt.node, receipt.user, receipt.fee, False)],
            now=0)


def test_a_pause_nobody_ends_cannot_lock_stakes_forever_on_both(net: Net) -> None:
    node = net.node(stake=2000)
    wall = boa.env.timestamp
    model: Any = rules.Ledger(pauses=rules.PauseClock(max_pause=MAX_PAUSE))
    model = rules.stake(rules.deposit(model, node.address, 2000), node.address, 2000)
    net.c.unstake(2000, sender=node.address)
    model = rules.unstake(model, PARAMS, node.address, 2000, rules.clock(model, wall))
    assert tuple(net.c.unbonding(node.address))[1] == model.unbonding[node.address].release_time
    boa.env.time_travel(seconds=10)
    net.c.pause()
    model = rules.pause(model, boa.env.timestamp)
    boa.env.time_travel(seconds=PARAMS.unbonding_delay)  # paused: the delay stands still
    with boa.reverts("withdrawal not due"):
        net.c.withdraw(2000, sender=node.address)
    with pytest.raises(rules.Refused, match="withdrawal not due"):
        rules.withdraw(model, node.address, 2000, rules.clock(model, boa.env.timestamp))
    boa.env.time_travel(seconds=MAX_PAUSE)  # the pause ran out; nobody unpaused
    assert not net.c.paused() and not rules.paused(model, boa.env.timestamp)
    net.c.withdraw(2000, sender=node.address)
    model = rules.withdraw(model, node.address, 2000, rules.clock(model, boa.env.timestamp))
    assert net.c.balances(node.address) == model.balance[node.address] == 0


def test_a_short_epoch_can_be_committed_for_a_minute_after_its_end() -> None:
    boa.env.timestamp = 1_000_000
    abi, initcode = compiled()
    args = abi_encode(
        ["(" + ",".join(["uint256"] * 12) + ")", "uint256", "uint256", "uint256", "uint256[4]"],
        [params_tuple(PARAMS), 5, PARAMS_DELAY, MAX_PAUSE, list(ALL_DRAWN)])
    address, computation = boa.env.deploy(bytecode=initcode + args)
    assert not computation.is_error
    c = boa.loads_abi(json.dumps(abi), name="Settlement").at(address)
    grace = commit_grace(5)
    assert grace == 60
    end = int(c.GENESIS()) + 5  # the end of epoch 0
    boa.env.timestamp = end + grace  # a minute after its end: closed
    with boa.reverts("commit window closed"):
        c.commit_epoch(0, b"\x01" * 32, 0)
    boa.env.timestamp = end + grace - 1  # twelve epochs later, still within its grace
    c.commit_epoch(0, merkle_root([]), 0)
    boa.env.time_travel(blocks=2)
    boa.env.timestamp = end + 2 * grace
    with boa.reverts("settlement window closed"):
        c.settle_epoch(0, [])
    boa.env.timestamp = end + 2 * grace - 1
    c.settle_epoch(0, [])
    assert c.commitments(boa.env.eoa, 0)[6]  # settled
