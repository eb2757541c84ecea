"""Plain-data (JSON-ready) encoding of settlement params, states and operations, and their runner.

This is the format of the conformance vectors (`tests/vectors/protocol/settlement-v1.json`):
amounts are integers in wei, addresses lowercase 0x-hex, byte strings 0x-hex, maps omit zeros.
`run_operations` replays a sequence of operations with the functions of `settlement`, the way
a contract test replays them as transactions: a reverted operation changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

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

OPERATIONS = ("deposit", "fund_treasury", "stake", "unstake", "withdraw", "settle")


def params_to_json(params: SettlementParams) -> dict[str, int]:
    """The version 1 keys only: the v1 vectors' accounting does not read the v2 ones."""
    return {f.name: getattr(params, f.name) for f in fields(params) if f.default is MISSING}


def params_from_json(data: Mapping[str, Any]) -> SettlementParams:
    """Params from JSON; the version 2 keys (which have defaults) may be left out."""
    names = {f.name for f in fields(SettlementParams)}
    required = {f.name for f in fields(SettlementParams) if f.default is MISSING}
    if not required <= set(data) <= names:
        raise st.InvalidInput(
            f"settlement params need the keys {sorted(required)} (and may have {sorted(names)})"
        )
    return SettlementParams(**{name: data[name] for name in data})


def state_to_json(state: LedgerState) -> dict[str, Any]:
    return {
        "balance": dict(sorted(state.balance.items())),
        "stake": dict(sorted(state.stake.items())),
        "unbonding": {
            a: {"amount": u.amount, "release_time": u.release_time}
            for a, u in sorted(state.unbonding.items())
        },
        "treasury": state.treasury,
        "reputation": {
            a: {"served": r.served, "challenged": r.challenged, "passed": r.passed,
                "failed": r.failed}
            for a, r in sorted(state.reputation.items())
        },
        "epoch_roots": {str(e): "0x" + root.hex() for e, root in sorted(state.epoch_roots.items())},
    }


def state_from_json(data: Mapping[str, Any]) -> LedgerState:
    return LedgerState(
        balance=dict(data.get("balance", {})),
        stake=dict(data.get("stake", {})),
        unbonding={a: Unbonding(**u) for a, u in data.get("unbonding", {}).items()},
        treasury=data.get("treasury", 0),
        reputation={a: Reputation(**r) for a, r in data.get("reputation", {}).items()},
        epoch_roots={int(e): _bytes(r) for e, r in data.get("epoch_roots", {}).items()},
    )


def setup_operations(initial: LedgerState) -> list[dict[str, Any]]:
    """Operations that build `initial` (balances, stakes, treasury only) from an empty contract."""
    if initial.unbonding or initial.reputation or initial.epoch_roots:
        raise st.InvalidInput("an initial state holds only balances, stakes and a treasury")
    ops: list[dict[str, Any]] = []
    for address in sorted(set(initial.balance) | set(initial.stake)):
        total = initial.balance_of(address) + initial.stake_of(address)
        ops.append({"op": "deposit", "address": address, "amount": total})
        if initial.stake_of(address):
            ops.append({"op": "stake", "node": address, "amount": initial.stake_of(address)})
    if initial.treasury:
        ops.append({"op": "fund_treasury", "amount": initial.treasury})
    return ops


def _bytes(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise st.InvalidInput(f"expected 0x-prefixed hex, got {text!r}")
    return bytes.fromhex(text[2:])


def batch_to_json(batch: Batch) -> dict[str, Any]:
    return {
        "epoch": batch.epoch,
        "receipts_root": "0x" + batch.receipts_root.hex(),
        "requests": [{"user": r.user, "asserter": r.asserter, "fee": r.fee}
                     for r in batch.requests],
        "challenges": [
            {"user": c.user, "asserter": c.asserter, "fee": c.fee,
             "validators": list(c.validators), "outcome": c.outcome.value,
             "faulty_validators": list(c.faulty_validators)}
            for c in batch.challenges
        ],
    }


def batch_from_json(data: Mapping[str, Any]) -> Batch:
    return Batch(
        epoch=data["epoch"],
        receipts_root=_bytes(data["receipts_root"]),
        requests=tuple(RequestEntry(r["user"], r["asserter"], r["fee"]) for r in data["requests"]),
        challenges=tuple(
            ChallengeEntry(
                user=c["user"], asserter=c["asserter"], fee=c["fee"],
                validators=tuple(c["validators"]), outcome=Outcome(c["outcome"]),
                faulty_validators=tuple(c["faulty_validators"]),
            )
            for c in data["challenges"]
        ),
    )


def apply_operation(
    state: LedgerState, params: SettlementParams, op: Mapping[str, Any]
) -> LedgerState:
    """Apply one plain-data operation; raises the rule's `SettlementRevert` if it reverts."""
    kind = op.get("op")
    if kind == "deposit":
        return st.deposit(state, op["address"], op["amount"])
    if kind == "fund_treasury":
        return st.fund_treasury(state, op["amount"])
    if kind == "stake":
        return st.stake_funds(state, op["node"], op["amount"])
    if kind == "unstake":
        return st.unstake(state, params, op["node"], op["amount"], op["time"])
    if kind == "withdraw":
        return st.withdraw(state, op["address"], op["amount"], op["time"])
    if kind == "settle":
        return st.apply_batch(state, params, batch_from_json(op["batch"]))
    raise st.InvalidInput(f"unknown operation {kind!r}; expected one of {OPERATIONS}")


@dataclass(frozen=True)
class Replay:
    """The final state of a replay and, per operation, its revert string (None: it succeeded)."""

    state: LedgerState
    reverts: tuple[str | None, ...]


def run_operations(
    state: LedgerState, params: SettlementParams, ops: Sequence[Mapping[str, Any]]
) -> Replay:
    """Replay `ops` like transactions: a reverted one leaves the state as it was."""
    reverts: list[str | None] = []
    for op in ops:
        try:
            state = apply_operation(state, params, op)
        except st.SettlementRevert as exc:
            reverts.append(str(exc))
        else:
            reverts.append(None)
    return Replay(state, tuple(reverts))
