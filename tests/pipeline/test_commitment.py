"""Stage commitments: signed by the stage key, bound to every field, strict JSON."""

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
    sign_commitment,
)
from verinfer.protocol import wire


def _commitment(key: bytes) -> StageCommitment:
    return StageCommitment(b"s" * 32, 3, b"m" * 32, 2, 5, b"i" * 32, b"o" * 32, wire.address_of(key))


def test_signed_commitment_checks_and_round_trips() -> None:
    key = new_private_key()
    signed = sign_commitment(OFFCHAIN_DOMAIN, _commitment(key), key)
    signed.check(OFFCHAIN_DOMAIN)
    again = SignedCommitment.from_json(signed.to_json())
    assert again == signed
    again.check(OFFCHAIN_DOMAIN)


@pytest.mark.parametrize("change", [
    {"seq": 4}, {"layer_start": 1}, {"layer_end": 6}, {"input_hash": b"x" * 32},
    {"output_hash": b"x" * 32}, {"session": b"t" * 32}, {"model_id": b"n" * 32},
])
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    key = new_private_key()
    signed = sign_commitment(OFFCHAIN_DOMAIN, _commitment(key), key)
    forged = SignedCommitment(dataclasses.replace(signed.commitment, **change), signed.signature)
    with pytest.raises(wire.InvalidSignature):
        forged.check(OFFCHAIN_DOMAIN)


def test_another_domain_does_not_accept_it() -> None:
    key = new_private_key()
    signed = sign_commitment(OFFCHAIN_DOMAIN, _commitment(key), key)
    with pytest.raises(wire.InvalidSignature):
        signed.check(wire.Domain(1, "0x" + "11" * 20))


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
