"""Gas of an unchallenged request in a 200-request epoch stays within 2x settlement v1's.

The same epoch as `benchmarks/chain.py` (200 users, each with its deposit and allowance, one
receipt each, 8 asserters, nothing challenged), run in titanoboa. Each measured call is made a
transaction of its own as far as gas goes: storage written before it counts as committed and
every slot and account is cold again (EIP-2929 and EIP-2200 from a fresh transaction), and its
21,000 intrinsic gas and calldata are added, so the figure is a receipt's `gasUsed`.
"""

from __future__ import annotations

from typing import Any

import boa
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector
from v2kit import EPOCH, Net, deploy

V1_GAS_200 = 9_986  # settlement v1, per request in a 200-request batch (BENCHMARKS.md)
RECEIPT_ABI = ("(bytes32,bytes32,bytes32,bytes32,uint32,address,address,address,uint256,uint256,"
               "uint64)")


def transaction_gas(net: Net, signature: str, types: list[str], values: list[Any]) -> int:
    data = function_signature_to_4byte_selector(signature) + abi_encode(types, values)
    boa.env.evm.vm.state._account_db.lock_changes()  # a new transaction: all cold, committed
    computation = boa.env.execute_code(to_address=net.c.address, sender=boa.env.eoa, data=data,
                                       gas=30_000_000)
    assert not computation.is_error, computation.error
    return computation.get_gas_used() + 21_000 + sum(16 if b else 4 for b in data)


def test_an_unchallenged_request_costs_at_most_twice_its_v1_gas() -> None:
    # An environment of its own: committing storage between calls drops the test isolation's
    # snapshot of the shared one.
    with boa.swap_env(boa.Env()):
        _measure()


def _measure() -> None:
    boa.env.timestamp = 1_000_000
    net = deploy()
    fee = 10**12
    nodes = [net.node() for _ in range(8)]
    users = [net.user(deposit=10 * fee, cap=10 * fee) for _ in range(200)]
    boa.env.time_travel(seconds=EPOCH)
    epoch = net.epoch()
    receipts = []
    for i, user in enumerate(users):
        r = net.receipt(nodes[i % len(nodes)], user, fee=fee, epoch=epoch)
        r.request = i.to_bytes(32, "big")
        receipts.append(r)
    receipts = net.ordered(receipts)
    gas = transaction_gas(net, "commit_epoch(uint256,bytes32,uint256)",
                          ["uint256", "bytes32", "uint256"],
                          [epoch, net.root(receipts), len(receipts)])
    boa.env.time_travel(blocks=2)
    gas += transaction_gas(net, f"settle_epoch(uint256,{RECEIPT_ABI}[])",
                           ["uint256", f"{RECEIPT_ABI}[]"],
                           [epoch, [r.args() for r in receipts]])
    # Every user paid (the measured path is the one that writes a balance).
    assert all(net.c.balances(u.address) == 9 * fee for u in users)
    per_request = gas / len(receipts)
    assert per_request <= 2 * V1_GAS_200, f"{per_request:,.0f} gas per request"
