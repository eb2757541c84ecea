"""The node's HTTP layer (FastAPI): OpenAI-compatible routes, `/verify`, `/health`, `/metrics`.

Thin by design: each route parses its schema, asks `NodeService` (rules) and the scheduler
(engine work, on the engine thread), and moves bytes. Token events cross from the engine
thread to the event loop through `call_soon_threadsafe`, so the loop never waits on inference.
A client that goes away cancels its requests, which frees their cache slots at the next step.
Every error is OpenAI's envelope `{"error": {"message", "type", "code"}}` with a 4xx status
(5xx only for a fault of the node itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from verinfer.api.commitment import ContextExceeded, params_of
from verinfer.api.counting import CountRequests
from verinfer.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TopLogprob,
    Usage,
    VerifyRequest,
    VerifyResponse,
)
from verinfer.engine.generate import GenerationResult
from verinfer.errors import GenerationParamsError, ModelError, VerinferError
from verinfer.node.scheduler import (
    QueueFull,
    ResumeMismatch,
    Scheduler,
    StepEvent,
    StepStats,
    Submission,
)
from verinfer.node.service import NodeService, Plan, ReplayedMessage, UnknownModel
from verinfer.protocol import wire

log = logging.getLogger("verinfer.node")
M = TypeVar("M", bound=BaseModel)
RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.25
# A stream sends its first tokens at once, then at most one chunk per choice every
# STREAM_FLUSH_S with the tokens of the steps since (the last ones as soon as the generation
# ends): a reader (the gateway relaying a stream it parses chunk by chunk) then pays per chunk
# a few times per generation, not per token, and no token waits longer than this. Streams
# with logprobs keep one token per chunk.
STREAM_FLUSH_S = 0.01

# Exception class -> (HTTP status, OpenAI error type, code); the first match wins.
ERRORS: list[tuple[type[Exception], int, str, str]] = [
    (UnknownModel, 404, "invalid_request_error", "model_not_found"),
    (ContextExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    (ResumeMismatch, 409, "invalid_request_error", "resume_mismatch"),
    (GenerationParamsError, 400, "invalid_request_error", "invalid_value"),
    (QueueFull, 429, "rate_limit_error", "queue_full"),
    (wire.InvalidSignature, 401, "authentication_error", "invalid_signature"),
    (wire.MalformedMessage, 400, "invalid_request_error", "malformed_message"),
    (wire.WireFormatError, 400, "invalid_request_error", "invalid_value"),
    (ReplayedMessage, 409, "invalid_request_error", "replayed"),
    (wire.MessageMismatch, 403, "permission_error", "job_refused"),
    (ModelError, 400, "invalid_request_error", "model_error"),
]


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class BadRequest(Exception):
    """The body is not JSON or does not match its schema."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_response(status: int, message: str, type_: str, code: str | None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, code=code, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def envelope(exc: Exception) -> JSONResponse:
    if isinstance(exc, BadRequest):
        return error_response(400, str(exc), "invalid_request_error", "invalid_request", exc.param)
    for cls, status, type_, code in ERRORS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
            return error_response(status, str(exc), type_, code, headers=headers)
    log.exception("internal error", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error", "internal")


async def parse_body(request: Request, schema: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise BadRequest(f"{where}: {message}" if where else message, where or None) from exc


class NodeMetrics:
    """Prometheus metrics of one node (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("verinfer_node_requests", "HTTP requests", ["route", "status"], registry=r)
        self.tokens = Counter("verinfer_node_tokens", "tokens processed", ["kind"], registry=r)
        self.queue_depth = Gauge("verinfer_node_queue_depth", "requests waiting for a slot", registry=r)
        self.active = Gauge("verinfer_node_active_requests", "requests in the running batch", registry=r)
        self.batch_size = Histogram("verinfer_node_batch_size", "rows per decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.step_seconds = Histogram("verinfer_node_step_seconds", "engine step latency",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                      registry=r)

    def observe_step(self, scheduler: Scheduler, stats: StepStats) -> None:
        if stats.batch:
            self.batch_size.observe(stats.batch)
            self.step_seconds.observe(stats.seconds)
        self.queue_depth.set(scheduler.queued)
        self.active.set(scheduler.active)


ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/completions",
                    "/v1/chat/completions", "/verify"})


def route_label(scope: Scope) -> str:
    """A request's route for the metrics: one of ROUTES, else "other" (no unbounded labels)."""
    return scope["path"] if scope["path"] in ROUTES else "other"


@dataclass
class RowOutput:
    """What the route collects for one row (choice)."""

    pieces: list[str] = field(default_factory=list)
    events: list[StepEvent] = field(default_factory=list)
    result: GenerationResult | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Generation:
    """The rows of one planned request in flight: submitted, their events on one queue."""

    def __init__(self, service: NodeService, plan: Plan) -> None:
        self.service, self.plan = service, plan
        self.queue: asyncio.Queue[tuple[int, StepEvent]] = asyncio.Queue()
        self.outputs = [RowOutput() for _ in plan.rows]
        self.submissions: list[Submission] = []
        self.finished = 0

    def submit(self) -> None:
        loop = asyncio.get_running_loop()
        scheduler = self.plan.model.scheduler
        for row in self.plan.rows:
            def sink(event: StepEvent, index: int = row.index) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

            submission = Submission(self.plan.prompt_ids, row.params, sink,
                                    forced=list(self.plan.forced), logprobs=self.plan.logprobs)
            try:
                scheduler.submit(submission)
            except Exception:  # undo the reservation, then re-raise as it was
                self.cancel()
                self.service.release_jobs(self.plan)  # nothing was served: the gateway may retry
                raise
            self.submissions.append(submission)
        self.service.worker.wake()

    def cancel(self) -> None:
        for submission in self.submissions:
            submission.cancel()

    @property
    def done(self) -> bool:
        return self.finished == len(self.plan.rows)

    async def next(self) -> tuple[int, StepEvent]:
        index, event = await self.queue.get()
        if event.error is not None:
            self.cancel()
            raise event.error
        output = self.outputs[index]
        output.events.append(event)
        output.pieces.append(event.text)
        if event.result is not None:
            output.result = event.result
            self.finished += 1
        return index, event

    def usage(self) -> Usage:
        prompt = len(self.plan.prompt_ids)
        completion = sum(len(o.result.token_ids) for o in self.outputs if o.result)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def receipts(self) -> dict[str, Any] | list[dict[str, Any]]:
        out = []
        for row, output in zip(self.plan.rows, self.outputs, strict=True):
            assert output.result is not None
            out.append(self.service.receipt(self.plan, row, output.result.token_ids,
                                            output.result.logits_hash))
        return out[0] if len(out) == 1 else out


def _token_text(service_tokenizer: Any, token: int) -> str:
    return str(service_tokenizer.decode([token], skip_special_tokens=False))


def create_app(
    service: NodeService,
    metrics: NodeMetrics | None = None,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """The node's ASGI app; its lifespan starts and stops the engine thread."""
    metrics = metrics or NodeMetrics()
    service.worker.observe = metrics.observe_step

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="verinfer node", lifespan=lifespan, docs_url=None, redoc_url=None)

    app.add_middleware(CountRequests, counter=metrics.requests, route_of=route_label)

    @app.exception_handler(BadRequest)
    @app.exception_handler(VerinferError)
    async def known_error(request: Request, exc: Exception) -> JSONResponse:
        return envelope(exc)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return envelope(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                              "not_found" if exc.status_code == 404 else "http_error")

    @app.get("/health")
    async def health() -> Health:
        schedulers = [m.scheduler for m in service.models.values()]
        return Health(address=service.address, models=sorted(service.models),
                      slots=sum(s.slots for s in schedulers),
                      active=sum(s.active for s in schedulers),
                      queued=sum(s.queued for s in schedulers))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> ModelList:
        now = int(time.time())
        return ModelList(data=[
            ModelCard(id=name, created=now, owned_by=service.address, model_id=m.model_id_hex,
                      context_length=m.engine.config.context_length)
            for name, m in sorted(service.models.items())
        ])

    async def serve(request: Request, body: CompletionRequest | ChatCompletionRequest) -> Response:
        try:
            plan = service.plan(body)
            generation = Generation(service, plan)
            generation.submit()
        except Exception as exc:  # noqa: BLE001 - any failure becomes an OpenAI error envelope
            return envelope(exc)
        metrics.tokens.labels("prompt").inc(len(plan.prompt_ids) * len(plan.rows))
        chat = isinstance(body, ChatCompletionRequest)
        prefix = "chatcmpl-" if chat else "cmpl-"
        ident, created = prefix + secrets.token_hex(12), int(time.time())
        if body.stream:
            return StreamingResponse(
                stream(generation, body, ident, created), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        watcher = asyncio.create_task(watch_disconnect(request, generation))
        try:
            while not generation.done:
                await generation.next()
        except ClientGone:
            return error_response(499, "client disconnected", "invalid_request_error", "client_closed")
        except Exception as exc:  # noqa: BLE001 - any failure becomes an OpenAI error envelope
            return envelope(exc)
        finally:
            watcher.cancel()
            if not generation.done:
                generation.cancel()
        count_completion(generation)
        return JSONResponse(response(generation, body, ident, created).model_dump(exclude_none=True))

    async def watch_disconnect(request: Request, generation: Generation) -> None:
        """End a non-streamed request whose client went away (frees its slots)."""
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        generation.cancel()
        generation.queue.put_nowait((-1, StepEvent(error=ClientGone())))

    def count_completion(generation: Generation) -> None:
        metrics.tokens.labels("completion").inc(generation.usage().completion_tokens)

    def response(generation: Generation, body: CompletionRequest | ChatCompletionRequest,
                 ident: str, created: int) -> BaseModel:
        tokenizer = generation.plan.model.engine.tokenizer
        usage, receipts = generation.usage(), generation.receipts()
        if isinstance(body, ChatCompletionRequest):
            chat_choices = [
                ChatChoice(index=i, message=AssistantMessage(content=o.text),
                           logprobs=chat_logprobs(tokenizer, o.events, generation.plan.logprobs),
                           finish_reason=o.result.finish_reason if o.result else None)
                for i, o in enumerate(generation.outputs)
            ]
            return ChatCompletionResponse(id=ident, created=created, model=body.model,
                                          choices=chat_choices, usage=usage, verinfer=receipts)
        choices = [
            CompletionChoice(index=i, text=o.text,
                             logprobs=completion_logprobs(tokenizer, o.events, generation.plan.logprobs),
                             finish_reason=o.result.finish_reason if o.result else None)
            for i, o in enumerate(generation.outputs)
        ]
        return CompletionResponse(id=ident, created=created, model=body.model, choices=choices,
                                  usage=usage, verinfer=receipts)

    async def stream(generation: Generation, body: CompletionRequest | ChatCompletionRequest,
                     ident: str, created: int) -> AsyncIterator[str]:
        chat = isinstance(body, ChatCompletionRequest)
        tokenizer = generation.plan.model.engine.tokenizer
        def chunk(choices: list[Any], usage: Usage | None = None,
                  receipts: dict[str, Any] | list[dict[str, Any]] | None = None) -> BaseModel:
            chunk_type = ChatCompletionChunk if chat else CompletionChunk
            return chunk_type(id=ident, created=created, model=body.model, choices=choices,
                              usage=usage, verinfer=receipts)

        def sse(chunk: BaseModel) -> str:
            return f"data: {json.dumps(chunk.model_dump(exclude_none=True))}\n\n"

        try:
            if chat:
                yield sse(chunk([
                    ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                    for i in range(len(generation.plan.rows))
                ]))
            # Ids of the steps since a choice's last chunk (docs/protocol-v2.md, "Streams"): a
            # gateway continues a cut stream on another node from exactly these tokens.
            unsent: dict[int, list[int]] = {}
            pending: dict[int, list[StepEvent]] = {}  # events of a choice's next chunk
            one_per_chunk = generation.plan.logprobs is not None
            loop = asyncio.get_running_loop()
            last_flush = -STREAM_FLUSH_S
            while not generation.done:
                try:
                    events = [await generation.next()]
                    while not one_per_chunk and not generation.done:
                        wait = last_flush + STREAM_FLUSH_S - loop.time()
                        if wait <= 0:
                            break
                        try:
                            async with asyncio.timeout(wait):
                                events.append(await generation.next())
                        except TimeoutError:
                            break
                except Exception as exc:  # noqa: BLE001 - headers are sent: end the stream with an envelope
                    error = json.loads(bytes(envelope(exc).body))
                    yield f"data: {json.dumps(error)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                last_flush = loop.time()
                for index, event in events:
                    if event.token_id >= 0:
                        unsent.setdefault(index, []).append(event.token_id)
                    pending.setdefault(index, []).append(event)
                for index in list(pending):
                    batch = pending[index]
                    text = "".join(e.text for e in batch)
                    finish = batch[-1].finish_reason
                    if not text and finish is None and not one_per_chunk:
                        continue  # only ids so far (a partial character): they ride on the next
                    del pending[index]
                    token_ids = unsent.pop(index, [])
                    if chat:
                        logprobs = chat_logprobs(tokenizer, batch, generation.plan.logprobs)
                        yield sse(chunk([ChatChunkChoice(
                            index=index, delta=ChatDelta(content=text), logprobs=logprobs,
                            finish_reason=finish, token_ids=token_ids)]))
                    else:
                        text_logprobs = completion_logprobs(tokenizer, batch, generation.plan.logprobs)
                        yield sse(chunk([CompletionChoice(
                            index=index, text=text, logprobs=text_logprobs,
                            finish_reason=finish, token_ids=token_ids)]))
            count_completion(generation)
            usage = generation.usage() if body.include_usage_in_stream else None
            yield sse(chunk([], usage, generation.receipts()))
            yield "data: [DONE]\n\n"
        finally:
            if not generation.done:
                generation.cancel()  # the client went away: free the slots

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve(request, await parse_body(request, CompletionRequest))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, await parse_body(request, ChatCompletionRequest))

    @app.post("/verify")
    async def verify(request: Request) -> Response:
        body = await parse_body(request, VerifyRequest)
        try:
            challenge, commitment, model, prompt_ids, stop = service.check_challenge(body)
            params = params_of(commitment, stop)
            outputs = list(body.output_token_ids)
            future = service.worker.call(lambda: service.replay(model, prompt_ids, outputs, params))
            result = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an OpenAI error envelope
            return envelope(exc)
        verdict = service.verdict(challenge, result)
        return JSONResponse(VerifyResponse(verdict=verdict, detail=result.reason).model_dump())

    return app


def completion_logprobs(tokenizer: Any, events: list[StepEvent], top: int | None) -> CompletionLogprobs | None:
    if top is None:
        return None
    out = CompletionLogprobs(top_logprobs=[] if top else None)
    offset = 0
    for event in events:
        text = _token_text(tokenizer, event.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(event.logprob if event.logprob is not None else 0.0)
        out.text_offset.append(offset)
        offset += len(text)
        if out.top_logprobs is not None:
            out.top_logprobs.append({_token_text(tokenizer, t): lp for t, lp in event.top_logprobs})
    return out


def chat_logprobs(tokenizer: Any, events: list[StepEvent], top: int | None) -> ChatLogprobs | None:
    if top is None:
        return None
    content = []
    for event in events:
        text = _token_text(tokenizer, event.token_id)
        content.append(ChatTokenLogprob(
            token=text, logprob=event.logprob if event.logprob is not None else 0.0,
            bytes=list(text.encode()),
            top_logprobs=[TopLogprob(token=(t := _token_text(tokenizer, tid)), logprob=lp,
                                     bytes=list(t.encode())) for tid, lp in event.top_logprobs],
        ))
    return ChatLogprobs(content=content)
