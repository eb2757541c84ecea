"""The node client against a mock transport: parsing, error envelopes, busy, broken streams."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from verinfer.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from verinfer.node.client import NodeBusy, NodeClient, NodeRefused, NodeUnavailable

COMPLETION = {
    "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "demo",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    "verinfer": {"version": 2},
}


def _client(handler: object) -> NodeClient:
    return NodeClient("http://node.test", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_completion_is_parsed_and_sends_the_extension_fields() -> None:
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        return httpx.Response(200, json=COMPLETION)

    async def go() -> object:
        async with _client(handler) as client:
            req = CompletionRequest(model="demo", prompt="hi", top_k=3, seed=7)
            return await client.completion(req)

    response = _run(go())
    assert response.choices[0].text == "hi"  # type: ignore[attr-defined]
    assert response.verinfer == {"version": 2}  # type: ignore[attr-defined]
    assert seen["top_k"] == 3 and seen["seed"] == 7 and seen["stream"] is False


def test_error_envelope_and_busy() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "unknown model 'x'", "type": "invalid_request_error",
                          "code": "model_not_found"}}
        return httpx.Response(404, json=body)

    def busy(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "queue full", "type": "rate_limit", "code": "queue_full"}}
        return httpx.Response(429, json=body, headers={"Retry-After": "2"})

    req = CompletionRequest(model="x", prompt="hi")
    with pytest.raises(NodeRefused, match="unknown model") as refused:
        _run(_client(refuse).completion(req))
    assert refused.value.status == 404 and refused.value.code == "model_not_found"
    with pytest.raises(NodeBusy) as full:
        _run(_client(busy).completion(req))
    assert full.value.retry_after == 2.0


def test_unreachable_node() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(NodeUnavailable, match="ConnectError"):
        _run(_client(down).health())


def test_stream_chunks_and_missing_done() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "demo",
             "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}

    def stream(done: bool) -> object:
        def handler(request: httpx.Request) -> httpx.Response:
            body = f"data: {json.dumps(chunk)}\n\n" + ("data: [DONE]\n\n" if done else "")
            return httpx.Response(200, content=body.encode(),
                                  headers={"content-type": "text/event-stream"})
        return handler

    req = ChatCompletionRequest(model="demo", messages=[ChatMessage(role="user", content="hi")])

    async def collect(done: bool) -> list[object]:
        return [c async for c in _client(stream(done)).stream_chat(req)]

    chunks = _run(collect(True))
    assert [c.choices[0].delta.content for c in chunks] == ["a"]  # type: ignore[attr-defined]
    with pytest.raises(NodeUnavailable, match="without \\[DONE\\]"):
        _run(collect(False))


def test_request_schema_refuses_unknown_and_unverifiable_fields() -> None:
    with pytest.raises(ValueError, match="logit_bias"):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "logit_bias": {"1": 2}})
    with pytest.raises(ValueError, match="penalties"):
        CompletionRequest(model="m", prompt="p", presence_penalty=0.5)
    with pytest.raises(ValueError, match="at most 4"):
        CompletionRequest(model="m", prompt="p", stop=["a", "b", "c", "d", "e"])
