"""The gateway's HTTP API without sockets: in-memory nodes that sign real receipts.

Each fake node follows the node protocol (job check, request commitment, resume tokens, the
`token_ids` stream extension, a signed receipt bundle in the last chunk); its "model" is a
deterministic function of the request, so two honest fake nodes give the same bytes and a
resumed stream can be compared with an undisturbed one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gateway_fakes import DOMAIN, GATEWAY, NODES, USER, FakeSettler, identity

from verinfer.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from verinfer.engine.testing import byte_tokenizer
from verinfer.gateway.router import RegisteredNode, Router
from verinfer.gateway.server import create_app
from verinfer.gateway.service import GatewayService, ModelSpec
from verinfer.gateway.store import GatewayStore
from verinfer.keyfile import Identity
from verinfer.node.client import NodeClient
from verinfer.protocol import wire

MODEL = "demo"
MODEL_ID = b"\x11" * 32
PRICE = 10
KEY, BROKE_KEY = "vi-test-key", "vi-broke-key"
BROKE = identity(2)


class BytePrompts:
    """Prompts as byte-level token ids, a chat as "role: text" lines (the fake nodes agree)."""

    def __init__(self) -> None:
        self.tokenizer = byte_tokenizer()

    def completion(self, prompt: str | list[int]) -> list[int]:
        return self.tokenizer.encode(prompt).ids if isinstance(prompt, str) else list(prompt)

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        text = "\n".join(f"{m.role}: {m.text}" for m in messages) + "\nassistant:"
        return self.tokenizer.encode(text).ids


SPEC = ModelSpec(MODEL, BytePrompts(), context_length=256, model_id=MODEL_ID)


def model_output(request: wire.Request) -> list[int]:
    """The fake model: max_tokens letters (ids 97..122) from the request commitment."""
    seed = request.hash_struct()
    return [97 + hashlib.sha256(seed + bytes([i])).digest()[0] % 26
            for i in range(request.max_tokens)]


class FakeNode:
    """An honest node unless told otherwise: `down`, `cut_after` tokens, `forge` receipts."""

    def __init__(self, key: Identity, down: bool = False, cut_after: int | None = None,
                 forge: bool = False, refuse: int | None = None,
                 cut_by: type[httpx.TransportError] = httpx.ReadError) -> None:
        self.key, self.down, self.cut_after, self.forge, self.refuse = (
            key, down, cut_after, forge, refuse)
        self.cut_by = cut_by  # ReadError: the connection broke; ReadTimeout: the node stalled
        self.calls: list[dict[str, Any]] = []
        self.streams_read_to_end = 0  # a response read to its end gives back its connection

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content)
        self.calls.append(body)
        if self.refuse:
            return httpx.Response(self.refuse, json={"error": {
                "message": "stop sequence too long", "type": "invalid_request_error",
                "code": "invalid_value"}})
        chat = request.url.path.endswith("/chat/completions")
        parsed = (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)
        prompt_ids = (SPEC.prompts.chat(parsed.messages) if isinstance(parsed,
                      ChatCompletionRequest) else SPEC.prompts.completion(parsed.prompt))
        commitment = wire.Request.build(
            MODEL_ID, prompt_ids, max_tokens=parsed.max_tokens or 16,
            temperature_milli=round(parsed.temperature * 1000), top_k=max(parsed.top_k, 0),
            top_p_micro=round(parsed.top_p * 1e6), seed=parsed.seed or 0,
            stop=parsed.stop_sequences, ignore_eos=parsed.ignore_eos)
        assert parsed.verinfer is not None and parsed.verinfer.job is not None
        job = wire.Signed.from_json(wire.Job, parsed.verinfer.job)
        message = wire.check_job(DOMAIN, job, self.key.address, now=0)
        assert message.request == commitment.hash_struct()
        output = model_output(commitment)
        forced = parsed.verinfer.resume_token_ids
        assert output[:len(forced)] == forced
        new = output[len(forced):]
        receipt = wire.make_receipt(message, len(prompt_ids), output,
                                    hashlib.sha256(bytes(output)).digest())
        signer = NODES[7] if self.forge else self.key
        bundle = wire.ReceiptBundle(
            DOMAIN, commitment, tuple(prompt_ids), parsed.stop_sequences, job,
            wire.Signed(receipt, wire.sign(DOMAIN, receipt, signer.private_key)), tuple(output))

        async def sse() -> AsyncIterator[bytes]:
            for i, token in enumerate(new):
                if self.cut_after is not None and len(forced) + i >= self.cut_after:
                    raise self.cut_by("the node went away mid-stream")
                finish = "length" if len(forced) + i == len(output) - 1 else None
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                                          "token_ids": [token]}
                if chat:
                    choice["delta"] = {"content": chr(token)}
                else:
                    choice["text"] = chr(token)
                yield _event({"id": "x", "created": 0, "model": MODEL, "choices": [choice],
                              "object": "chat.completion.chunk" if chat else "text_completion"})
            usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(output),
                     "total_tokens": len(prompt_ids) + len(output)}
            yield _event({"id": "x", "created": 0, "model": MODEL, "choices": [],
                          "object": "chat.completion.chunk" if chat else "text_completion",
                          "usage": usage, "verinfer": bundle.to_json()})
            yield b"data: [DONE]\n\n"
            self.streams_read_to_end += 1

        return httpx.Response(200, content=sse(), headers={"content-type": "text/event-stream"})


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class Network:
    def __init__(self, tmp_path: Path, nodes: list[FakeNode], balance: int = 10**9) -> None:
        self.nodes = {n.key.address: n for n in nodes}
        registered = [RegisteredNode(n.key.address, f"http://node{i}", 5000)
                      for i, n in enumerate(nodes)]
        self.settler = FakeSettler(registered, balances={USER.address.lower(): balance})
        self.store = GatewayStore(tmp_path / "gateway.sqlite")
        self.store.add_api_key(KEY, USER.address)
        self.store.add_api_key(BROKE_KEY, BROKE.address)
        router = Router(min_stake=1000)
        router.update_registry(registered)
        for n in registered:
            router.probe_succeeded(n.address, {MODEL: MODEL_ID}, now=0)

        def client_for(node: RegisteredNode) -> NodeClient:
            fake = self.nodes[node.address]
            return NodeClient(node.endpoint, transport=httpx.MockTransport(fake.handle))

        self.service = GatewayService(self.store, self.settler, router, {MODEL: SPEC}, GATEWAY,
                                      DOMAIN, PRICE, client_for)
        self.app = create_app(self.service)

    def client(self, key: str | None = KEY) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://gateway", headers=headers)


def post(net: Network, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    async def go() -> httpx.Response:
        async with net.client(key) as c:
            return await c.post(path, json=body)
    return asyncio.run(go())


def stream_text(net: Network, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    response = post(net, "/v1/chat/completions", {**body, "stream": True})
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert response.text.rstrip().endswith("data: [DONE]")
    text = "".join(c["delta"].get("content", "") for e in events for c in e.get("choices", []))
    return text, events


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12,
        "seed": 5, "temperature": 0}


def test_a_chat_completion_carries_a_receipt_that_verifies_and_is_recorded(
        tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:3]])
    response = post(net, "/v1/chat/completions", CHAT)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["choices"][0]["message"]["content"]) == 12
    bundle = wire.ReceiptBundle.from_json(data["verinfer"])
    receipt = bundle.check()
    assert receipt.gateway == GATEWAY.address and receipt.user == USER.address
    assert receipt.fee == PRICE * (bundle.request.prompt_length + 12)
    assert net.store.receipt(bundle.receipt_id) is not None
    record = asyncio.run(_get(net, f"/v1/receipts/0x{bundle.receipt_id.hex()}"))
    assert record.status_code == 200 and record.json()["receiptId"] == data["verinfer"][
        "receiptId"]
    other = asyncio.run(_get(net, f"/v1/receipts/0x{bundle.receipt_id.hex()}", BROKE_KEY))
    assert other.status_code == 404  # another user's receipt is not shown


async def _get(net: Network, path: str, key: str = KEY) -> httpx.Response:
    async with net.client(key) as c:
        return await c.get(path)


@pytest.mark.parametrize("key,status,code", [(None, 401, "invalid_api_key"),
                                             ("vi-nope", 401, "invalid_api_key"),
                                             (BROKE_KEY, 402, "insufficient_funds")])
def test_auth_and_funds_envelopes(tmp_path: Path, key: str | None, status: int,
                                  code: str) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    response = post(net, "/v1/chat/completions", CHAT, key=key)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert net.store.count_receipts() == 0


@pytest.mark.parametrize("body,status,fragment", [
    ({**CHAT, "model": "gpt-9"}, 404, "not served here"),
    ({**CHAT, "temperature": -1}, 400, "temperature"),
    ({**CHAT, "max_tokens": 10_000}, 400, "context"),
    ({**CHAT, "n": 2}, 400, "n must be 1"),
    ({**CHAT, "verinfer": {"resume_token_ids": [1]}}, 400, "set by the gateway"),
    ({**CHAT, "messages": []}, 400, "messages"),
    ({**CHAT, "bogus": 1}, 400, "bogus"),
])
def test_bad_input_gets_a_4xx_envelope_and_changes_nothing(
        tmp_path: Path, body: dict[str, Any], status: int, fragment: str) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    response = post(net, "/v1/chat/completions", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert net.store.count_receipts() == 0
    assert not any(n.calls for n in net.nodes.values())


def test_malformed_json_and_node_refusals_are_envelopes(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(NODES[0], refuse=400)])

    async def raw() -> httpx.Response:
        async with net.client() as c:
            return await c.post("/v1/completions", content=b"{not json",
                                headers={"content-type": "application/json"})
    bad = asyncio.run(raw())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    refused = post(net, "/v1/chat/completions", CHAT)
    assert refused.status_code == 400 and "stop sequence" in refused.json()["error"]["message"]


def test_a_spent_deposit_gets_402_after_serving_what_it_covered(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    prompt_len = len(SPEC.prompts.chat(ChatCompletionRequest.model_validate(CHAT).messages))
    net.settler.balances[USER.address.lower()] = PRICE * (prompt_len + 12) * 2
    assert post(net, "/v1/chat/completions", CHAT).status_code == 200
    assert post(net, "/v1/chat/completions", CHAT).status_code == 200
    third = post(net, "/v1/chat/completions", CHAT)
    assert third.status_code == 402 and "deposit" in third.json()["error"]["message"]
    assert net.store.count_receipts() == 2


def test_a_dead_node_fails_over_and_the_user_gets_an_answer(tmp_path: Path) -> None:
    nodes = [FakeNode(NODES[0], down=True), FakeNode(NODES[1], forge=True), FakeNode(NODES[2])]
    net = Network(tmp_path, nodes)
    for seed in range(6):
        response = post(net, "/v1/chat/completions", {**CHAT, "seed": seed})
        assert response.status_code == 200, response.text
        receipt = wire.ReceiptBundle.from_json(response.json()["verinfer"]).check()
        assert receipt.node == NODES[2].address  # the only honest, reachable node
    assert net.service.stats.failovers >= 2


@pytest.mark.parametrize("cut_by", [httpx.ReadError, httpx.ReadTimeout])
def test_a_cut_or_stalled_stream_continues_on_another_node_byte_identical(
        tmp_path: Path, cut_by: type[httpx.TransportError]) -> None:
    net = Network(tmp_path / "cut", [FakeNode(NODES[0], cut_after=5, cut_by=cut_by),
                                     FakeNode(NODES[1])])
    for seed in range(8):
        body = {**CHAT, "seed": seed, "temperature": 0.7}
        reference, _ = stream_text(Network(tmp_path / f"ref{seed}", [FakeNode(NODES[2])]), body)
        text, events = stream_text(net, body)
        assert text == reference and len(text) == 12
        bundle = wire.ReceiptBundle.from_json(events[-1]["verinfer"])
        bundle.check()
        assert bundle.receipt.message.node == NODES[1].address  # type: ignore[attr-defined]
        assert "".join(chr(t) for t in bundle.output_token_ids) == text
    resumed = [c["verinfer"]["resume_token_ids"] for c in net.nodes[NODES[1].address].calls
               if c["verinfer"]["resume_token_ids"]]
    assert resumed and all(len(r) == 5 for r in resumed)
    assert net.service.stats.resumed_streams == len(resumed)


def test_when_every_node_fails_the_user_gets_502(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n, down=True) for n in NODES[:2]])
    response = post(net, "/v1/chat/completions", CHAT)
    assert response.status_code == 502 and response.json()["error"]["code"] == "nodes_failed"


def test_the_official_openai_client_gets_completions_chats_and_streams(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:3]])

    async def go() -> None:
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url="http://gateway/v1",
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=net.app)))
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
        completion = await client.completions.create(model=MODEL, prompt="Once", max_tokens=8,
                                                     seed=1)
        assert len(completion.choices[0].text) == 8
        assert completion.model_extra and "verinfer" in completion.model_extra
        chat = await client.chat.completions.create(model=MODEL, max_tokens=6, seed=2,
                                                    messages=[{"role": "user", "content": "Hi"}])
        assert len(chat.choices[0].message.content or "") == 6
        pieces, receipt = [], None
        stream = await client.chat.completions.create(
            model=MODEL, max_tokens=6, seed=2, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hi"}])
        async for chunk in stream:
            pieces += [c.delta.content or "" for c in chunk.choices]
            receipt = (chunk.model_extra or {}).get("verinfer") or receipt
        assert "".join(pieces) == chat.choices[0].message.content
        assert receipt is not None
        wire.ReceiptBundle.from_json(receipt).check()
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(
                api_key="wrong", base_url="http://gateway/v1", max_retries=0,
                http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=net.app)),
            ).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])

    asyncio.run(go())
    assert net.store.count_receipts() == 3


def test_health_and_metrics(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    assert post(net, "/v1/chat/completions", CHAT).status_code == 200
    assert post(net, "/v1/chat/completions", CHAT, key=None).status_code == 401
    health = asyncio.run(_get(net, "/health")).json()
    assert health["status"] == "ok" and health["healthy_nodes"] == 2
    assert health["address"] == GATEWAY.address
    metrics = asyncio.run(_get(net, "/metrics")).text
    assert 'verinfer_gateway_requests_total{route="/v1/chat/completions",status="200"} 1.0' \
        in metrics
    assert 'status="401"} 1.0' in metrics and "verinfer_gateway_receipts_total 1.0" in metrics
    missing = asyncio.run(_get(net, "/v1/receipts/0x" + "00" * 32))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = asyncio.run(_get(net, "/v1/receipts/zz"))
    assert bad.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
def test_the_gateway_reads_each_node_stream_to_its_end(tmp_path: Path, stream: bool) -> None:
    """Past the receipt only `[DONE]` is left, but a response left half-read loses its pooled
    connection: the next request to that node would open a new one."""
    node = FakeNode(NODES[0])
    net = Network(tmp_path, [node])
    for seed in range(3):
        response = post(net, "/v1/chat/completions", {**CHAT, "seed": seed, "stream": stream})
        assert response.status_code == 200
    assert node.streams_read_to_end == 3


def test_a_fault_of_the_gateway_is_a_counted_500_envelope(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    net.service.prepare = broken  # type: ignore[method-assign]
    response = post(net, "/v1/chat/completions", CHAT)
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "internal error", "type": "server_error",
                                        "code": "internal_error"}
    metrics = asyncio.run(_get(net, "/metrics")).text
    assert 'verinfer_gateway_requests_total{route="/v1/chat/completions",status="500"} 1.0' \
        in metrics


class ClockedSettler(FakeSettler):
    """A chain that numbers epochs: 100 s long from t = 1000."""

    def epoch_clock(self) -> tuple[int, int]:
        return 1000, 100


@pytest.mark.parametrize(("now", "deadline"), [
    (1010.0, 1099),  # the end of its epoch is nearer than JOB_TTL_S
    (1098.5, 1099),  # one last second still fits in the epoch
    (1099.2, 1199),  # too late for this epoch: the next one, inside it
])
def test_a_job_deadline_falls_inside_the_chains_epoch(tmp_path: Path, now: float,
                                                      deadline: int) -> None:
    store = GatewayStore(tmp_path / "g.sqlite")
    service = GatewayService(store, ClockedSettler([]), Router(1), {}, GATEWAY, DOMAIN, 1,
                             lambda node: NodeClient(node.endpoint), clock=lambda: now)
    assert service.job_deadline() == deadline
    epoch = (deadline - 1000) // 100
    assert 1000 + epoch * 100 <= deadline < 1000 + (epoch + 1) * 100
    store.close()
