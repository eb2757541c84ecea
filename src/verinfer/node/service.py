"""What a node does with a request, below HTTP: plan it, check its job, sign its receipt, verify.

`NodeService` holds the node's identity, the models it serves and its nonce book. The server
(`verinfer.node.server`) only moves bytes to and from it. Rules applied here:

- **Jobs.** A request with a gateway-signed `Job` is served only if the signature recovers to
  the job's gateway, the job names this node, its deadline has not passed, it commits to this
  very request (model, prompt ids, every sampling value), and its `(gateway, nonce)` was never
  accepted before (recorded durably before serving). The receipt repeats the job's terms.
- **Direct calls.** A request without a job (a user calling the node itself) is served with a
  receipt on a *self-issued* job: gateway and user are the zero address, price 0 (so fee 0),
  a random nonce, deadline = the time it was served, and an all-zero signature (no gateway
  signed it). The receipt itself is signed by the node as usual.
- **Commitments.** Prompt ids, max_tokens defaults and per-row seeds follow
  `verinfer.api.commitment`, which the gateway uses too. A job covers one row: n = 1.
- **Verify.** A challenge is checked as a job (signature, validator named, deadline, nonce);
  the request sent with it must hash to the challenged request and the claimed tokens to its
  output hash; the replay runs on the engine thread; the verdict is signed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verinfer.api.commitment import commit
from verinfer.api.prompt import PromptBuilder
from verinfer.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    VerifyRequest,
)
from verinfer.engine.api import Engine
from verinfer.engine.params import SamplingParams
from verinfer.engine.replay import ReplayResult, replay
from verinfer.errors import GenerationParamsError, LocalError, RemoteError
from verinfer.keyfile import Identity
from verinfer.node.cheats import Cheat
from verinfer.node.nonces import SeenNonces
from verinfer.node.scheduler import Scheduler
from verinfer.node.worker import EngineWorker
from verinfer.protocol import wire

UNSIGNED = bytes(65)  # the signature of a self-issued job: no gateway signed it


class UnknownModel(LocalError):
    """The request names a model this node does not serve (HTTP 404)."""


class ReplayedMessage(RemoteError):
    """A job or challenge whose (signer, nonce) was already accepted."""


@dataclass
class ServedModel:
    name: str
    engine: Engine
    prompts: PromptBuilder
    scheduler: Scheduler

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.engine.model_id.removeprefix("0x"))

    @property
    def model_id_hex(self) -> str:
        return "0x" + self.model_id.hex()


@dataclass(frozen=True)
class Row:
    """One independent generation of a request: what it commits to and under which job."""

    index: int
    params: SamplingParams
    request: wire.Request
    job: wire.Signed


@dataclass
class Plan:
    """A validated request, ready for the scheduler."""

    model: ServedModel
    prompt_ids: list[int]
    rows: list[Row]
    forced: list[int] = field(default_factory=list)
    logprobs: int | None = None


class NodeService:
    """The node's state and rules; thread-safe where the server calls it from the event loop."""

    def __init__(
        self,
        identity: Identity,
        domain: wire.Domain,
        models: Sequence[ServedModel],
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.domain = domain
        self.models = {m.name: m for m in models}
        self._by_id = {m.model_id_hex: m for m in models}
        self.nonces = SeenNonces(state_dir / "seen-nonces.sqlite")
        self.clock = clock
        self.worker = EngineWorker([m.scheduler for m in models])

    @property
    def address(self) -> str:
        return self.identity.address

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self.nonces.close()

    def now(self) -> int:
        return int(self.clock())

    def model(self, name: str) -> ServedModel:
        found = self.models.get(name) or self._by_id.get(name.lower())
        if found is None:
            served = ", ".join(sorted(self.models))
            raise UnknownModel(f"model {name!r} is not served here (served: {served})")
        return found

    # ---------------------------------------------------------------- serving

    def plan(self, request: CompletionRequest | ChatCompletionRequest) -> Plan:
        """Validate a request and bind it to its rows and jobs (or self-issued jobs)."""
        model = self.model(request.model)
        if request.job is not None and request.n != 1:
            raise GenerationParamsError("a request with a job has n = 1 (one job per row)")
        if request.resume_token_ids and request.n != 1:
            raise GenerationParamsError("a resumed request has n = 1 (the tokens are one row's)")
        committed = commit(request, model.model_id, model.prompts, model.engine.config.context_length)
        if isinstance(request, ChatCompletionRequest):
            logprobs = (request.top_logprobs or 0) if request.logprobs else None
        else:
            logprobs = request.logprobs
        rows = [Row(r.index, r.params, r.request, self._job_for(request, r.request))
                for r in committed.rows]
        return Plan(model, committed.prompt_ids, rows, list(request.resume_token_ids), logprobs)

    def _job_for(self, request: SamplingRequest, commitment: wire.Request) -> wire.Signed:
        if request.job is None:
            job = wire.Job(
                request=commitment.hash_struct(),
                gateway=wire.ZERO_ADDRESS,
                user=wire.ZERO_ADDRESS,
                node=self.address,
                price_per_token=0,
                nonce=secrets.randbits(128),
                deadline=self.now(),
            )
            return wire.Signed(job, UNSIGNED)
        signed = wire.Signed.from_json(wire.Job, request.job)
        job = wire.check_job(self.domain, signed, self.address, self.now())
        if job.request != commitment.hash_struct():
            raise wire.MessageMismatch(
                "the job does not commit to this request (model, prompt ids or sampling values "
                "differ from what the gateway signed)"
            )
        if not self.nonces.claim("job", job.gateway, job.nonce, job.deadline, self.now()):
            raise ReplayedMessage(f"job nonce {job.nonce} from {job.gateway} was already served")
        return signed

    def release_jobs(self, plan: Plan) -> None:
        """The plan could not even be queued (429): its jobs' nonces may be sent again."""
        for row in plan.rows:
            job = row.job.message
            assert isinstance(job, wire.Job)
            if job.gateway != wire.ZERO_ADDRESS:
                self.nonces.release("job", job.gateway, job.nonce)

    def receipt(self, plan: Plan, row: Row, output_ids: Sequence[int], logits_hash: str) -> dict[str, Any]:
        """The signed receipt of one row as its JSON transport object."""
        job = row.job.message
        assert isinstance(job, wire.Job)
        receipt = wire.make_receipt(job, len(plan.prompt_ids), output_ids, bytes.fromhex(logits_hash))
        signed = wire.Signed(receipt, wire.sign(self.domain, receipt, self.identity.private_key))
        bundle = wire.ReceiptBundle(
            domain=self.domain,
            request=row.request,
            prompt_token_ids=tuple(plan.prompt_ids),
            stop=row.params.stop,
            job=row.job,
            receipt=signed,
            output_token_ids=tuple(output_ids),
        )
        return bundle.to_json()

    # ---------------------------------------------------------------- validation

    def check_challenge(self, body: VerifyRequest) -> tuple[wire.Challenge, wire.Request, ServedModel,
                                                              list[int], tuple[str, ...]]:
        """The checks of a challenge before its replay (module docstring)."""
        signed = wire.Signed.from_json(wire.Challenge, body.challenge)
        challenge = signed.message
        assert isinstance(challenge, wire.Challenge)
        wire.check_signed_by(self.domain, challenge, signed.signature, challenge.gateway)
        if challenge.validator != self.address:
            raise wire.MessageMismatch(
                f"the challenge is for validator {challenge.validator}, not {self.address}"
            )
        if challenge.deadline < self.now():
            raise wire.MessageMismatch(f"the challenge's deadline {challenge.deadline} has passed")
        fields = dict(body.request)
        try:
            prompt_ids = [int(t) for t in fields.pop("promptTokenIds")]
            stop = tuple(str(s) for s in fields.pop("stop"))
        except (KeyError, TypeError, ValueError) as exc:
            raise wire.MalformedMessage("the request needs promptTokenIds and stop") from exc
        request = wire.Request.from_json(fields)
        if wire.prompt_root(prompt_ids) != request.prompt_root or len(prompt_ids) != request.prompt_length:
            raise wire.MessageMismatch("promptTokenIds do not match the request's promptRoot")
        if wire.stop_root(stop) != request.stop_root:
            raise wire.MessageMismatch("stop does not match the request's stopRoot")
        if request.hash_struct() != challenge.request:
            raise wire.MessageMismatch("the request sent is not the challenged request")
        if wire.output_hash(body.output_token_ids) != challenge.output_hash:
            raise wire.MessageMismatch("the claimed tokens do not hash to the challenge's outputHash")
        model = self._by_id.get("0x" + request.model_id.hex())
        if model is None:
            raise UnknownModel(f"model 0x{request.model_id.hex()} is not served here")
        if not self.nonces.claim("challenge", challenge.gateway, challenge.nonce,
                                 challenge.deadline, self.now()):
            raise ReplayedMessage(
                f"challenge nonce {challenge.nonce} from {challenge.gateway} was already answered"
            )
        return challenge, request, model, prompt_ids, stop

    def replay(self, model: ServedModel, prompt_ids: list[int], output_ids: list[int],
               params: SamplingParams) -> ReplayResult:
        """On the engine thread only (the caller goes through `worker.call`)."""
        engine = model.engine
        return replay(engine.model, engine.tokenizer, prompt_ids, output_ids, params)

    def verdict(self, challenge: wire.Challenge, result: ReplayResult) -> dict[str, Any]:
        verdict = wire.Verdict(
            receipt=challenge.receipt,
            request=challenge.request,
            output_hash=challenge.output_hash,
            logits_hash=bytes.fromhex(result.logits_hash),
            valid=result.valid,
            first_invalid_step=result.first_invalid_step,
            validator=self.address,
            gateway=challenge.gateway,
        )
        signature = wire.sign(self.domain, verdict, self.identity.private_key)
        return wire.Signed(verdict, signature).to_json()


def load_served_model(
    model_dir: Path, slots: int, max_queue: int, device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    cheat: Cheat | None = None,
) -> ServedModel:
    """Load a model directory for serving; its name is the directory's name."""
    engine = Engine.load(model_dir, device=device, progress=progress)
    if cheat is not None:
        cheat.corrupt(engine.model)
    prompts = PromptBuilder.from_dir(model_dir, engine.tokenizer)
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=slots, max_queue=max_queue,
                          cheat=cheat)
    return ServedModel(model_dir.resolve().name, engine, prompts, scheduler)
