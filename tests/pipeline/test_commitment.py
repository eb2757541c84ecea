"""Stage commitments: one signed batch per session proves every step; strict JSON."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from stagefarm import SRC

from verinfer.keyfile import new_private_key
from verinfer.pipeline.commitment import (
    OFFCHAIN_DOMAIN,
    SignedCommitment,
    StageCommitment,
    batch_of,
    prove_all,
    sign_batch,
)
from verinfer.protocol import wire


def _commitments(key: bytes, steps: int = 5) -> list[StageCommitment]:
    return [StageCommitment(b"s" * 32, seq, b"m" * 32, 2, 5, bytes([seq]) * 32, b"o" * 32,
                            wire.address_of(key)) for seq in range(steps)]


def _signed(key: bytes, steps: int = 5) -> list[SignedCommitment]:
    commitments = _commitments(key, steps)
    batch = batch_of(commitments)
    return prove_all(commitments, batch, sign_batch(OFFCHAIN_DOMAIN, batch, key))


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_step_is_proven_by_one_signed_batch(steps: int) -> None:
    signed = _signed(new_private_key(), steps)
    assert len({s.signature for s in signed}) == 1
    for one in signed:
        one.check(OFFCHAIN_DOMAIN)
        again = SignedCommitment.from_json(one.to_json())
        assert again == one
        again.check(OFFCHAIN_DOMAIN)


@pytest.mark.parametrize("change", [
    {"seq": 4}, {"layer_start": 1}, {"layer_end": 6}, {"input_hash": b"x" * 32},
    {"output_hash": b"x" * 32}, {"session": b"t" * 32}, {"model_id": b"n" * 32},
])
def test_any_changed_field_breaks_the_proof(change: dict[str, object]) -> None:
    one = _signed(new_private_key())[1]
    forged = dataclasses.replace(one, commitment=dataclasses.replace(one.commitment, **change))
    with pytest.raises(wire.InvalidSignature):
        forged.check(OFFCHAIN_DOMAIN)


def test_a_batch_signed_by_another_key_or_domain_is_refused() -> None:
    key = new_private_key()
    one = _signed(key)[0]
    other = dataclasses.replace(one, signature=sign_batch(OFFCHAIN_DOMAIN, one.batch, new_private_key()))
    with pytest.raises(wire.InvalidSignature):
        other.check(OFFCHAIN_DOMAIN)
    with pytest.raises(wire.InvalidSignature):
        one.check(wire.Domain(1, "0x" + "11" * 20))


def test_a_batch_holds_one_stage_of_one_session() -> None:
    key = new_private_key()
    mixed = [*_commitments(key, 2), dataclasses.replace(_commitments(key, 3)[2], layer_end=6)]
    with pytest.raises(wire.WireFormatError):
        batch_of(mixed)
    with pytest.raises(wire.WireFormatError):
        batch_of([])


def test_malformed_json_is_refused() -> None:
    with pytest.raises(wire.MalformedMessage):
        SignedCommitment.from_json({"seq": 1})


@pytest.mark.parametrize(("args", "message"), [
    (["--layers", "3"], "--layers must be START:END"),
    (["--layers", "0:99"], "the model has 8 layers"),
    (["--layers", "0:4", "--cheat", "wrong-tokens"], "a stage's --cheat is one of"),
])
def test_stage_cli_refuses_bad_options_in_one_line(
    args: list[str], message: str, split_dir: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "verinfer.cli", "node", "--model", str(split_dir), "--port", "0",
           "--data-dir", str(tmp_path), *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
