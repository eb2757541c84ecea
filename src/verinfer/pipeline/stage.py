"""A pipeline stage: serves decoder layers [start, end) of one model over `transport`.

Every session (one generation, a batch of rows) has its own KV cache, for the stage's layers
only. A FORWARD frame is computed on the one engine thread (the event loop never blocks on
inference): the first stage embeds token ids, every stage runs its layers, the last one also
runs the final norm and head and returns each row's int32 logits of its last position. The
reply carries the output frame; the stage's commitments to (input, output) of every step are
signed together, one Merkle root per session (SIGNATURES), before the session closes.

Test-only knobs: `throttle_ms` sleeps on the engine thread per layer per frame (a slow device), and
`cheat="wrong-activations"` adds one unit to the first value of every output frame.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from verinfer.engine import Engine
from verinfer.engine.config import ModelConfig, load_config
from verinfer.engine.model import IntModel, KVCache, embed, forward_layers, head
from verinfer.engine.quantize import is_quantized_dir, read_manifest
from verinfer.errors import LocalError, ModelError
from verinfer.keyfile import Identity
from verinfer.pipeline import frames
from verinfer.pipeline.commitment import OFFCHAIN_DOMAIN, StageCommitment, batch_of, sign_batch
from verinfer.pipeline.frames import Frame, FrameError, Kind
from verinfer.pipeline.transport import BadMessage, Msg, json_body, pack, parse_json, read_message
from verinfer.pipeline.weights import StageWeights
from verinfer.protocol import wire

MAX_SESSIONS = 64
MAX_BATCH = 256
CHEATS = ("wrong-activations",)


class StageError(Exception):
    """A request this stage refuses; `code` is the machine-readable reason."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    cache: KVCache
    batch: int
    length: int
    last_seq: int = -1
    commitments: list[StageCommitment] = field(default_factory=list)  # in step order


def parse_layers(text: str, num_layers: int | None = None) -> tuple[int, int]:
    """`A:B` -> (A, B), checked against the model's layer count when given."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--layers must be START:END (e.g. 0:11), got {text!r}")
    start, end = int(parts[0]), int(parts[1])
    if start >= end:
        raise ValueError(f"--layers {text}: START must be below END")
    if num_layers is not None and end > num_layers:
        raise ValueError(f"--layers {text}: the model has {num_layers} layers")
    return start, end


def run_stage(model: IntModel, frame: Frame, cache: KVCache, start: int, end: int
              ) -> tuple[Kind, torch.Tensor]:
    """The honest computation of layers [start, end) on one input frame (the cache is updated):
    the output frame's kind and its payload on the CPU. The checker calls it too."""
    device = model.device
    positions = frame.positions.to(device)
    rows = torch.tensor(frame.rows, device=device)
    with torch.inference_mode():
        if frame.kind == Kind.TOKENS:
            h = embed(model, frame.data[..., 0].to(device))
        else:
            h = frame.data.to(device)
        h = forward_layers(model, h, cache, positions, start, end, rows)
        if end == model.config.num_hidden_layers:
            return Kind.LOGITS, head(model, h[:, -1:].contiguous()).to("cpu", torch.int64)
        return Kind.HIDDEN, h.to("cpu")


class StageServer:
    """The state of one stage process; `serve` runs it on an asyncio server."""

    def __init__(self, engine: Engine | StageWeights, start: int, end: int, identity: Identity,
                 domain: wire.Domain = OFFCHAIN_DOMAIN, throttle_ms: float = 0.0,
                 cheat: str | None = None) -> None:
        if cheat is not None and cheat not in CHEATS:
            raise ValueError(f"unknown stage cheat {cheat!r} (known: {', '.join(CHEATS)})")
        self.engine, self.identity, self.domain = engine, identity, domain
        self.throttle_ms, self.cheat = throttle_ms, cheat
        self.model_id = bytes.fromhex(engine.model_id.removeprefix("0x"))
        self.sessions: dict[bytes, Session] = {}
        self.start, self.end = 0, 0
        self.assign(start, end)
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verinfer-stage")

    @property
    def num_layers(self) -> int:
        return self.engine.config.num_hidden_layers

    def assign(self, start: int, end: int) -> None:
        if not 0 <= start < end <= self.num_layers:
            raise StageError(f"layer range {start}:{end} outside 0:{self.num_layers}")
        if isinstance(self.engine, StageWeights):  # load the range's missing layers, free the rest
            try:
                self.engine.serve(start, end)
            except ModelError as exc:
                raise StageError(f"cannot load layers {start}:{end}: {exc}", "load_failed") from exc
        self.start, self.end = start, end
        self.sessions.clear()  # their caches hold the old layers

    def hello(self) -> dict[str, Any]:
        c = self.engine.config
        return {"node": self.identity.address, "model_id": "0x" + self.model_id.hex(),
                "layers": [self.start, self.end], "num_layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
                "domain": {"chain_id": self.domain.chain_id, "contract": self.domain.contract},
                "version": frames.VERSION, "weight_bytes": self.engine.model.resident_bytes()}

    def open(self, body: dict[str, Any]) -> None:
        try:
            session = bytes.fromhex(str(body["session"]))
            batch, length = int(body["batch"]), int(body["length"])
        except (KeyError, ValueError, TypeError) as exc:
            raise StageError(f"OPEN needs session (32-byte hex), batch and length: {exc}") from exc
        if len(session) != frames.SESSION_BYTES:
            raise StageError("a session id is 32 bytes")
        if not 1 <= batch <= MAX_BATCH:
            raise StageError(f"batch must be in 1..{MAX_BATCH}")
        if not 1 <= length <= self.engine.config.context_length:
            raise StageError(f"length must be in 1..{self.engine.config.context_length}")
        if session not in self.sessions and len(self.sessions) >= MAX_SESSIONS:
            raise StageError(f"this stage holds {MAX_SESSIONS} sessions: close one", "busy")
        self.sessions[session] = Session(self._allocate(batch, length), batch, length)

    def _allocate(self, batch: int, length: int) -> KVCache:
        """K and V for this stage's layers only; the others are empty placeholders."""
        c, device = self.engine.config, self.engine.model.device
        shape = (batch, c.num_key_value_heads, length, c.head_dim)
        empty = torch.zeros(0, dtype=torch.int32, device=device)

        def layer(i: int) -> torch.Tensor:
            inside = self.start <= i < self.end
            return torch.zeros(shape, dtype=torch.int32, device=device) if inside else empty

        layers = range(c.num_hidden_layers)
        return KVCache([layer(i) for i in layers], [layer(i) for i in layers])

    def close(self, body: dict[str, Any]) -> None:
        try:
            self.sessions.pop(bytes.fromhex(str(body["session"])), None)
        except (KeyError, ValueError) as exc:
            raise StageError(f"CLOSE needs a session: {exc}") from exc

    def _check(self, frame: Frame) -> Session:
        session = self.sessions.get(frame.session)
        if session is None:
            raise StageError("unknown session: OPEN it first", "unknown_session")
        if frame.seq <= session.last_seq:
            raise StageError(f"step {frame.seq} is not after step {session.last_seq}", "stale_step")
        want = Kind.TOKENS if self.start == 0 else Kind.HIDDEN
        if frame.kind != want:
            raise StageError(f"layers {self.start}:{self.end} take a {want.name} frame, "
                             f"got {frame.kind.name}")
        c = self.engine.config
        if want == Kind.HIDDEN and frame.data.shape[2] != c.hidden_size:
            raise StageError(f"hidden width {frame.data.shape[2]}, the model's is {c.hidden_size}")
        if want == Kind.TOKENS and (int(frame.data.min()) < 0 or int(frame.data.max()) >= c.vocab_size):
            raise StageError("token ids outside the vocabulary")
        if len(set(frame.rows)) != len(frame.rows) or max(frame.rows) >= session.batch:
            raise StageError(f"cache rows must be distinct and below {session.batch}")
        if max(frame.starts) + frame.data.shape[1] > session.length:
            raise StageError(f"positions run past the session's length {session.length}")
        return session

    def compute(self, raw: bytes) -> tuple[bytes, int]:
        """Reply body for one input frame (on the engine thread); raises StageError/FrameError."""
        began = time.perf_counter()
        frame = frames.decode(raw)
        session = self._check(frame)
        kind, out = run_stage(self.engine.model, frame, session.cache, self.start, self.end)
        session.last_seq = frame.seq
        if self.cheat == "wrong-activations":
            out = out.clone()
            out[0, 0, 0] += 1
        if self.throttle_ms:  # per layer: a slow device is slow on every layer it serves
            time.sleep(self.throttle_ms * (self.end - self.start) / 1e3)
        encoded = frames.encode(Frame(kind, frame.session, frame.seq, frame.rows, frame.starts, out))
        commitment = StageCommitment(
            frame.session, frame.seq, self.model_id, self.start, self.end,
            frames.frame_hash(raw), frames.frame_hash(encoded), self.identity.address)
        session.commitments.append(commitment)  # signed per session, in a batch (SIGNATURES)
        micros = min(int((time.perf_counter() - began) * 1e6), (1 << 32) - 1)
        return struct.pack("<I", micros) + encoded, micros

    def signatures(self, body: dict[str, Any]) -> dict[str, Any]:
        """The signed batch over the session's commitments so far."""
        try:
            session = self.sessions[bytes.fromhex(str(body["session"]))]
        except (KeyError, ValueError) as exc:
            raise StageError(f"SIGNATURES needs an open session: {exc}", "unknown_session") from exc
        if not session.commitments:
            raise StageError("the session has no step to sign yet")
        batch = batch_of(session.commitments)
        return {"steps": batch.steps, "root": "0x" + batch.root.hex(),
                "signature": wire.signature_to_json(sign_batch(self.domain, batch,
                                                               self.identity.private_key))}

    async def handle(self, kind: int, body: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            if kind == Msg.FORWARD:
                reply, _ = await loop.run_in_executor(self._engine_thread, self.compute, body)
                return pack(Msg.RESULT, reply)
            if kind == Msg.HELLO:
                return pack(Msg.OK, json_body(self.hello()))
            request = parse_json(body)
            if kind == Msg.OPEN:
                await loop.run_in_executor(self._engine_thread, self.open, request)
            elif kind == Msg.SIGNATURES:
                signed = await loop.run_in_executor(self._engine_thread, self.signatures, request)
                return pack(Msg.OK, json_body(signed))
            elif kind == Msg.CLOSE:
                await loop.run_in_executor(self._engine_thread, self.close, request)
            elif kind == Msg.ASSIGN:
                try:
                    start, end = int(request["start"]), int(request["end"])
                except (KeyError, ValueError, TypeError) as exc:
                    raise StageError(f"ASSIGN needs start and end: {exc}") from exc
                await loop.run_in_executor(self._engine_thread, self.assign, start, end)
            else:
                raise StageError(f"unknown message type {kind}", "protocol")
            return pack(Msg.OK, json_body(self.hello()))
        except FrameError as exc:
            return _error(f"bad frame: {exc}", "bad_frame")
        except StageError as exc:
            return _error(str(exc), exc.code)
        except (BadMessage, ValueError) as exc:
            return _error(str(exc), "bad_request")
        except Exception as exc:  # noqa: BLE001 - one failed request must not drop the connection
            return _error(f"internal error: {type(exc).__name__}: {exc}", "internal")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    kind, body = await read_message(reader)
                except asyncio.IncompleteReadError:
                    return
                except BadMessage as exc:  # a length we will not read: answer, then hang up
                    writer.write(_error(str(exc), "too_large"))
                    await writer.drain()
                    return
                writer.write(await self.handle(kind, body))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    async def serve(self, host: str, port: int, ready: Any = None) -> None:
        server = await asyncio.start_server(self._connection, host, port)
        bound = server.sockets[0].getsockname()
        if ready is not None:
            ready(bound[0], bound[1])
        async with server:
            await server.serve_forever()


def _error(message: str, code: str) -> bytes:
    return pack(Msg.ERROR, json.dumps({"message": message, "code": code}).encode())


def load_quantized_config(model_dir: Path) -> ModelConfig:
    """The model's configuration (from a quantized directory's manifest or config.json)."""
    if not model_dir.is_dir():
        raise ModelError(f"model directory {str(model_dir)!r} does not exist")
    return read_manifest(model_dir)[0] if is_quantized_dir(model_dir) else load_config(model_dir)


def run(model_dir: Path, layers: str, host: str, port: int, identity: Identity, device: str = "cpu",
        throttle_ms: float = 0.0, cheat: str | None = None) -> None:
    """Load the range's weights, then serve layers `layers` (A:B) until interrupted; one ready line."""
    start, end = parse_layers(layers)  # a malformed range fails before the model loads
    config = load_quantized_config(model_dir)
    parse_layers(layers, config.num_hidden_layers)
    engine = StageWeights(model_dir, start, end, device)
    server = StageServer(engine, start, end, identity, throttle_ms=throttle_ms, cheat=cheat)

    def ready(bound_host: str, bound_port: int) -> None:
        print(f"verinfer stage {identity.address} layers {start}:{end} listening on "
              f"tcp://{bound_host}:{bound_port} model {engine.model_id}", flush=True)

    try:
        asyncio.run(server.serve(host, port, ready))
    except OSError as exc:
        raise LocalError(f"cannot listen on {host}:{port}: {exc.strerror} (try another --port)") from exc
    except KeyboardInterrupt:
        pass
