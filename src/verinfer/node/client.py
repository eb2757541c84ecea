"""An async client of one node's HTTP API (httpx), for the gateway and for tests.

httpx errors are translated at this boundary: a node that cannot be reached, times out or
breaks off a stream raises `NodeUnavailable` (the caller may fail over to another node); a
node that answers with an error envelope raises `NodeRefused` carrying its status and message;
429 raises `NodeBusy` with the node's `Retry-After`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from verinfer.api.schemas import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    Health,
    ModelList,
    VerifyRequest,
    VerifyResponse,
)
from verinfer.errors import VerinferError

M = TypeVar("M", bound=BaseModel)
DEFAULT_TIMEOUT_S = 300.0


class NodeError(VerinferError):
    """A call to a node failed."""


class NodeUnavailable(NodeError):
    """The node did not answer (connection refused, timeout, stream cut off, garbage)."""


class NodeRefused(NodeError):
    """The node answered with an error envelope."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status, self.message, self.code = status, message, code
        super().__init__(f"node refused ({status}{', ' + code if code else ''}): {message}")


class NodeBusy(NodeRefused):
    """429: the node's queue is full; try again after `retry_after` seconds or elsewhere."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(429, message, "queue_full")


def _refusal(response: httpx.Response, body: bytes) -> NodeRefused:
    try:
        error = json.loads(body)["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = body[:200].decode("utf-8", "replace") or response.reason_phrase, None
    if response.status_code == 429:
        try:
            retry_after = float(response.headers.get("retry-after", "1"))
        except ValueError:
            retry_after = 1.0
        return NodeBusy(message, retry_after)
    return NodeRefused(response.status_code, message, code)


def _parse(model: type[M], data: Any, url: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise NodeUnavailable(f"{url}: malformed {model.__name__}: {exc.errors()[0]['msg']}") from exc


class NodeClient:
    """Calls to the node at `base_url` (e.g. `http://127.0.0.1:8001`)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, model: type[M], body: BaseModel | None = None) -> M:
        payload = None if body is None else body.model_dump(mode="json", exclude_none=True)
        try:
            response = await self._http.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise NodeUnavailable(f"{self.base_url}{path}: {type(exc).__name__} {exc}") from exc
        if response.status_code >= 400:
            raise _refusal(response, response.content)
        try:
            data = response.json()
        except ValueError as exc:
            raise NodeUnavailable(f"{self.base_url}{path}: answer is not JSON") from exc
        return _parse(model, data, self.base_url + path)

    async def _stream(self, path: str, model: type[M], body: BaseModel) -> AsyncIterator[M]:
        payload = body.model_dump(mode="json", exclude_none=True)
        payload["stream"] = True
        url = self.base_url + path
        try:
            async with self._http.stream("POST", path, json=payload) as response:
                if response.status_code >= 400:
                    raise _refusal(response, await response.aread())
                done = False
                async for line in response.aiter_lines():
                    if done or not line.startswith("data: "):
                        continue  # read on to the end: the connection then goes back to the pool
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        done = True
                        continue
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise NodeUnavailable(f"{url}: stream chunk is not JSON") from exc
                    if "error" in chunk:
                        error = chunk["error"]
                        raise NodeRefused(500, str(error.get("message")), error.get("code"))
                    yield _parse(model, chunk, url)
        except httpx.HTTPError as exc:
            raise NodeUnavailable(f"{url}: stream broken: {type(exc).__name__} {exc}") from exc
        if not done:
            raise NodeUnavailable(f"{url}: stream ended without [DONE]")

    async def health(self) -> Health:
        return await self._call("GET", "/health", Health)

    async def models(self) -> ModelList:
        return await self._call("GET", "/v1/models", ModelList)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        body = request.model_copy(update={"stream": False})
        return await self._call("POST", "/v1/completions", CompletionResponse, body)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        body = request.model_copy(update={"stream": False})
        return await self._call("POST", "/v1/chat/completions", ChatCompletionResponse, body)

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        return self._stream("/v1/completions", CompletionChunk, request)

    def stream_chat(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream("/v1/chat/completions", ChatCompletionChunk, request)

    async def verify(self, request: VerifyRequest) -> VerifyResponse:
        return await self._call("POST", "/verify", VerifyResponse, request)
