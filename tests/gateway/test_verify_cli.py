"""`verinfer verify`: a good receipt passes; any one changed byte in a value is rejected."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_fakes import NODES, make_bundle
from typer.testing import CliRunner

from verinfer.cli import app
from verinfer.engine import Engine, SamplingParams
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import VerinferError
from verinfer.protocol import wire
from verinfer.protocol.merkle import merkle_proof

runner = CliRunner()


def run(args: list[str]) -> tuple[int, str]:
    """Exit code and output; an error raised on purpose is shown as `main` prints it."""
    result = runner.invoke(app, args)
    if isinstance(result.exception, VerinferError):
        return 2, result.output + f"error: {result.exception}"
    return result.exit_code, result.output


def receipt_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def good() -> dict:
    return make_bundle(NODES[0], [7, 8, 9], b"\x42" * 32, nonce=5).to_json()


def test_a_good_receipt_is_accepted(tmp_path: Path) -> None:
    code, out = run(["verify", str(receipt_file(tmp_path, good()))])
    assert code == 0, out
    assert "signatures and commitments OK" in out
    assert "not yet committed" in out


def value_offsets(text: str) -> list[int]:
    """Offsets of every hex digit of every 0x string and every digit of every number value."""
    offsets = []
    for m in re.finditer(r'"0x([0-9a-fA-F]+)"|(?<=[:\[,] )(\d+)|(?<=[\[,])(\d+)', text):
        group = next(g for g in (1, 2, 3) if m.group(g) is not None)
        offsets.extend(range(m.start(group), m.end(group)))
    return offsets


def test_every_one_byte_change_of_a_value_is_rejected(tmp_path: Path) -> None:
    text = json.dumps(good())
    offsets = value_offsets(text)
    assert len(offsets) > 1000
    for i in offsets[::5]:
        changed = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]
        path = tmp_path / "changed.json"
        path.write_text(changed)
        code, out = run(["verify", str(path)])
        assert code != 0, f"accepted a change at {i}: {changed[i - 30:i + 10]!r}"
        assert "receipt rejected:" in out


def test_reasons_are_specific(tmp_path: Path) -> None:
    data = good()
    data["outputTokenIds"][1] = 99
    code, out = run(["verify", str(receipt_file(tmp_path, data))])
    assert code != 0 and "outputHash" in out
    data = good()
    data["receipt"]["gateway"] = NODES[3].address
    code, out = run(["verify", str(receipt_file(tmp_path, data))])
    assert code != 0 and "rejected" in out


def test_inclusion_proof_is_checked(tmp_path: Path) -> None:
    bundles = [make_bundle(NODES[0], [7, i], b"\x42" * 32, nonce=i) for i in range(5)]
    ids = [b.receipt_id for b in bundles]
    data = bundles[2].to_json()
    data["settlement"] = {"epoch": 3, "receiptsRoot": "0x" + wire.receipts_root(ids).hex(),
                          "proof": [[left, "0x" + h.hex()] for left, h in merkle_proof(ids, 2)]}
    code, out = run(["verify", "--offline", str(receipt_file(tmp_path, data))])
    assert code == 0, out
    assert "in epoch 3's receipts root" in out
    data["settlement"]["proof"][0][1] = "0x" + "00" * 32
    code, out = run(["verify", "--offline", str(receipt_file(tmp_path, data))])
    assert code != 0 and "Merkle proof" in out


def test_replay_on_the_local_engine(tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path / "tiny", tiny_config(), seed=1)
    engine = Engine.load(model_dir)
    prompt = (3, 4, 5, 6)
    params = SamplingParams(max_tokens=6, temperature=0.7, seed=11)
    [result] = engine.generate([list(prompt)], params)
    model_id = bytes.fromhex(engine.model_id.removeprefix("0x"))

    def bundle_for(output: list[int]) -> dict:
        from gateway_fakes import DOMAIN, GATEWAY, USER

        request = wire.Request.build(model_id, prompt, max_tokens=6, temperature_milli=700,
                                     seed=11)
        job = wire.Job(request.hash_struct(), GATEWAY.address, USER.address, NODES[0].address,
                       1, 1, 2**40)
        receipt = wire.make_receipt(job, len(prompt), output, bytes.fromhex(result.logits_hash))
        return wire.ReceiptBundle(
            DOMAIN, request, prompt, (),
            wire.Signed(job, wire.sign(DOMAIN, job, GATEWAY.private_key)),
            wire.Signed(receipt, wire.sign(DOMAIN, receipt, NODES[0].private_key)),
            tuple(output)).to_json()

    code, out = run(["verify", "--replay", "--model", str(model_dir),
                             str(receipt_file(tmp_path, bundle_for(result.token_ids)))])
    assert code == 0, out
    assert "logits hash match" in out
    forged = list(result.token_ids)
    forged[-1] = (forged[-1] + 1) % 200
    code, out = run(["verify", "--replay", "--model", str(model_dir),
                              str(receipt_file(tmp_path, bundle_for(forged)))])
    assert code != 0
    assert f"other tokens from step {len(forged) - 1}" in out


@pytest.mark.parametrize("args", [["verify", "/nonexistent.json"], ["verify", "--replay", "x"]])
def test_cli_errors_are_one_line(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "verinfer.cli", *args],
                          check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: receipt rejected: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
