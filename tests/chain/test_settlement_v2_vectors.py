"""The contract reproduces every settlement v2 conformance vector (tests/vectors/protocol).

Each case runs in a fresh titanoboa chain: `g` deploys the contract at the vector's genesis,
then every operation is sent as a transaction at its time, signed with the parties' test keys
(receipts, verdicts, allowances: real EIP-712 signatures checked by `ecrecover`). The receipt
ids the contract computes must equal the vector's, each revert string must match, and the
final state must equal `expected_state`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import boa
import pytest
from eth.codecs.abi.exceptions import EncodeError
from eth_abi import encode as abi_encode
from v2kit import compiled

from verinfer.protocol import wire
from verinfer.protocol.ledger_codec import ZERO
from verinfer.protocol.merkle import merkle_root

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "protocol"
                      / "settlement-v2.json").read_text())
KINDS = {"pass": 0, "accuse": 1, "appeal": 2}


def key(name: str) -> bytes:
    return hashlib.sha256(b"verinfer settlement-v2 test key/" + name.encode()).digest()


def revert_reason(exc: boa.BoaError) -> str:
    match = re.search(r"^\s*\[E\].*<(.+)>\s*$", str(exc), re.MULTILINE)
    assert match, str(exc)
    return match.group(1)


class Replay:
    def __init__(self, case: dict[str, Any]) -> None:
        self.parties = VECTORS["parties"]
        self.genesis = VECTORS["genesis"]
        self.g = self.parties["g"]
        for name, address in self.parties.items():
            if name != ZERO:
                assert wire.address_of(key(name)) == address, name
                boa.env.set_balance(address, 10**30)
        boa.env.timestamp = self.genesis
        p = case["params"]
        params = (p["min_stake"], p["unbonding_delay"], p["withdrawal_delay"],
                  p["reward_asserter"], p["reward_validators"], p["slash"],
                  p["protocol_fee_bps"], p["discount_bps"], p["challenger_share_bps"],
                  p["challenge_ppm"], p["challenge_window"], p["appeal_window"])
        abi, initcode = compiled()
        args = abi_encode(
            ["(" + ",".join(["uint256"] * 12) + ")", "uint256", "uint256", "uint256",
             "uint256[4]"],
            [params, VECTORS["epoch_seconds"], VECTORS["params_delay"], VECTORS["max_pause"],
             VECTORS["committees"]])
        address, computation = boa.env.deploy(sender=self.g, bytecode=initcode + args)
        assert not computation.is_error, computation.error
        assert address == VECTORS["domain"]["verifying_contract"]
        assert boa.env.evm.patch.chain_id == VECTORS["domain"]["chain_id"]
        self.c = boa.loads_abi(json.dumps(abi), name="Settlement").at(address)
        self.domain = wire.Domain(VECTORS["domain"]["chain_id"], str(address))
        self.receipts: list[tuple[wire.Receipt, int]] = []  # (receipt, epoch) by index

    def run(self, op: dict[str, Any]) -> str | None:
        boa.env.timestamp = self.genesis + op["at"]
        boa.env.evm.patch.block_number += 1
        try:
            self.send(op)
        except boa.BoaError as exc:
            return revert_reason(exc)
        except EncodeError:
            return "fee above uint256"
        return None

    def who(self, name: str) -> str:
        return self.parties[name]

    def send(self, op: dict[str, Any]) -> None:
        kind, c = op["op"], self.c
        if kind == "deposit":
            sender = self.g if op["who"] == ZERO else self.who(op["who"])
            c.deposit(self.who(op["who"]), value=op["amount"], sender=sender)
        elif kind == "fund_treasury":
            c.fund_treasury(value=op["amount"], sender=self.g)
        elif kind == "stake":
            node = self.who(op["who"])
            if c.nodes(node)[0] == 0:
                c.register("http://127.0.0.1:9000", sender=node)
            c.stake(op["amount"], value=op["amount"], sender=node)
        elif kind in ("unstake", "request_withdrawal", "withdraw"):
            getattr(c, kind)(op["amount"], sender=self.who(op["who"]))
        elif kind == "allow":
            a = wire.Allowance(self.who(op["user"]), self.who(op["settler"]), op["cap"],
                               op["expiry"], op["nonce"])
            c.set_allowance((a.user, a.settler, a.cap_per_epoch, a.expiry, a.nonce),
                            wire.sign(self.domain, a, key(op["user"])), sender=self.g)
        elif kind in ("pause", "unpause"):
            getattr(c, kind)(sender=self.g)
        elif kind == "settle":
            self.settle(op)
        elif kind == "finalize":
            receipt, epoch = self.receipts[op["receipt"]]
            c.finalize(epoch, wire.digest(self.domain, receipt), sender=self.g)
        else:
            self.evidence(op)

    def settle(self, op: dict[str, Any]) -> None:
        epoch = op["at"] // VECTORS["epoch_seconds"]
        receipts = []
        for r in op["receipts"]:
            fields = (bytes.fromhex(r["request"][2:]), bytes.fromhex(r["job"][2:]),
                      bytes.fromhex(r["output_hash"][2:]), bytes.fromhex(r["logits_hash"][2:]),
                      r["output_length"], self.who(r["node"]), self.g, self.who(r["user"]),
                      r["fee"], r["nonce"], r["deadline"])
            receipts.append((r["id"], fields))
        if any(rid is None for rid, _ in receipts):
            self.c.settle_epoch(epoch, [f for _, f in receipts], sender=self.g)  # cannot encode
        for rid, fields in receipts:
            receipt = wire.Receipt(*fields)  # type: ignore[arg-type]
            assert "0x" + wire.digest(self.domain, receipt).hex() == rid
            self.receipts.append((receipt, epoch))
        ordered = sorted(receipts, key=lambda item: item[0])
        self.c.commit_epoch(epoch, merkle_root([bytes.fromhex(rid[2:]) for rid, _ in ordered]),
                            len(ordered), sender=self.g)
        boa.env.evm.patch.block_number += 2  # the beacon: the block after the commit
        self.c.settle_epoch(epoch, [f for _, f in ordered], sender=self.g)

    def evidence(self, op: dict[str, Any]) -> None:
        if op["op"] == "pass_batch":
            cases = [self._signed(c["receipt"], c["judges"], agree=True) for c in op["cases"]]
            epoch = self.receipts[op["cases"][0]["receipt"]][1]
            self.c.pass_challenges(epoch, [(r, v, s) for r, v, s, _ in cases], sender=self.g)
            return
        agree = op["op"] != "accuse"
        receipt_args, verdicts, signatures, receipt = self._signed(op["receipt"], op["judges"],
                                                                   agree)
        epoch = self.receipts[op["receipt"]][1]
        receipt_signature = b"" if agree else wire.sign(
            self.domain, receipt, key(self._name(receipt.node)))
        self.c.submit_evidence(KINDS[op["op"]], epoch, receipt_args, receipt_signature,
                               verdicts, signatures, sender=self.g)

    def _signed(self, index: int, judges: list[str], agree: bool
                ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[bytes], wire.Receipt]:
        """Receipt #index as the contract's tuple, with the judges' verdicts and signatures."""
        receipt, _ = self.receipts[index]
        rid = wire.digest(self.domain, receipt)
        verdicts, signatures = [], []
        for judge in judges:
            v = wire.Verdict(receipt=rid, request=receipt.request,
                             output_hash=receipt.output_hash,
                             logits_hash=receipt.logits_hash if agree else b"\x05" * 32,
                             valid=agree, first_invalid_step=0 if agree else 1,
                             validator=self.who(judge), gateway=self.g)
            verdicts.append((v.receipt, v.request, v.output_hash, v.logits_hash, v.valid,
                             v.first_invalid_step, v.validator, v.gateway))
            signatures.append(wire.sign(self.domain, v, key(judge)))
        return (tuple(getattr(receipt, f.attr) for f in receipt.FIELDS), verdicts, signatures,
                receipt)

    def _name(self, address: str) -> str:
        return next(n for n, a in self.parties.items() if a == address)

    def state(self, count: int) -> dict[str, Any]:
        c, names = self.c, [n for n in self.parties if n != ZERO]
        unbonding = {}
        for n in names:
            amount, release = c.unbonding(self.who(n))
            if (amount, release) != (0, 0):
                unbonding[n] = {"amount": amount, "release_time": release - self.genesis}
        reputation = {}
        for n in names:
            rep = tuple(c.reputation(self.who(n)))
            if any(rep):
                reputation[n] = dict(zip(("served", "challenged", "passed", "failed"), rep,
                                         strict=True))
        cases = {}
        for i, (receipt, epoch) in enumerate(self.receipts[:count]):
            status = c.case_of(epoch, wire.digest(self.domain, receipt))[0]
            if status:
                cases[str(i)] = status
        return {
            "balance": {n: c.balances(self.who(n)) for n in sorted(names)
                        if c.balances(self.who(n))},
            "stake": {n: c.stakes(self.who(n)) for n in sorted(names) if c.stakes(self.who(n))},
            "unbonding": dict(sorted(unbonding.items())), "treasury": c.treasury(),
            "escrow": c.escrow_total(),
            "unpaid": {n: c.unpaid(self.who(n)) for n in sorted(names) if c.unpaid(self.who(n))},
            "reputation": dict(sorted(reputation.items())), "cases": cases,
        }


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_the_contract_reproduces_the_vector(case: dict[str, Any]) -> None:
    with boa.swap_env(boa.Env()):
        replay = Replay(case)
        for op in case["operations"]:
            assert replay.run(op) == op.get("revert"), op
        assert replay.state(len(replay.receipts)) == case["expected_state"]
