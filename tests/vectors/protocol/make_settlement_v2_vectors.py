"""Writes settlement-v2.json: conformance vectors of the settlement rules, version 2.

Hand-written cases, one or more per rule outcome (fees and the protocol cut, caps and
shortfalls, rewards and discounts, an empty treasury, accusations, slashes with a shortfall,
arbitration pay, appeals, lapses, the zero address, fees near and above 2^256, pauses). The
expected states and reverts come from `verinfer.protocol.ledger` (through
`verinfer.protocol.ledger_codec`); `tests/chain/test_settlement_v2_vectors.py` replays every
case on the contract with real keys and signatures and must reach the same. Parties are test
keys (`sha256("verinfer settlement-v2 test key/" + name)`, never holding funds); the receipt
ids are EIP-712 digests under the domain in the file (the contract that `g` deploys first on
chain 1 at `genesis`). Run from the repository root:
`PYTHONPATH=src python tests/vectors/protocol/make_settlement_v2_vectors.py` (`--check`
compares instead of writing). The committed JSON is the truth.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import rlp
from eth_utils import keccak, to_canonical_address, to_checksum_address

from verinfer.protocol import wire
from verinfer.protocol.ledger import UINT256_MAX
from verinfer.protocol.ledger_codec import VERSION, ZERO, run_case
from verinfer.protocol.settlement import SettlementParams

OUT = Path(__file__).with_name("settlement-v2.json")
GENESIS = 1_000_000
EPOCH = 100
MAX_PAUSE = 1000
PARAMS_DELAY = 300
COMMITTEES = (255, 2, 255, 3)  # every staked node is drawn: judges are chosen by the case
CHAIN_ID = 1
PARAMS = SettlementParams(
    min_stake=1000, unbonding_delay=500, reward_asserter=10, reward_validators=9, slash=500,
    protocol_fee_bps=1000, discount_bps=5000, challenger_share_bps=5000, withdrawal_delay=400,
    challenge_ppm=0, challenge_window=50, appeal_window=50,
)
CHALLENGED = replace(PARAMS, challenge_ppm=1_000_000)


def test_key(name: str) -> bytes:
    return hashlib.sha256(b"verinfer settlement-v2 test key/" + name.encode()).digest()


NAMES = ["g", *(f"n{i}" for i in range(6)), *(f"u{i}" for i in range(3))]
PARTIES = {name: wire.address_of(test_key(name)) for name in NAMES} | {ZERO: "0x" + "00" * 20}
CONTRACT = to_checksum_address(keccak(rlp.encode([to_canonical_address(PARTIES["g"]), 0]))[12:])
DOMAIN = wire.Domain(CHAIN_ID, CONTRACT)


class Case:
    """Operations of one case, with a clock: `at` moves forward only."""

    def __init__(self, name: str, description: str, params: SettlementParams = PARAMS,
                 nodes: int = 6, stake: int = 1500) -> None:
        self.name, self.description, self.params = name, description, params
        self.ops: list[dict[str, Any]] = []
        self.at = 1
        self.receipts = 0
        for i in range(nodes):
            self.op("stake", who=f"n{i}", amount=stake)

    def op(self, kind: str, **kw: Any) -> Case:
        self.ops.append({"op": kind, "at": self.at, **kw})
        return self

    def wait(self, seconds: int) -> Case:
        self.at += seconds
        return self

    def user(self, name: str, deposit: int, cap: int, expiry: int = 10**6) -> Case:
        self.op("deposit", who=name, amount=deposit)
        return self.op("allow", user=name, settler="g", cap=cap, expiry=GENESIS + expiry,
                       nonce=1)

    def settle(self, entries: list[tuple[str, str, int]]) -> list[int]:
        """Receipts (node, user, fee) served in the epoch of now; their indices."""
        epoch = self.at // EPOCH
        receipts = []
        for node, user, fee in entries:
            self.receipts += 1
            n = self.receipts
            fields = {
                "request": "0x" + hashlib.sha256(f"{self.name}/{n}".encode()).hexdigest(),
                "job": "0x" + "02" * 32, "output_hash": "0x" + "03" * 32,
                "logits_hash": "0x" + "04" * 32, "output_length": 7, "node": node,
                "user": user, "fee": fee, "nonce": n,
                "deadline": GENESIS + epoch * EPOCH + EPOCH // 2,
            }
            receipts.append(fields | {"id": receipt_id(fields)})
        self.op("settle", settler="g", receipts=receipts)
        return list(range(self.receipts - len(entries), self.receipts))

    def json(self) -> dict[str, Any]:
        case = {"name": self.name, "description": self.description,
                "params": asdict(self.params), "operations": self.ops}
        expected, reverts = run_case(case, PARTIES, GENESIS, EPOCH, MAX_PAUSE)
        for op, revert in zip(self.ops, reverts, strict=True):
            if revert is not None:
                op["revert"] = revert
        return case | {"expected_state": expected}


def receipt_id(f: dict[str, Any]) -> str | None:
    if f["fee"] > UINT256_MAX:
        return None  # no EIP-712 message carries it
    r = wire.Receipt(
        request=bytes.fromhex(f["request"][2:]), job=bytes.fromhex(f["job"][2:]),
        output_hash=bytes.fromhex(f["output_hash"][2:]),
        logits_hash=bytes.fromhex(f["logits_hash"][2:]), output_length=f["output_length"],
        node=PARTIES[f["node"]], gateway=PARTIES["g"], user=PARTIES[f["user"]], fee=f["fee"],
        nonce=f["nonce"], deadline=f["deadline"])
    return "0x" + wire.digest(DOMAIN, r).hex()


def by_address(*names: str) -> list[str]:
    """Judges as the contract takes them: strictly increasing addresses."""
    return sorted(names, key=lambda n: int(PARTIES[n], 16))


def cases() -> list[Case]:
    out = []

    c = Case("fees-and-cut", "fee 100 at a 10% cut: 90 to the node, 10 to the treasury")
    c.user("u0", 1000, 1000).wait(100)
    c.settle([("n0", "u0", 100), ("n1", "u0", 100)])
    out.append(c)

    c = Case("cap-and-shortfall", "the cap per epoch bounds the take; the rest is unpaid")
    c.user("u0", 1000, 150).wait(100)
    c.settle([("n0", "u0", 100), ("n1", "u0", 100), ("n2", "u0", 100)])
    c.wait(100).settle([("n0", "u0", 100)])  # a new epoch: a new cap
    out.append(c)

    c = Case("balance-shortfall", "a user short of funds pays what it has; the batch stands")
    c.user("u0", 30, 1000).user("u1", 500, 1000).wait(100)
    c.settle([("n0", "u0", 100), ("n1", "u1", 100)])
    out.append(c)

    c = Case("no-allowance", "a user who signed no allowance is not debited")
    c.op("deposit", who="u0", amount=500).wait(100)
    c.settle([("n0", "u0", 100)])
    out.append(c)

    c = Case("allowance-expired", "an allowance covers epochs that begin before its expiry")
    c.user("u0", 500, 500, expiry=150).wait(100)
    c.settle([("n0", "u0", 100)])  # epoch 1 begins at 100 < 150
    c.wait(100).settle([("n0", "u0", 100)])  # epoch 2 begins at 200: expired
    out.append(c)

    c = Case("pass-rewards-discount", "a pass: fee, R_A, R_V shared, the user's discount",
             CHALLENGED)
    c.user("u0", 1000, 1000).op("fund_treasury", amount=1000).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("pass", receipt=r, judges=by_address("n1", "n2"))
    out.append(c)

    c = Case("pass-empty-treasury", "a pass with an empty treasury pays what it can",
             CHALLENGED)
    c.user("u0", 1000, 1000).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("pass", receipt=r, judges=by_address("n1", "n2", "n3"))
    out.append(c)

    c = Case("pass-treasury-runs-out", "the treasury pays in order until it runs out",
             CHALLENGED)
    c.user("u0", 1000, 1000).op("fund_treasury", amount=14).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("pass", receipt=r, judges=by_address("n1", "n2"))
    out.append(c)

    c = Case("accuse-slash-arbitration-pay",
             "an accusation executed after its appeal window: the user refunded and paid, "
             "the accusers paid for arbitration, the rest to the treasury", CHALLENGED)
    c.user("u0", 1000, 1000).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.wait(10).op("accuse", receipt=r, judges=by_address("n1", "n2", "n3"))
    c.op("finalize", receipt=r)  # too early: the appeal window is open
    c.wait(51).op("finalize", receipt=r)
    c.op("unstake", who="n0", amount=100)  # closed: it may leave now
    out.append(c)

    c = Case("slash-with-shortfall",
             "a slash beyond what is left takes what is left (stake, then unbonding)",
             CHALLENGED)
    c.op("unstake", who="n0", amount=1300)
    c.wait(501).op("withdraw", who="n0", amount=1000)  # 200 staked, 300 unbonding remain
    c.user("u0", 1000, 1000).wait(99)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("accuse", receipt=r, judges=by_address("n1", "n2", "n3"))
    c.wait(51).op("finalize", receipt=r)
    out.append(c)

    c = Case("appeal-clears", "a framed node wins its appeal; each accuser is slashed",
             CHALLENGED)
    c.user("u0", 1000, 1000).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("accuse", receipt=r, judges=by_address("n1", "n2", "n3"))
    c.op("appeal", receipt=r, judges=by_address("n1", "n2", "n3"))  # not more than accused
    c.wait(10).op("appeal", receipt=r, judges=by_address("n2", "n3", "n4", "n5"))
    c.op("finalize", receipt=r)
    out.append(c)

    c = Case("lapse", "a challenge nobody answers lapses into a plain fee", CHALLENGED)
    c.user("u0", 1000, 1000).wait(100)
    (r,) = c.settle([("n0", "u0", 100)])
    c.op("unstake", who="n0", amount=100)  # an open challenge holds the stake
    c.op("finalize", receipt=r)
    c.wait(51).op("pass", receipt=r, judges=by_address("n1", "n2"))  # too late
    c.op("finalize", receipt=r)
    out.append(c)

    c = Case("pass-batch", "passes of one epoch in one transaction: each paid as alone, in "
             "list order (the treasury runs out on the way); a case listed twice, one already "
             "passed or one past its deadline refuses the whole batch", CHALLENGED)
    c.user("u0", 1000, 1000).op("fund_treasury", amount=40).wait(100)
    r0, r1, r2 = c.settle([("n0", "u0", 100), ("n1", "u0", 100), ("n2", "u0", 100)])
    c.op("pass_batch", cases=[{"receipt": r0, "judges": by_address("n1", "n2")},
                              {"receipt": r0, "judges": by_address("n1", "n3")}])
    c.wait(10).op("pass_batch", cases=[{"receipt": r1, "judges": by_address("n0", "n2")},
                                       {"receipt": r0, "judges": by_address("n1", "n2", "n3")}])
    c.op("pass_batch", cases=[{"receipt": r2, "judges": by_address("n0", "n1")},
                              {"receipt": r1, "judges": by_address("n0", "n3")}])
    c.wait(41).op("pass_batch", cases=[{"receipt": r2, "judges": by_address("n0", "n1")}])
    c.op("finalize", receipt=r2)
    out.append(c)

    c = Case("zero-address", "no entry may credit the zero address")
    c.user("u0", 1000, 1000).op("deposit", who=ZERO, amount=5).wait(100)
    c.settle([("n0", "u0", 100), ("n1", ZERO, 100)])
    c.wait(100).settle([("n0", "u0", 100)])
    out.append(c)

    c = Case("fees-near-uint256", "shortfalls of ~2^256 saturate unpaid, never overflow")
    c.user("u0", 100, 50).wait(100)
    c.settle([("n0", "u0", UINT256_MAX), ("n1", "u0", UINT256_MAX)])
    out.append(c)

    c = Case("fee-above-uint256", "a fee above 2^256 - 1 is refused; nothing changes")
    c.user("u0", 100, 50).wait(100)
    c.settle([("n0", "u0", UINT256_MAX + 1)])
    c.wait(100).settle([("n0", "u0", 10)])
    out.append(c)

    c = Case("pause-clock", "a pause stops inflows and the unbonding clock; it cannot last "
             "beyond max_pause, and pauses are spaced")
    c.op("unstake", who="n0", amount=1500).wait(100).op("pause")
    c.op("deposit", who="u0", amount=5).op("pause")
    c.wait(500).op("withdraw", who="n0", amount=1500)  # 600 on the wall, 100 on the clock
    c.op("unpause").op("unpause").op("pause")
    c.wait(500).op("withdraw", who="n0", amount=1500)
    c.wait(1500).op("pause").wait(1000).op("deposit", who="u0", amount=5)  # ran out
    c.op("request_withdrawal", who="u0", amount=5)
    c.wait(400).op("withdraw", who="u0", amount=5)
    out.append(c)

    c = Case("withdrawal-waits-for-settlement",
             "a withdrawal waits longer than the settlement of what its owner was served")
    c.user("u0", 100, 1000).wait(50).op("request_withdrawal", who="u0", amount=100)
    c.wait(50).settle([("n0", "u0", 100)])
    c.wait(400).op("withdraw", who="u0", amount=100)
    out.append(c)
    return out


def render() -> str:
    data = {
        "version": VERSION,
        "spec": "docs/settlement-rules.md",
        "format": (
            "Parties by name (g deploys the contract and is its owner, settler and pauser; "
            "n* are nodes, u* users; 'zero' is the zero address); keys: sha256('verinfer "
            "settlement-v2 test key/' + name). The contract is deployed by g (nonce 0) at "
            "genesis with params, epoch_seconds, params_delay, max_pause and committees. Each "
            "operation is one transaction at genesis + at; one with 'revert' must revert with "
            "exactly that string ('fee above uint256': it cannot be encoded) and change "
            "nothing. settle: commit the epoch of 'at' (root over the receipt ids in "
            "increasing order), then, two blocks later, settle them; with challenge_ppm "
            "1000000 every receipt is challenged, with 0 none. pass/accuse/appeal: evidence "
            "on receipt #i of the case, verdicts signed by the judges (agreeing for pass and "
            "appeal, conflicting for accuse; accuse carries the node's signed receipt). "
            "pass_batch: one pass_challenges transaction of the epoch of its cases' receipts, "
            "each case a receipt # and its judges, as pass. "
            "expected_state after the last operation: maps by party name omit zeros; times "
            "relative to genesis; cases by receipt index, their status (1 open, 2 passed, 3 "
            "accused, 4 slashed, 5 cleared, 6 lapsed)."),
        "genesis": GENESIS, "epoch_seconds": EPOCH, "params_delay": PARAMS_DELAY,
        "max_pause": MAX_PAUSE, "committees": list(COMMITTEES),
        "domain": {"chain_id": CHAIN_ID, "verifying_contract": CONTRACT},
        "parties": PARTIES,
        "cases": [c.json() for c in cases()],
    }
    return json.dumps(data, indent=1) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            print(f"{OUT.name} differs from what this script generates", file=sys.stderr)
            return 1
        print(f"{OUT.name} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
