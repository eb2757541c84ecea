"""The split-result checker: recompute every stage from its signed input, pin the one that lied.

A stage's commitments say "from the frame hashing to I, my layers give the frame hashing to O".
The checker takes the frames the driver kept, checks each one against the signed input hash,
runs the stage's layers on them in step order with its own KV cache (`stage.run_stage`, the
code an honest stage runs), and compares the result's hash with the signed output hash. Honest
stages downstream of a liar computed correctly on a wrong input, so they pass: the first
mismatch names the liar, the step, and carries its signed commitment as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from verinfer.engine import Engine
from verinfer.engine.model import KVCache
from verinfer.pipeline import frames
from verinfer.pipeline.commitment import OFFCHAIN_DOMAIN, SignedCommitment, StageRecord
from verinfer.pipeline.frames import Frame
from verinfer.pipeline.stage import run_stage
from verinfer.protocol import wire


@dataclass(frozen=True)
class StageFault:
    """A stage whose signed output differs from an honest recomputation of its signed input."""

    stage: int  # index into the result's stage records
    node: str
    layers: tuple[int, int]
    seq: int
    evidence: SignedCommitment  # signed by `node`: the input hash and the wrong output hash
    reason: str


def check_stages(engine: Engine, records: Sequence[StageRecord],
                 kept: dict[int, dict[int, bytes]],
                 domain: wire.Domain = OFFCHAIN_DOMAIN) -> list[StageFault]:
    """Every stage whose commitments do not hold (at most one fault per stage, its first)."""
    faults = []
    for index, record in enumerate(records):
        fault = _check_stage(engine, index, record, kept.get(record.layer_start, {}), domain)
        if fault is not None:
            faults.append(fault)
    return faults


def _check_stage(engine: Engine, index: int, record: StageRecord, inputs: dict[int, bytes],
                 domain: wire.Domain) -> StageFault | None:
    layers = (record.layer_start, record.layer_end)
    decoded: list[tuple[SignedCommitment, Frame, bytes]] = []
    for signed in sorted(record.commitments, key=lambda c: c.commitment.seq):
        c = signed.commitment

        def fault(reason: str, signed: SignedCommitment = signed) -> StageFault:
            return StageFault(index, record.node, layers, signed.commitment.seq, signed, reason)

        try:
            signed.check(domain)
        except wire.InvalidSignature as exc:
            return fault(f"bad signature: {exc}")
        if c.node != record.node or (c.layer_start, c.layer_end) != layers:
            return fault("commitment names another node or layer range than its stage")
        raw = inputs.get(c.seq)
        if raw is None or frames.frame_hash(raw) != c.input_hash:
            return fault("no kept frame matches the signed input hash")
        decoded.append((signed, frames.decode(raw), raw))
    if not decoded:
        return None
    batch = max(max(f.rows) for _, f, _ in decoded) + 1
    length = max(max(f.starts) + f.data.shape[1] for _, f, _ in decoded)
    cache = KVCache.allocate(engine.config, batch, length, engine.model.device)
    for signed, frame, _ in decoded:
        kind, out = run_stage(engine.model, frame, cache, *layers)
        honest = frames.encode(Frame(kind, frame.session, frame.seq, frame.rows, frame.starts, out))
        if frames.frame_hash(honest) != signed.commitment.output_hash:
            return StageFault(index, record.node, layers, frame.seq, signed,
                              "signed output differs from the honest recomputation of its input")
    return None
