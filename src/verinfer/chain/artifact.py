"""The compiled settlement contract as committed: ABI, bytecode and where they came from.

Runtime code deploys and calls the contract from this artifact only, so it never needs the
Vyper compiler; `verinfer.chain.build` regenerates it and a test checks it matches the source.
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
