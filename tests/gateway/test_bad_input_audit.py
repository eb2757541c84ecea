"""Every bad input of the issue's list, at the gateway: a 4xx (or, for a node's bad receipt, a
502 to the user) with a message, and nothing changed — no receipt, no epoch, no reservation,
no funds, and no node asked when the request itself is at fault.

Listed bad inputs and where each is proven (this file unless named):
- malformed JSON, unknown model, oversize prompt (by tokens and by bytes), invalid sampling
  values, a request after the deposit is spent: `test_a_bad_request_changes_nothing`,
  `test_a_spent_deposit_changes_nothing_more` (also test_gateway_http.py for status codes);
- a bad or replayed signature, a receipt for another gateway (the node's answer is the bad
  input here): `test_a_bad_receipt_from_the_only_node_changes_nothing`; a user's receipt
  file: test_verify_cli.py and test_verify_direct.py; a node's view (bad job signature,
  replayed job or challenge, job for another node): tests/node/test_node_bad_input_audit.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fakes import NODES, USER, identity
from test_gateway_http import CHAT, MODEL, FakeNode, Network, post

from verinfer.api.schemas import ChatCompletionRequest
from verinfer.gateway.server import MAX_BODY_BYTES
from verinfer.protocol import wire


def state(net: Network) -> dict[str, Any]:
    """Everything a request could change at the gateway."""
    epochs = [(e.epoch, e.state) for e in net.store.epochs_in(
        "open", "closed", "committed", "decided", "settled", "missed")]
    return {"receipts": net.store.count_receipts(), "epochs": epochs,
            "owed": net.store.unsettled_fees(USER.address),
            "reserved": dict(net.service._reserved), "balances": dict(net.settler.balances),
            "api_keys": net.store.api_keys()}


def raw_post(net: Network, path: str, content: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        async with net.client() as c:
            return await c.post(path, content=content,
                                headers={"content-type": "application/json"})
    return asyncio.run(go())


COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "seed": 1}


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2", 400, "not valid JSON"),
    ("/v1/completions", {**COMPLETION, "model": "gpt-9"}, 404, "not served here"),
    ("/v1/completions", {**COMPLETION, "prompt": "x" * 300}, 400, "context"),
    ("/v1/completions", {**COMPLETION, "prompt": "x" * (MAX_BODY_BYTES + 1)}, 413, "over"),
    ("/v1/completions", {**COMPLETION, "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {**COMPLETION, "temperature": 2.5}, 400, "temperature"),
    ("/v1/completions", {**COMPLETION, "temperature": 0.0001}, 400, "at least 0.001"),
    ("/v1/completions", {**COMPLETION, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**COMPLETION, "top_k": -2}, 400, "top_k"),
    ("/v1/completions", {**COMPLETION, "seed": -1}, 400, "seed"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "presence_penalty": 0.5}, 400, "penalties"),
    ("/v1/completions", {**COMPLETION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "role"),
])
def test_a_bad_request_changes_nothing(tmp_path: Path, path: str, body: Any, status: int,
                                       fragment: str) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    before = state(net)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = raw_post(net, path, content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] and error["code"]
    assert state(net) == before
    assert not any(n.calls for n in net.nodes.values())


def test_a_spent_deposit_changes_nothing_more(tmp_path: Path) -> None:
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    prompt_len = len(net.service.models[MODEL].prompts.chat(
        ChatCompletionRequest.model_validate(CHAT).messages))
    net.settler.balances[USER.address.lower()] = 10 * (prompt_len + 12)  # one request's worth
    assert post(net, "/v1/chat/completions", CHAT).status_code == 200
    before = state(net)
    calls = sum(len(n.calls) for n in net.nodes.values())
    refused = post(net, "/v1/chat/completions", CHAT)
    assert refused.status_code == 402
    assert "insufficient funds" in refused.json()["error"]["message"]
    assert state(net) == before and before["reserved"] == {}
    assert sum(len(n.calls) for n in net.nodes.values()) == calls


class ReplayingNode(FakeNode):
    """Answers every request after the first with the first request's signed receipt."""

    def __init__(self, key: Any) -> None:
        super().__init__(key)
        self.first: bytes | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle(request)
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
        if self.first is None:
            self.first = body
        return httpx.Response(200, content=self.first,
                              headers={"content-type": "text/event-stream"})


class OtherGatewayNode(FakeNode):
    """Signs an honest receipt, but on a job re-targeted at another gateway (same request)."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle(request)
        text = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
        other = identity(99)
        lines = []
        for line in text.splitlines():
            if line.startswith("data: {") and '"verinfer"' in line:
                event = json.loads(line[6:])
                bundle = wire.ReceiptBundle.from_json(event["verinfer"])
                job = bundle.job.message
                assert isinstance(job, wire.Job)
                moved = wire.Job(job.request, other.address, job.user, job.node,
                                 job.price_per_token, job.nonce, job.deadline)
                receipt = wire.make_receipt(moved, len(bundle.prompt_token_ids),
                                            bundle.output_token_ids,
                                            bundle.receipt.message.logits_hash)  # type: ignore[union-attr]
                event["verinfer"] = wire.ReceiptBundle(
                    bundle.domain, bundle.request, bundle.prompt_token_ids, bundle.stop,
                    wire.Signed(moved, wire.sign(bundle.domain, moved, other.private_key)),
                    wire.Signed(receipt, wire.sign(bundle.domain, receipt,
                                                   self.key.private_key)),
                    bundle.output_token_ids).to_json()
                line = "data: " + json.dumps(event)
            lines.append(line)
        return httpx.Response(200, content=("\n".join(lines) + "\n").encode(),
                              headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("make", [
    lambda: FakeNode(NODES[0], forge=True),  # receipt signed by a key not the node's
    lambda: OtherGatewayNode(NODES[0]),  # a receipt for another gateway
])
def test_a_bad_receipt_from_the_only_node_changes_nothing(tmp_path: Path, make: Any) -> None:
    net = Network(tmp_path, [make()])
    before = state(net)
    response = post(net, "/v1/completions", COMPLETION)
    assert response.status_code == 502, response.text
    assert "receipt" in response.json()["error"]["message"]
    assert state(net) == before


def test_a_replayed_receipt_is_refused_and_not_recorded(tmp_path: Path) -> None:
    net = Network(tmp_path, [ReplayingNode(NODES[0])])
    assert post(net, "/v1/completions", COMPLETION).status_code == 200
    before = state(net)
    replayed = post(net, "/v1/completions", {**COMPLETION, "seed": 2})
    assert replayed.status_code == 502
    assert "not for the job this gateway signed" in replayed.json()["error"]["message"]
    assert state(net) == before and before["receipts"] == 1



def test_a_full_epoch_answers_503_with_retry_after_and_changes_nothing(tmp_path: Path) -> None:
    # One settlement transaction carries an epoch's receipts: beyond what it can carry a
    # receipt could never be paid, so the gateway admits no more in that epoch.
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    net.settler.epoch_clock = lambda: (0, 3600)  # type: ignore[method-assign]
    net.service.receipts_per_epoch = 2
    assert [post(net, "/v1/completions", COMPLETION).status_code for _ in range(2)] == [200, 200]
    before = state(net)
    calls = sum(len(n.calls) for n in net.nodes.values())
    refused = post(net, "/v1/completions", COMPLETION)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "epoch_full"
    assert "retry in" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert state(net) == before
    assert sum(len(n.calls) for n in net.nodes.values()) == calls


def test_requests_refused_for_funds_take_no_place_in_the_epoch(tmp_path: Path) -> None:
    # An account without funds must not fill the epoch's admission cap and turn every other
    # user away with 503 epoch_full.
    net = Network(tmp_path, [FakeNode(n) for n in NODES[:2]])
    net.settler.epoch_clock = lambda: (0, 3600)  # type: ignore[method-assign]
    net.service.receipts_per_epoch = 2
    funded = net.settler.balances[USER.address.lower()]
    net.settler.balances[USER.address.lower()] = 0
    assert [post(net, "/v1/completions", COMPLETION).status_code for _ in range(3)] == [402] * 3
    net.settler.balances[USER.address.lower()] = funded
    net.service._spendable.clear()  # the funds arrive: the next request reads them again
    assert [post(net, "/v1/completions", COMPLETION).status_code for _ in range(3)] == [
        200, 200, 503]
    assert net.service._reserved == {}  # the 503 gave its reservation back
