"""The node over real HTTP: uvicorn on 127.0.0.1, the official openai client, signed receipts,
4xx envelopes, jobs and replays, batching determinism under concurrency, disconnects, /verify."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from verinfer.chain.devkeys import DEV_CHAIN_ID
from verinfer.engine import Engine, SamplingParams
from verinfer.keyfile import Identity
from verinfer.node.nonces import SeenNonces
from verinfer.node.server import create_app
from verinfer.node.service import NodeService, ServedModel, load_served_model
from verinfer.protocol import wire

NODE_KEY = bytes.fromhex("11" * 32)
GATEWAY_KEY = bytes.fromhex("22" * 32)
OTHER_KEY = bytes.fromhex("33" * 32)
USER = "0x" + "ab" * 20
DOMAIN = wire.Domain(DEV_CHAIN_ID, "0x" + "5e" * 20)


@dataclass
class RunningNode:
    url: str
    service: NodeService
    model: ServedModel

    @property
    def address(self) -> str:
        return self.service.address

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def node(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    identity = Identity(NODE_KEY, wire.address_of(NODE_KEY))
    model = load_served_model(tiny_dir, slots=3, max_queue=4)
    service = NodeService(identity, DOMAIN, [model], tmp_path_factory.mktemp("node-state"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "node server did not start"
        time.sleep(0.02)
    yield RunningNode(f"http://127.0.0.1:{sock.getsockname()[1]}", service, model)
    server.should_exit = True
    thread.join(timeout=30)


def _bundle(data: Any) -> wire.ReceiptBundle:
    return wire.ReceiptBundle.from_json(data)


def _check_direct_receipt(node: RunningNode, data: Any) -> wire.ReceiptBundle:
    """A direct call's receipt: self-issued job (zero gateway, fee 0), signed by the node."""
    bundle = _bundle(data)
    job = bundle.job.message
    assert isinstance(job, wire.Job)
    assert job.gateway == wire.ZERO_ADDRESS and job.node == node.address
    receipt = wire.check_receipt(DOMAIN, bundle.receipt, job, bundle.request, bundle.output_token_ids)
    assert receipt.fee == 0 and bundle.receipt.signer(DOMAIN) == node.address
    return bundle


def test_models_and_health(node: RunningNode) -> None:
    models = node.openai().models.list()
    assert [m.id for m in models.data] == [node.model.name]
    assert models.data[0].model_extra["model_id"] == node.model.model_id_hex  # type: ignore[index]
    health = httpx.get(node.url + "/health").json()
    assert health["address"] == node.address and health["slots"] == 3


def test_completion_with_openai_client_and_receipt(node: RunningNode, tiny_engine: Engine) -> None:
    client = node.openai()
    response = client.completions.create(model=node.model.name, prompt="Hello", max_tokens=8,
                                         temperature=0, seed=1)
    want = tiny_engine.generate(["Hello"], SamplingParams(max_tokens=8, seed=1))[0]
    assert response.choices[0].text == want.text
    assert response.choices[0].finish_reason == want.finish_reason
    assert response.usage is not None and response.usage.completion_tokens == len(want.token_ids)
    bundle = _check_direct_receipt(node, response.model_extra["verinfer"])  # type: ignore[index]
    assert list(bundle.output_token_ids) == want.token_ids
    receipt = bundle.receipt.message
    assert isinstance(receipt, wire.Receipt)
    assert receipt.logits_hash.hex() == want.logits_hash
    assert list(bundle.prompt_token_ids) == want.prompt_ids


def test_a_changed_receipt_byte_is_rejected(node: RunningNode) -> None:
    response = node.openai().completions.create(model=node.model.name, prompt="Hi", max_tokens=3)
    data = response.model_extra["verinfer"]  # type: ignore[index]
    data["receipt"]["outputLength"] += 1
    bundle = _bundle({k: v for k, v in data.items() if k != "receiptId"})
    job = bundle.job.message
    assert isinstance(job, wire.Job)
    with pytest.raises((wire.InvalidSignature, wire.MessageMismatch)):
        wire.check_receipt(DOMAIN, bundle.receipt, job, bundle.request, bundle.output_token_ids)


def test_chat_streamed_equals_whole_and_ends_with_receipt(node: RunningNode) -> None:
    client = node.openai()
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = client.chat.completions.create(model=node.model.name, messages=messages,
                                           max_tokens=10, temperature=0.8, seed=4)
    chunks = list(client.chat.completions.create(
        model=node.model.name, messages=messages, max_tokens=10, temperature=0.8, seed=4,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = chunks[-1]
    assert last.usage is not None and whole.usage is not None
    assert last.usage.total_tokens == whole.usage.total_tokens
    streamed = _check_direct_receipt(node, last.model_extra["verinfer"])  # type: ignore[index]
    single = _check_direct_receipt(node, whole.model_extra["verinfer"])  # type: ignore[index]
    assert streamed.output_token_ids == single.output_token_ids
    assert streamed.request == single.request  # same prompt ids, parameters and seed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # Every step's id reaches the stream (docs/protocol-v2.md, "Streams"): what a gateway
    # needs to continue it elsewhere from exactly the tokens the user has.
    ids = [t for c in chunks if c.choices
           for t in (c.choices[0].model_extra or {}).get("token_ids", [])]
    assert ids == list(single.output_token_ids)


def test_a_stream_sends_the_tokens_of_each_flush_interval_in_one_chunk(
        node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens that arrive within STREAM_FLUSH_S of the last chunk ride on the next one, with
    all their ids: the text, the ids and the receipt are those of a stream of one token each."""
    from verinfer.node import server

    body = {"model": node.model.name, "prompt": "Group me", "max_tokens": 24, "ignore_eos": True,
            "temperature": 0.9, "seed": 3, "stream": True}

    def chunks() -> list[dict[str, Any]]:
        with httpx.Client(base_url=node.url, timeout=30) as client, \
                client.stream("POST", "/v1/completions", json=body) as response:
            return [json.loads(line[6:]) for line in response.iter_lines()
                    if line.startswith("data: ") and line != "data: [DONE]"]

    monkeypatch.setattr(server, "STREAM_FLUSH_S", 0.0)
    single = chunks()
    monkeypatch.setattr(server, "STREAM_FLUSH_S", 60.0)  # first tokens, then the rest at the end
    grouped = chunks()
    assert len([c for c in grouped if c["choices"]]) < len([c for c in single if c["choices"]])
    for name in ("text", "token_ids"):
        assert [x for c in grouped for ch in c["choices"] for x in ch[name]] == \
            [x for c in single for ch in c["choices"] for x in ch[name]]
    assert grouped[-1]["verinfer"]["outputTokenIds"] == single[-1]["verinfer"]["outputTokenIds"]
    assert [ch["finish_reason"] for c in grouped for ch in c["choices"]][-1] == "length"


def test_streamed_completion_with_n_and_logprobs(node: RunningNode) -> None:
    client = node.openai()
    stream = client.completions.create(model=node.model.name, prompt="abc", max_tokens=5, n=2,
                                       temperature=1.0, seed=9, stream=True, logprobs=2)
    texts = ["", ""]
    last = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            assert choice.logprobs is not None and all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
        last = chunk
    assert last is not None
    receipts = last.model_extra["verinfer"]  # type: ignore[index]
    assert isinstance(receipts, list) and len(receipts) == 2
    seeds = [_check_direct_receipt(node, r).request.seed for r in receipts]
    assert seeds[0] == 9 and seeds[1] != 9


def _post(node: RunningNode, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(node.url + path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_request"),
        ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ({"model": "@", "prompt": "x" * 300}, 400, "context_length_exceeded"),
        ({"model": "@", "prompt": "x", "max_tokens": 1000}, 400, "context_length_exceeded"),
        ({"model": "@", "prompt": "x", "temperature": 5}, 400, "invalid_request"),
        ({"model": "@", "prompt": "x", "top_p": 0}, 400, "invalid_request"),
        ({"model": "@", "prompt": "x", "n": 0}, 400, "invalid_request"),
        ({"model": "@", "prompt": "x", "logit_bias": {"1": 1}}, 400, "invalid_request"),
        ({"model": "@", "prompt": [9999]}, 400, "invalid_value"),
        ({"model": "@", "prompt": ""}, 400, "invalid_request"),
    ],
)
def test_bad_input_gets_a_4xx_envelope(node: RunningNode, body: Any, status: int, code: str) -> None:
    if isinstance(body, dict) and body["model"] == "@":
        body = {**body, "model": node.model.name}
    response = _post(node, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]


def test_unknown_route_is_an_envelope(node: RunningNode) -> None:
    response = httpx.get(node.url + "/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


# ------------------------------------------------------------------------------- jobs


def _job(node: RunningNode, prompt: list[int], *, max_tokens: int = 6, seed: int = 5,
         nonce: int = 1, deadline: int | None = None, node_address: str | None = None,
         key: bytes = GATEWAY_KEY, price: int = 3) -> dict[str, Any]:
    request = wire.Request.build(node.model.model_id, prompt, max_tokens=max_tokens,
                                 temperature_milli=700, seed=seed)
    job = wire.Job(request=request.hash_struct(), gateway=wire.address_of(GATEWAY_KEY), user=USER,
                   node=node_address or node.address, price_per_token=price, nonce=nonce,
                   deadline=deadline if deadline is not None else int(time.time()) + 60)
    return wire.Signed(job, wire.sign(DOMAIN, job, key)).to_json()


def _job_body(node: RunningNode, prompt: list[int], job: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": node.model.name, "prompt": prompt, "max_tokens": 6, "temperature": 0.7,
            "seed": 5, "verinfer": {"job": job}, **extra}


def test_job_is_served_once_with_a_receipt_on_its_terms(node: RunningNode) -> None:
    prompt = [65, 66, 67, 68]
    job = _job(node, prompt, nonce=101)
    first = _post(node, "/v1/completions", _job_body(node, prompt, job))
    assert first.status_code == 200, first.text
    bundle = _bundle(first.json()["verinfer"])
    receipt = bundle.check()  # job signed by the gateway, receipt by the node, all bound
    assert receipt.gateway == wire.address_of(GATEWAY_KEY) and receipt.user == wire.check_address(USER)
    assert receipt.fee == 3 * (len(prompt) + receipt.output_length) and receipt.nonce == 101
    replay = _post(node, "/v1/completions", _job_body(node, prompt, job))
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "replayed"


@pytest.mark.parametrize(
    ("job_args", "body_args", "status", "code"),
    [
        ({"nonce": 201, "deadline": 1000}, {}, 403, "job_refused"),
        ({"nonce": 202, "node_address": wire.address_of(OTHER_KEY)}, {}, 403, "job_refused"),
        ({"nonce": 203, "key": OTHER_KEY}, {}, 401, "invalid_signature"),
        ({"nonce": 204}, {"max_tokens": 7}, 403, "job_refused"),  # not the request it signed
        ({"nonce": 205}, {"n": 2}, 400, "invalid_value"),
    ],
)
def test_bad_jobs_are_refused(node: RunningNode, job_args: dict[str, Any],
                              body_args: dict[str, Any], status: int, code: str) -> None:
    prompt = [70, 71, 72]
    job = _job(node, prompt, **job_args)
    response = _post(node, "/v1/completions", _job_body(node, prompt, job, **body_args))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_seen_nonces_survive_a_restart(tmp_path: Path) -> None:
    book = SeenNonces(tmp_path / "seen.sqlite")
    assert book.claim("job", "0xAa", 7, 2000, now=1000)
    book.close()
    reopened = SeenNonces(tmp_path / "seen.sqlite")
    assert not reopened.claim("job", "0xaa", 7, 2000, now=1000)
    assert reopened.claim("job", "0xaa", 8, 2000, now=1000)
    assert reopened.prune(now=3000) == 2
    reopened.close()


# ------------------------------------------------------------------------------- batching


CONCURRENT = [
    ("Alpha", {"max_tokens": 12, "temperature": 0}),
    ("Beta beta beta", {"max_tokens": 20, "temperature": 0.9, "seed": 1}),
    ("Gamma", {"max_tokens": 7, "temperature": 1.3, "top_k": 7, "seed": 2}),
    ("Delta, a longer prompt to prefill", {"max_tokens": 15, "temperature": 0.5, "top_p": 0.8, "seed": 3}),
    ("Epsilon", {"max_tokens": 25, "temperature": 0}),
    ("Zeta", {"max_tokens": 9, "temperature": 1.0, "seed": 4}),
    ("Eta", {"max_tokens": 30, "temperature": 1.0, "seed": 6, "stop": ["a", "e", "o"]}),
]


def _batch_totals(node: RunningNode) -> tuple[float, float]:
    """(rows decoded, steps) so far, from the node's Prometheus batch-size histogram."""
    lines = httpx.get(node.url + "/metrics").text.splitlines()
    total = next(float(x.split()[-1]) for x in lines if x.startswith("verinfer_node_batch_size_sum"))
    steps = next(float(x.split()[-1]) for x in lines if x.startswith("verinfer_node_batch_size_count"))
    return total, steps


def test_bytes_do_not_depend_on_the_batch(node: RunningNode, tiny_engine: Engine) -> None:
    async def one(client: httpx.AsyncClient, prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"model": node.model.name, "prompt": prompt, **params}
        for _ in range(100):  # 3 slots, queue of 4: some may be told to come back later
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 429:
                break
            await asyncio.sleep(float(response.headers["retry-after"]) / 10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def all_at_once() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:
            rounds = [one(client, p, params) for p, params in CONCURRENT * 2]
            return list(await asyncio.gather(*rounds))

    rows_before, steps_before = _batch_totals(node)
    results = asyncio.run(all_at_once())
    for (prompt, params), got in zip(CONCURRENT * 2, results, strict=True):
        sampling = SamplingParams(max_tokens=params["max_tokens"], temperature=params["temperature"],
                                  top_k=params.get("top_k", 0), top_p=params.get("top_p", 1.0),
                                  seed=params.get("seed", 0), stop=tuple(params.get("stop", ())))
        alone = tiny_engine.generate([prompt], sampling)[0]
        bundle = _bundle(got["verinfer"])
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        assert list(bundle.output_token_ids) == alone.token_ids
        assert receipt.logits_hash.hex() == alone.logits_hash
        assert got["choices"][0]["text"] == alone.text
    rows_after, steps_after = _batch_totals(node)
    # some steps of this test decoded more than one request together
    assert rows_after - rows_before > steps_after - steps_before


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(node: RunningNode, stream: bool) -> None:
    scheduler = node.model.scheduler
    real_step = scheduler.step

    def slow_step() -> Any:  # so the generation outlives the disconnect by seconds
        time.sleep(0.02)
        return real_step()

    scheduler.step = slow_step  # type: ignore[method-assign]
    try:
        before = scheduler.cancelled_total
        body = {"model": node.model.name, "prompt": "x", "max_tokens": 240, "ignore_eos": True,
                "stream": stream}
        if stream:
            with httpx.Client(base_url=node.url, timeout=30) as client, \
                    client.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                assert scheduler.active == 1
        else:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes
                httpx.post(node.url + "/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 3  # the whole generation would take about 5 s
        while scheduler.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scheduler.active == 0 and scheduler.cancelled_total == before + 1
    finally:
        del scheduler.step  # type: ignore[method-assign]


def test_a_stream_resumes_on_from_tokens_already_sent(node: RunningNode) -> None:
    body = {"model": node.model.name, "prompt": "Resume me", "max_tokens": 14,
            "temperature": 0.9, "seed": 21}
    whole = _post(node, "/v1/completions", body).json()
    tokens = whole["verinfer"]["outputTokenIds"]
    sent = 6
    first_part = _post(node, "/v1/completions", {**body, "max_tokens": sent}).json()
    resumed = _post(node, "/v1/completions",
                    {**body, "verinfer": {"resume_token_ids": tokens[:sent]}})
    assert resumed.status_code == 200, resumed.text
    data = resumed.json()
    assert data["verinfer"]["outputTokenIds"] == tokens
    assert data["verinfer"]["receipt"]["logitsHash"] == whole["verinfer"]["receipt"]["logitsHash"]
    # what the first node streamed (held-back text aside) plus the continuation is the whole
    assert whole["choices"][0]["text"].startswith(first_part["choices"][0]["text"][:1])
    forged = _post(node, "/v1/completions",
                   {**body, "verinfer": {"resume_token_ids": [(tokens[0] + 1) % 256]}})
    assert forged.status_code == 409 and forged.json()["error"]["code"] == "resume_mismatch"


def test_queue_full_is_429_with_retry_after(node: RunningNode) -> None:
    scheduler = node.model.scheduler
    bound = scheduler.max_queue
    scheduler.max_queue = 0
    try:
        response = _post(node, "/v1/completions", {"model": node.model.name, "prompt": "x"})
    finally:
        scheduler.max_queue = bound
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "queue_full"


# ------------------------------------------------------------------------------- /verify


def _challenge(node: RunningNode, bundle: wire.ReceiptBundle, output: list[int], nonce: int,
               validator: str | None = None) -> dict[str, Any]:
    challenge = wire.Challenge(
        receipt=bundle.receipt_id, request=bundle.request.hash_struct(),
        output_hash=wire.output_hash(output), validator=validator or node.address,
        gateway=wire.address_of(GATEWAY_KEY), nonce=nonce, deadline=int(time.time()) + 60)
    return wire.Signed(challenge, wire.sign(DOMAIN, challenge, GATEWAY_KEY)).to_json()


def _verify_body(bundle: wire.ReceiptBundle, challenge: dict[str, Any], output: list[int]) -> dict[str, Any]:
    request = {**bundle.request.to_json(), "promptTokenIds": list(bundle.prompt_token_ids),
               "stop": list(bundle.stop)}
    return {"challenge": challenge, "request": request, "output_token_ids": output}


def test_verify_agrees_with_an_honest_result_and_catches_a_wrong_token(node: RunningNode) -> None:
    prompt = [80, 81, 82, 83, 84]
    served = _post(node, "/v1/completions", _job_body(node, prompt, _job(node, prompt, nonce=300)))
    assert served.status_code == 200, served.text
    bundle = _bundle(served.json()["verinfer"])
    receipt = bundle.check()
    honest = list(bundle.output_token_ids)

    answer = _post(node, "/verify", _verify_body(bundle, _challenge(node, bundle, honest, 1), honest))
    assert answer.status_code == 200, answer.text
    signed = wire.Signed.from_json(wire.Verdict, answer.json()["verdict"])
    verdict = signed.message
    assert isinstance(verdict, wire.Verdict) and signed.signer(DOMAIN) == node.address
    assert wire.verdict_agrees(verdict, receipt, bundle.receipt_id)

    wrong = list(honest)
    wrong[2] = (wrong[2] + 1) % 256
    answer = _post(node, "/verify", _verify_body(bundle, _challenge(node, bundle, wrong, 2), wrong))
    assert answer.status_code == 200, answer.text
    bad = wire.Signed.from_json(wire.Verdict, answer.json()["verdict"]).message
    assert isinstance(bad, wire.Verdict)
    assert not bad.valid and bad.first_invalid_step == 2
    assert not wire.verdict_agrees(bad, receipt, bundle.receipt_id)
    assert "model gives" in answer.json()["detail"]

    replayed = _post(node, "/verify", _verify_body(bundle, _challenge(node, bundle, honest, 1), honest))
    assert replayed.status_code == 409
    other = _challenge(node, bundle, honest, 3, validator=wire.address_of(OTHER_KEY))
    assert _post(node, "/verify", _verify_body(bundle, other, honest)).status_code == 403
    mismatched = _verify_body(bundle, _challenge(node, bundle, honest, 4), wrong)
    assert _post(node, "/verify", mismatched).status_code == 403  # tokens are not the challenged ones


def test_gateway_side_commitment_equals_the_nodes(node: RunningNode) -> None:
    from verinfer.api.commitment import commit
    from verinfer.api.schemas import ChatCompletionRequest

    body = {"model": node.model.name, "messages": [{"role": "user", "content": "Hey"}],
            "max_tokens": 4, "seed": 12, "n": 2, "temperature": 0.6, "stop": ["\n"]}
    committed = commit(ChatCompletionRequest.model_validate(body), node.model.model_id,
                       node.model.prompts, node.model.engine.config.context_length)
    served = _post(node, "/v1/chat/completions", body)
    assert served.status_code == 200, served.text
    receipts = served.json()["verinfer"]
    assert [_bundle(r).request for r in receipts] == [row.request for row in committed.rows]
