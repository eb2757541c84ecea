"""The one client of the settlement contract, over web3.py: gateway, nodes and CLI all use it.

It talks to any EVM JSON-RPC endpoint (the embedded dev chain, an L2) the same way, signs
locally with the configured key, and translates web3's errors and the contract's reverts into
`ChainError`s that carry the revert reason (`ChainRevert`) or say how to reach the chain
(`ChainUnreachable`). Batches and parameters are the protocol's own types
(`verinfer.protocol.settlement`), so what the gateway settles is what the rules were run on.
Addresses given by people are checked, never silently "corrected" (`parse_address`), and the
code at the contract's address must be the committed artifact's (`check_contract`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from requests import HTTPError
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
)

from verinfer.chain.artifact import ARTIFACT_PATH, load_artifact
from verinfer.errors import ChainError
from verinfer.protocol.settlement import (
    Batch,
    ChallengeEntry,
    LedgerState,
    Outcome,
    Reputation,
    SettlementParams,
    Unbonding,
)

T = TypeVar("T")

# The contract's numbering of challenge outcomes.
OUTCOME_CODES = {Outcome.PASSED: 0, Outcome.ASSERTER_FAULT: 1, Outcome.VALIDATOR_FAULT: 2}
GAS_MARGIN = 1.2  # over eth_estimateGas, for state that moves between estimate and inclusion
RECEIPT_TIMEOUT_S = 120.0
_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class ChainRevert(ChainError):
    """The contract refused: `reason` is its revert string (e.g. "insufficient balance")."""

    def __init__(self, reason: str, action: str = "") -> None:
        self.reason = reason
        super().__init__(f"{action + ' ' if action else ''}reverted: {reason}")


class ChainUnreachable(ChainError):
    """No answer from the JSON-RPC endpoint."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        hint = "start it with `verinfer chain`" if _is_loopback(url) else "check the RPC URL"
        super().__init__(f"chain at {url} unreachable: {hint}" + (f" ({detail})" if detail else ""))


class BadAddress(ChainError):
    """An address given by a person is malformed or fails its EIP-55 checksum."""


def parse_address(text: str, what: str = "address") -> ChecksumAddress:
    """`text` as a checksummed address, if it is one exactly as written.

    All lowercase is taken as an address without a checksum; any upper case must be the
    EIP-55 checksum, since a mistyped character would otherwise send funds to an address
    that nobody holds.
    """
    if not _HEX_ADDRESS.match(text):
        raise BadAddress(f"{what} is not an address (0x and 40 hex digits): {text!r}")
    checksummed = Web3.to_checksum_address(text)
    if text[2:] != text[2:].lower() and text != checksummed:
        raise BadAddress(
            f"{what} {text} fails its EIP-55 checksum (a typo?): copy the address again; "
            "an all-lowercase address is taken without a checksum"
        )
    return checksummed


@contextmanager
def translated_errors(action: str, rpc_url: str) -> Iterator[None]:
    """web3's errors, and endpoints that answer something other than JSON-RPC, as `ChainError`s."""
    try:
        yield
    except ContractLogicError as exc:
        raise ChainRevert(_reason(exc), action) from exc
    except HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise ChainError(
            f"{action}: the chain at {rpc_url} answered HTTP {status}: check the RPC URL"
        ) from exc
    except (ProviderConnectionError, ConnectionError, OSError) as exc:
        raise ChainUnreachable(rpc_url) from exc
    except json.JSONDecodeError as exc:
        raise ChainError(
            f"{action}: {rpc_url} answered something that is not JSON-RPC (a web page?): "
            "check the RPC URL"
        ) from exc
    except TimeExhausted as exc:
        raise ChainError(f"{action}: no receipt within {RECEIPT_TIMEOUT_S:.0f} s") from exc
    except Web3RPCError as exc:
        raise ChainError(f"{action} failed: {_rpc_message(exc)}") from exc
    except Web3Exception as exc:
        raise ChainError(f"{action} failed: {exc}") from exc


class Role(enum.IntFlag):
    SETTLER = 1
    ARBITER = 2
    PAUSER = 4


@dataclass(frozen=True)
class NodeInfo:
    address: str
    pubkey: bytes
    endpoint: str
    registered_at: int
    stake: int
    unbonding: Unbonding
    reputation: Reputation
    active: bool


@dataclass(frozen=True)
class BatchRecord:
    epoch: int
    receipts_root: bytes
    requests: int
    challenges: int
    fees: int
    block: int
    tx_hash: str


@dataclass(frozen=True)
class SlashRecord:
    node: str
    epoch: int
    amount: int
    to_challengers: int
    to_user: int
    to_treasury: int
    block: int


def _is_loopback(url: str) -> bool:
    return any(h in url for h in ("://127.", "://localhost", "://[::1]"))


def params_args(params: SettlementParams) -> tuple[int, ...]:
    p = params.validate()
    return (
        p.min_stake,
        p.unbonding_delay,
        p.reward_asserter,
        p.reward_validators,
        p.slash,
        p.protocol_fee_bps,
        p.discount_bps,
        p.challenger_share_bps,
    )


def _challenge_args(c: ChallengeEntry) -> tuple[Any, ...]:
    return (
        Web3.to_checksum_address(c.user),
        Web3.to_checksum_address(c.asserter),
        c.fee,
        [Web3.to_checksum_address(v) for v in c.validators],
        OUTCOME_CODES[c.outcome],
        [Web3.to_checksum_address(v) for v in c.faulty_validators],
    )


def batch_args(batch: Batch) -> tuple[Any, ...]:
    """`settle_batch`'s arguments for a protocol batch."""
    requests = [
        (Web3.to_checksum_address(r.user), Web3.to_checksum_address(r.asserter), r.fee)
        for r in batch.requests
    ]
    return (
        batch.epoch,
        batch.receipts_root,
        requests,
        [_challenge_args(c) for c in batch.challenges],
    )


def proof_args(proof: Sequence[tuple[bool, bytes]]) -> tuple[list[bytes], int]:
    """A `verinfer.protocol.merkle` proof as the contract takes it: siblings and a left-bitmask."""
    bits = sum(1 << i for i, (sibling_is_left, _) in enumerate(proof) if sibling_is_left)
    return [sibling for _, sibling in proof], bits


class SettlementClient:
    """The settlement contract at `address` on the chain behind `w3`, acting as `account`."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        account: LocalAccount | None = None,
        rpc_url: str = "(in-process provider)",
    ) -> None:
        self.w3 = w3
        self.rpc_url = rpc_url
        self.account = account
        self.address = parse_address(address, "contract address")
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact().abi)

    # ------------------------------------------------------------------ plumbing

    def _translated(self, action: str) -> AbstractContextManager[None]:
        return translated_errors(action, self.rpc_url)

    @property
    def signer(self) -> LocalAccount:
        """The account this client signs with; a clear error if it has none."""
        return self._require_account()

    def _require_account(self) -> LocalAccount:
        if self.account is None:
            raise ChainError(
                "no signing key: set VERINFER_CHAIN_KEY_FILE (a file holding the hex private key)"
                " or, on the dev chain, --dev-account"
            )
        return self.account

    def _read(self, action: str, fn: Callable[[], T]) -> T:
        with self._translated(action):
            return fn()

    def _send(self, action: str, call: Any, value: int = 0) -> Any:
        """Sign and send a contract call; returns its receipt, raises on revert."""
        account = self._require_account()
        with self._translated(action):
            tx = call.build_transaction(
                {
                    "from": account.address,
                    "value": value,
                    "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                }
            )
            tx["gas"] = int(tx["gas"] * GAS_MARGIN)
            signed = account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.05
            )
        if receipt["status"] != 1:
            raise ChainRevert(f"transaction {tx_hash.hex()} failed on chain", action)
        return receipt

    # ------------------------------------------------------------------ deployment

    @classmethod
    def deploy(
        cls,
        w3: Web3,
        account: LocalAccount,
        params: SettlementParams,
        rpc_url: str = "(in-process provider)",
    ) -> tuple[SettlementClient, Any]:
        """Deploy a new settlement contract; the deployer becomes owner with every role."""
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        probe = cls.__new__(cls)
        probe.rpc_url, probe.account, probe.w3 = rpc_url, account, w3
        with probe._translated("deploy"):  # web3 encodes the arguments right here
            constructor = factory.constructor(params_args(params))
        receipt = probe._send("deploy", constructor)
        return cls(w3, receipt["contractAddress"], account, rpc_url), receipt

    # ------------------------------------------------------------------ transactions

    def deposit(self, amount: int, beneficiary: str | None = None) -> Any:
        fn = self.contract.functions
        if beneficiary is None:
            return self._send("deposit", fn.deposit(), value=amount)
        call = fn.deposit(parse_address(beneficiary, "beneficiary"))
        return self._send("deposit", call, value=amount)

    def fund_treasury(self, amount: int) -> Any:
        return self._send("fund treasury", self.contract.functions.fund_treasury(), value=amount)

    def stake(self, amount: int, value: int = 0) -> Any:
        """Bond `amount` of the balance; `value` (wei sent along) is deposited first."""
        return self._send("stake", self.contract.functions.stake(amount), value=value)

    def unstake(self, amount: int) -> Any:
        return self._send("unstake", self.contract.functions.unstake(amount))

    def withdraw(self, amount: int) -> Any:
        return self._send("withdraw", self.contract.functions.withdraw(amount))

    def register(self, pubkey: bytes, endpoint: str) -> Any:
        if len(pubkey) != 32:
            raise ChainError(f"an Ed25519 public key is 32 bytes, got {len(pubkey)}")
        return self._send("register", self.contract.functions.register(pubkey, endpoint))

    def set_endpoint(self, endpoint: str) -> Any:
        return self._send("set endpoint", self.contract.functions.set_endpoint(endpoint))

    def settle_batch(self, batch: Batch) -> Any:
        return self._send("settle batch", self.contract.functions.settle_batch(*batch_args(batch)))

    def settle_dispute(self, dispute_id: bytes, epoch: int, challenge: ChallengeEntry) -> Any:
        call = self.contract.functions.settle_dispute(dispute_id, epoch, _challenge_args(challenge))
        return self._send("settle dispute", call)

    def grant_role(self, account: str, role: Role) -> Any:
        call = self.contract.functions.grant_role(parse_address(account, "account"), int(role))
        return self._send("grant role", call)

    def revoke_role(self, account: str, role: Role) -> Any:
        call = self.contract.functions.revoke_role(parse_address(account, "account"), int(role))
        return self._send("revoke role", call)

    def set_params(self, params: SettlementParams) -> Any:
        return self._send("set params", self.contract.functions.set_params(params_args(params)))

    def pause(self) -> Any:
        return self._send("pause", self.contract.functions.pause())

    def unpause(self) -> Any:
        return self._send("unpause", self.contract.functions.unpause())

    def transfer_ownership(self, new_owner: str) -> Any:
        call = self.contract.functions.transfer_ownership(parse_address(new_owner, "new owner"))
        return self._send("transfer ownership", call)

    # ------------------------------------------------------------------ reads

    def params(self) -> SettlementParams:
        return SettlementParams(*self._read("read params", self.contract.functions.params().call))

    def balance_of(self, address: str) -> int:
        a = Web3.to_checksum_address(address)
        return self._read("read balance", self.contract.functions.balances(a).call)

    def stake_of(self, address: str) -> int:
        a = Web3.to_checksum_address(address)
        return self._read("read stake", self.contract.functions.stakes(a).call)

    def unbonding_of(self, address: str) -> Unbonding:
        a = Web3.to_checksum_address(address)
        return Unbonding(*self._read("read unbonding", self.contract.functions.unbonding(a).call))

    def reputation_of(self, address: str) -> Reputation:
        a = Web3.to_checksum_address(address)
        return Reputation(*self._read("read reputation", self.contract.functions.reputation(a).call))

    def treasury(self) -> int:
        return self._read("read treasury", self.contract.functions.treasury().call)

    def owner(self) -> str:
        return self._read("read owner", self.contract.functions.owner().call)

    def roles_of(self, address: str) -> Role:
        a = Web3.to_checksum_address(address)
        return Role(self._read("read roles", self.contract.functions.roles(a).call))

    def paused(self) -> bool:
        return self._read("read paused", self.contract.functions.paused().call)

    def epoch_root(self, epoch: int) -> bytes | None:
        """The receipts root of a settled epoch, None if the epoch is not settled."""
        fns = self.contract.functions
        if not self._read("read epoch", fns.epoch_settled(epoch).call):
            return None
        return bytes(self._read("read epoch root", fns.batch_roots(epoch).call))

    def is_active(self, address: str) -> bool:
        """Registered with at least `min_stake` bonded: eligible for work."""
        a = Web3.to_checksum_address(address)
        return self._read("read active", self.contract.functions.is_active(a).call)

    def has_code(self) -> bool:
        return bool(self._read("read contract code", lambda: self.w3.eth.get_code(self.address)))

    def is_this_contract(self) -> bool:
        """Whether the code at `address` is the committed artifact's contract (any immutables)."""
        code = self._read("read contract code", lambda: self.w3.eth.get_code(self.address))
        return load_artifact().is_deployed_code(bytes(code))

    def check_contract(self, chain: str) -> None:
        """Refuse an address without code, or with code other than this contract's."""
        if not self.has_code():
            raise ChainError(
                f"no contract at {self.address} on {chain} (a reset dev chain?): deploy one with "
                "`verinfer chain deploy`"
            )
        if not self.is_this_contract():
            artifact = load_artifact()
            raise ChainError(
                f"the contract at {self.address} on {chain} is not verinfer's settlement contract "
                f"as built here ({ARTIFACT_PATH.name}, source sha256 {artifact.source_sha256[:12]}"
                "): pass the right --contract, or deploy one with `verinfer chain deploy`"
            )

    def contract_funds(self) -> int:
        """Wei held by the contract (equals the ledger's total_funds() by the money invariant)."""
        return self._read("read contract balance", lambda: self.w3.eth.get_balance(self.address))

    def verify_receipt(self, epoch: int, leaf: bytes, proof: Sequence[tuple[bool, bytes]]) -> bool:
        siblings, bits = proof_args(proof)
        call = self.contract.functions.verify_receipt(epoch, leaf, siblings, bits)
        return self._read("verify receipt", call.call)

    def nodes(self) -> list[NodeInfo]:
        fns = self.contract.functions
        count = self._read("read node count", fns.node_count().call)
        out = []
        for i in range(count):
            address = self._read("read node", fns.node_at(i).call)
            pubkey, endpoint, registered_at = self._read("read node", fns.nodes(address).call)
            out.append(
                NodeInfo(
                    address=address,
                    pubkey=bytes(pubkey),
                    endpoint=endpoint,
                    registered_at=registered_at,
                    stake=self.stake_of(address),
                    unbonding=self.unbonding_of(address),
                    reputation=self.reputation_of(address),
                    active=self._read("read node", fns.is_active(address).call),
                )
            )
        return out

    def ledger_state(self, addresses: Sequence[str], epochs: Sequence[int] = ()) -> LedgerState:
        """The contract's ledger restricted to `addresses` and `epochs`, as the protocol's type."""
        balance, stake, unbonding, reputation = {}, {}, {}, {}
        for a in sorted({x.lower() for x in addresses}):
            if b := self.balance_of(a):
                balance[a] = b
            if s := self.stake_of(a):
                stake[a] = s
            if (u := self.unbonding_of(a)) != Unbonding():
                unbonding[a] = u
            if (r := self.reputation_of(a)) != Reputation():
                reputation[a] = r
        roots = {e: root for e in epochs if (root := self.epoch_root(e)) is not None}
        return LedgerState(balance, stake, unbonding, self.treasury(), reputation, roots)

    def batches(self, from_block: int = 0) -> list[BatchRecord]:
        logs = self._read(
            "read batches",
            lambda: self.contract.events.BatchSettled().get_logs(from_block=from_block),
        )
        return [
            BatchRecord(
                epoch=log["args"]["epoch"],
                receipts_root=bytes(log["args"]["receipts_root"]),
                requests=log["args"]["requests"],
                challenges=log["args"]["challenges"],
                fees=log["args"]["fees"],
                block=log["blockNumber"],
                tx_hash="0x" + bytes(log["transactionHash"]).hex(),
            )
            for log in logs
        ]

    def slashes(self, from_block: int = 0) -> list[SlashRecord]:
        logs = self._read(
            "read slashes", lambda: self.contract.events.Slashed().get_logs(from_block=from_block)
        )
        return [
            SlashRecord(
                node=log["args"]["node"],
                epoch=log["args"]["epoch"],
                amount=log["args"]["amount"],
                to_challengers=log["args"]["to_challengers"],
                to_user=log["args"]["to_user"],
                to_treasury=log["args"]["to_treasury"],
                block=log["blockNumber"],
            )
            for log in logs
        ]


def _reason(exc: ContractLogicError) -> str:
    message = exc.message if exc.message is not None else str(exc)
    reason = message.removeprefix("execution reverted: ").removeprefix("execution reverted")
    return reason or "no reason given"


def _rpc_message(exc: Web3RPCError) -> str:
    rpc = getattr(exc, "rpc_response", None)
    if isinstance(rpc, dict) and isinstance(rpc.get("error"), dict):
        return str(rpc["error"].get("message", exc))
    return str(exc)
