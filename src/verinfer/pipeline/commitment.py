"""Stage commitments: what a pipeline stage signs for every frame it computes (EIP-712, pure).

A stage binds the session (and through it the requests), the step, the model, its layer range
and the SHA-256 of the frame it received and of the frame it returned. The output frame of one
stage is, byte for byte, the input of the next, so a route's commitments form a chain from the
token ids to the logits; a dispute is narrowed to the one stage whose signed output differs
from an honest recomputation of its signed input (`verinfer.pipeline.checker`).

Signed in the wire protocol's EIP-712 domain (`verinfer.protocol.wire`); the receipt format is
unchanged: a split result carries its stage commitments next to it (`StageRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from verinfer.protocol import wire
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
class SignedCommitment:
    commitment: StageCommitment
    signature: bytes

    def check(self, domain: wire.Domain) -> None:
        """Raise `wire.InvalidSignature` unless the commitment's node signed it."""
        wire.check_signed_by(domain, self.commitment, self.signature, self.commitment.node)

    def to_json(self) -> dict[str, Any]:
        return {**self.commitment.to_json(), "signature": wire.signature_to_json(self.signature)}

    @classmethod
    def from_json(cls, data: Any) -> SignedCommitment:
        if not isinstance(data, dict) or "signature" not in data:
            raise wire.MalformedMessage("a signed stage commitment needs a signature")
        return cls(StageCommitment.from_json(data), wire.signature_from_json(data["signature"]))


def sign_commitment(domain: wire.Domain, commitment: StageCommitment, key: bytes) -> SignedCommitment:
    return SignedCommitment(commitment, wire.sign(domain, commitment, key))


@dataclass(frozen=True)
class StageRecord:
    """One stage of a split result: who served which layers, and its signed commitments."""

    node: str
    endpoint: str
    layer_start: int
    layer_end: int
    commitments: tuple[SignedCommitment, ...]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "endpoint": self.endpoint,
                "layers": [self.layer_start, self.layer_end],
                "commitments": [c.to_json() for c in self.commitments]}
