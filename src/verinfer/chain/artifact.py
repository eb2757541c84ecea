"""The compiled settlement contract as committed: ABI, bytecode and where they came from.

Runtime code deploys and calls the contract from this artifact only, so it never needs the
Vyper compiler; `verinfer.chain.build` regenerates it and a test checks it matches the source.
It also tells whether code found on chain is this contract (`is_deployed_code`), so a client
never mistakes another contract, or another version of this one, for the one it speaks to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from verinfer.errors import ChainError

CONTRACTS_DIR = Path(__file__).parent / "contracts"
SOURCE_PATH = CONTRACTS_DIR / "Settlement.vy"
ARTIFACT_PATH = CONTRACTS_DIR / "Settlement.json"


@dataclass(frozen=True)
class ContractArtifact:
    abi: list[dict[str, Any]]
    bytecode: str
    bytecode_runtime: str
    compiler: str
    source_sha256: str

    @property
    def immutables_bytes(self) -> int:
        """Bytes of immutables the constructor appends to the runtime code.

        Vyper ends the initcode with a CBOR trailer (integrity hash, runtime size, data
        section sizes, immutables size, compiler version) followed by its own 2-byte length.
        """
        initcode = bytes.fromhex(self.bytecode.removeprefix("0x"))
        length = int.from_bytes(initcode[-2:], "big")
        try:
            trailer, _ = _cbor_item(initcode[-length:-2], 0)
            runtime_size, immutables_size = trailer[1], trailer[3]
        except (IndexError, TypeError, ValueError) as exc:
            raise ChainError(f"contract artifact: no Vyper metadata trailer ({exc})") from exc
        if runtime_size != len(bytes.fromhex(self.bytecode_runtime.removeprefix("0x"))):
            raise ChainError("contract artifact: bytecode and bytecode_runtime disagree")
        return int(immutables_size)

    def is_deployed_code(self, code: bytes) -> bool:
        """Whether `code` (as eth_getCode returns it) is this contract's runtime code followed
        by its immutables, whatever values the constructor gave them."""
        runtime = bytes.fromhex(self.bytecode_runtime.removeprefix("0x"))
        return code[: len(runtime)] == runtime and len(code) == len(runtime) + self.immutables_bytes


def _cbor_item(data: bytes, at: int) -> tuple[Any, int]:
    """One CBOR item at `at` (unsigned ints, byte and text strings, arrays, maps: what Vyper's
    trailer holds) and the offset after it."""
    major, info = data[at] >> 5, data[at] & 0x1F
    at += 1
    if info < 24:
        value = info
    elif info <= 27:
        size = 1 << (info - 24)
        value, at = int.from_bytes(data[at : at + size], "big"), at + size
    else:
        raise ValueError(f"unsupported CBOR length encoding {info}")
    if major == 0:
        return value, at
    if major in (2, 3):
        return data[at : at + value], at + value
    if major in (4, 5):
        items = []
        for _ in range(value * (2 if major == 5 else 1)):
            item, at = _cbor_item(data, at)
            items.append(item)
        return (items if major == 4 else dict(zip(items[::2], items[1::2], strict=True))), at
    raise ValueError(f"unsupported CBOR major type {major}")


@cache
def load_artifact(path: Path = ARTIFACT_PATH) -> ContractArtifact:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ChainError(f"contract artifact {path} unreadable: {exc}") from exc
    return ContractArtifact(
        abi=data["abi"],
        bytecode=data["bytecode"],
        bytecode_runtime=data["bytecode_runtime"],
        compiler=data["compiler"],
        source_sha256=data["source_sha256"],
    )
