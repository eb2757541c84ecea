"""Stage commitments: what a pipeline stage signs for every frame it computes (EIP-712, pure).

A stage binds the session (and through it the requests), the step, the model, its layer range
and the SHA-256 of the frame it received and of the frame it returned. The output frame of one
stage is, byte for byte, the input of the next, so a route's commitments form a chain from the
token ids to the logits; a dispute is narrowed to the one stage whose signed output differs
from an honest recomputation of its signed input (`verinfer.pipeline.checker`).

A stage signs, per session, one `StageBatch`: the Merkle root over its step commitments
(EIP-712 in the wire protocol's style, `verinfer.protocol.wire`). The receipt format is
unchanged: a split result carries its stage records next to it (`StageRecord`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from verinfer.protocol import wire
from verinfer.protocol.merkle import merkle_proof, merkle_root, verify_proof
from verinfer.protocol.wire import Field, Message

# Stages that run off chain (a local split, tests) sign in this domain: chain id 0 is no chain.
OFFCHAIN_DOMAIN = wire.Domain(0, wire.ZERO_ADDRESS)


@dataclass(frozen=True)
class StageCommitment(Message):
    session: bytes
    seq: int
    model_id: bytes
    layer_start: int
    layer_end: int
    input_hash: bytes
    output_hash: bytes
    node: str

    TYPE_NAME: ClassVar[str] = "StageCommitment"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("session", "bytes32", "session"),
        Field("seq", "uint32", "seq"),
        Field("modelId", "bytes32", "model_id"),
        Field("layerStart", "uint32", "layer_start"),
        Field("layerEnd", "uint32", "layer_end"),
        Field("inputHash", "bytes32", "input_hash"),
        Field("outputHash", "bytes32", "output_hash"),
        Field("node", "address", "node"),
    )


@dataclass(frozen=True)
class StageBatch(Message):
    """What a stage signs: the Merkle root over its commitments of one session, in step order.

    One signature per session and stage instead of one per step, so that signing (0.15 ms with
    coincurve, ~13 ms in eth-keys' pure-Python backend) stays off the per-step path; each step's
    commitment is still proven on its own by its Merkle path to the signed root.
    """

    session: bytes
    node: str
    layer_start: int
    layer_end: int
    steps: int
    root: bytes

    TYPE_NAME: ClassVar[str] = "StageBatch"
    FIELDS: ClassVar[tuple[Field, ...]] = (
        Field("session", "bytes32", "session"),
        Field("node", "address", "node"),
        Field("layerStart", "uint32", "layer_start"),
        Field("layerEnd", "uint32", "layer_end"),
        Field("steps", "uint32", "steps"),
        Field("root", "bytes32", "root"),
    )


def batch_of(commitments: Sequence[StageCommitment]) -> StageBatch:
    """The batch over one stage's commitments of one session (in the order given)."""
    if not commitments:
        raise wire.WireFormatError("a batch needs at least one commitment")
    first = commitments[0]
    for c in commitments:
        if (c.session, c.node, c.layer_start, c.layer_end) != (
                first.session, first.node, first.layer_start, first.layer_end):
            raise wire.WireFormatError("a batch holds one stage's commitments of one session")
    root = merkle_root([c.hash_struct() for c in commitments])
    return StageBatch(first.session, first.node, first.layer_start, first.layer_end,
                      len(commitments), root)


@dataclass(frozen=True)
class SignedCommitment:
    """One step's commitment with its proof: the Merkle path to a batch its node signed."""

    commitment: StageCommitment
    batch: StageBatch
    path: tuple[tuple[bool, bytes], ...]
    signature: bytes  # the node's signature on `batch`

    def check(self, domain: wire.Domain) -> None:
        """Raise `wire.InvalidSignature` unless the commitment's node signed a batch holding it."""
        c, b = self.commitment, self.batch
        if (c.session, c.node, c.layer_start, c.layer_end) != (b.session, b.node, b.layer_start,
                                                               b.layer_end):
            raise wire.InvalidSignature("the commitment is not of its batch's session and stage")
        if not verify_proof(c.hash_struct(), self.path, b.root):
            raise wire.InvalidSignature("the commitment is not in its signed batch")
        wire.check_signed_by(domain, b, self.signature, c.node)

    def to_json(self) -> dict[str, Any]:
        return {"commitment": self.commitment.to_json(), "batch": self.batch.to_json(),
                "path": [[left, "0x" + h.hex()] for left, h in self.path],
                "signature": wire.signature_to_json(self.signature)}

    @classmethod
    def from_json(cls, data: Any) -> SignedCommitment:
        if not isinstance(data, dict) or set(data) != {"commitment", "batch", "path", "signature"}:
            raise wire.MalformedMessage("a signed stage commitment has commitment, batch, path "
                                        "and signature")
        try:
            path = tuple((bool(left), bytes.fromhex(str(h).removeprefix("0x")))
                         for left, h in data["path"])
        except (TypeError, ValueError) as exc:
            raise wire.MalformedMessage(f"bad Merkle path: {exc}") from exc
        return cls(StageCommitment.from_json(data["commitment"]), StageBatch.from_json(data["batch"]),
                   path, wire.signature_from_json(data["signature"]))


def sign_batch(domain: wire.Domain, batch: StageBatch, key: bytes) -> bytes:
    return wire.sign(domain, batch, key)


def prove_all(commitments: Sequence[StageCommitment], batch: StageBatch,
              signature: bytes) -> list[SignedCommitment]:
    """Each commitment of a signed batch with its Merkle path."""
    leaves = [c.hash_struct() for c in commitments]
    if merkle_root(leaves) != batch.root:
        raise wire.WireFormatError("the commitments do not make the batch's root")
    return [SignedCommitment(c, batch, tuple(merkle_proof(leaves, i)), signature)
            for i, c in enumerate(commitments)]


@dataclass(frozen=True)
class StageRecord:
    """One stage of a split result: who served which layers, and its signed commitments."""

    node: str
    endpoint: str
    layer_start: int
    layer_end: int
    commitments: tuple[SignedCommitment, ...]
    weight_bytes: int | None = None  # the weights the stage said it held (HELLO / ASSIGN)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "endpoint": self.endpoint,
                "layers": [self.layer_start, self.layer_end], "weight_bytes": self.weight_bytes,
                "commitments": [c.to_json() for c in self.commitments]}
