"""The one client of the settlement contract, over web3.py: gateway, nodes and CLI all use it.

It talks to any EVM JSON-RPC endpoint (the embedded dev chain, an L2) the same way, signs
locally with the configured key, and translates web3's errors and the contract's reverts into
`ChainError`s that carry the revert reason (`ChainRevert`) or say how to reach the chain
(`ChainUnreachable`). Parameters are the protocol's own type (`SettlementParams`); receipts,
verdicts and allowances are the EIP-712 messages of docs/protocol-v2.md as mappings with the
doc's field names (what `verinfer.protocol.wire` messages hold), signatures as 65 bytes.
Addresses given by people are checked, never silently "corrected" (`parse_address`), and the
code at the contract's address must be the committed artifact's (`check_contract`).

The gateway's cycle (settlement rules v2): `commit_epoch` the receipts root of an epoch,
wait one block, read `beacon` and decide with `verinfer.protocol.challenge.is_challenged`
which receipts are challenged, `settle_epoch` with the full list in digest order, then for
each challenged receipt `pass_challenge` (validators' verdicts; `pass_challenges` carries many
in one transaction) or `accuse` (the node's signed receipt and arbitrators' verdicts) before
its deadline, and `finalize` after it.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from verinfer.errors import ChainError, ProtocolError
from verinfer.protocol.settlement import (
    LedgerState,
    Reputation,
    SettlementParams,
    Unbonding,
)

T = TypeVar("T")

# Kinds of `submit_evidence` and states of a challenged receipt, as the contract numbers them.
EVIDENCE_PASS, EVIDENCE_ACCUSE, EVIDENCE_APPEAL, EVIDENCE_WRONG_VERDICT = 0, 1, 2, 3
CASE_STATES = {0: "none", 1: "open", 2: "passed", 3: "accused", 4: "slashed", 5: "cleared",
               6: "lapsed"}
RECEIPT_FIELDS = ("request", "job", "outputHash", "logitsHash", "outputLength", "node",
                  "gateway", "user", "fee", "nonce", "deadline")
VERDICT_FIELDS = ("receipt", "request", "outputHash", "logitsHash", "valid",
                  "firstInvalidStep", "validator", "gateway")
ALLOWANCE_FIELDS = ("user", "settler", "capPerEpoch", "expiry", "nonce")
ADDRESS_FIELDS = {"node", "gateway", "user", "validator", "settler"}
# Deployment constants (`verinfer chain deploy` uses these): epoch length, delay of a parameter
# change, longest pause, committees (expected validators, validators a pass needs, expected
# arbitrators, arbitrators an accusation needs).
EPOCH_SECONDS = 600
PARAMS_DELAY_S = 2 * 24 * 3600
MAX_PAUSE_S = 3 * 24 * 3600
COMMITTEES = (6, 2, 10, 3)
MAX_PASS_BATCH = 160  # the contract's bound on passes per `pass_challenges`
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
    PAUSER = 2


@dataclass(frozen=True)
class NodeInfo:
    address: str
    endpoint: str
    registered_at: int
    stake: int
    unbonding: Unbonding
    reputation: Reputation
    active: bool


@dataclass(frozen=True)
class EpochRecord:
    settler: str
    epoch: int
    receipts_root: bytes
    requests: int
    challenged: int
    fees: int
    block: int
    tx_hash: str


@dataclass(frozen=True)
class CaseRecord:
    """A challenged receipt: its state and the deadline of what can happen next."""

    epoch: int
    receipt: bytes
    state: str
    node: str
    user: str
    fee: int
    escrow: int
    deadline: int
    appeal_deadline: int


@dataclass(frozen=True)
class SlashRecord:
    node: str
    receipt: bytes
    amount: int
    shortfall: int
    to_challengers: int
    to_user: int
    to_treasury: int
    block: int


def _is_loopback(url: str) -> bool:
    return any(h in url for h in ("://127.", "://localhost", "://[::1]"))


def params_args(params: SettlementParams) -> tuple[int, ...]:
    """The contract's `Params` tuple, in its field order."""
    p = params.validate()
    return (
        p.min_stake,
        p.unbonding_delay,
        p.withdrawal_delay,
        p.reward_asserter,
        p.reward_validators,
        p.slash,
        p.protocol_fee_bps,
        p.discount_bps,
        p.challenger_share_bps,
        p.challenge_ppm,
        p.challenge_window,
        p.appeal_window,
    )


def params_from_args(values: Sequence[int]) -> SettlementParams:
    (min_stake, unbonding_delay, withdrawal_delay, reward_asserter, reward_validators, slash,
     protocol_fee_bps, discount_bps, challenger_share_bps, challenge_ppm, challenge_window,
     appeal_window) = values
    return SettlementParams(
        min_stake=min_stake, unbonding_delay=unbonding_delay, reward_asserter=reward_asserter,
        reward_validators=reward_validators, slash=slash, protocol_fee_bps=protocol_fee_bps,
        discount_bps=discount_bps, challenger_share_bps=challenger_share_bps,
        withdrawal_delay=withdrawal_delay, challenge_ppm=challenge_ppm,
        challenge_window=challenge_window, appeal_window=appeal_window,
    )


def message_args(message: Mapping[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    """An EIP-712 message (the doc's field names) as the contract's struct tuple."""
    missing = [n for n in names if n not in message]
    if missing:
        raise ChainError(f"message lacks the fields {missing}")
    return tuple(
        Web3.to_checksum_address(message[n]) if n in ADDRESS_FIELDS else message[n] for n in names
    )


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
        epoch_seconds: int = EPOCH_SECONDS,
        params_delay: int = PARAMS_DELAY_S,
        max_pause: int = MAX_PAUSE_S,
        committees: tuple[int, int, int, int] = COMMITTEES,
    ) -> tuple[SettlementClient, Any]:
        """Deploy a new settlement contract; the deployer becomes owner with every role."""
        try:
            params.validate().check_delays(epoch_seconds)
        except ProtocolError as exc:
            raise ChainError(f"bad parameters: {exc}") from exc
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        probe = cls.__new__(cls)
        probe.rpc_url, probe.account, probe.w3 = rpc_url, account, w3
        with probe._translated("deploy"):  # web3 encodes the arguments right here
            constructor = factory.constructor(
                params_args(params), epoch_seconds, params_delay, max_pause, list(committees)
            )
        receipt = probe._send("deploy", constructor)
        return cls(w3, receipt["contractAddress"], account, rpc_url), receipt

    # ------------------------------------------------------------------ transactions

    def deposit(self, amount: int, beneficiary: str | None = None) -> Any:
        """Prepay fees for `beneficiary` (default: this account)."""
        fn = self.contract.functions
        if beneficiary is None:
            return self._send("deposit", fn.deposit(self.signer.address), value=amount)
        call = fn.deposit(parse_address(beneficiary, "beneficiary"))
        return self._send("deposit", call, value=amount)

    def fund_treasury(self, amount: int) -> Any:
        return self._send("fund treasury", self.contract.functions.fund_treasury(), value=amount)

    def stake(self, amount: int, value: int = 0) -> Any:
        """Bond `amount` of the balance; `value` (wei sent along) is deposited first."""
        return self._send("stake", self.contract.functions.stake(amount), value=value)

    def unstake(self, amount: int) -> Any:
        return self._send("unstake", self.contract.functions.unstake(amount))

    def request_withdrawal(self, amount: int) -> Any:
        """Ask to withdraw `amount` of the balance after the withdrawal delay."""
        return self._send("request withdrawal",
                          self.contract.functions.request_withdrawal(amount))

    def withdraw(self, amount: int) -> Any:
        """Pay out from a matured withdrawal request and matured unbonding stake."""
        return self._send("withdraw", self.contract.functions.withdraw(amount))

    def register(self, endpoint: str) -> Any:
        """Register this account as a node (its key is the node's key), once."""
        return self._send("register", self.contract.functions.register(endpoint))

    def set_allowance(self, allowance: Mapping[str, Any], signature: bytes) -> Any:
        """Record a user's signed `Allowance` (anyone may send it)."""
        call = self.contract.functions.set_allowance(
            message_args(allowance, ALLOWANCE_FIELDS), signature
        )
        return self._send("set allowance", call)

    def commit_epoch(self, epoch: int, receipts_root: bytes, count: int) -> Any:
        """Settler: commit the root over the epoch's receipt digests (sorted ascending)."""
        call = self.contract.functions.commit_epoch(epoch, receipts_root, count)
        return self._send("commit epoch", call)

    def settle_epoch(self, epoch: int, receipts: Sequence[Mapping[str, Any]]) -> Any:
        """Settler: settle a committed epoch with all its receipts, in digest order."""
        args = [message_args(r, RECEIPT_FIELDS) for r in receipts]
        return self._send("settle epoch", self.contract.functions.settle_epoch(epoch, args))

    def _evidence(
        self,
        kind: int,
        epoch: int,
        receipt: Mapping[str, Any],
        verdicts: Sequence[tuple[Mapping[str, Any], bytes]],
        receipt_signature: bytes = b"",
    ) -> Any:
        verdict_args, signatures = _verdict_args(verdicts)
        call = self.contract.functions.submit_evidence(
            kind, epoch, message_args(receipt, RECEIPT_FIELDS), receipt_signature,
            verdict_args, signatures,
        )
        return self._send(("pass challenge", "accuse", "appeal", "slash wrong verdicts")[kind],
                          call)

    def pass_challenge(
        self, epoch: int, receipt: Mapping[str, Any],
        verdicts: Sequence[tuple[Mapping[str, Any], bytes]],
    ) -> Any:
        """Close a challenge as passed with drawn validators' agreeing (verdict, signature)s."""
        return self._evidence(EVIDENCE_PASS, epoch, receipt, verdicts)

    def pass_challenges(
        self, epoch: int,
        cases: Sequence[tuple[Mapping[str, Any], Sequence[tuple[Mapping[str, Any], bytes]]]],
    ) -> Any:
        """Pass many challenges of `epoch` in one transaction: per case (receipt, agreeing
        drawn validators' (verdict, signature)s), at most `MAX_PASS_BATCH`. All or nothing:
        one case the contract would refuse alone refuses the batch (`ChainRevert` with its
        reason, raised by the gas estimate before anything is sent)."""
        if not 0 < len(cases) <= MAX_PASS_BATCH:
            raise ChainError(f"a pass batch holds 1 to {MAX_PASS_BATCH} cases, not {len(cases)}")
        args = [(message_args(receipt, RECEIPT_FIELDS), *_verdict_args(verdicts))
                for receipt, verdicts in cases]
        return self._send("pass challenges", self.contract.functions.pass_challenges(epoch, args))

    def accuse(
        self, epoch: int, receipt: Mapping[str, Any], receipt_signature: bytes,
        verdicts: Sequence[tuple[Mapping[str, Any], bytes]],
    ) -> Any:
        """Accuse an asserter: its signed receipt and drawn arbitrators' conflicting verdicts."""
        return self._evidence(EVIDENCE_ACCUSE, epoch, receipt, verdicts, receipt_signature)

    def appeal(
        self, epoch: int, receipt: Mapping[str, Any],
        verdicts: Sequence[tuple[Mapping[str, Any], bytes]],
    ) -> Any:
        """Overturn an accusation: more drawn arbitrators agreeing than accused."""
        return self._evidence(EVIDENCE_APPEAL, epoch, receipt, verdicts)

    def slash_wrong_verdicts(
        self, epoch: int, receipt: Mapping[str, Any],
        verdicts: Sequence[tuple[Mapping[str, Any], bytes]],
    ) -> Any:
        """Slash drawn validators whose verdicts the case's arbitration outcome contradicts."""
        return self._evidence(EVIDENCE_WRONG_VERDICT, epoch, receipt, verdicts)

    def finalize(self, epoch: int, receipt_id: bytes) -> Any:
        """Lapse an unanswered challenge or execute an accusation whose appeal window closed."""
        return self._send("finalize", self.contract.functions.finalize(epoch, receipt_id))

    def grant_role(self, account: str, role: Role) -> Any:
        call = self.contract.functions.grant_role(parse_address(account, "account"), int(role))
        return self._send("grant role", call)

    def revoke_role(self, account: str, role: Role) -> Any:
        call = self.contract.functions.revoke_role(parse_address(account, "account"), int(role))
        return self._send("revoke role", call)

    def propose_params(self, params: SettlementParams) -> Any:
        """Owner: parameters that apply after the contract's params delay (not to epochs
        committed before)."""
        call = self.contract.functions.propose_params(params_args(params))
        return self._send("propose params", call)

    def pause(self) -> Any:
        return self._send("pause", self.contract.functions.pause())

    def unpause(self) -> Any:
        return self._send("unpause", self.contract.functions.unpause())

    def transfer_ownership(self, new_owner: str) -> Any:
        """Owner: propose `new_owner`, who takes over (with the roles) by `accept_ownership`."""
        call = self.contract.functions.transfer_ownership(parse_address(new_owner, "new owner"))
        return self._send("transfer ownership", call)

    def accept_ownership(self) -> Any:
        return self._send("accept ownership", self.contract.functions.accept_ownership())

    # ------------------------------------------------------------------ reads

    def params(self) -> SettlementParams:
        return params_from_args(self._read("read params", self.contract.functions.params().call))

    def committees(self) -> tuple[int, int, int, int]:
        """(expected validators, pass quorum, expected arbitrators, accusation quorum)."""
        ve, vq, ae, aq = self._read("read committees", self.contract.functions.committees().call)
        return int(ve), int(vq), int(ae), int(aq)

    def epoch_seconds(self) -> int:
        return int(self._read("read epoch length", self.contract.functions.EPOCH_SECONDS().call))

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

    def withdrawal_of(self, address: str) -> tuple[int, int]:
        """(amount, release time on the contract's clock) of the pending withdrawal request."""
        a = Web3.to_checksum_address(address)
        amount, release = self._read("read withdrawal", self.contract.functions.withdrawals(a).call)
        return amount, release

    def unpaid_of(self, user: str) -> int:
        """Fees a user was served but could not pay (beyond its balance or allowance)."""
        a = Web3.to_checksum_address(user)
        return self._read("read unpaid", self.contract.functions.unpaid(a).call)

    def escrow_total(self) -> int:
        """Fees held for challenged receipts until their challenge closes."""
        return self._read("read escrow", self.contract.functions.escrow_total().call)

    def treasury(self) -> int:
        return self._read("read treasury", self.contract.functions.treasury().call)

    def owner(self) -> str:
        return self._read("read owner", self.contract.functions.owner().call)

    def roles_of(self, address: str) -> Role:
        a = Web3.to_checksum_address(address)
        return Role(self._read("read roles", self.contract.functions.roles(a).call))

    def paused(self) -> bool:
        return self._read("read paused", self.contract.functions.paused().call)

    def current_epoch(self) -> int:
        return self._read("read epoch", self.contract.functions.current_epoch().call)

    def epoch_bounds(self, epoch: int) -> tuple[int, int]:
        """[start, end) of `epoch` in unix seconds: a receipt's deadline must fall inside."""
        fns = self.contract.functions
        genesis = self._read("read genesis", fns.GENESIS().call)
        length = self._read("read epoch length", fns.EPOCH_SECONDS().call)
        return genesis + epoch * length, genesis + (epoch + 1) * length

    def commitment(self, settler: str, epoch: int) -> dict[str, Any] | None:
        """What `settler` committed for `epoch` (root, count, block, beacon, total stake,
        params version, settled), None if nothing."""
        call = self.contract.functions.commitments(Web3.to_checksum_address(settler), epoch).call
        root, count, block, beacon, total_stake, version, settled = self._read("read commit", call)
        if block == 0:
            return None
        return {"root": bytes(root), "count": count, "block": block, "beacon": bytes(beacon),
                "total_stake": total_stake, "version": version, "settled": settled}

    def beacon(self, settler: str, epoch: int) -> bytes | None:
        """The challenge beacon of a committed epoch: the hash of the block after the commit
        (None until that block exists). `verinfer.protocol.challenge.is_challenged(receipt id,
        beacon, challenge_ppm)` then says which receipts are challenged."""
        c = self.commitment(settler, epoch)
        if c is None:
            return None
        if c["beacon"] != bytes(32):
            return bytes(c["beacon"])
        if self._read("read block number", lambda: self.w3.eth.block_number) <= c["block"]:
            return None
        block = self._read("read block", lambda: self.w3.eth.get_block(c["block"] + 1))
        return bytes(block["hash"])

    def case(self, epoch: int, receipt_id: bytes) -> CaseRecord:
        status, node, user, fee, escrow, deadline, appeal = self._read(
            "read challenge", self.contract.functions.case_of(epoch, receipt_id).call
        )
        return CaseRecord(epoch, receipt_id, CASE_STATES[status], node, user, fee, escrow,
                          deadline, appeal)

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

    def _logs(self, action: str, event: str, from_block: int) -> list[Any]:
        getter = getattr(self.contract.events, event)()
        return list(self._read(action, lambda: getter.get_logs(from_block=from_block)))

    def nodes(self, from_block: int = 0) -> list[NodeInfo]:
        fns = self.contract.functions
        endpoints = {log["args"]["node"]: log["args"]["endpoint"]
                     for log in self._logs("read nodes", "NodeRegistered", from_block)}
        count = self._read("read node count", fns.node_count().call)
        out = []
        for i in range(count):
            address = self._read("read node", fns.node_at(i).call)
            registered_at, _ = self._read("read node", fns.nodes(address).call)
            out.append(
                NodeInfo(
                    address=address,
                    endpoint=endpoints.get(address, ""),
                    registered_at=registered_at,
                    stake=self.stake_of(address),
                    unbonding=self.unbonding_of(address),
                    reputation=self.reputation_of(address),
                    active=self._read("read node", fns.is_active(address).call),
                )
            )
        return out

    def ledger_state(self, addresses: Sequence[str]) -> LedgerState:
        """The contract's balances, stakes, unbonding, treasury and reputation for `addresses`."""
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
        return LedgerState(balance, stake, unbonding, self.treasury(), reputation)

    def epochs(self, from_block: int = 0) -> list[EpochRecord]:
        """Settled epochs, oldest first."""
        return [
            EpochRecord(
                settler=log["args"]["settler"],
                epoch=log["args"]["epoch"],
                receipts_root=bytes(log["args"]["receipts_root"]),
                requests=log["args"]["requests"],
                challenged=log["args"]["challenged"],
                fees=log["args"]["fees"],
                block=log["blockNumber"],
                tx_hash="0x" + bytes(log["transactionHash"]).hex(),
            )
            for log in self._logs("read epochs", "EpochSettled", from_block)
        ]

    def cases(self, from_block: int = 0, unresolved_only: bool = True) -> list[CaseRecord]:
        """Challenged receipts (by default only those open or accused), oldest first."""
        out = []
        for log in self._logs("read challenges", "ChallengeOpened", from_block):
            record = self.case(log["args"]["epoch"], bytes(log["args"]["receipt"]))
            if not unresolved_only or record.state in ("open", "accused"):
                out.append(record)
        return out

    def slashes(self, from_block: int = 0) -> list[SlashRecord]:
        return [
            SlashRecord(
                node=log["args"]["node"],
                receipt=bytes(log["args"]["receipt"]),
                amount=log["args"]["amount"],
                shortfall=log["args"]["shortfall"],
                to_challengers=log["args"]["to_challengers"],
                to_user=log["args"]["to_user"],
                to_treasury=log["args"]["to_treasury"],
                block=log["blockNumber"],
            )
            for log in self._logs("read slashes", "Slashed", from_block)
        ]


def _verdict_args(verdicts: Sequence[tuple[Mapping[str, Any], bytes]]
                  ) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """(verdict, signature)s as the contract takes them: in increasing validator address."""
    ordered = sorted(verdicts, key=lambda vs: int(str(vs[0]["validator"]), 16))
    return [message_args(v, VERDICT_FIELDS) for v, _ in ordered], [sig for _, sig in ordered]


def _reason(exc: ContractLogicError) -> str:
    message = exc.message if exc.message is not None else str(exc)
    reason = message.removeprefix("execution reverted: ").removeprefix("execution reverted")
    return reason or "no reason given"


def _rpc_message(exc: Web3RPCError) -> str:
    rpc = getattr(exc, "rpc_response", None)
    if isinstance(rpc, dict) and isinstance(rpc.get("error"), dict):
        return str(rpc["error"].get("message", exc))
    return str(exc)
