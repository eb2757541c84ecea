"""The stage connection: length-prefixed messages over one persistent TCP stream per stage.

Each message is `type u8 | length u32 | body`. The driver sends a request and waits for its
one reply (a stage computes one frame at a time anyway), so a plain stream needs no request
ids, no HTTP headers and no base64: a decode step costs one small write and one read per stage.
`StageConnection` is the driver's blocking side, with an optional `DelayLine` that holds each
message back by a link's latency and serialization time (a simulated network, no root needed).
The asyncio side (`read_message`, `write_message`) is the stage server's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from verinfer.errors import RemoteError, VerinferError

PREFIX = struct.Struct("<BI")
MAX_MESSAGE = 1 << 31


class Msg(IntEnum):
    HELLO = 1  # -> OK {node, model_id, layers, num_layers, hidden_size, ..., weight_bytes}
    OPEN = 2  # {session, batch, length} -> OK: a fresh KV cache for a session
    FORWARD = 3  # frame -> RESULT
    CLOSE = 4  # {session} -> OK
    ASSIGN = 5  # {start, end} -> OK: serve another layer range (open sessions are dropped)
    SIGNATURES = 6  # {session} -> OK {steps, root, signature}: the signed batch of the session
    OK = 0x40
    RESULT = 0x41  # compute microseconds u32 | output frame
    ERROR = 0x42  # {message, code}


class BadMessage(RemoteError):
    """A message body that does not parse (not JSON, not an object, a length over the limit)."""


class StageUnavailable(VerinferError):
    """A stage cannot be reached, dropped the connection or did not answer in time.
    `endpoint` names it (tcp://host:port), so a driver knows which stage to replace."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class StageRefused(RemoteError):
    """A stage answered with an error (the message says why)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DelayLine:
    """A simulated link: one-way latency plus serialization at a bandwidth (bytes/s)."""

    latency_s: float = 0.0
    bandwidth_bps: float = float("inf")

    def seconds(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.bandwidth_bps

    def hold(self, nbytes: int) -> None:
        delay = self.seconds(nbytes)
        if delay > 0:
            time.sleep(delay)


def pack(kind: int, body: bytes) -> bytes:
    return PREFIX.pack(kind, len(body)) + body


def json_body(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"message body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadMessage("message body must be a JSON object")
    return value


async def read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One message; raises asyncio.IncompleteReadError at the end of the stream."""
    prefix = await reader.readexactly(PREFIX.size)
    kind, length = PREFIX.unpack(prefix)
    if length > MAX_MESSAGE:
        raise BadMessage(f"message of {length} bytes exceeds the limit of {MAX_MESSAGE}")
    return kind, await reader.readexactly(length)


class StageConnection:
    """The driver's persistent connection to one stage."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0,
                 link_in: DelayLine | None = None, link_out: DelayLine | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.link_in, self.link_out = link_in, link_out  # simulated: into the stage, back out
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise StageUnavailable(f"stage {host}:{port} unreachable: {exc}",
                                   f"tcp://{host}:{port}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def _read(self, count: int) -> bytes:
        chunks, left = [], count
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise StageUnavailable(f"stage {self.endpoint} closed the connection",
                                       self.endpoint)
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def call(self, kind: Msg, body: bytes = b"") -> tuple[Msg, bytes]:
        """Send one request, return its reply; an ERROR reply raises StageRefused."""
        if self.link_in is not None:
            self.link_in.hold(len(body))
        try:
            self._sock.sendall(pack(kind, body))
            reply, length = PREFIX.unpack(self._read(PREFIX.size))
            data = self._read(length)
        except (OSError, struct.error) as exc:  # timeouts are OSErrors too
            raise StageUnavailable(f"stage {self.endpoint}: {exc}", self.endpoint) from exc
        if self.link_out is not None:
            self.link_out.hold(len(data))
        if reply == Msg.ERROR:
            error = parse_json(data)
            raise StageRefused(f"stage {self.endpoint}: {error.get('message')}",
                               str(error.get("code")))
        if reply not in (Msg.OK, Msg.RESULT):
            raise StageRefused(f"stage {self.endpoint} sent message type {reply}", "protocol")
        return Msg(reply), data

    def call_json(self, kind: Msg, value: dict[str, Any]) -> dict[str, Any]:
        reply, data = self.call(kind, json_body(value))
        if reply != Msg.OK:
            raise StageRefused(f"stage {self.endpoint} answered {reply.name} to {kind.name}", "protocol")
        return parse_json(data)
