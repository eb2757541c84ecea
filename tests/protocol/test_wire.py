"""Wire protocol v2: EIP-712 hashing against eth-account's implementation, signatures, strict
JSON, the receivers' checks, and the committed conformance vectors."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from verinfer.errors import RemoteError
from verinfer.protocol import wire
from verinfer.protocol.merkle import merkle_proof, verify_proof

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "protocol"
sys.path.insert(0, str(VECTOR_DIR))
import make_wire_vectors as mv

DOMAIN = mv.DOMAIN
MESSAGES = {m.TYPE_NAME: (m, k) for m, k in mv.messages()}


def eth_account_message(message: wire.Message) -> dict:
    """The message as eth-account's own EIP-712 encoder takes it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            message.TYPE_NAME: [{"name": f.name, "type": f.abi_type} for f in message.FIELDS],
        },
        "primaryType": message.TYPE_NAME,
        "domain": {"name": "verinfer", "version": "2", "chainId": DOMAIN.chain_id,
                   "verifyingContract": DOMAIN.contract},
        "message": {f.name: getattr(message, f.attr) for f in message.FIELDS},
    }


def eth_account_signature(message: wire.Message, key: bytes) -> bytes:
    full = eth_account_message(message)
    return bytes(Account.sign_message(encode_typed_data(full_message=full), key).signature)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_digest_and_signature_match_eth_account(name: str) -> None:
    message, key = MESSAGES[name]
    ours = wire.sign(DOMAIN, message, key)
    theirs = eth_account_signature(message, key)
    # eth-account may return the high-s twin; both recover to the same key, ours is low-s.
    assert wire.recover(DOMAIN, message, ours) == wire.address_of(key)
    assert Account._recover_hash(wire.digest(DOMAIN, message), signature=theirs) == \
        wire.address_of(key)
    signable = encode_typed_data(full_message=eth_account_message(message))
    assert _hash_eip191_message(signable) == wire.digest(DOMAIN, message)
    assert ours[:32] == theirs[:32]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_json_round_trip(name: str) -> None:
    message, _ = MESSAGES[name]
    data = json.loads(json.dumps(message.to_json()))
    assert type(message).from_json(data) == message


def test_signature_bound_to_domain_and_content() -> None:
    job, key = MESSAGES["Job"]
    sig = wire.sign(DOMAIN, job, key)
    other_chain = wire.Domain(DOMAIN.chain_id + 1, DOMAIN.contract)
    assert wire.recover(other_chain, job, sig) != job.gateway
    tampered = replace(job, price_per_token=job.price_per_token + 1)
    assert wire.recover(DOMAIN, tampered, sig) != job.gateway
    with pytest.raises(wire.InvalidSignature):
        wire.check_signed_by(DOMAIN, tampered, sig, job.gateway)


def test_high_s_and_bad_v_are_refused() -> None:
    job, key = MESSAGES["Job"]
    sig = wire.sign(DOMAIN, job, key)
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (wire.SECP256K1_N - s).to_bytes(32, "big") + bytes([sig[64] ^ 1])
    with pytest.raises(wire.InvalidSignature, match="lower half"):
        wire.recover(DOMAIN, job, high)
    with pytest.raises(wire.InvalidSignature):
        wire.recover(DOMAIN, job, sig[:64] + b"\x00")
    with pytest.raises(wire.InvalidSignature):
        wire.recover(DOMAIN, job, sig[:64])


def test_addresses_bad_checksum_refused_lowercase_accepted() -> None:
    good = mv.GATEWAY
    assert wire.check_address(good.lower()) == good
    flipped = good[:2] + "".join(c.swapcase() if c.isalpha() else c for c in good[2:])
    if flipped[2:] != flipped[2:].upper():  # all-uppercase counts as unchecksummed
        with pytest.raises(wire.WireFormatError, match="checksum"):
            wire.check_address(flipped)
    with pytest.raises(wire.WireFormatError):
        wire.check_address("0x1234")


def test_value_ranges_checked() -> None:
    job, _ = MESSAGES["Job"]
    with pytest.raises(wire.WireFormatError, match="deadline"):
        replace(job, deadline=2**64)
    with pytest.raises(wire.WireFormatError):
        replace(job, nonce=-1)
    with pytest.raises(wire.WireFormatError):
        replace(job, request=b"\x00" * 31)
    with pytest.raises(wire.WireFormatError, match="prompt token"):
        wire.Request.build(mv.MODEL_ID, [], max_tokens=1)


def test_from_json_is_strict() -> None:
    job, _ = MESSAGES["Job"]
    data = job.to_json()
    for broken in (
        {**data, "extra": 1},
        {k: v for k, v in data.items() if k != "nonce"},
        {**data, "request": data["request"].upper()},
        {**data, "nonce": -3},
        {**data, "nonce": "12a"},
        {**data, "deadline": True},
        {**data, "gateway": "0x" + "g" * 40},
    ):
        with pytest.raises(wire.MalformedMessage):
            wire.Job.from_json(broken)
    assert issubclass(wire.MalformedMessage, RemoteError)


def test_check_job() -> None:
    job, key = MESSAGES["Job"]
    signed = wire.Signed(job, wire.sign(DOMAIN, job, key))
    assert wire.check_job(DOMAIN, signed, job.node, now=job.deadline) == job
    with pytest.raises(wire.MessageMismatch, match="deadline"):
        wire.check_job(DOMAIN, signed, job.node, now=job.deadline + 1)
    with pytest.raises(wire.MessageMismatch, match="for node"):
        wire.check_job(DOMAIN, signed, mv.VALIDATOR, now=0)
    forged = wire.Signed(job, wire.sign(DOMAIN, job, mv.NODE_KEY))
    with pytest.raises(wire.InvalidSignature):
        wire.check_job(DOMAIN, forged, job.node, now=0)


def test_check_receipt_catches_each_lie() -> None:
    request, _ = MESSAGES["Request"]
    job, _ = MESSAGES["Job"]
    receipt, key = MESSAGES["Receipt"]
    signed = wire.Signed(receipt, wire.sign(DOMAIN, receipt, key))
    assert wire.check_receipt(DOMAIN, signed, job, request, mv.OUTPUT) == receipt  # type: ignore[arg-type]
    with pytest.raises(wire.MessageMismatch, match="outputHash"):
        wire.check_receipt(DOMAIN, signed, job, request, mv.OUTPUT[:-1])  # type: ignore[arg-type]
    for lie in ({"fee": receipt.fee + 1}, {"gateway": mv.VALIDATOR}, {"nonce": receipt.nonce + 1}):
        bad = replace(receipt, **lie)  # type: ignore[arg-type]
        with pytest.raises(wire.MessageMismatch):
            wire.check_receipt(DOMAIN, wire.Signed(bad, wire.sign(DOMAIN, bad, key)), job,  # type: ignore[arg-type]
                               request, mv.OUTPUT)  # type: ignore[arg-type]
    with pytest.raises(wire.InvalidSignature):
        wire.check_receipt(DOMAIN, wire.Signed(receipt, wire.sign(DOMAIN, receipt, mv.USER_KEY)),
                           job, request, mv.OUTPUT)  # type: ignore[arg-type]


def test_verdict_agrees_only_with_the_same_logits() -> None:
    receipt, _ = MESSAGES["Receipt"]
    verdict, _ = MESSAGES["Verdict"]
    rid = wire.digest(DOMAIN, receipt)
    assert wire.verdict_agrees(verdict, receipt, rid)  # type: ignore[arg-type]
    assert not wire.verdict_agrees(replace(verdict, logits_hash=b"\x00" * 32), receipt, rid)  # type: ignore[arg-type]
    assert not wire.verdict_agrees(replace(verdict, valid=False), receipt, rid)  # type: ignore[arg-type]
    assert not wire.verdict_agrees(verdict, receipt, b"\x01" * 32)  # type: ignore[arg-type]


def test_prompt_token_inclusion_provable() -> None:
    leaves = [wire.token_leaf(t) for t in mv.PROMPT]
    root = wire.prompt_root(mv.PROMPT)
    assert verify_proof(leaves[3], merkle_proof(leaves, 3), root)
    assert not verify_proof(wire.token_leaf(mv.PROMPT[3] + 1), merkle_proof(leaves, 3), root)


def bundle_json() -> dict:
    [case] = [c for c in json.loads((VECTOR_DIR / "wire-v2.json").read_text())["cases"]
              if c["kind"] == "bundle"]
    return case["bundle"]


def test_bundle_checks_and_every_one_byte_change_is_rejected() -> None:
    data = bundle_json()
    bundle = wire.ReceiptBundle.from_json(data)
    assert bundle.check().node == mv.NODE
    text = json.dumps(data)
    rejected = 0
    positions = [i for i, c in enumerate(text) if c in "0123456789abcdef"]
    for i in positions[:: max(1, len(positions) // 150)]:
        c = text[i]
        changed = text[:i] + ("1" if c != "1" else "2") + text[i + 1:]
        try:
            wire.ReceiptBundle.from_json(json.loads(changed)).check()
        except (RemoteError, wire.WireFormatError, json.JSONDecodeError):
            rejected += 1
        else:
            pytest.fail(f"a change at {i} ({text[max(0, i - 30):i + 5]!r}) was accepted")
    assert rejected > 100


def test_bundle_refuses_wrong_version_and_missing_parts() -> None:
    data = bundle_json()
    with pytest.raises(wire.MalformedMessage, match="version"):
        wire.ReceiptBundle.from_json({**data, "version": 1})
    broken = copy.deepcopy(data)
    del broken["job"]
    with pytest.raises(wire.MalformedMessage):
        wire.ReceiptBundle.from_json(broken)


def test_vectors_are_current() -> None:
    """Every byte of the committed vectors is what the code computes (and eth-account agrees)."""
    committed = json.loads((VECTOR_DIR / "wire-v2.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(mv.build(), ensure_ascii=False))
    for case in committed["cases"]:
        if case["kind"] == "message":
            cls = getattr(wire, case["type"])
            message = cls.from_json(case["message"])
            assert "0x" + wire.digest(DOMAIN, message).hex() == case["digest"]
            assert wire.recover(DOMAIN, message, bytes.fromhex(case["signature"][2:])) == \
                case["signer"]
