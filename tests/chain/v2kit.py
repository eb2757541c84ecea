"""A settlement v2 network in titanoboa: keys, signed EIP-712 messages, commit and settle.

Signatures are made with eth-account's own EIP-712 encoder (`encode_typed_data`), independent of
the contract, so a contract that hashed a message differently would refuse every one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import boa
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from verinfer.chain.build import compile_artifact
from verinfer.protocol.merkle import merkle_root
from verinfer.protocol.settlement import SettlementParams

EPOCH = 100
PARAMS = SettlementParams(
    min_stake=1000,
    unbonding_delay=500,
    reward_asserter=10,
    reward_validators=9,
    slash=500,
    protocol_fee_bps=1000,
    discount_bps=5000,
    challenger_share_bps=5000,
    withdrawal_delay=400,
    challenge_ppm=0,
    challenge_window=50,
    appeal_window=50,
)
PARAMS_DELAY = 300
MAX_PAUSE = 1000
# Expected committee sizes far above the node count: every staked node is drawn (the
# sortition's probability saturates), so tests choose committees freely unless they mean not to.
ALL_DRAWN = (255, 2, 255, 3)
PASS, ACCUSE, APPEAL = 0, 1, 2
OPEN, PASSED, ACCUSED, SLASHED, CLEARED, LAPSED = 1, 2, 3, 4, 5, 6

TYPES = {
    "Receipt": [
        {"name": "request", "type": "bytes32"}, {"name": "job", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"}, {"name": "logitsHash", "type": "bytes32"},
        {"name": "outputLength", "type": "uint32"}, {"name": "node", "type": "address"},
        {"name": "gateway", "type": "address"}, {"name": "user", "type": "address"},
        {"name": "fee", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint64"},
    ],
    "Verdict": [
        {"name": "receipt", "type": "bytes32"}, {"name": "request", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"}, {"name": "logitsHash", "type": "bytes32"},
        {"name": "valid", "type": "bool"}, {"name": "firstInvalidStep", "type": "uint32"},
        {"name": "validator", "type": "address"}, {"name": "gateway", "type": "address"},
    ],
    "Allowance": [
        {"name": "user", "type": "address"}, {"name": "settler", "type": "address"},
        {"name": "capPerEpoch", "type": "uint256"}, {"name": "expiry", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ],
}


def _typed(chain_id: int, contract: str, primary: str, message: dict[str, Any]) -> Any:
    return encode_typed_data(full_message={
        "types": {"EIP712Domain": [
            {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"}],
            primary: TYPES[primary]},
        "primaryType": primary,
        "domain": {"name": "verinfer", "version": "2", "chainId": chain_id,
                   "verifyingContract": contract},
        "message": message,
    })


def sign_typed(account: Any, chain_id: int, contract: str, primary: str,
               message: dict[str, Any]) -> bytes:
    """65-byte r || s || v signature of an EIP-712 message under the verinfer v2 domain."""
    return bytes(account.sign_message(_typed(chain_id, contract, primary, message)).signature)


def typed_digest(chain_id: int, contract: str, primary: str, message: dict[str, Any]) -> bytes:
    """keccak256(0x1901 || domainSeparator || hashStruct(message)): the receipt id."""
    signable = _typed(chain_id, contract, primary, message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def params_tuple(p: SettlementParams = PARAMS) -> tuple[int, ...]:
    return (p.min_stake, p.unbonding_delay, p.withdrawal_delay, p.reward_asserter,
            p.reward_validators, p.slash, p.protocol_fee_bps, p.discount_bps,
            p.challenger_share_bps, p.challenge_ppm, p.challenge_window, p.appeal_window)


class Party:
    """An account with a private key: signs messages and sends transactions."""

    def __init__(self, seed: int) -> None:
        self.account = Account.from_key((seed + 0x1000).to_bytes(32, "big"))
        self.address = self.account.address
        boa.env.set_balance(self.address, 10**24)

    def __repr__(self) -> str:
        return f"Party({self.address[:8]})"


@dataclass
class Receipt:
    node: str
    gateway: str
    user: str
    fee: int
    nonce: int
    deadline: int
    request: bytes = b"\x01" * 32
    job: bytes = b"\x02" * 32
    output_hash: bytes = b"\x03" * 32
    logits_hash: bytes = b"\x04" * 32
    output_length: int = 7

    def message(self) -> dict[str, Any]:
        return {"request": self.request, "job": self.job, "outputHash": self.output_hash,
                "logitsHash": self.logits_hash, "outputLength": self.output_length,
                "node": self.node, "gateway": self.gateway, "user": self.user, "fee": self.fee,
                "nonce": self.nonce, "deadline": self.deadline}

    def args(self) -> tuple[Any, ...]:
        return tuple(self.message().values())


@dataclass
class Verdict:
    receipt: bytes
    request: bytes
    output_hash: bytes
    logits_hash: bytes
    valid: bool
    validator: str
    gateway: str
    first_invalid_step: int = 0

    def message(self) -> dict[str, Any]:
        return {"receipt": self.receipt, "request": self.request, "outputHash": self.output_hash,
                "logitsHash": self.logits_hash, "valid": self.valid,
                "firstInvalidStep": self.first_invalid_step, "validator": self.validator,
                "gateway": self.gateway}

    def args(self) -> tuple[Any, ...]:
        return tuple(self.message().values())


@dataclass
class Net:
    """A deployed contract, its owner (every role), users, nodes, and helpers to drive it."""

    c: Any
    owner: str
    chain_id: int
    nodes: list[Party] = field(default_factory=list)
    users: list[Party] = field(default_factory=list)
    nonce: int = 0

    # -------------------------------------------------------------- signing

    def sign(self, signer: Party, primary: str, message: dict[str, Any]) -> bytes:
        return sign_typed(signer.account, self.chain_id, str(self.c.address), primary, message)

    def digest(self, message: dict[str, Any], primary: str = "Receipt") -> bytes:
        return typed_digest(self.chain_id, str(self.c.address), primary, message)

    # -------------------------------------------------------------- parties

    def node(self, stake: int = 2000) -> Party:
        p = Party(100 + len(self.nodes))
        self.c.register("http://127.0.0.1:9000", sender=p.address)
        self.c.stake(stake, value=stake, sender=p.address)
        boa.env.time_travel(blocks=1)  # titanoboa keeps one block until told: as on a chain
        self.nodes.append(p)
        return p

    def user(self, deposit: int = 10_000, cap: int = 10_000, expiry: int | None = None,
             settler: str | None = None) -> Party:
        p = Party(500 + len(self.users))
        self.c.deposit(p.address, value=deposit, sender=p.address)
        self.allow(p, cap, expiry, settler)
        self.users.append(p)
        return p

    def allow(self, user: Party, cap: int, expiry: int | None = None,
              settler: str | None = None, nonce: int | None = None) -> None:
        allowance = {"user": user.address, "settler": settler or self.owner, "capPerEpoch": cap,
                     "expiry": expiry if expiry is not None else boa.env.timestamp + 10**6,
                     "nonce": nonce if nonce is not None else self.next_nonce()}
        self.c.set_allowance(tuple(allowance.values()), self.sign(user, "Allowance", allowance))

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce

    # -------------------------------------------------------------- epochs

    def epoch(self) -> int:
        return int(self.c.current_epoch())

    def receipt(self, node: Party, user: Party, fee: int = 100, epoch: int | None = None,
                gateway: str | None = None, **kw: Any) -> Receipt:
        e = self.epoch() if epoch is None else epoch
        start = int(self.c.GENESIS()) + e * EPOCH
        return Receipt(node=node.address, gateway=gateway or self.owner, user=user.address,
                       fee=fee, nonce=self.next_nonce(), deadline=start + EPOCH // 2, **kw)

    def ordered(self, receipts: list[Receipt]) -> list[Receipt]:
        return sorted(receipts, key=lambda r: self.digest(r.message()))

    def root(self, receipts: list[Receipt]) -> bytes:
        return merkle_root([self.digest(r.message()) for r in receipts])

    def commit(self, receipts: list[Receipt], epoch: int | None = None,
               sender: str | None = None) -> int:
        e = self.epoch() if epoch is None else epoch
        self.c.commit_epoch(e, self.root(receipts), len(receipts), sender=sender or self.owner)
        boa.env.time_travel(blocks=2)
        return e

    def settle(self, receipts: list[Receipt], epoch: int | None = None,
               sender: str | None = None) -> int:
        receipts = self.ordered(receipts)
        e = self.commit(receipts, epoch, sender)
        self.c.settle_epoch(e, [r.args() for r in receipts], sender=sender or self.owner)
        return e

    def verdicts(self, receipt: Receipt, judges: list[Party], valid: bool = True,
                 logits: bytes | None = None, gateway: str | None = None
                 ) -> tuple[list[tuple[Any, ...]], list[bytes]]:
        digest = self.digest(receipt.message())
        out = []
        for judge in sorted(judges, key=lambda p: int(p.address, 16)):
            v = Verdict(digest, receipt.request, receipt.output_hash,
                        logits if logits is not None else receipt.logits_hash, valid,
                        judge.address, gateway or self.owner)
            out.append((v.args(), self.sign(judge, "Verdict", v.message())))
        return [a for a, _ in out], [s for _, s in out]

    def evidence(self, kind: int, epoch: int, receipt: Receipt, judges: list[Party],
                 signer: Party | None = None, sender: str | None = None, **kw: Any) -> None:
        verdicts, sigs = self.verdicts(receipt, judges, **kw)
        receipt_sig = self.sign(signer, "Receipt", receipt.message()) if signer else b""
        self.c.submit_evidence(kind, epoch, receipt.args(), receipt_sig, verdicts, sigs,
                               sender=sender or self.owner)

    def pass_case(self, receipt: Receipt, judges: list[Party], **kw: Any
                  ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[bytes]]:
        """One case of `pass_challenges`: the receipt with its judges' signed verdicts."""
        verdicts, sigs = self.verdicts(receipt, judges, **kw)
        return receipt.args(), verdicts, sigs

    def pass_batch(self, epoch: int, cases: list[tuple[Any, ...]],
                   sender: str | None = None) -> None:
        self.c.pass_challenges(epoch, cases, sender=sender or self.owner)

    def funds(self) -> int:
        """What the contract's ledger says it holds."""
        parties = [p.address for p in self.nodes + self.users] + [self.owner]
        return (sum(self.c.balances(a) + self.c.stakes(a) + self.c.unbonding(a)[0]
                    for a in parties) + self.c.treasury() + self.c.escrow_total())


@cache
def compiled() -> tuple[list[dict[str, Any]], bytes]:
    """ABI and init code as `verinfer.chain.build` compiles them (titanoboa's own compilation of
    the source comes out a few hundred bytes larger, above the EIP-170 code size limit)."""
    artifact = compile_artifact()
    return artifact["abi"], bytes.fromhex(artifact["bytecode"][2:])


def deploy(deployer: Any = None, params: SettlementParams = PARAMS,
           committees: tuple[int, int, int, int] = ALL_DRAWN) -> Net:
    boa.env.set_balance(boa.env.eoa, 10**24)
    abi, initcode = compiled()
    args = abi_encode(
        ["(" + ",".join(["uint256"] * 12) + ")", "uint256", "uint256", "uint256", "uint256[4]"],
        [params_tuple(params), EPOCH, PARAMS_DELAY, MAX_PAUSE, list(committees)],
    )
    address, computation = boa.env.deploy(bytecode=initcode + args)
    if computation.is_error:
        raise RuntimeError(f"deployment failed: {computation.error!r}")
    c = boa.loads_abi(json.dumps(abi), name="Settlement").at(address)
    return Net(c=c, owner=str(boa.env.eoa), chain_id=boa.env.evm.patch.chain_id)


def with_params(**change: Any) -> SettlementParams:
    return replace(PARAMS, **change)
