"""The gateway reuses a read of an account's spendable funds for at most SPENDABLE_TTL_S, and
never across a settled epoch: what a settlement debits is seen by the next request."""

from __future__ import annotations

from pathlib import Path

from gateway_fakes import NODES, USER
from test_gateway_http import FakeNode, Network

from verinfer.gateway.service import SPENDABLE_TTL_S
from verinfer.protocol import wire


def counting(net: Network) -> list[str]:
    calls: list[str] = []
    read = net.settler.spendable

    def spendable(user: str) -> int:
        calls.append(user)
        return read(user)

    net.settler.spendable = spendable  # type: ignore[method-assign]
    return calls


def test_reads_are_reused_within_the_ttl_then_read_again(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    calls = counting(net)
    now = [1000.0]
    net.service.clock = lambda: now[0]
    assert net.service.spendable(USER.address) == 10**9
    net.settler.balances[USER.address.lower()] = 5
    now[0] += SPENDABLE_TTL_S / 2
    assert net.service.spendable(USER.address) == 10**9  # reused
    now[0] += SPENDABLE_TTL_S
    assert net.service.spendable(USER.address) == 5  # read again
    assert len(calls) == 2


def test_a_settled_epoch_drops_the_cached_read(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    calls = counting(net)
    net.service.clock = lambda: 1000.0  # the TTL never runs out here
    assert net.service.spendable(USER.address) == 10**9
    net.store.add_receipt(b"\x01" * 32, USER.address, NODES[0].address, 7, {})
    epoch = net.store.close_epoch(wire.receipts_root)
    net.store.mark_committed(epoch.epoch, "0xc0")
    net.store.set_beacon(epoch.epoch, b"\x02" * 32)
    net.store.mark_decided(epoch.epoch)
    net.settler.balances[USER.address.lower()] = 3
    assert net.service.spendable(USER.address) == 10**9  # nothing settled yet: reused
    net.store.mark_settled(epoch.epoch, "0x5e")
    assert net.service.spendable(USER.address) == 3
    assert len(calls) == 2
