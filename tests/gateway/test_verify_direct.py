"""`verinfer verify` of a receipt from a node called directly (no gateway): checked for what the
node signed and flagged as never settled; a half-direct or altered one is rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway_fakes import DOMAIN, GATEWAY, NODES, USER
from typer.testing import CliRunner

from verinfer.cli import app
from verinfer.errors import VerinferError
from verinfer.protocol import wire
from verinfer.verify import UNSIGNED_JOB, ReceiptRejected, load_bundle

runner = CliRunner()
PROMPT = (5, 6, 7, 8)
OUTPUT = [9, 10, 11]


def run(tmp_path: Path, data: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(data, indent=1))
    result = runner.invoke(app, ["verify", "--offline", str(path)])
    if isinstance(result.exception, VerinferError):
        return 2, result.output + f"error: {result.exception}"
    return result.exit_code, result.output


def direct(gateway: str = wire.ZERO_ADDRESS, user: str = wire.ZERO_ADDRESS, price: int = 0,
           job_signature: bytes | None = None) -> dict[str, Any]:
    """A receipt as `NodeService` makes it for a request without a job (self-issued job)."""
    node = NODES[0]
    request = wire.Request.build(b"\x11" * 32, PROMPT, max_tokens=8, temperature_milli=700,
                                 seed=3)
    job = wire.Job(request.hash_struct(), gateway, user, node.address, price, 77, 1_000)
    receipt = wire.make_receipt(job, len(PROMPT), OUTPUT, b"\x42" * 32)
    return wire.ReceiptBundle(
        DOMAIN, request, PROMPT, (),
        wire.Signed(job, UNSIGNED_JOB if job_signature is None else job_signature),
        wire.Signed(receipt, wire.sign(DOMAIN, receipt, node.private_key)),
        tuple(OUTPUT)).to_json()


def flip(hex_string: str, at: int) -> str:
    return hex_string[:at] + ("0" if hex_string[at] != "0" else "1") + hex_string[at + 1:]


def test_the_nodes_self_issued_job_signature_is_the_rules() -> None:
    from verinfer.node.service import UNSIGNED

    assert UNSIGNED == UNSIGNED_JOB


def test_a_direct_receipt_is_verified_and_flagged_not_settled(tmp_path: Path) -> None:
    code, out = run(tmp_path, direct())
    assert code == 0, out
    assert "node signature and commitments OK (DIRECT" in out
    assert f"node {NODES[0].address}; no gateway, no user, no fee" in out
    assert "not settled through a gateway" in out and "fee 0 wei" in out


def test_the_gateway_path_still_refuses_a_direct_receipt() -> None:
    with pytest.raises(ReceiptRejected, match="signature"):
        load_bundle(direct())  # only `verinfer verify` accepts one, flagged


def test_a_changed_byte_of_what_the_node_signed_is_rejected(tmp_path: Path) -> None:
    changes = {
        "an output token": lambda d: d["outputTokenIds"].__setitem__(0, 12),
        "a prompt token": lambda d: d["request"]["promptTokenIds"].__setitem__(0, 4),
        "the model_id": lambda d: d["request"].__setitem__("modelId", "0x" + "12" * 32),
        "the seed": lambda d: d["request"].__setitem__("seed", 4),
        "the logits hash": lambda d: d["receipt"].__setitem__("logitsHash", "0x" + "43" * 32),
        "the node's signature": lambda d: d["receipt"].__setitem__(
            "signature", flip(d["receipt"]["signature"], 20)),
        "the node": lambda d: d["receipt"].__setitem__("node", NODES[1].address),
    }
    for what, change in changes.items():
        data = direct()
        data.pop("receiptId")
        change(data)
        code, out = run(tmp_path, data)
        assert code != 0, f"a change of {what} was accepted: {out}"
        assert "receipt rejected" in out, what


@pytest.mark.parametrize(("data", "reason"), [
    (lambda: direct(job_signature=b"\x01" * 65), "signature"),  # zero gateway, some signature
    (lambda: direct(gateway=GATEWAY.address), "signature"),  # a gateway's job left unsigned
    (lambda: direct(user=USER.address), "bills nobody"),
    (lambda: direct(price=5), "bills nobody"),
])
def test_a_half_direct_receipt_is_rejected(tmp_path: Path, data: Any, reason: str) -> None:
    code, out = run(tmp_path, data())
    assert code != 0 and reason in out, out


def test_a_direct_receipt_cannot_claim_an_epoch(tmp_path: Path) -> None:
    data = direct()
    rid = data["receiptId"]
    data["settlement"] = {"epoch": 1, "receiptsRoot": rid, "proof": []}
    code, out = run(tmp_path, data)
    assert code != 0 and "cannot be in a gateway's epoch" in out
