"""Wire protocol v2 (docs/protocol-v2.md): the signed messages between parties, as EIP-712 structs.

Node, gateway, validator and auditor import these types; the settlement contract checks the same
digests with `ecrecover`. Every message is a frozen dataclass whose fields map one to one onto
its EIP-712 struct; `hash_struct` is its canonical commitment, `digest` binds it to one chain and
one contract, `sign`/`recover` are secp256k1 with low-s, v in {27, 28}. JSON is only the
transport: `to_json`/`from_json` are strict both ways. Pure: no I/O, no clock (callers pass
`now`), no torch, no chain client.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from eth_abi import encode as abi_encode
from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_checksum_address

from verinfer.errors import ProtocolError, RemoteError
from verinfer.protocol.merkle import merkle_root

PROTOCOL_VERSION = 2
DOMAIN_NAME = "verinfer"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
OUTPUT_HASH_DOMAIN = b"verinfer-output-v1"

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
_HEX_SIGNATURE = re.compile(r"^0x[0-9a-f]{130}$")
_JSON_SAFE_INT = 1 << 53


class WireFormatError(ProtocolError):
    """A message was built from values its struct cannot hold (our own inputs)."""


class MalformedMessage(RemoteError):
    """A peer sent a message that does not parse as its struct."""


class InvalidSignature(RemoteError):
    """A signature is malformed, malleable, or recovers to someone other than the claimed signer."""


class MessageMismatch(RemoteError):
    """Two messages that must agree (a receipt and its job, a bundle and its parts) do not."""


# --- canonical values ---------------------------------------------------------------------


# The same few addresses (gateway, users, nodes) recur in every message: their checksums are
# computed once. A refused address raises, and exceptions are not cached.
@functools.lru_cache(maxsize=4096)
def check_address(value: str) -> str:
    """The EIP-55 form of `value`; all-lowercase is accepted, a mixed case must checksum."""
    if not isinstance(value, str) or not _HEX_ADDRESS.match(value):
        raise WireFormatError(f"not a 0x-prefixed 20-byte hex address: {value!r}")
    checksummed = to_checksum_address(value)
    body = value[2:]
    if body != body.lower() and body != body.upper() and value != checksummed:
        raise WireFormatError(f"address {value} has a wrong EIP-55 checksum (refused, not corrected)")
    return checksummed


def _check_uint(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise WireFormatError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")


def _check_bytes32(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise WireFormatError(f"{name} must be 32 bytes")


def token_leaf(token_id: int) -> bytes:
    _check_uint("token id", token_id, 32)
    return token_id.to_bytes(4, "big")


def prompt_root(token_ids: Sequence[int]) -> bytes:
    """Merkle root over the prompt's token ids (4 bytes big-endian each): one id's inclusion
    can be proven with `verinfer.protocol.merkle.merkle_proof`."""
    return merkle_root([token_leaf(t) for t in token_ids])


def stop_root(stop: Sequence[str]) -> bytes:
    """Merkle root over the stop sequences' UTF-8 bytes, in the order given."""
    if any(not isinstance(s, str) or not s for s in stop):
        raise WireFormatError("stop sequences must be non-empty strings")
    return merkle_root([s.encode("utf-8") for s in stop])


def output_hash(token_ids: Sequence[int]) -> bytes:
    """SHA-256(`verinfer-output-v1` || uint32le(n) || uint32le ids): the output commitment."""
    for t in token_ids:
        _check_uint("token id", t, 32)
    body = struct.pack(f"<I{len(token_ids)}I", len(token_ids), *token_ids)
    return hashlib.sha256(OUTPUT_HASH_DOMAIN + body).digest()


def receipt_fee(price_per_token: int, prompt_length: int, output_length: int) -> int:
    """What a receipt may charge: the job's price for every prompt and output token."""
    return price_per_token * (prompt_length + output_length)


def receipts_root(receipt_ids: Sequence[bytes]) -> bytes:
    """An epoch's commitment: the Merkle root over its receipt digests, in committed order."""
    for rid in receipt_ids:
        _check_bytes32("receipt id", rid)
    return merkle_root(list(receipt_ids))


# --- EIP-712 structs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One struct member: its EIP-712 name and type, and the dataclass attribute holding it."""

    name: str
    abi_type: str
    attr: str


def _fields(*spec: tuple[str, str, str]) -> tuple[Field, ...]:
    return tuple(Field(*s) for s in spec)


class Message:
    """Base of the signed (or committed) structs. Subclasses are frozen dataclasses."""

    TYPE_NAME: ClassVar[str]
    FIELDS: ClassVar[tuple[Field, ...]]

    def __post_init__(self) -> None:
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if f.abi_type == "address":
                object.__setattr__(self, f.attr, check_address(value))
            elif f.abi_type == "bytes32":
                _check_bytes32(f.name, value)
            elif f.abi_type == "bool":
                if not isinstance(value, bool):
                    raise WireFormatError(f"{f.name} must be a boolean, got {value!r}")
            elif f.abi_type.startswith("uint"):
                _check_uint(f.name, value, int(f.abi_type[4:]))
            else:  # pragma: no cover - a struct definition error, caught by the vectors
                raise AssertionError(f"unsupported EIP-712 type {f.abi_type}")

    @classmethod
    def type_string(cls) -> str:
        members = ",".join(f"{f.abi_type} {f.name}" for f in cls.FIELDS)
        return f"{cls.TYPE_NAME}({members})"

    @classmethod
    def type_hash(cls) -> bytes:
        return _keccak_text(cls.type_string())

    def hash_struct(self) -> bytes:
        """keccak256(typeHash || encodeData): the message's canonical 32-byte commitment
        (computed once: a message is frozen, and its hash is asked for again and again)."""
        cached: bytes | None = self.__dict__.get("_hash_struct")
        if cached is None:
            types = ["bytes32", *(f.abi_type for f in self.FIELDS)]
            values = [self.type_hash(), *(getattr(self, f.attr) for f in self.FIELDS)]
            cached = keccak(abi_encode(types, values))
            object.__setattr__(self, "_hash_struct", cached)
        return cached

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if f.abi_type == "bytes32":
                out[f.name] = "0x" + value.hex()
            elif f.abi_type.startswith("uint") and value >= _JSON_SAFE_INT:
                out[f.name] = str(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Parse the JSON transport form strictly: every field present, nothing else."""
        if not isinstance(data, Mapping):
            raise MalformedMessage(f"{cls.TYPE_NAME} must be a JSON object")
        names = {f.name for f in cls.FIELDS}
        extra = set(data) - names - {"signature"}
        if extra:
            raise MalformedMessage(f"{cls.TYPE_NAME} has unknown fields: {sorted(extra)}")
        kwargs: dict[str, Any] = {}
        for f in cls.FIELDS:
            if f.name not in data:
                raise MalformedMessage(f"{cls.TYPE_NAME} lacks field {f.name}")
            kwargs[f.attr] = _parse_value(cls.TYPE_NAME, f, data[f.name])
        try:
            return cls(**kwargs)
        except WireFormatError as exc:
            raise MalformedMessage(f"{cls.TYPE_NAME}: {exc}") from exc



def _parse_value(type_name: str, f: Field, raw: Any) -> Any:
    where = f"{type_name}.{f.name}"
    if f.abi_type == "bytes32":
        if not isinstance(raw, str) or not _HEX32.match(raw):
            raise MalformedMessage(f"{where} must be 0x followed by 64 lowercase hex digits")
        return bytes.fromhex(raw[2:])
    if f.abi_type.startswith("uint"):
        if isinstance(raw, str) and raw.isdigit() and raw.isascii():
            return int(raw)
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise MalformedMessage(f"{where} must be a non-negative integer or decimal string")
    return raw  # address and bool: checked by the constructor


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain: signatures are valid for one protocol version, chain and contract."""

    chain_id: int
    contract: str

    def __post_init__(self) -> None:
        _check_uint("chainId", self.chain_id, 256)
        object.__setattr__(self, "contract", check_address(self.contract))

    TYPE_STRING: ClassVar[str] = (
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )

    def separator(self) -> bytes:
        return _separator(self.chain_id, self.contract)


@functools.lru_cache(maxsize=64)
def _separator(chain_id: int, contract: str) -> bytes:
    """A domain's separator, computed once per (chain, contract)."""
    return keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [_keccak_text(Domain.TYPE_STRING), _keccak_text(DOMAIN_NAME),
         _keccak_text(str(PROTOCOL_VERSION)), chain_id, contract],
    ))


@functools.lru_cache(maxsize=64)
def _keccak_text(text: str) -> bytes:
    """keccak256 of a constant string (a type string, the domain's name): computed once."""
    return keccak(text=text)


@dataclass(frozen=True)
class Request(Message):
    """The commitment to what was asked: model, prompt (Merkle root), every sampling value."""

    model_id: bytes
    prompt_root: bytes
    prompt_length: int
    max_tokens: int
    temperature_milli: int
    top_k: int
    top_p_micro: int
    seed: int
    stop_root: bytes
    ignore_eos: bool

    TYPE_NAME: ClassVar[str] = "Request"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("modelId", "bytes32", "model_id"),
        ("promptRoot", "bytes32", "prompt_root"),
        ("promptLength", "uint32", "prompt_length"),
        ("maxTokens", "uint32", "max_tokens"),
        ("temperatureMilli", "uint32", "temperature_milli"),
        ("topK", "uint32", "top_k"),
        ("topPMicro", "uint32", "top_p_micro"),
        ("seed", "uint64", "seed"),
        ("stopRoot", "bytes32", "stop_root"),
        ("ignoreEos", "bool", "ignore_eos"),
    )

    @classmethod
    def build(
        cls,
        model_id: bytes,
        prompt_token_ids: Sequence[int],
        *,
        max_tokens: int,
        temperature_milli: int = 0,
        top_k: int = 0,
        top_p_micro: int = 1_000_000,
        seed: int = 0,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> Request:
        if not prompt_token_ids:
            raise WireFormatError("a request needs at least one prompt token")
        return cls(model_id, prompt_root(prompt_token_ids), len(prompt_token_ids), max_tokens,
                   temperature_milli, top_k, top_p_micro, seed, stop_root(stop), ignore_eos)


@dataclass(frozen=True)
class Job(Message):
    """The gateway hands one request to one node, on its terms (signed by the gateway)."""

    request: bytes
    gateway: str
    user: str
    node: str
    price_per_token: int
    nonce: int
    deadline: int

    TYPE_NAME: ClassVar[str] = "Job"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("request", "bytes32", "request"),
        ("gateway", "address", "gateway"),
        ("user", "address", "user"),
        ("node", "address", "node"),
        ("pricePerToken", "uint256", "price_per_token"),
        ("nonce", "uint256", "nonce"),
        ("deadline", "uint64", "deadline"),
    )


@dataclass(frozen=True)
class Receipt(Message):
    """A node's signed result, bound to one request, one job and one gateway."""

    request: bytes
    job: bytes
    output_hash: bytes
    logits_hash: bytes
    output_length: int
    node: str
    gateway: str
    user: str
    fee: int
    nonce: int
    deadline: int

    TYPE_NAME: ClassVar[str] = "Receipt"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("request", "bytes32", "request"),
        ("job", "bytes32", "job"),
        ("outputHash", "bytes32", "output_hash"),
        ("logitsHash", "bytes32", "logits_hash"),
        ("outputLength", "uint32", "output_length"),
        ("node", "address", "node"),
        ("gateway", "address", "gateway"),
        ("user", "address", "user"),
        ("fee", "uint256", "fee"),
        ("nonce", "uint256", "nonce"),
        ("deadline", "uint64", "deadline"),
    )


@dataclass(frozen=True)
class Challenge(Message):
    """The gateway asks one validator to check one receipt (never showing its logits hash)."""

    receipt: bytes
    request: bytes
    output_hash: bytes
    validator: str
    gateway: str
    nonce: int
    deadline: int

    TYPE_NAME: ClassVar[str] = "Challenge"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("receipt", "bytes32", "receipt"),
        ("request", "bytes32", "request"),
        ("outputHash", "bytes32", "output_hash"),
        ("validator", "address", "validator"),
        ("gateway", "address", "gateway"),
        ("nonce", "uint256", "nonce"),
        ("deadline", "uint64", "deadline"),
    )


@dataclass(frozen=True)
class Verdict(Message):
    """A validator's signed result of replaying a claimed output."""

    receipt: bytes
    request: bytes
    output_hash: bytes
    logits_hash: bytes
    valid: bool
    first_invalid_step: int
    validator: str
    gateway: str

    TYPE_NAME: ClassVar[str] = "Verdict"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("receipt", "bytes32", "receipt"),
        ("request", "bytes32", "request"),
        ("outputHash", "bytes32", "output_hash"),
        ("logitsHash", "bytes32", "logits_hash"),
        ("valid", "bool", "valid"),
        ("firstInvalidStep", "uint32", "first_invalid_step"),
        ("validator", "address", "validator"),
        ("gateway", "address", "gateway"),
    )


@dataclass(frozen=True)
class Allowance(Message):
    """A user authorizes a settler to debit at most `cap_per_epoch` of its deposit per epoch."""

    user: str
    settler: str
    cap_per_epoch: int
    expiry: int
    nonce: int

    TYPE_NAME: ClassVar[str] = "Allowance"
    FIELDS: ClassVar[tuple[Field, ...]] = _fields(
        ("user", "address", "user"),
        ("settler", "address", "settler"),
        ("capPerEpoch", "uint256", "cap_per_epoch"),
        ("expiry", "uint64", "expiry"),
        ("nonce", "uint256", "nonce"),
    )


# --- digests and signatures ---------------------------------------------------------------


def digest(domain: Domain, message: Message) -> bytes:
    """keccak256(0x1901 || domainSeparator || hashStruct(message)): what is signed."""
    return keccak(b"\x19\x01" + domain.separator() + message.hash_struct())


def address_of(private_key: bytes) -> str:
    return keys.PrivateKey(private_key).public_key.to_checksum_address()


def sign(domain: Domain, message: Message, private_key: bytes) -> bytes:
    """65-byte r || s || v signature of the message's digest, low s, v in {27, 28}."""
    sig = keys.PrivateKey(private_key).sign_msg_hash(digest(domain, message))
    r, s, v = sig.r, sig.s, sig.v
    if s > SECP256K1_N // 2:  # the contract (like EIP-2) accepts only the low-s form
        s, v = SECP256K1_N - s, v ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])


def recover(domain: Domain, message: Message, signature: bytes) -> str:
    """The address whose key signed `message`; malformed or high-s signatures are refused."""
    if not isinstance(signature, bytes) or len(signature) != 65:
        raise InvalidSignature("a signature is 65 bytes (r || s || v)")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        raise InvalidSignature("signature out of range (v must be 27/28, s in the lower half)")
    try:
        sig = keys.Signature(vrs=(v - 27, r, s))
        public = sig.recover_public_key_from_msg_hash(digest(domain, message))
    except (BadSignature, ValidationError) as exc:
        raise InvalidSignature(f"signature does not recover: {exc}") from exc
    return public.to_checksum_address()


def check_signed_by(domain: Domain, message: Message, signature: bytes, signer: str) -> None:
    """Raise `InvalidSignature` unless `signature` on `message` is `signer`'s."""
    got = recover(domain, message, signature)
    if got != check_address(signer):
        raise InvalidSignature(f"{message.TYPE_NAME} signed by {got}, expected {signer}")


def signature_to_json(signature: bytes) -> str:
    return "0x" + signature.hex()


def signature_from_json(raw: Any) -> bytes:
    if not isinstance(raw, str) or not _HEX_SIGNATURE.match(raw):
        raise MalformedMessage("a signature is 0x followed by 130 lowercase hex digits")
    return bytes.fromhex(raw[2:])


@dataclass(frozen=True)
class Signed:
    """A message with its signature, as it travels: the message's JSON plus "signature"."""

    message: Message
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {**self.message.to_json(), "signature": signature_to_json(self.signature)}

    @classmethod
    def from_json(cls, message_type: type[Message], data: Any) -> Signed:
        message = message_type.from_json(data)
        return cls(message, signature_from_json(data.get("signature")))

    def signer(self, domain: Domain) -> str:
        return recover(domain, self.message, self.signature)


# --- the rules every receiver applies -------------------------------------------------------


def check_job(domain: Domain, job: Signed, node: str, now: int) -> Job:
    """A node's checks of a job before serving it (replays are the caller's nonce book)."""
    message = job.message
    if not isinstance(message, Job):
        raise MalformedMessage("expected a Job")
    check_signed_by(domain, message, job.signature, message.gateway)
    if message.node != check_address(node):
        raise MessageMismatch(f"the job is for node {message.node}, not {node}")
    if message.deadline < now:
        raise MessageMismatch(f"the job's deadline {message.deadline} has passed (now {now})")
    return message


def make_receipt(
    job: Job,
    prompt_length: int,
    output_token_ids: Sequence[int],
    logits_hash: bytes,
) -> Receipt:
    """The receipt a node signs for serving `job`: every term repeats the job's."""
    return Receipt(
        request=job.request,
        job=job.hash_struct(),
        output_hash=output_hash(output_token_ids),
        logits_hash=logits_hash,
        output_length=len(output_token_ids),
        node=job.node,
        gateway=job.gateway,
        user=job.user,
        fee=receipt_fee(job.price_per_token, prompt_length, len(output_token_ids)),
        nonce=job.nonce,
        deadline=job.deadline,
    )


def check_receipt(
    domain: Domain,
    receipt: Signed,
    job: Job,
    request: Request,
    output_token_ids: Sequence[int],
) -> Receipt:
    """A gateway's (or auditor's) checks of a node's receipt against the job it issued."""
    message = receipt.message
    if not isinstance(message, Receipt):
        raise MalformedMessage("expected a Receipt")
    check_signed_by(domain, message, receipt.signature, job.node)
    if job.request != request.hash_struct():
        raise MessageMismatch("the job does not commit to this request")
    expected = make_receipt(job, request.prompt_length, output_token_ids, message.logits_hash)
    if message != expected:
        wrong = [f.name for f in Receipt.FIELDS
                 if getattr(message, f.attr) != getattr(expected, f.attr)]
        raise MessageMismatch(f"the receipt disagrees with its job or output on {wrong}")
    if message.output_length > request.max_tokens:
        raise MessageMismatch("the receipt claims more tokens than the request allows")
    return message


def verdict_agrees(verdict: Verdict, receipt: Receipt, receipt_id: bytes) -> bool:
    """A verdict vouches for a receipt only if the validator found it valid and computed the
    same logits hash it never saw."""
    return (
        verdict.valid
        and verdict.receipt == receipt_id
        and verdict.request == receipt.request
        and verdict.output_hash == receipt.output_hash
        and verdict.logits_hash == receipt.logits_hash
        and verdict.gateway == receipt.gateway
    )


# --- the receipt as a user keeps it --------------------------------------------------------


@dataclass(frozen=True)
class ReceiptBundle:
    """Everything needed to check a result offline (the JSON object of docs/protocol-v2.md)."""

    domain: Domain
    request: Request
    prompt_token_ids: tuple[int, ...]
    stop: tuple[str, ...]
    job: Signed
    receipt: Signed
    output_token_ids: tuple[int, ...]

    @property
    def receipt_id(self) -> bytes:
        return digest(self.domain, self.receipt.message)

    def check(self) -> Receipt:
        """Recompute every commitment and recover both signers; raise on the first problem."""
        if prompt_root(self.prompt_token_ids) != self.request.prompt_root:
            raise MessageMismatch("the prompt token ids do not match the request's promptRoot")
        if len(self.prompt_token_ids) != self.request.prompt_length:
            raise MessageMismatch("the prompt length does not match the request")
        if stop_root(self.stop) != self.request.stop_root:
            raise MessageMismatch("the stop sequences do not match the request's stopRoot")
        job = self.job.message
        if not isinstance(job, Job):
            raise MalformedMessage("expected a Job")
        check_signed_by(self.domain, job, self.job.signature, job.gateway)
        return check_receipt(self.domain, self.receipt, job, self.request, self.output_token_ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "chainId": self.domain.chain_id,
            "contract": self.domain.contract,
            "request": {**self.request.to_json(), "promptTokenIds": list(self.prompt_token_ids),
                        "stop": list(self.stop)},
            "job": self.job.to_json(),
            "receipt": self.receipt.to_json(),
            "outputTokenIds": list(self.output_token_ids),
            "receiptId": "0x" + self.receipt_id.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> ReceiptBundle:
        if not isinstance(data, Mapping):
            raise MalformedMessage("a receipt must be a JSON object")
        if data.get("version") != PROTOCOL_VERSION:
            raise MalformedMessage(
                f"receipt protocol version {data.get('version')!r}, expected {PROTOCOL_VERSION}"
            )
        try:
            domain = Domain(data["chainId"], data["contract"])
            request_json = dict(data["request"])
            prompt_ids = _token_list(request_json.pop("promptTokenIds"), "promptTokenIds")
            stop = request_json.pop("stop")
            if not isinstance(stop, list) or any(not isinstance(s, str) for s in stop):
                raise MalformedMessage("request.stop must be a list of strings")
            bundle = cls(
                domain=domain,
                request=Request.from_json(request_json),
                prompt_token_ids=prompt_ids,
                stop=tuple(stop),
                job=Signed.from_json(Job, data["job"]),
                receipt=Signed.from_json(Receipt, data["receipt"]),
                output_token_ids=_token_list(data["outputTokenIds"], "outputTokenIds"),
            )
        except (KeyError, TypeError) as exc:
            raise MalformedMessage(f"receipt lacks or mistypes a field: {exc}") from exc
        except WireFormatError as exc:
            raise MalformedMessage(str(exc)) from exc
        claimed = data.get("receiptId")
        if claimed is not None and claimed != "0x" + bundle.receipt_id.hex():
            raise MessageMismatch("receiptId is not the receipt's digest")
        return bundle


def _token_list(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage(f"{name} must be a list of token ids")
    for t in raw:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < (1 << 32):
            raise MalformedMessage(f"{name} holds a value that is not a token id: {t!r}")
    return tuple(raw)

