"""Test doubles of the gateway's tests: an in-memory settler, signed receipts, scripted validators."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from verinfer.errors import RemoteError
from verinfer.gateway.epochs import ValidatorTransport
from verinfer.gateway.router import RegisteredNode
from verinfer.gateway.settler import EpochSettlement, Settler
from verinfer.keyfile import Identity
from verinfer.protocol import wire
from verinfer.protocol.params import PosParams
from verinfer.protocol.settlement import (
    LedgerState,
    SettlementParams,
    apply_batch,
    deposit,
    fund_treasury,
    stake_funds,
)

DOMAIN = wire.Domain(31337, "0x" + "ab" * 20)
PARAMS = SettlementParams(min_stake=1000, unbonding_delay=100, reward_asserter=10,
                          reward_validators=9, slash=500, protocol_fee_bps=1000,
                          discount_bps=5000, challenger_share_bps=5000)


def identity(n: int) -> Identity:
    key = hashlib.sha256(b"gateway-test-key" + bytes([n])).digest()
    return Identity(key, wire.address_of(key))


GATEWAY = identity(0)
USER = identity(1)
NODES = [identity(10 + i) for i in range(8)]


def pos(p_ppm: int = 1_000_000, validators: int = 2, arbitrators: int = 3) -> PosParams:
    return PosParams(p_ppm, validators, arbitrators, PARAMS)


def make_bundle(node: Identity, output: list[int], logits: bytes, nonce: int,
                prompt: tuple[int, ...] = (1, 2, 3), price: int = 1,
                user: Identity = USER, domain: wire.Domain = DOMAIN,
                gateway: Identity = GATEWAY, deadline: int = 2**40) -> wire.ReceiptBundle:
    """A receipt bundle as an honest gateway and node would produce it."""
    request = wire.Request.build(b"\x11" * 32, prompt, max_tokens=16)
    job = wire.Job(request.hash_struct(), gateway.address, user.address, node.address, price,
                   nonce, deadline)
    receipt = wire.make_receipt(job, len(prompt), output, logits)
    return wire.ReceiptBundle(
        domain, request, prompt, (),
        wire.Signed(job, wire.sign(domain, job, gateway.private_key)),
        wire.Signed(receipt, wire.sign(domain, receipt, node.private_key)),
        tuple(output))


@dataclass
class FakeSettler(Settler):
    """The chain in memory: the v1 settlement rules, a commit log and a beacon per commit."""

    nodes: list[RegisteredNode]
    balances: dict[str, int] = field(default_factory=dict)
    state: LedgerState = field(default_factory=LedgerState)
    commits: dict[int, bytes] = field(default_factory=dict)
    settled: dict[int, EpochSettlement] = field(default_factory=dict)
    beacon_ready: bool = True
    settle_calls: int = 0

    def __post_init__(self) -> None:
        state = deposit(self.state, USER.address.lower(), 10**9)
        state = fund_treasury(state, 10**9)
        for node in self.nodes:
            state = deposit(state, node.address.lower(), node.stake)
            state = stake_funds(state, node.address.lower(), node.stake)
        self.state = state

    def registry(self) -> list[RegisteredNode]:
        return list(self.nodes)

    def min_stake(self) -> int:
        return PARAMS.min_stake

    def spendable(self, user: str) -> int:
        return self.balances.get(user.lower(), 0)

    def commit(self, epoch: int, receipts_root: bytes, count: int) -> str:
        if self.commits.setdefault(epoch, receipts_root) != receipts_root:
            raise AssertionError("epoch committed twice with different roots")
        return f"commit:{epoch}"

    def beacon(self, epoch: int, commit_ref: str) -> bytes | None:
        if not self.beacon_ready:
            return None
        return hashlib.sha256(b"beacon" + commit_ref.encode()).digest()

    def settle(self, settlement: EpochSettlement) -> str:
        self.settle_calls += 1
        assert self.commits[settlement.epoch] == settlement.receipts_root
        assert wire.receipts_root(settlement.receipt_ids) == settlement.receipts_root
        if settlement.epoch not in self.settled:
            self.state = apply_batch(self.state, PARAMS, settlement.batch())
            self.settled[settlement.epoch] = settlement
        return f"settled:{settlement.epoch}"

    def settled_root(self, epoch: int) -> bytes | None:
        s = self.settled.get(epoch)
        return None if s is None else s.receipts_root


class ScriptedValidators(ValidatorTransport):
    """Validators that replay by looking up the true logits hash of an output (`truth`);
    `liars` sign a wrong hash, `silent` never answer, `vouchers` (colluding with asserters)
    sign whatever hash the receipt claims."""

    def __init__(self, truth: dict[bytes, bytes], keys: dict[str, Identity],
                 liars: set[str] = frozenset(), silent: set[str] = frozenset(),
                 domain: wire.Domain = DOMAIN, gateway: Identity = GATEWAY,
                 vouchers: set[str] = frozenset()) -> None:
        self.truth, self.keys, self.liars, self.silent = truth, keys, set(liars), set(silent)
        self.vouchers = set(vouchers)
        self.domain, self.gateway = domain, gateway
        self.asked: list[tuple[str, bytes]] = []

    async def verify(self, node: RegisteredNode, challenge: wire.Signed,
                     bundle: wire.ReceiptBundle) -> dict[str, Any]:
        message = challenge.message
        assert isinstance(message, wire.Challenge)
        wire.check_signed_by(self.domain, message, challenge.signature, self.gateway.address)
        assert "logitsHash" not in str(message.to_json())  # blind: the asserter's hash is hidden
        self.asked.append((node.address, message.receipt))
        if node.address in self.silent:
            raise RemoteError(f"{node.endpoint}: connection refused")
        true_hash = self.truth[message.output_hash]
        logits = hashlib.sha256(b"lie" + true_hash).digest() if node.address in self.liars \
            else true_hash
        if node.address in self.vouchers:
            claimed = bundle.receipt.message
            assert isinstance(claimed, wire.Receipt)
            logits = claimed.logits_hash
        verdict = wire.Verdict(message.receipt, message.request, message.output_hash, logits,
                               True, 0, node.address, message.gateway)
        key = self.keys[node.address]
        return wire.Signed(verdict, wire.sign(self.domain, verdict, key.private_key)).to_json()
