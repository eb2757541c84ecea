"""Regenerate the committed contract artifact `contracts/Settlement.json` from its Vyper source.

Development tool: it needs the Vyper compiler (a dev dependency); runtime code only reads the
artifact (`verinfer.chain.artifact`). Run `python -m verinfer.chain.build` after editing the
contract, or `python -m verinfer.chain.build --check` to fail if the artifact is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from verinfer.chain.artifact import ARTIFACT_PATH, SOURCE_PATH, _cbor_item
from verinfer.errors import ChainError


def compile_artifact(source_path: Path = SOURCE_PATH) -> dict[str, Any]:
    """Compile the contract and return the artifact as committed (abi, bytecode, provenance)."""
    try:
        import vyper
    except ImportError as exc:
        raise ChainError(
            "the Vyper compiler is not installed: install the dev extras (pip install -e '.[dev]')"
        ) from exc
    source = source_path.read_text()
    out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    return {
        "contract": source_path.stem,
        "compiler": f"vyper {vyper.__version__}",
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": "0x" + embedded_runtime(bytes.fromhex(out["bytecode"][2:])).hex(),
    }


def embedded_runtime(initcode: bytes) -> bytes:
    """The runtime code the initcode deploys: just before Vyper's metadata trailer, as long as
    the trailer says. Taken from there, not from the compiler's separate runtime output, which
    the experimental (Venom) code generator lays out a few bytes differently from what it
    deploys."""
    length = int.from_bytes(initcode[-2:], "big")
    trailer, _ = _cbor_item(initcode[-length:-2], 0)
    size = int(trailer[1])
    return initcode[-length - size : -length]


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the artifact is stale")
    args = parser.parse_args(argv)
    text = render(compile_artifact())
    if args.check:
        if ARTIFACT_PATH.read_text() != text:
            print(f"{ARTIFACT_PATH} is stale: run python -m verinfer.chain.build", file=sys.stderr)
            return 1
        print(f"{ARTIFACT_PATH} matches {SOURCE_PATH.name}")
        return 0
    ARTIFACT_PATH.write_text(text)
    print(f"wrote {ARTIFACT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
