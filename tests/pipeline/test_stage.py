"""The stage server in-process: computes its layers exactly, signs, and refuses bad input."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
import torch

from verinfer.engine import Engine
from verinfer.engine.model import KVCache, embed, forward_layers, head
from verinfer.keyfile import Identity, new_private_key
from verinfer.pipeline import frames
from verinfer.pipeline.commitment import OFFCHAIN_DOMAIN, StageCommitment, batch_of, prove_all
from verinfer.pipeline.frames import Frame, Kind
from verinfer.pipeline.stage import StageServer, parse_layers
from verinfer.pipeline.transport import Msg, StageConnection, StageRefused, json_body, pack
from verinfer.protocol import wire


def _identity() -> Identity:
    key = new_private_key()
    return Identity(key, wire.address_of(key))


def _run(server: StageServer, kind: Msg, body: bytes) -> tuple[int, bytes]:
    reply = asyncio.run(server.handle(kind, body))
    return reply[0], reply[5:]


@pytest.fixture
def stages(split_engine: Engine) -> Iterator[tuple[StageServer, StageServer]]:
    yield (StageServer(split_engine, 0, 3, _identity()), StageServer(split_engine, 3, 8, _identity()))


def test_parse_layers() -> None:
    assert parse_layers("0:11") == (0, 11)
    for bad in ("3", "a:b", "4:4", "5:2"):
        with pytest.raises(ValueError, match="--layers"):
            parse_layers(bad)
    with pytest.raises(ValueError, match="has 8 layers"):
        parse_layers("0:9", 8)


def test_two_stages_equal_the_whole_model_and_sign_their_frames(
    split_engine: Engine, stages: tuple[StageServer, StageServer]
) -> None:
    first, last = stages
    session = os.urandom(32)
    for stage in stages:
        kind, _ = _run(stage, Msg.OPEN, json_body({"session": session.hex(), "batch": 2, "length": 16}))
        assert kind == Msg.OK
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    raw = frames.encode(Frame(Kind.TOKENS, session, 0, (1, 0), (0, 0), tokens.unsqueeze(-1)))
    kind, body = _run(first, Msg.FORWARD, raw)
    assert kind == Msg.RESULT
    hidden_raw = body[4:]
    kind, body = _run(first, Msg.SIGNATURES, json_body({"session": session.hex()}))
    signed = json.loads(body)
    commitment = StageCommitment(session, 0, first.model_id, 0, 3, frames.frame_hash(raw),
                                 frames.frame_hash(hidden_raw), first.identity.address)
    batch = batch_of([commitment])
    assert signed["steps"] == 1 and signed["root"] == "0x" + batch.root.hex()
    [proven] = prove_all([commitment], batch, wire.signature_from_json(signed["signature"]))
    proven.check(OFFCHAIN_DOMAIN)
    kind, body = _run(last, Msg.FORWARD, hidden_raw)
    logits = frames.decode(body[4:])
    assert logits.kind == Kind.LOGITS and logits.data.shape == (2, 1, split_engine.config.vocab_size)

    model = split_engine.model
    cache = KVCache.allocate(split_engine.config, 2, 16, model.device)
    positions = torch.arange(3).expand(2, 3)
    h = forward_layers(model, embed(model, tokens), cache, positions)
    assert torch.equal(logits.data.to(torch.int32), head(model, h[:, -1:]))


def test_bad_requests_get_errors_not_crashes(stages: tuple[StageServer, StageServer]) -> None:
    first, last = stages
    session = os.urandom(32)
    tokens = frames.encode(Frame(Kind.TOKENS, session, 0, (0,), (0,), torch.tensor([[[5]]])))
    kind, body = _run(first, Msg.FORWARD, tokens)
    assert kind == Msg.ERROR and b"unknown session" in body
    kind, body = _run(first, Msg.FORWARD, b"garbage")
    assert kind == Msg.ERROR and b"bad frame" in body
    _run(first, Msg.OPEN, json_body({"session": session.hex(), "batch": 1, "length": 4}))
    _run(last, Msg.OPEN, json_body({"session": session.hex(), "batch": 1, "length": 4}))
    kind, body = _run(last, Msg.FORWARD, tokens)
    assert kind == Msg.ERROR and b"take a HIDDEN frame" in body
    assert _run(first, Msg.FORWARD, tokens)[0] == Msg.RESULT
    kind, body = _run(first, Msg.FORWARD, tokens)  # the same step again
    assert kind == Msg.ERROR and b"stale_step" in body
    late = frames.encode(Frame(Kind.TOKENS, session, 1, (0,), (4,), torch.tensor([[[5]]])))
    kind, body = _run(first, Msg.FORWARD, late)
    assert kind == Msg.ERROR and b"past the session's length" in body
    for bad in (b"{", json_body({"session": "zz", "batch": 1, "length": 1}),
                json_body({"session": session.hex(), "batch": 0, "length": 1})):
        assert _run(first, Msg.OPEN, bad)[0] == Msg.ERROR
    assert _run(first, 99, b"{}")[0] == Msg.ERROR
    assert _run(first, Msg.SIGNATURES, json_body({"session": "00" * 32}))[0] == Msg.ERROR
    other = os.urandom(32)
    _run(first, Msg.OPEN, json_body({"session": other.hex(), "batch": 1, "length": 4}))
    kind, body = _run(first, Msg.SIGNATURES, json_body({"session": other.hex()}))
    assert kind == Msg.ERROR and b"no step to sign" in body
    assert _run(first, Msg.ASSIGN, json_body({"start": 5, "end": 99}))[0] == Msg.ERROR


def test_a_real_connection_survives_a_bad_message(stages: tuple[StageServer, StageServer]) -> None:
    first, _ = stages

    async def main() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(first.serve("127.0.0.1", 0, lambda h, p: ready.set_result(p)))
        port = await ready
        conn = await asyncio.to_thread(StageConnection, "127.0.0.1", port)
        with pytest.raises(StageRefused, match="bad frame"):
            await asyncio.to_thread(conn.call, Msg.FORWARD, b"\0" * 10)
        hello = await asyncio.to_thread(conn.call_json, Msg.HELLO, {})
        assert hello["layers"] == [0, 3] and hello["node"] == first.identity.address
        conn.close()
        task.cancel()

    asyncio.run(main())
    assert pack(Msg.OK, b"")[0] == Msg.OK
