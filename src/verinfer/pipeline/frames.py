"""Activation frames: the binary unit a pipeline stage receives, computes on, signs and returns.

A frame carries one step of one session: token ids (into the first stage), the residual stream
between stages, or the last stage's logits. Layout (little-endian), version 1:

    magic "VIAF" | version u8 | kind u8 | dtype u8 | reserved u8 (0)
    session 32 bytes | seq u32 | batch u32 | tokens u32 | width u32
    rows int32[batch] | starts int32[batch] | payload dtype[batch * tokens * width]

Batch entry b is cache row `rows[b]` at positions starts[b] .. starts[b] + tokens - 1.
The residual stream is the engine's int64 fixed point (ACT_FRAC fraction bits, |x| < 2**46);
the next layer adds to it, so it must cross a boundary exactly: it goes as int32 when every
value of the frame fits (checked per frame, the usual case: |x| < 2**15 in real units), int64
otherwise. Never int8: quantizing the residual would change the arithmetic of the next layer.
A frame's bytes are canonical (one encoding per content), so its SHA-256 is what stages sign.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

from verinfer.errors import RemoteError

MAGIC = b"VIAF"
VERSION = 1
SESSION_BYTES = 32
HEADER = struct.Struct("<4sBBBB32sIIII")
MAX_ELEMENTS = 1 << 28  # a frame's payload: 2 GiB at int64; more is refused before allocating


class FrameError(RemoteError):
    """A frame does not parse: wrong magic or version, bad sizes, a truncated payload."""


class Kind(IntEnum):
    TOKENS = 0  # (B, T, 1) token ids, int32: into the first stage
    HIDDEN = 1  # (B, T, D) residual stream between stages
    LOGITS = 2  # (B, 1, V) int32 logits of each row's last position: out of the last stage


class Dtype(IntEnum):
    INT32 = 1
    INT64 = 2


_TORCH = {Dtype.INT32: torch.int32, Dtype.INT64: torch.int64}
_NUMPY = {Dtype.INT32: "<i4", Dtype.INT64: "<i8"}
_INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class Frame:
    kind: Kind
    session: bytes
    seq: int  # the session's step counter: every frame the driver sends has its own
    rows: tuple[int, ...]
    starts: tuple[int, ...]
    data: torch.Tensor  # (B, T, W) int32 or int64, on the CPU

    @property
    def positions(self) -> torch.Tensor:
        """(B, T) positions of the payload's tokens."""
        t = self.data.shape[1]
        return torch.tensor(self.starts).unsqueeze(1) + torch.arange(t).unsqueeze(0)


def frame_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def narrowest(data: torch.Tensor) -> Dtype:
    """int32 when every value fits, int64 otherwise."""
    if data.numel() == 0:
        return Dtype.INT32
    if int(data.max()) <= _INT32_MAX and int(data.min()) >= -_INT32_MAX - 1:
        return Dtype.INT32
    return Dtype.INT64


def encode(frame: Frame) -> bytes:
    """The canonical bytes of a frame (the residual in its narrowest exact integer type)."""
    data = frame.data
    if data.dim() != 3:
        raise ValueError(f"a frame's payload is (batch, tokens, width), got shape {tuple(data.shape)}")
    batch, tokens, width = data.shape
    if len(frame.session) != SESSION_BYTES:
        raise ValueError("a session id is 32 bytes")
    if len(frame.rows) != batch or len(frame.starts) != batch:
        raise ValueError("one row and one start position per batch entry")
    dtype = narrowest(data) if frame.kind == Kind.HIDDEN else Dtype.INT32
    body = data.to("cpu", _TORCH[dtype]).contiguous().numpy().astype(_NUMPY[dtype], copy=False)
    if dtype == Dtype.INT32 and frame.kind != Kind.HIDDEN and narrowest(data) != Dtype.INT32:
        raise ValueError("token ids and logits are int32")
    header = HEADER.pack(MAGIC, VERSION, frame.kind, dtype, 0, frame.session, frame.seq,
                         batch, tokens, width)
    index = struct.pack(f"<{batch}i{batch}i", *frame.rows, *frame.starts)
    return header + index + body.tobytes()


def decode(raw: bytes) -> Frame:
    """Parse a frame; anything malformed raises FrameError with what is wrong."""
    if len(raw) < HEADER.size:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, kind, dtype, reserved, session, seq, batch, tokens, width = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FrameError(f"not an activation frame (magic {magic!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version} is not supported (this side speaks {VERSION})")
    if kind not in Kind.__members__.values():
        raise FrameError(f"unknown frame kind {kind}")
    if dtype not in Dtype.__members__.values():
        raise FrameError(f"unknown frame dtype {dtype}")
    if reserved != 0:
        raise FrameError("reserved header byte must be 0")
    if kind != Kind.HIDDEN and dtype != Dtype.INT32:
        raise FrameError("token and logits frames are int32")
    if batch < 1 or tokens < 1 or width < 1:
        raise FrameError(f"empty frame shape ({batch}, {tokens}, {width})")
    if kind == Kind.TOKENS and width != 1:
        raise FrameError("a tokens frame has width 1")
    count = batch * tokens * width
    if count > MAX_ELEMENTS:
        raise FrameError(f"frame of {count} values exceeds the limit of {MAX_ELEMENTS}")
    itemsize = 4 if dtype == Dtype.INT32 else 8
    expected = HEADER.size + 8 * batch + count * itemsize
    if len(raw) != expected:
        raise FrameError(f"frame length {len(raw)} does not match its header (expected {expected})")
    index = struct.unpack_from(f"<{2 * batch}i", raw, HEADER.size)
    rows, starts = index[:batch], index[batch:]
    if min(rows) < 0 or min(starts) < 0:
        raise FrameError("negative cache row or position")
    offset = HEADER.size + 8 * batch
    array = np.frombuffer(raw, dtype=_NUMPY[Dtype(dtype)], count=count, offset=offset)
    data = torch.from_numpy(array.astype(np.int64)).view(batch, tokens, width)
    return Frame(Kind(kind), session, seq, tuple(rows), tuple(starts), data)


def payload_bytes(raw: bytes) -> int:
    """Bytes of a frame's payload (the tensor), without header and index."""
    _, _, _, dtype, _, _, _, batch, tokens, width = HEADER.unpack_from(raw)
    return batch * tokens * width * (4 if dtype == Dtype.INT32 else 8)
