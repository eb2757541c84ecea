"""Writes settlement-v1.json: hand-written cases for every rule and revert, plus generated ones.

Run from the repository root: `PYTHONPATH=src python tests/vectors/protocol/make_settlement_vectors.py`.
The committed JSON is the truth; this script only records how it was made. Expected states come
from `verinfer.protocol.settlement`; the hand-written cases' figures are also asserted by hand in
tests/protocol/test_settlement.py, and the generated ones are a deterministic function of a seed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from verinfer.protocol.settlement import SettlementParams
from verinfer.protocol.settlement_codec import (
    params_to_json,
    run_operations,
    setup_operations,
    state_from_json,
    state_to_json,
)

OUT = Path(__file__).with_name("settlement-v1.json")


def addr(tag: int, index: int) -> str:
    """Readable address: 0x<tag><36 zeros><index>, e.g. users 0x0a..01, nodes 0x0b..01."""
    return f"0x{tag:02x}" + "00" * 18 + f"{index:02x}"


U1, U2 = addr(0x0A, 1), addr(0x0A, 2)
A, B, C, D, E = (addr(0x0B, i) for i in range(1, 6))
ROOT = "0x" + "11" * 32

PARAMS = SettlementParams(
    min_stake=1000, unbonding_delay=100, reward_asserter=10, reward_validators=9, slash=500,
    protocol_fee_bps=1000, discount_bps=5000, challenger_share_bps=5000,
).validate()


def settle(epoch: int, requests: list[tuple[str, str, int]] = (),  # type: ignore[assignment]
           challenges: list[dict[str, Any]] = (),  # type: ignore[assignment]
           revert: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"op": "settle", "batch": {
        "epoch": epoch, "receipts_root": ROOT,
        "requests": [{"user": u, "asserter": a, "fee": f} for u, a, f in requests],
        "challenges": list(challenges)}}
    if revert:
        op["revert"] = revert
    return op


def ch(user: str, asserter: str, fee: int, validators: list[str], outcome: str,
       faulty: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"user": user, "asserter": asserter, "fee": fee, "validators": list(validators),
            "outcome": outcome, "faulty_validators": list(faulty)}


def op(kind: str, revert: str | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"op": kind, **kw}
    if revert:
        out["revert"] = revert
    return out


NODES = {A: {"stake": 1000}, B: {"stake": 1000}, C: {"stake": 1000}, D: {"stake": 1000}}


def initial(users: dict[str, int] | None = None, nodes: dict[str, dict[str, int]] | None = None,
            treasury: int = 0) -> dict[str, Any]:
    nodes = NODES if nodes is None else nodes
    balance = dict(users or {})
    for n, v in nodes.items():
        if v.get("balance"):
            balance[n] = v["balance"]
    return {"balance": balance, "stake": {n: v["stake"] for n, v in nodes.items() if v["stake"]},
            "treasury": treasury}


HAND: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = [
    ("deposit-withdraw", "funds in and out of a balance", initial({}, {}),
     [op("deposit", address=U1, amount=100), op("withdraw", address=U1, amount=40, time=0)]),
    ("withdraw-too-much", "withdrawing more than the balance reverts", initial({U1: 100}, {}),
     [op("withdraw", "insufficient balance", address=U1, amount=101, time=0),
      op("withdraw", address=U1, amount=100, time=0)]),
    ("zero-amounts", "every zero amount reverts", initial({U1: 100}, {A: {"stake": 1000}}),
     [op("deposit", "zero amount", address=U1, amount=0),
      op("fund_treasury", "zero amount", amount=0),
      op("stake", "zero amount", node=A, amount=0),
      op("unstake", "zero amount", node=A, amount=0, time=0),
      op("withdraw", "zero amount", address=U1, amount=0, time=0)]),
    ("fund-treasury", "funds in to the treasury", initial({}, {}),
     [op("fund_treasury", amount=700)]),
    ("stake-from-balance", "staking takes the node's balance; not more",
     initial({}, {A: {"stake": 0, "balance": 1500}}),
     [op("stake", node=A, amount=1000), op("stake", "insufficient balance", node=A, amount=501),
      op("stake", node=A, amount=500)]),
    ("unbonding-delay", "unstaked funds are withdrawable only at release time",
     initial({}, {A: {"stake": 1000}}),
     [op("unstake", "insufficient stake", node=A, amount=1001, time=0),
      op("unstake", node=A, amount=400, time=50),
      op("withdraw", "insufficient balance", address=A, amount=400, time=149),
      op("withdraw", address=A, amount=300, time=150)]),
    ("unstake-restarts-clock", "a second unstake restarts the clock for the whole amount",
     initial({}, {A: {"stake": 1000}}),
     [op("unstake", node=A, amount=200, time=0), op("unstake", node=A, amount=300, time=80),
      op("withdraw", "insufficient balance", address=A, amount=200, time=100),
      op("withdraw", address=A, amount=500, time=180)]),
    ("withdraw-revert-undoes-release", "a reverted withdrawal leaves the stake unbonding",
     initial({}, {A: {"stake": 1000}}),
     [op("unstake", node=A, amount=200, time=0),
      op("withdraw", "insufficient balance", address=A, amount=201, time=100)]),
    ("request-fee-split", "fee 100 at 10%: 90 to the asserter, 10 to the treasury",
     initial({U1: 300}),
     [settle(1, [(U1, A, 100), (U1, B, 100)])]),
    ("request-insufficient-balance", "one unpaid request reverts the whole batch",
     initial({U1: 150}),
     [settle(1, [(U1, A, 100), (U1, B, 100)], revert="insufficient balance"),
      settle(1, [(U1, A, 100)])]),
    ("epoch-already-settled", "an epoch settles once", initial({U1: 300}),
     [settle(7, [(U1, A, 100)]), settle(7, [(U1, A, 100)], revert="epoch already settled")]),
    ("passed", "PASSED: R_A 10, R_V 9 / 3 = 3 each, discount 50 of fee 100",
     initial({U1: 100}, treasury=1000),
     [settle(1, [(U1, A, 100)], [ch(U1, A, 100, [B, C, D], "PASSED")])]),
    ("passed-dust", "R_V 9 / 2 = 4 each; the odd wei stays in the treasury",
     initial({U1: 100}, treasury=1000),
     [settle(1, [], [ch(U1, A, 100, [B, C], "PASSED")])]),
    ("passed-insufficient-treasury", "treasury 68 < 10 + 9 + 50 = 69 reverts",
     initial({U1: 100}, treasury=68),
     [settle(1, [], [ch(U1, A, 100, [B, C, D], "PASSED")], revert="insufficient treasury")]),
    ("requests-before-challenges", "the request's cut (10) funds the challenge's payout",
     initial({U1: 100}, treasury=59),
     [settle(1, [(U1, A, 100)], [ch(U1, A, 100, [B, C, D], "PASSED")])]),
    ("asserter-fault", "slash 500: refund 100, share 400*50%/3 = 66 each, treasury 202",
     initial({U1: 100}),
     [settle(1, [(U1, A, 100)], [ch(U1, A, 100, [B, C, D], "ASSERTER_FAULT")])]),
    ("asserter-fault-fee-above-slash", "fee 800 > S: refund 500, nothing left to share",
     initial({U1: 800}),
     [settle(1, [(U1, A, 800)], [ch(U1, A, 800, [B], "ASSERTER_FAULT")])]),
    ("asserter-fault-from-unbonding", "stake 300 + unbonding 700: slash empties stake, then 200",
     initial({}),
     [op("unstake", node=A, amount=700, time=0),
      settle(1, [], [ch(U1, A, 0, [B], "ASSERTER_FAULT")])]),
    ("slash-exceeds-stake", "stake 499 < S: the batch reverts",
     initial({U1: 100}, {A: {"stake": 499}, B: {"stake": 1000}}),
     [settle(1, [(U1, A, 100)], [ch(U1, A, 100, [B], "ASSERTER_FAULT")],
             revert="slash exceeds stake")]),
    ("validator-fault", "one of three validators wrong: slashed 500, 250 to the asserter",
     initial({U1: 100}, treasury=1000),
     [settle(1, [(U1, A, 100)], [ch(U1, A, 100, [B, C, D], "VALIDATOR_FAULT", [C])])]),
    ("validator-fault-unstaked", "a faulty validator without stake reverts the batch",
     initial({U1: 100}, {A: {"stake": 1000}, B: {"stake": 1000}}, treasury=1000),
     [settle(1, [], [ch(U1, A, 100, [B, E], "VALIDATOR_FAULT", [E])],
             revert="slash exceeds stake")]),
    ("validator-fault-payouts-first", "payouts are checked before the slashes refill the treasury",
     initial({U1: 100}, treasury=62),
     [settle(1, [], [ch(U1, A, 100, [B, C, D], "VALIDATOR_FAULT", [B])],
             revert="insufficient treasury")]),
    ("challenge-checks", "malformed challenges revert with their own strings",
     initial({U1: 100}, treasury=1000),
     [settle(1, [], [ch(U1, A, 0, [], "PASSED")], revert="bad validator count"),
      settle(1, [], [ch(U1, A, 0, [addr(0x0C, i) for i in range(17)], "PASSED")],
             revert="bad validator count"),
      settle(1, [], [ch(U1, A, 0, [B, B], "PASSED")], revert="duplicate validator"),
      settle(1, [], [ch(U1, A, 0, [B, C], "VALIDATOR_FAULT", [B, B])],
             revert="duplicate validator"),
      settle(1, [], [ch(U1, A, 0, [A, B], "PASSED")], revert="asserter is validator"),
      settle(1, [], [ch(U1, A, 0, [B, C], "VALIDATOR_FAULT", [D])],
             revert="faulty not a validator"),
      settle(1, [], [ch(U1, A, 0, [B, C], "PASSED", [B])], revert="bad faulty validators"),
      settle(1, [], [ch(U1, A, 0, [B, C], "ASSERTER_FAULT", [B])],
             revert="bad faulty validators"),
      settle(1, [], [ch(U1, A, 0, [B, C], "VALIDATOR_FAULT")], revert="bad faulty validators"),
      settle(1, [], [ch(U1, A, 0, [addr(0x0C, i) for i in range(16)], "PASSED")])]),
    ("reputation", "counters over several epochs: served, challenged, passed, failed",
     initial({U1: 1000}, treasury=1000),
     [settle(1, [(U1, A, 100), (U1, B, 100)], [ch(U1, A, 100, [B], "PASSED")]),
      settle(2, [(U1, A, 100)], [ch(U1, A, 100, [B, C], "ASSERTER_FAULT")]),
      settle(3, [(U1, B, 100)], [ch(U1, B, 100, [C, D], "VALIDATOR_FAULT", [C, D])])]),
]


class _Stream:
    """Deterministic integers from SHA-256 in counter mode, so the file is reproducible anywhere."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter = seed, 0

    def below(self, n: int) -> int:
        self.counter += 1
        digest = hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
        return int.from_bytes(digest, "big") % n

    def pick(self, items: list[Any]) -> Any:
        return items[self.below(len(items))]


def generated_case(index: int) -> tuple[str, str, dict[str, Any], list[dict[str, Any]]]:
    rng = _Stream(b"settlement-v1/" + str(index).encode())
    users = [addr(0x0A, i) for i in range(1, 4)]
    nodes = [addr(0x0B, i) for i in range(1, 7)]
    init = {"balance": {u: 100 * (1 + rng.below(20)) for u in users},
            "stake": {n: 100 * (3 + rng.below(15)) for n in nodes},
            "treasury": 100 * rng.below(10)}
    ops: list[dict[str, Any]] = []
    now, epoch = 0, 0
    for _ in range(12):
        now += rng.below(60)
        kind = rng.pick(["settle"] * 5 + ["deposit", "stake", "unstake", "withdraw",
                                           "withdraw", "fund_treasury"])
        if kind == "deposit":
            ops.append(op("deposit", address=rng.pick(users + nodes), amount=10 * rng.below(50)))
        elif kind == "fund_treasury":
            ops.append(op("fund_treasury", amount=10 * rng.below(50)))
        elif kind == "stake":
            ops.append(op("stake", node=rng.pick(nodes), amount=10 * rng.below(60)))
        elif kind == "unstake":
            ops.append(op("unstake", node=rng.pick(nodes), amount=10 * rng.below(80), time=now))
        elif kind == "withdraw":
            ops.append(op("withdraw", address=rng.pick(users + nodes),
                          amount=10 * rng.below(80), time=now))
        else:
            epoch += 1 + (rng.below(5) == 0)
            epoch -= rng.below(8) == 0  # now and then replay an epoch
            reqs = [(rng.pick(users), rng.pick(nodes), 10 * rng.below(30))
                    for _ in range(rng.below(4))]
            chs = []
            for _ in range(rng.below(3)):
                asserter = rng.pick(nodes)
                others = [n for n in nodes if n != asserter]
                validators = [others.pop(rng.below(len(others))) for _ in range(1 + rng.below(3))]
                outcome = rng.pick(["PASSED", "PASSED", "ASSERTER_FAULT", "VALIDATOR_FAULT"])
                faulty = validators[: 1 + rng.below(len(validators))] \
                    if outcome == "VALIDATOR_FAULT" else []
                chs.append(ch(rng.pick(users), asserter, 10 * rng.below(30), validators, outcome,
                              faulty))
            ops.append(settle(epoch, reqs, chs))
    return f"generated-{index:02d}", "generated from seed settlement-v1/" + str(index), init, ops


def build() -> dict[str, Any]:
    cases = []
    for name, description, init, ops in HAND + [generated_case(i) for i in range(24)]:
        state = state_from_json(init)
        replay = run_operations(state, PARAMS, ops)
        recorded = []
        for operation, revert in zip(ops, replay.reverts, strict=True):
            operation = {k: v for k, v in operation.items() if k != "revert"}
            if revert is not None:
                operation["revert"] = revert
            recorded.append(operation)
        # The hand-written cases state which operations revert; the rules must agree.
        if not name.startswith("generated"):
            wanted = [o.get("revert") for o in ops]
            if wanted != list(replay.reverts):
                raise SystemExit(f"{name}: reverts {replay.reverts} != written {wanted}")
        cases.append({"name": name, "description": description,
                      "params": params_to_json(PARAMS),
                      "initial_state": state_to_json(state),
                      "setup": setup_operations(state),
                      "operations": recorded,
                      "expected_state": state_to_json(replay.state)})
    return {
        "version": 1,
        "spec": "docs/settlement-rules.md",
        "format": (
            "Each case: params; initial_state (balances, stakes, treasury only), reached from an "
            "empty contract by the operations in setup; operations applied in order as separate "
            "transactions, an operation with 'revert' must revert with exactly that string and "
            "change nothing; expected_state after the last operation. Maps omit zero entries: "
            "any address of the case absent from a map holds zero there. Amounts in wei, times "
            "in seconds."
        ),
        "cases": cases,
    }


def main() -> None:
    text = json.dumps(build(), indent=1, sort_keys=False) + "\n"
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            raise SystemExit(f"{OUT} is out of date")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
