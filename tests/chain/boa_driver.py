"""Replays the protocol's plain-data operations as transactions on the contract in titanoboa.

Shared by the conformance test, the money property test and the client-versus-titanoboa test,
so that every one of them drives the contract exactly the way the protocol's vectors describe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import boa

from verinfer.chain.client import batch_args
from verinfer.protocol.settlement import LedgerState, Reputation, Unbonding
from verinfer.protocol.settlement_codec import batch_from_json

FUNDS = 10**30


def _fund(address: str) -> None:
    if boa.env.get_balance(address) < FUNDS // 2:
        boa.env.set_balance(address, FUNDS)


def apply_op(contract: Any, op: Mapping[str, Any], fund: bool = True) -> None:
    """Send one operation as a transaction; raises boa's revert error if it reverts.

    With `fund`, senders are first given ample ether (conformance cases only care about the
    contract); without it, they pay from what they have (the money property test counts it).
    """
    if "time" in op:
        boa.env.timestamp = op["time"]
    kind = op["op"]
    if kind == "deposit":
        if fund:
            _fund(op["address"])
        contract.deposit(value=op["amount"], sender=op["address"])
    elif kind == "fund_treasury":
        if fund:
            _fund(boa.env.eoa)
        contract.fund_treasury(value=op["amount"])
    elif kind == "stake":
        contract.stake(op["amount"], sender=op["node"])
    elif kind == "unstake":
        contract.unstake(op["amount"], sender=op["node"])
    elif kind == "withdraw":
        contract.withdraw(op["amount"], sender=op["address"])
    elif kind == "settle":
        contract.settle_batch(*batch_args(batch_from_json(op["batch"])), sender=boa.env.eoa)
    else:
        raise ValueError(f"unknown operation {kind!r}")


def read_state(contract: Any, addresses: Iterable[str], epochs: Iterable[int]) -> LedgerState:
    """The contract's ledger for `addresses` and `epochs`, in the protocol's own type."""
    balance: dict[str, int] = {}
    stake: dict[str, int] = {}
    unbonding: dict[str, Unbonding] = {}
    reputation: dict[str, Reputation] = {}
    for a in sorted(set(addresses)):
        if b := contract.balances(a):
            balance[a] = b
        if s := contract.stakes(a):
            stake[a] = s
        u = Unbonding(*contract.unbonding(a))
        if u != Unbonding():
            unbonding[a] = u
        r = Reputation(*contract.reputation(a))
        if r != Reputation():
            reputation[a] = r
    roots = {e: bytes(contract.batch_roots(e)) for e in set(epochs) if contract.epoch_settled(e)}
    return LedgerState(balance, stake, unbonding, contract.treasury(), reputation, roots)
