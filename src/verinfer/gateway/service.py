"""The gateway's request path: authenticate, price, route, sign the job, check the receipt, record it.

Below the HTTP layer and drivable without sockets (node calls go through `NodeClient`s made by
a factory, which tests give an in-memory transport). The gateway always asks nodes for a
stream, whatever the user asked: a stalled node is then noticed between tokens (the client's
read timeout), and a stream cut off after some tokens continues on the next node from the
tokens already sent (`verinfer.resume_token_ids`), which any honest node turns into the same
bytes. To know those tokens the gateway reads the ids each stream chunk carries in the
extension field `choices[i].token_ids` (docs/protocol-v2.md, "Streams"). A receipt is checked
(signatures, the job the gateway signed, request commitment, output hash, the tokens streamed)
and recorded before its response leaves the gateway.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verinfer.api.commitment import Prompts, commit
from verinfer.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    StreamOptions,
    VerinferRequestExtension,
)
from verinfer.errors import (
    GenerationParamsError,
    LocalError,
    ModelError,
    RemoteError,
    VerinferError,
)
from verinfer.gateway.router import NoNodeAvailable, RegisteredNode, Router
from verinfer.gateway.settler import Settler
from verinfer.gateway.store import GatewayStore
from verinfer.keyfile import Identity
from verinfer.node.client import NodeBusy, NodeClient, NodeError, NodeRefused, NodeUnavailable
from verinfer.protocol import wire

log = logging.getLogger("verinfer.gateway")

JOB_TTL_S = 600
# How long a read of an account's spendable funds is reused. Each read is three chain calls
# (allowance, epoch, balance: 30-50 ms on the dev chain, half a request's time), and a read is
# stale anyway by the time a generation ends; the cache is also dropped whenever the chain's
# epoch or the number of epochs this gateway settled changes, the two things that move the
# allowance or the balance by the gateway's own hand. What the gateway admitted since a read
# (receipts not yet settled, requests in flight) is debited locally from it (`_reserve_locked`).
SPENDABLE_TTL_S = 1.0
# A read older than this is still used, and renewed off the request path: a user who keeps
# sending requests never waits for the chain, and no read older than SPENDABLE_TTL_S is used.
# Late in the TTL: a busy user then costs one read (10-15 ms of the gateway's CPU, more of
# the chain's) per SPENDABLE_REFRESH_S.
SPENDABLE_REFRESH_S = 0.75
MAX_ATTEMPTS = 4  # nodes tried for one request before the user gets a 502
UserRequest = CompletionRequest | ChatCompletionRequest


class Unauthorized(LocalError):
    """401: no API key, or one this gateway does not know."""


class PaymentRequired(LocalError):
    """402: the account cannot pay for the request."""


class EpochFull(LocalError):
    """The current epoch holds as many requests as one settlement can carry: retry in the next."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FundsNotCached(LocalError):
    """`prepare(read_chain=False)`: no read of the account's funds may be reused, so preparing
    the request would wait on the chain (the caller then prepares it off the event loop)."""


class UnknownModel(LocalError):
    """404: the gateway does not serve this model."""


class UpstreamFailed(RemoteError):
    """502: every node tried failed the request, or one broke the protocol mid-stream."""


class BadReceipt(RemoteError):
    """A node's receipt does not check out; the node is treated as failed."""


@dataclass(frozen=True)
class ModelSpec:
    """What the gateway must know of a model to commit to a request: how prompts are tokenized,
    the context length, and (when pinned) the model_id nodes must serve."""

    name: str
    prompts: Prompts
    context_length: int
    model_id: bytes | None = None

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelSpec:
        """Tokenizer and configuration of a model directory (weights are not read); a quantized
        directory's manifest pins the model_id."""
        import json

        from tokenizers import Tokenizer

        from verinfer.api.prompt import PromptBuilder
        from verinfer.engine.config import load_config
        from verinfer.engine.quantize import QUANTIZED_MANIFEST, is_quantized_dir

        if not (model_dir / "tokenizer.json").is_file():
            raise ModelError(f"{model_dir}: no tokenizer.json (pass a model directory)")
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        model_id = None
        if is_quantized_dir(model_dir):
            from verinfer.engine.config import ModelConfig

            manifest = json.loads((model_dir / QUANTIZED_MANIFEST).read_text())
            config = ModelConfig.from_dict(manifest["config"])
            model_id = bytes.fromhex(str(manifest["model_id"]).removeprefix("0x"))
        else:
            config = load_config(model_dir)
        return cls(model_dir.name, PromptBuilder.from_dir(model_dir, tokenizer),
                   config.context_length, model_id)


@dataclass
class Prepared:
    """A user's request, committed: what the node is asked and what the job signs."""

    kind: str  # "chat" or "completion"
    user_model: str
    account: str
    body: UserRequest  # as forwarded (seed and max_tokens fixed), without the extension
    prompt_ids: list[int]
    request: wire.Request
    stop: tuple[str, ...]
    model_id: bytes
    max_fee: int
    stream: bool
    include_usage: bool
    logprobs: bool


@dataclass
class Delta:
    """Text (and the token ids it completes) to pass on to the user."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: Any = None


@dataclass
class Done:
    bundle: dict[str, Any]
    usage: dict[str, int]
    node: str
    failovers: int


@dataclass
class GatewayStats:
    requests: int = 0
    failovers: int = 0
    resumed_streams: int = 0
    receipts: int = 0
    refused: dict[int, int] = field(default_factory=dict)


class GatewayService:
    """The gateway's state and rules for serving users."""

    def __init__(
        self,
        store: GatewayStore,
        settler: Settler,
        router: Router,
        models: dict[str, ModelSpec],
        identity: Identity,
        domain: wire.Domain,
        price_per_token: int,
        clients: Callable[[RegisteredNode], NodeClient],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.settler, self.router = store, settler, router
        self.models, self.identity, self.domain = models, identity, domain
        self.price_per_token = price_per_token
        self.clients = clients
        self.clock = clock
        self.stats = GatewayStats()
        self._reserved: dict[str, int] = {}  # worst-case fees of requests in flight
        self._reserve_lock = threading.Lock()
        # account -> (when the read began, (chain epoch, settled epochs) then, the value)
        self._spendable: dict[str, tuple[float, tuple[int | None, int], int]] = {}
        self._spendable_lock = threading.Lock()
        self._refreshing: set[str] = set()
        self.spendable_refresher = ThreadPoolExecutor(1, thread_name_prefix="spendable")
        # Requests admitted per chain epoch, against what one settlement can carry (a receipt
        # beyond it could never be paid, and an epoch over it could not even be committed).
        self.receipts_per_epoch = settler.receipts_per_epoch()
        self._admitted: dict[int, int] = {}

    # ---------------------------------------------------------------- admission

    def authenticate(self, authorization: str | None) -> str:
        """The chain account an `Authorization: Bearer KEY` header bills."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing API key: send `Authorization: Bearer KEY` "
                               "(keys come from `verinfer gateway keys add`)")
        account = self.store.account_of_key(authorization.removeprefix("Bearer ").strip())
        if account is None:
            raise Unauthorized("unknown API key")
        return account

    def model_id_of(self, spec: ModelSpec) -> bytes:
        if spec.model_id is not None:
            return spec.model_id
        claimed = self.router.models().get(spec.name)
        if claimed is None:
            raise NoNodeAvailable(f"no healthy node serves model {spec.name!r} yet")
        return claimed

    def prepare(self, account: str, body: UserRequest, read_chain: bool = True) -> Prepared:
        """Commit to the request (prompt ids, every sampling value) and reserve its worst fee;
        with `read_chain` False, raise `FundsNotCached` (before any change) rather than read
        the account's funds on chain."""
        spec = self.models.get(body.model)
        if spec is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"model {body.model!r} is not served here (served: {served})")
        if body.n != 1:
            raise GenerationParamsError("n must be 1 through the gateway (one receipt per job)")
        if body.verinfer is not None:
            raise GenerationParamsError("the `verinfer` field is set by the gateway, not by users")
        # One implementation of the commitment for node and gateway: the job signed here then
        # commits to exactly what an honest node runs.
        model_id = self.model_id_of(spec)
        committed = commit(body, model_id, spec.prompts, spec.context_length)
        [row] = committed.rows
        request, max_tokens, seed = row.request, row.params.max_tokens, row.params.seed
        prompt_ids = committed.prompt_ids
        kind = "chat" if isinstance(body, ChatCompletionRequest) else "completion"
        logprobs = body.logprobs if isinstance(body, ChatCompletionRequest) \
            else body.logprobs is not None
        update: dict[str, Any] = {"seed": seed, "max_tokens": max_tokens, "stream": True,
                                  "stream_options": StreamOptions(include_usage=True),
                                  "user": None}
        if isinstance(body, ChatCompletionRequest):
            update["max_completion_tokens"] = None
        forwarded = body.model_copy(update=update)
        max_fee = wire.receipt_fee(self.price_per_token, len(prompt_ids), max_tokens)
        spendable = self.spendable(account, read_chain)
        # Funds first: a request refused with 402 takes no place in the epoch, or an account
        # without funds could fill every epoch and turn all other users away with 503.
        with self._reserve_lock:
            self._reserve_locked(account, max_fee, spendable)
        try:
            self._admit_to_epoch()
        except EpochFull:
            with self._reserve_lock:
                self._unreserve_locked(account, max_fee)
            raise
        return Prepared(kind, body.model, account, forwarded, prompt_ids, request,
                        body.stop_sequences, model_id, max_fee, body.stream,
                        body.include_usage_in_stream, logprobs)

    def _admit_to_epoch(self) -> None:
        """Count the request in the epoch its first job falls in; 503 once that epoch holds as
        many as one settlement can carry (fail-over jobs of admitted requests are not counted:
        the limit keeps a margin for them)."""
        clock = self.settler.epoch_clock()
        if self.receipts_per_epoch is None or clock is None:
            return
        genesis, length = clock
        deadline = self.job_deadline()
        epoch = (deadline - genesis) // length
        with self._reserve_lock:
            if epoch not in self._admitted:  # after a restart: what the store already holds
                self._admitted = {epoch: self.store.count_receipts(epoch)}
            if self._admitted[epoch] >= self.receipts_per_epoch:
                wait = max(1, genesis + (epoch + 1) * length - int(self.clock()))
                raise EpochFull(f"this epoch holds {self.receipts_per_epoch} requests, the most one "
                                f"settlement can carry: retry in {wait} s", wait)
            self._admitted[epoch] += 1

    def spendable(self, account: str, read_chain: bool = True) -> int:
        """The settler's `spendable(account)`, reused for up to SPENDABLE_TTL_S while the
        chain's epoch and this gateway's settled epochs stay the same; past
        SPENDABLE_REFRESH_S it is read again in the background. Without a read to reuse:
        read now, or with `read_chain` False raise `FundsNotCached`."""
        now, state = self.clock(), self._spendable_state()
        with self._spendable_lock:
            cached = self._spendable.get(account)
        if cached is not None and cached[1] == state and now - cached[0] < SPENDABLE_TTL_S:
            if now - cached[0] >= SPENDABLE_REFRESH_S:
                self._refresh_spendable(account)
            return cached[2]
        if not read_chain:
            raise FundsNotCached(f"no recent read of the funds of {account}")
        return self._read_spendable(account)

    def _spendable_state(self) -> tuple[int | None, int]:
        """What a read of spendable funds is valid for: the chain's epoch and the number of
        epochs this gateway settled."""
        clock = self.settler.epoch_clock()
        epoch = None if clock is None else \
            int(self.clock() + self.settler.clock_skew() - clock[0]) // clock[1]
        return epoch, self.store.count_epochs("settled")

    def _read_spendable(self, account: str) -> int:
        # Stamped with the time and state from before the read: a settlement that lands during
        # the read makes it stale at once.
        began, state = self.clock(), self._spendable_state()
        value = self.settler.spendable(account)
        with self._spendable_lock:
            cached = self._spendable.get(account)
            if cached is None or cached[0] <= began:  # a later read that finished first stays
                self._spendable[account] = (began, state, value)
        return value

    def _refresh_spendable(self, account: str) -> None:
        """Read `account`'s funds again on the refresher thread (one read at a time each)."""
        with self._spendable_lock:
            if account in self._refreshing:
                return
            self._refreshing.add(account)

        def refresh() -> None:
            try:
                self._read_spendable(account)
            except VerinferError as exc:  # the next request past the TTL reads it and fails
                log.warning("reading the funds of %s: %s", account, exc)
            finally:
                with self._spendable_lock:
                    self._refreshing.discard(account)

        self.spendable_refresher.submit(refresh)

    def _reserve_locked(self, account: str, amount: int, spendable: int) -> None:
        """Refuse (402) a request the account could not pay even at its longest."""
        owed = self.store.unsettled_fees(account) + self._reserved.get(account, 0)
        if owed + amount > spendable:
            raise PaymentRequired(
                f"insufficient funds: this request may cost up to {amount} wei, account "
                f"{account} can still spend {max(spendable - owed, 0)} wei; deposit more "
                "(`verinfer deposit`) or raise your allowance")
        self._reserved[account] = self._reserved.get(account, 0) + amount

    def release(self, prepared: Prepared) -> None:
        with self._reserve_lock:
            self._unreserve_locked(prepared.account, prepared.max_fee)

    def _unreserve_locked(self, account: str, amount: int) -> None:
        left = self._reserved.get(account, 0) - amount
        if left > 0:
            self._reserved[account] = left
        else:
            self._reserved.pop(account, None)

    # ---------------------------------------------------------------- serving

    def sign_job(self, prepared: Prepared, node: RegisteredNode) -> wire.Signed:
        job = wire.Job(
            request=prepared.request.hash_struct(), gateway=self.identity.address,
            user=prepared.account, node=node.address, price_per_token=self.price_per_token,
            nonce=secrets.randbits(128), deadline=self.job_deadline())
        return wire.Signed(job, wire.sign(self.domain, job, self.identity.private_key))

    def job_deadline(self) -> int:
        """JOB_TTL_S from now; when the chain numbers epochs, inside the current epoch (the
        receipt repeats the deadline and the contract takes it only in its own epoch), or
        within the next one when the current ends within a second."""
        clock = self.settler.epoch_clock()
        if clock is None:
            return int(self.clock()) + JOB_TTL_S
        now = int(self.clock() + self.settler.clock_skew())
        genesis, length = clock
        end = genesis + ((now - genesis) // length + 1) * length
        if end - 1 <= now:
            return end + min(JOB_TTL_S, length - 1)
        return min(now + JOB_TTL_S, end - 1)

    def epoch_of(self, receipt: wire.Receipt) -> int | None:
        """The chain's epoch of a receipt (that of its deadline), None without a chain clock."""
        clock = self.settler.epoch_clock()
        return None if clock is None else (receipt.deadline - clock[0]) // clock[1]

    def check_receipt(self, prepared: Prepared, job: wire.Signed, transport: Any,
                      streamed: list[int] | None) -> wire.ReceiptBundle:
        """The node's receipt must be for the job we signed, the request we committed and the
        tokens it streamed; raises `BadReceipt` otherwise."""
        if not isinstance(transport, dict):
            raise BadReceipt("the node sent no receipt (one object expected in `verinfer`)")
        try:
            bundle = wire.ReceiptBundle.from_json(transport)
            if bundle.domain != self.domain:
                raise BadReceipt("the receipt is signed for another chain or contract")
            if bundle.job != job:
                raise BadReceipt("the receipt is not for the job this gateway signed")
            if (bundle.request != prepared.request
                    or list(bundle.prompt_token_ids) != prepared.prompt_ids
                    or bundle.stop != prepared.stop):
                raise BadReceipt("the receipt commits to another request")
            # The job, request, prompt and stop are the gateway's own (compared above), so of
            # `bundle.check()` only the node's side is left to check: recovering the job's
            # signer again would cost a second signature recovery per request for nothing.
            message = job.message
            assert isinstance(message, wire.Job)
            wire.check_receipt(self.domain, bundle.receipt, message, bundle.request,
                               bundle.output_token_ids)
        except (RemoteError, wire.WireFormatError) as exc:
            raise BadReceipt(f"receipt refused: {exc}") from exc
        if streamed is not None and list(bundle.output_token_ids) != streamed:
            raise BadReceipt("the receipt's tokens are not the tokens the node streamed")
        return bundle

    async def run(self, prepared: Prepared) -> AsyncIterator[Delta | Done]:
        """Serve one request, failing over between nodes; yields deltas, then `Done`."""
        self.stats.requests += 1
        sent: list[int] = []
        text_sent = False
        resumable = True
        failed: list[str] = []
        randomness = secrets.token_bytes(32)
        last_error = "no node tried"
        try:
            for _attempt in range(MAX_ATTEMPTS):
                if text_sent and not resumable:
                    break
                try:
                    node = self.router.pick(prepared.user_model, prepared.model_id, randomness,
                                            exclude=failed)
                except NoNodeAvailable:
                    if not failed:
                        raise
                    break
                job = self.sign_job(prepared, node)
                body = prepared.body.model_copy(update={"verinfer": VerinferRequestExtension(
                    job=job.to_json(), resume_token_ids=list(sent))})
                if sent:
                    self.stats.resumed_streams += 1
                try:
                    async for item in self._attempt(prepared, node, job, body, sent):
                        if isinstance(item, Delta):
                            if item.token_ids:
                                sent.extend(item.token_ids)
                            elif item.text:
                                resumable = False
                            text_sent = text_sent or bool(item.text)
                        else:
                            item.failovers = len(failed)
                        yield item
                    return
                except (NodeUnavailable, BadReceipt) as exc:
                    last_error = f"{node.address}: {exc}"
                    self.router.request_failed(node.address)
                except NodeBusy as exc:
                    last_error = f"{node.address}: {exc}"
                except NodeRefused as exc:
                    if exc.status < 500 and exc.status != 409:
                        raise  # the request itself is at fault: the next node would refuse too
                    last_error = f"{node.address}: {exc}"
                failed.append(node.address)
                self.stats.failovers += 1
            raise UpstreamFailed(f"the request failed on {len(failed)} node(s); last: "
                                 f"{last_error}")
        finally:
            self.release(prepared)

    async def _attempt(self, prepared: Prepared, node: RegisteredNode, job: wire.Signed,
                       body: UserRequest, already: list[int]) -> AsyncIterator[Delta | Done]:
        streamed = list(already)
        token_ids_seen = True
        client = self.clients(node)
        try:
            stream = (client.stream_chat(body) if isinstance(body, ChatCompletionRequest)
                      else client.stream_completion(body))
            async for chunk in stream:
                for choice in chunk.choices:
                    ids = choice.token_ids
                    text = (choice.delta.content or "") if hasattr(choice, "delta") \
                        else getattr(choice, "text", "")
                    if ids is None and text:
                        token_ids_seen = False
                    if isinstance(ids, list):
                        streamed.extend(int(t) for t in ids)
                    if text or choice.finish_reason or ids:
                        yield Delta(text or "", list(ids or []), choice.finish_reason,
                                    choice.logprobs)
                if chunk.verinfer is not None:
                    bundle = self.check_receipt(prepared, job, chunk.verinfer,
                                                streamed if token_ids_seen else None)
                    receipt = bundle.receipt.message
                    assert isinstance(receipt, wire.Receipt)
                    stored = bundle.to_json()
                    self.store.add_receipt(bundle.receipt_id, prepared.account, receipt.node,
                                           receipt.fee, stored, self.epoch_of(receipt))
                    self.stats.receipts += 1
                    await _read_to_end(stream)
                    usage = chunk.usage.model_dump() if chunk.usage else {}
                    yield Done(stored, usage, node.address, 0)
                    return
            raise NodeUnavailable(f"{node.endpoint}: the stream ended without a receipt")
        finally:
            await client.aclose()

    # ---------------------------------------------------------------- receipts

    def receipt_record(self, receipt_id: bytes) -> dict[str, Any] | None:
        """A stored receipt as users fetch it, with where it was committed and its outcome."""
        from verinfer.protocol.merkle import merkle_proof

        stored = self.store.receipt(receipt_id)
        if stored is None:
            return None
        record = dict(stored.bundle)
        epoch = self.store.epoch(stored.epoch)
        if epoch.root is not None:
            ids = [r.receipt_id for r in self.store.receipts_of_epoch(stored.epoch)]
            index = ids.index(receipt_id)
            record["settlement"] = {
                "epoch": epoch.epoch, "state": epoch.state,
                "receiptsRoot": "0x" + epoch.root.hex(),
                "proof": [[left, "0x" + h.hex()] for left, h in merkle_proof(ids, index)],
                "settleRef": epoch.settle_ref,
            }
        outcome = self.store.outcome(receipt_id)
        if outcome is not None:
            record["challenge"] = {"outcome": outcome.outcome, **outcome.detail}
        return record


async def _read_to_end(stream: AsyncIterator[Any]) -> None:
    """Read what follows a receipt (`[DONE]`, the end of the response): a response read to its
    end gives its connection back to the pool, one left half-read is closed, and the next
    request to that node would open a new one. The receipt is in hand: a node that breaks
    off now has served the request all the same."""
    try:
        async for _ in stream:
            pass
    except NodeError:
        pass
