"""Activation frames: exact round trips, the narrowest exact dtype, and clear errors."""

from __future__ import annotations

import struct

import pytest
import torch

from verinfer.pipeline import frames
from verinfer.pipeline.frames import Dtype, Frame, FrameError, Kind

SESSION = bytes(range(32))


def _frame(data: torch.Tensor, kind: Kind = Kind.HIDDEN) -> Frame:
    batch = data.shape[0]
    return Frame(kind, SESSION, 7, tuple(range(batch)), tuple(3 * i for i in range(batch)), data)


def test_residual_round_trips_exactly_as_int32_when_it_fits() -> None:
    data = torch.randint(-(1 << 31), 1 << 31, (2, 3, 16), dtype=torch.int64)
    raw = frames.encode(_frame(data))
    assert raw[5 + 1] == Dtype.INT32  # after magic and version: kind, then dtype
    assert len(raw) == frames.HEADER.size + 2 * 8 + data.numel() * 4
    back = frames.decode(raw)
    assert torch.equal(back.data, data) and back.seq == 7 and back.session == SESSION
    assert back.rows == (0, 1) and back.starts == (0, 3)
    assert back.positions.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_wide_residual_goes_as_int64_never_truncated() -> None:
    data = torch.zeros(1, 1, 4, dtype=torch.int64)
    data[0, 0, 2] = (1 << 46) - 1  # the engine's ACT_LIMIT
    data[0, 0, 3] = -(1 << 31) - 1
    raw = frames.encode(_frame(data))
    assert raw[6] == Dtype.INT64
    assert torch.equal(frames.decode(raw).data, data)


def test_encoding_is_canonical() -> None:
    data = torch.arange(12, dtype=torch.int64).view(1, 3, 4)
    assert frames.encode(_frame(data)) == frames.encode(_frame(data.to(torch.int32)))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda raw: raw[:10], "shorter than"),
    (lambda raw: b"XXXX" + raw[4:], "magic"),
    (lambda raw: raw[:4] + bytes([9]) + raw[5:], "version 9"),
    (lambda raw: raw[:5] + bytes([7]) + raw[6:], "unknown frame kind"),
    (lambda raw: raw[:6] + bytes([5]) + raw[7:], "unknown frame dtype"),
    (lambda raw: raw[:-1], "does not match its header"),
    (lambda raw: raw + b"\0", "does not match its header"),
    (lambda raw: raw[:frames.HEADER.size - 12] + struct.pack("<I", 0) + raw[frames.HEADER.size - 8:],
     "empty frame shape"),
])
def test_bad_frames_get_a_clear_error(mutate: object, message: str) -> None:
    raw = frames.encode(_frame(torch.ones(1, 2, 4, dtype=torch.int64)))
    with pytest.raises(FrameError, match=message):
        frames.decode(mutate(raw))  # type: ignore[operator]


def test_a_huge_declared_shape_is_refused_before_allocating() -> None:
    header = frames.HEADER.pack(frames.MAGIC, frames.VERSION, Kind.HIDDEN, Dtype.INT64, 0, SESSION,
                                0, 1 << 16, 1 << 16, 1 << 16)
    with pytest.raises(FrameError, match="exceeds the limit"):
        frames.decode(header)
