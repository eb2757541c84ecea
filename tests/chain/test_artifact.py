"""The committed artifact (ABI + bytecode) is exactly what the committed Vyper source compiles to."""

from __future__ import annotations

import hashlib

from verinfer.chain.artifact import ARTIFACT_PATH, SOURCE_PATH, load_artifact
from verinfer.chain.build import compile_artifact, render


def test_artifact_matches_source() -> None:
    fresh = compile_artifact()
    assert ARTIFACT_PATH.read_text() == render(fresh), (
        "Settlement.json is stale: run `python -m verinfer.chain.build`"
    )


def test_artifact_records_source_hash_and_compiler() -> None:
    artifact = load_artifact()
    assert artifact.source_sha256 == hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest()
    assert artifact.compiler == "vyper 0.4.3"
    assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 1000
    names = {item.get("name") for item in artifact.abi}
    assert {"commit_epoch", "settle_epoch", "submit_evidence", "finalize", "set_allowance",
            "deposit", "request_withdrawal", "withdraw", "stake", "unstake"} <= names


def test_runtime_modules_do_not_import_the_compiler() -> None:
    import subprocess
    import sys

    code = (
        "import sys, verinfer.chain.client, verinfer.chain.devchain, verinfer.chain.cli, verinfer.chain.local;"
        "bad = [m for m in ('vyper', 'boa') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
