"""Runner of the settlement v2 conformance vectors over `verinfer.protocol.ledger`.

The format of `tests/vectors/protocol/settlement-v2.json`: parties by name (their addresses are
in the file), times in seconds after the contract's genesis, amounts in wei. A case is a list
of operations, each applied as one transaction at its time `at` (a reverted one changes
nothing, and must revert with exactly its `revert` string), and the state expected after the
last. A contract replays the same operations with real keys and signatures
(`tests/chain/test_settlement_v2_vectors.py`); this module replays them on the rules.

Operations: `deposit`, `fund_treasury`, `stake` (its value deposited first), `unstake`,
`request_withdrawal`, `withdraw`, `allow` (a signed Allowance), `settle` (commit the epoch of
`at`, then settle its receipts: every one challenged or none, per `challenge_ppm`), `pass`,
`accuse`, `appeal` (evidence on a receipt by drawn judges), `pass_batch` (`cases`: passes of
one epoch's receipts in one transaction, all or nothing), `finalize`, `pause`, `unpause`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from verinfer.errors import ProtocolError
from verinfer.protocol import ledger as rules
from verinfer.protocol.settlement import Reputation, SettlementParams, SettlementRevert, Unbonding

VERSION = 2
ZERO = "zero"  # the party name of the zero address
PPM = 1_000_000


class BadVector(ProtocolError):
    """A vector the runner cannot replay (unknown operation, unsupported parameter)."""


def params_from_json(data: Mapping[str, Any]) -> SettlementParams:
    names = [f.name for f in fields(SettlementParams)]
    if set(data) != set(names):
        raise BadVector(f"settlement v2 params need exactly the keys {names}")
    params = SettlementParams(**{n: data[n] for n in names})
    if params.challenge_ppm not in (0, PPM):
        # Which receipts the beacon selects depends on a block hash: a vector fixes all or none.
        raise BadVector("a vector's challenge_ppm is 0 or 1000000")
    return params


def state_to_json(s: rules.Ledger, names: Mapping[str, str], order: list[bytes]
                  ) -> dict[str, Any]:
    """The observable state by party name; maps omit zeros; cases by receipt index."""
    def by_name(table: Mapping[str, int]) -> dict[str, int]:
        return {names[a]: v for a, v in sorted(table.items(), key=lambda kv: names[kv[0]]) if v}

    unbonding = {names[a]: {"amount": u.amount, "release_time": u.release_time}
                 for a, u in sorted(s.unbonding.items(), key=lambda kv: names[kv[0]])
                 if u != Unbonding()}
    reputation = {names[a]: {"served": r.served, "challenged": r.challenged,
                             "passed": r.passed, "failed": r.failed}
                  for a, r in sorted(s.reputation.items(), key=lambda kv: names[kv[0]])
                  if r != Reputation()}
    return {
        "balance": by_name(s.balance), "stake": by_name(s.stake), "unbonding": unbonding,
        "treasury": s.treasury, "escrow": s.escrow(), "unpaid": by_name(s.unpaid),
        "reputation": reputation,
        "cases": {str(i): s.cases[rid].status for i, rid in enumerate(order) if rid in s.cases},
    }


def run_case(case: Mapping[str, Any], parties: Mapping[str, str], genesis: int,
             epoch_seconds: int, max_pause: int) -> tuple[dict[str, Any], list[str | None]]:
    """Replay a case on the rules: the final state and, per operation, its revert or None.
    The rules' clock counts from genesis (allowance expiries in the vectors are timestamps)."""
    params = params_from_json(case["params"])
    address = {name: a.lower() for name, a in parties.items()}
    names = {a: name for name, a in address.items()}
    state = rules.Ledger(pauses=rules.PauseClock(max_pause=max_pause))
    order: list[bytes] = []  # the ids of the case's receipts, by index
    committed: set[int] = set()
    reverts: list[str | None] = []
    wall = 0
    for op in case["operations"]:
        if op["at"] < wall:
            raise BadVector("operations go back in time")
        wall = op["at"]
        step = _operation(op, state, params, address, order, committed, wall,
                          genesis, epoch_seconds)
        try:
            state = step()
            reverts.append(None)
        except (SettlementRevert, rules.Refused) as exc:
            reverts.append(str(exc))
    return state_to_json(state, names, order), reverts


def _operation(op: Mapping[str, Any], s: rules.Ledger, params: SettlementParams,
               address: Mapping[str, str], order: list[bytes],
               committed: set[int], wall: int, genesis: int, epoch_seconds: int
               ) -> Callable[[], rules.Ledger]:
    kind = op["op"]
    now = rules.clock(s, wall)

    def who(key: str = "who") -> str:
        return address[op[key]]

    if kind == "deposit":
        return lambda: rules.deposit(rules.running(s, wall), who(), op["amount"])
    if kind == "fund_treasury":
        return lambda: rules.fund_treasury(rules.running(s, wall), op["amount"])
    if kind == "stake":
        return lambda: rules.stake(
            rules.deposit(rules.running(s, wall), who(), op["amount"]), who(), op["amount"])
    if kind == "unstake":
        return lambda: rules.unstake(s, params, who(), op["amount"], now)
    if kind == "request_withdrawal":
        return lambda: rules.request_withdrawal(s, params, who(), op["amount"], now)
    if kind == "withdraw":
        return lambda: rules.withdraw(s, who(), op["amount"], now)
    if kind == "allow":
        return lambda: rules.set_allowance(s, who("user"), who("settler"), op["cap"],
                                           op["expiry"] - genesis, op["nonce"], wall)
    if kind == "pause":
        return lambda: rules.pause(s, wall)
    if kind == "unpause":
        return lambda: rules.unpause(s, wall)
    if kind == "settle":
        epoch = wall // epoch_seconds
        entries = []
        for r in op["receipts"]:
            rid = bytes.fromhex(r["id"][2:]) if r["id"] else b""
            order.append(rid)
            entries.append(rules.SettledReceipt(rid, address[r["node"]], address[r["user"]],
                                                r["fee"], params.challenge_ppm == PPM))

        def settle() -> rules.Ledger:
            for e in entries:
                if not 0 <= e.fee <= rules.UINT256_MAX:
                    raise rules.Refused("fee above uint256")
            running = rules.running(s, wall)
            if epoch in committed:
                raise rules.Refused("epoch already committed")
            committed.add(epoch)  # the commit stands even when the settlement reverts
            return rules.settle_epoch(running, params, address[op["settler"]],
                                      epoch, epoch * epoch_seconds,
                                      sorted(entries, key=lambda e: e.receipt_id), now)
        return settle
    if kind == "pass_batch":
        batch = [(order[c["receipt"]], [address[j] for j in c["judges"]]) for c in op["cases"]]
        return lambda: rules.pass_challenges(rules.running(s, wall), params, batch, now)
    if kind in ("pass", "accuse", "appeal", "finalize"):
        rid = order[op["receipt"]]
        if kind == "finalize":
            return lambda: rules.finalize(rules.running(s, wall), params, rid, now)
        judges = [address[j] for j in op["judges"]]
        call = {"pass": rules.pass_challenge, "accuse": rules.accuse,
                "appeal": rules.appeal}[kind]
        return lambda: call(rules.running(s, wall), params, rid, judges, now)
    raise BadVector(f"unknown operation {kind!r}")
