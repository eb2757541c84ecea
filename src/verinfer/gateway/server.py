"""The gateway's HTTP layer (FastAPI): routes that parse, delegate to `GatewayService`, and answer.

Users see the OpenAI API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, streaming
with `[DONE]`) plus `/v1/receipts/{id}`, `/health` and Prometheus `/metrics`. Every error is one
OpenAI-shaped envelope `{"error": {"message", "type", "code"}}`. The background loop refreshes
the registry, probes nodes and drives the epoch pipeline; chain calls run in a worker thread so
the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from verinfer.api.counting import CountRequests
from verinfer.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    VerifyRequest,
)
from verinfer.errors import GenerationParamsError, ProtocolError, VerinferError
from verinfer.gateway.epochs import EpochPipeline, ValidatorTransport
from verinfer.gateway.router import NoNodeAvailable, RegisteredNode
from verinfer.gateway.service import (
    Delta,
    Done,
    EpochFull,
    FundsNotCached,
    GatewayService,
    PaymentRequired,
    Prepared,
    Unauthorized,
    UnknownModel,
    UpstreamFailed,
)
from verinfer.node.client import NodeClient, NodeError, NodeRefused
from verinfer.protocol import wire

log = logging.getLogger("verinfer.gateway")

PROBE_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 1 << 20
# A request this small is committed on the event loop (tokenizing it takes well under a
# millisecond): handing it to a worker thread and back costs more than that on a busy machine.
INLINE_PREPARE_BYTES = 16 << 10

_ERRORS: list[tuple[type[Exception], int, str, str]] = [
    (Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (PaymentRequired, 402, "insufficient_quota", "insufficient_funds"),
    (UnknownModel, 404, "invalid_request_error", "model_not_found"),
    (GenerationParamsError, 400, "invalid_request_error", "invalid_value"),
    (ProtocolError, 400, "invalid_request_error", "invalid_value"),
    (NoNodeAvailable, 503, "service_unavailable", "no_node_available"),
    (UpstreamFailed, 502, "upstream_error", "nodes_failed"),
]


def error_response(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}},
                        status_code=status)


def envelope(exc: Exception) -> JSONResponse:
    """The error envelope of an exception raised below the HTTP layer."""
    if isinstance(exc, NodeRefused):  # a user error the node found (e.g. a bad stop sequence)
        return error_response(exc.status, exc.message, "invalid_request_error",
                              exc.code or "node_refused")
    if isinstance(exc, EpochFull):
        response = error_response(503, str(exc), "service_unavailable", "epoch_full")
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    for kind, status, type_, code in _ERRORS:
        if isinstance(exc, kind):
            return error_response(status, str(exc), type_, code)
    if isinstance(exc, VerinferError):
        return error_response(502, str(exc), "upstream_error", "gateway_error")
    log.exception("internal error", exc_info=exc)
    return error_response(500, "internal error", "server_error", "internal_error")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("verinfer_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.failovers = Counter("verinfer_gateway_failovers", "requests moved to another node",
                                 registry=self.registry)
        self.receipts = Counter("verinfer_gateway_receipts", "receipts checked and recorded",
                                registry=self.registry)


def route_template(scope: Scope) -> str:
    """A request's route for the metrics: the template (/v1/receipts/{receipt_id}), so ids do
    not become labels."""
    return getattr(scope.get("route"), "path", "unmatched")


class SharedTransport(httpx.AsyncBaseTransport):
    """One connection pool for every call the gateway makes to nodes.

    An `httpx.AsyncClient` built without a transport loads a TLS context (40-50 ms of CPU on
    the event loop on the development machine, for every request, probe and challenge) and
    opens new connections; clients built on this transport do neither. A client's `aclose`
    leaves the pool open: it lives as long as the gateway process.
    """

    def __init__(self) -> None:
        self._pool = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool.handle_async_request(request)

    async def aclose(self) -> None:
        """Left open on purpose (see the class docstring)."""


class HttpValidators(ValidatorTransport):
    """Challenges over the nodes' `/verify`."""

    def __init__(self, timeout_s: float = 300.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout_s = timeout_s
        self.transport = transport

    async def verify(self, node: RegisteredNode, challenge: wire.Signed,
                     bundle: wire.ReceiptBundle) -> dict[str, Any]:
        request = {**bundle.request.to_json(), "promptTokenIds": list(bundle.prompt_token_ids),
                   "stop": list(bundle.stop)}
        async with NodeClient(node.endpoint, timeout_s=self.timeout_s,
                              transport=self.transport) as client:
            answer = await client.verify(VerifyRequest(
                challenge=challenge.to_json(), request=request,
                output_token_ids=list(bundle.output_token_ids)))
        return answer.verdict


async def probe(service: GatewayService, node: RegisteredNode,
                transport: httpx.AsyncBaseTransport | None = None) -> None:
    """One health check: `/health` names the registered key, `/v1/models` what it serves."""
    now = time.time()
    try:
        async with NodeClient(node.endpoint, timeout_s=PROBE_TIMEOUT_S,
                              transport=transport) as client:
            health = await client.health()
            models = await client.models()
        if wire.check_address(health.address) != node.address:
            raise NodeError(f"{node.endpoint} answers as {health.address}, registered as "
                            f"{node.address}")
        served = {card.id: bytes.fromhex(card.model_id.removeprefix("0x"))
                  for card in models.data}
    except (VerinferError, ValueError) as exc:
        log.info("node %s unhealthy: %s", node.address, exc)
        service.router.probe_failed(node.address, now)
        return
    service.router.probe_succeeded(node.address, served, now)


async def refresh(service: GatewayService,
                  transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Registry from the chain, then every node probed."""
    nodes = await asyncio.to_thread(service.settler.registry)
    service.router.update_registry(nodes)
    await asyncio.gather(*(probe(service, n, transport) for n in nodes))


def create_app(
    service: GatewayService,
    pipeline: EpochPipeline | None = None,
    probe_interval_s: float = 5.0,
    pipeline_interval_s: float = 2.0,
    metrics: GatewayMetrics | None = None,
    node_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway's ASGI app; with a `pipeline`, its lifespan runs the background loop;
    probes go through `node_transport` when given (`SharedTransport`)."""
    metrics = metrics or GatewayMetrics()

    async def background() -> None:
        last_probe = 0.0
        while True:
            try:
                if time.monotonic() - last_probe >= probe_interval_s:
                    last_probe = time.monotonic()
                    await refresh(service, node_transport)
                if pipeline is not None:
                    await pipeline.step()
            except VerinferError as exc:
                log.warning("background: %s", exc)
            await asyncio.sleep(pipeline_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await refresh(service, node_transport)
        task = asyncio.create_task(background())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="verinfer gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    app.add_middleware(CountRequests, counter=metrics.requests, route_of=route_template,
                       on_error=envelope)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                              "not_found" if exc.status_code == 404 else "http_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        healthy = sum(1 for h in service.router.health.values() if h.healthy)
        return {"status": "ok", "address": service.identity.address,
                "nodes": len(service.router.nodes), "healthy_nodes": healthy,
                "open_epoch": service.store.open_epoch().epoch}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            service.authenticate(request.headers.get("authorization"))
        except Unauthorized as exc:
            return envelope(exc)
        now, claimed = int(time.time()), service.router.models()
        data = [{"id": name, "object": "model", "created": now,
                 "owned_by": service.identity.address,
                 "model_id": "0x" + (spec.model_id or claimed[name]).hex(),
                 "context_length": spec.context_length}
                for name, spec in sorted(service.models.items())
                if spec.model_id is not None or name in claimed]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/receipts/{receipt_id}")
    async def receipt(receipt_id: str, request: Request) -> Response:
        try:
            account = service.authenticate(request.headers.get("authorization"))
            raw = bytes.fromhex(receipt_id.removeprefix("0x"))
        except Unauthorized as exc:
            return envelope(exc)
        except ValueError:
            return error_response(400, "a receipt id is 0x followed by 64 hex digits",
                                  "invalid_request_error", "invalid_value")
        record = service.receipt_record(raw) if len(raw) == 32 else None
        if record is None or record["receipt"]["user"].lower() != account.lower():
            return error_response(404, f"no receipt {receipt_id} for this API key",
                                  "invalid_request_error", "not_found")
        return JSONResponse(record)

    async def parse(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error_response(413, f"request body over {MAX_BODY_BYTES} bytes",
                                  "invalid_request_error", "body_too_large")
        try:
            data = json.loads(raw)
        except ValueError:
            return error_response(400, "the request body is not valid JSON",
                                  "invalid_request_error", "invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error_response(400, f"{where}: {first['msg']}", "invalid_request_error",
                                  "invalid_value")

    async def serve(request: Request, model: type[BaseModel]) -> Response:
        try:
            account = service.authenticate(request.headers.get("authorization"))
        except Unauthorized as exc:
            return envelope(exc)
        body = await parse(request, model)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, CompletionRequest | ChatCompletionRequest)
        try:
            prepared = None
            if len(await request.body()) <= INLINE_PREPARE_BYTES:
                try:  # on the event loop while a read of the account's funds can be reused
                    prepared = service.prepare(account, body, read_chain=False)
                except FundsNotCached:
                    pass
            if prepared is None:  # off it: the read waits on the chain, a long prompt on the tokenizer
                prepared = await asyncio.to_thread(service.prepare, account, body)
        except VerinferError as exc:
            return envelope(exc)
        ident = ("chatcmpl-" if prepared.kind == "chat" else "cmpl-") + secrets.token_hex(12)
        if prepared.stream:
            return StreamingResponse(sse(prepared, ident, int(time.time())),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            return JSONResponse(await complete(prepared, ident, int(time.time())))
        except VerinferError as exc:
            return envelope(exc)

    async def complete(prepared: Prepared, ident: str, created: int) -> dict[str, Any]:
        text: list[str] = []
        finish: str | None = None
        logprobs: list[Any] = []
        done: Done | None = None
        async for item in service.run(prepared):
            if isinstance(item, Delta):
                text.append(item.text)
                finish = item.finish_reason or finish
                if item.logprobs is not None:
                    logprobs.append(item.logprobs)
            else:
                done = item
        assert done is not None  # run() ends with Done or raises
        note(done)
        common = {"id": ident, "created": created, "model": prepared.user_model,
                  "usage": done.usage, "verinfer": done.bundle}
        if prepared.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": "".join(text)}}
            if prepared.logprobs:
                choice["logprobs"] = {"content": [c for lp in logprobs
                                                  for c in (_dump(lp).get("content") or [])]}
            return {**common, "object": "chat.completion", "choices": [choice]}
        choice = {"index": 0, "text": "".join(text), "finish_reason": finish}
        if prepared.logprobs:
            merged: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [],
                                            "top_logprobs": [], "text_offset": []}
            offset = 0
            for lp in (_dump(x) for x in logprobs):
                merged["tokens"] += lp.get("tokens", [])
                merged["token_logprobs"] += lp.get("token_logprobs", [])
                merged["top_logprobs"] += lp.get("top_logprobs") or []
                merged["text_offset"] += [offset + o for o in lp.get("text_offset", [])]
                offset += sum(len(t) for t in lp.get("tokens", []))
            choice["logprobs"] = merged
        return {**common, "object": "text_completion", "choices": [choice]}

    def note(done: Done) -> None:
        metrics.receipts.inc()
        if done.failovers:
            metrics.failovers.inc(done.failovers)

    async def sse(prepared: Prepared, ident: str, created: int) -> AsyncIterator[str]:
        chat = prepared.kind == "chat"
        common = {"id": ident, "created": created, "model": prepared.user_model,
                  "object": "chat.completion.chunk" if chat else "text_completion"}

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        if chat:
            yield event({**common, "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        try:
            async for item in service.run(prepared):
                if isinstance(item, Delta):
                    choice: dict[str, Any] = {"index": 0, "finish_reason": item.finish_reason}
                    if chat:
                        choice["delta"] = {"content": item.text}
                    else:
                        choice["text"] = item.text
                    if item.logprobs is not None:
                        choice["logprobs"] = _dump(item.logprobs)
                    yield event({**common, "choices": [choice]})
                else:
                    note(item)
                    final: dict[str, Any] = {**common, "choices": [], "verinfer": item.bundle}
                    if prepared.include_usage:
                        final["usage"] = item.usage
                    yield event(final)
        except Exception as exc:  # noqa: BLE001 - headers are sent: end the stream with an envelope
            yield event(json.loads(bytes(envelope(exc).body)))
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    return app


def _dump(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return dict(value) if isinstance(value, dict) else {}
