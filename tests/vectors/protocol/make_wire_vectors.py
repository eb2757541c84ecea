"""Writes wire-v2.json: conformance vectors for the wire protocol v2 (docs/protocol-v2.md).

For each message type: its EIP-712 type string and type hash, a message in the JSON transport
form, its struct hash, its digest under a fixed domain, and its signature by a fixed test key
(RFC 6979 signatures are deterministic), plus the commitments (prompt root, stop root, output
hash, receipts root) and one whole receipt bundle. A second implementation must reproduce every
byte. Run from the repository root: `PYTHONPATH=src python tests/vectors/protocol/make_wire_vectors.py`
(`--check` compares instead of writing). The committed JSON file is the truth.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from verinfer.protocol import wire

HERE = Path(__file__).parent
VECTORS = HERE / "wire-v2.json"
DOMAIN = wire.Domain(chain_id=31337, contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


def test_key(name: str) -> bytes:
    """A published test key: never holds funds."""
    return hashlib.sha256(b"verinfer wire-v2 test key/" + name.encode()).digest()


GATEWAY_KEY, NODE_KEY, VALIDATOR_KEY, USER_KEY = (
    test_key(n) for n in ("gateway", "node", "validator", "user")
)
GATEWAY, NODE, VALIDATOR, USER = (
    wire.address_of(k) for k in (GATEWAY_KEY, NODE_KEY, VALIDATOR_KEY, USER_KEY)
)
MODEL_ID = hashlib.sha256(b"verinfer wire-v2 test model").digest()
PROMPT = (1, 450, 1053, 338, 2, 4095)
OUTPUT = (287, 13, 4095, 0, 2)
LOGITS_HASH = hashlib.sha256(b"verinfer wire-v2 test logits").digest()


def messages() -> list[tuple[wire.Message, bytes]]:
    request = wire.Request.build(
        MODEL_ID, PROMPT, max_tokens=64, temperature_milli=700, top_k=40, top_p_micro=950_000,
        seed=2**64 - 1, stop=["\n\n", "é"], ignore_eos=False,
    )
    job = wire.Job(request.hash_struct(), GATEWAY, USER, NODE, price_per_token=10**12,
                   nonce=2**200 + 7, deadline=1_900_000_000)
    receipt = wire.make_receipt(job, request.prompt_length, OUTPUT, LOGITS_HASH)
    receipt_id = wire.digest(DOMAIN, receipt)
    challenge = wire.Challenge(receipt_id, receipt.request, receipt.output_hash, VALIDATOR,
                               GATEWAY, nonce=3, deadline=1_900_000_100)
    verdict = wire.Verdict(receipt_id, receipt.request, receipt.output_hash, LOGITS_HASH,
                           valid=True, first_invalid_step=0, validator=VALIDATOR, gateway=GATEWAY)
    allowance = wire.Allowance(USER, GATEWAY, cap_per_epoch=5 * 10**17, expiry=1_900_000_000,
                               nonce=1)
    return [(request, GATEWAY_KEY), (job, GATEWAY_KEY), (receipt, NODE_KEY),
            (challenge, GATEWAY_KEY), (verdict, VALIDATOR_KEY), (allowance, USER_KEY)]


def hexs(b: bytes) -> str:
    return "0x" + b.hex()


def build() -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    for message, key in messages():
        cases.append({
            "kind": "message",
            "type": message.TYPE_NAME,
            "type_string": message.type_string(),
            "type_hash": hexs(message.type_hash()),
            "message": message.to_json(),
            "struct_hash": hexs(message.hash_struct()),
            "digest": hexs(wire.digest(DOMAIN, message)),
            "signer": wire.address_of(key),
            "signature": hexs(wire.sign(DOMAIN, message, key)),
        })
    for ids in ((0,), PROMPT, tuple(range(7))):
        cases.append({"kind": "prompt_root", "token_ids": list(ids),
                      "root": hexs(wire.prompt_root(ids))})
    for stop in ((), ("\n",), ("\n\n", "é", "</s>")):
        cases.append({"kind": "stop_root", "stop": list(stop), "root": hexs(wire.stop_root(stop))})
    for ids in ((), OUTPUT, (2**32 - 1,)):
        cases.append({"kind": "output_hash", "token_ids": list(ids),
                      "hash": hexs(wire.output_hash(ids))})
    ids = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    cases.append({"kind": "receipts_root", "receipt_ids": [hexs(i) for i in ids],
                  "root": hexs(wire.receipts_root(ids))})
    msgs = {m.TYPE_NAME: m for m, _ in messages()}
    bundle = wire.ReceiptBundle(
        DOMAIN, msgs["Request"], PROMPT, ("\n\n", "é"),  # type: ignore[arg-type]
        wire.Signed(msgs["Job"], wire.sign(DOMAIN, msgs["Job"], GATEWAY_KEY)),
        wire.Signed(msgs["Receipt"], wire.sign(DOMAIN, msgs["Receipt"], NODE_KEY)),
        OUTPUT,
    )
    cases.append({"kind": "bundle", "bundle": bundle.to_json()})
    return {
        "version": wire.PROTOCOL_VERSION,
        "spec": "docs/protocol-v2.md (verinfer.protocol.wire)",
        "domain": {"name": wire.DOMAIN_NAME, "version": str(wire.PROTOCOL_VERSION),
                   "chainId": DOMAIN.chain_id, "verifyingContract": DOMAIN.contract,
                   "separator": hexs(DOMAIN.separator())},
        "cases": cases,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if "--check" in argv:
        if VECTORS.read_text(encoding="utf-8") != text:
            print(f"{VECTORS} differs from what the code computes", file=sys.stderr)
            return 1
        print(f"{VECTORS}: up to date")
        return 0
    VECTORS.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
