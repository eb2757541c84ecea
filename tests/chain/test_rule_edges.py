"""Edges of the rules, run on the contract and on `verinfer.protocol.ledger` alike: fees near
and above 2^256, and a pause nobody ends."""

from __future__ import annotations

from typing import Any

import boa
import pytest
from eth.codecs.abi.exceptions import EncodeError
from v2kit import EPOCH, MAX_PAUSE, PARAMS, Net, deploy

from verinfer.protocol import ledger as rules


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
