"""The committed artifact (ABI + bytecode) is exactly what the committed Vyper source compiles to."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from verinfer.chain import client as chain_client
from verinfer.chain.artifact import ARTIFACT_PATH, SOURCE_PATH, ContractArtifact, load_artifact
from verinfer.chain.build import compile_artifact, render
from verinfer.chain.client import SettlementClient
from verinfer.chain.settings import DEV_EPOCH_SECONDS, DEV_PARAMS
from verinfer.gateway import chain_settler


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
    assert {"commit_epoch", "settle_epoch", "submit_evidence", "pass_challenges", "finalize",
            "set_allowance",
            "deposit", "request_withdrawal", "withdraw", "stake", "unstake"} <= names


def test_the_clients_constants_are_the_contracts() -> None:
    source = SOURCE_PATH.read_text()
    for name, value in (("MAX_PASS_BATCH", chain_client.MAX_PASS_BATCH),
                        ("MAX_RECEIPTS", chain_settler.MAX_RECEIPTS)):
        match = re.search(rf"^{name}: constant\(uint256\) = (\d+)$", source, re.MULTILINE)
        assert match is not None and int(match.group(1)) == value, name


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


IMMUTABLES_SOURCE = """
# pragma version 0.4.3
OWNER: public(immutable(address))
LIMIT: public(immutable(uint256))

@deploy
def __init__(owner: address, limit: uint256):
    OWNER = owner
    LIMIT = limit
"""


def test_deployed_code_is_recognised_whatever_its_immutables(tmp_path: Path) -> None:
    """Immutables are appended to the runtime code at deployment: the check allows exactly
    their size (read from the initcode's metadata), and nothing else may differ."""
    import vyper
    from eth_account import Account
    from web3 import Web3

    from verinfer.chain.devchain import DevChain, DevChainProvider
    from verinfer.chain.devkeys import dev_address, dev_private_key

    formats = ["abi", "bytecode", "bytecode_runtime"]
    out = vyper.compile_code(IMMUTABLES_SOURCE, output_formats=formats)
    artifact = ContractArtifact(out["abi"], out["bytecode"], out["bytecode_runtime"], "vyper", "")
    assert artifact.immutables_bytes == 64
    # Settlement.vy v2: GENESIS, EPOCH_SECONDS and DOMAIN_SEPARATOR, 32 bytes each
    assert load_artifact().immutables_bytes == 96
    chain = DevChain(tmp_path)
    w3 = Web3(DevChainProvider(chain))
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    codes = []
    for owner, limit in ((dev_address(1), 5), (dev_address(2), 2**200)):
        tx_hash = factory.constructor(owner, limit).transact({"from": dev_address(0)})
        address = w3.eth.get_transaction_receipt(tx_hash)["contractAddress"]
        assert w3.eth.contract(address=address, abi=artifact.abi).functions.LIMIT().call() == limit
        codes.append(bytes(w3.eth.get_code(address)))
    assert codes[0] != codes[1] and all(artifact.is_deployed_code(code) for code in codes)
    runtime = bytes.fromhex(artifact.bytecode_runtime.removeprefix("0x"))
    assert not artifact.is_deployed_code(runtime)  # immutables missing
    assert not artifact.is_deployed_code(codes[0] + b"\x00")
    tampered = bytearray(codes[0])
    tampered[10] ^= 1
    assert not artifact.is_deployed_code(bytes(tampered))
    settlement = load_artifact()
    client, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), DEV_PARAMS,
                                        epoch_seconds=DEV_EPOCH_SECONDS)
    assert settlement.is_deployed_code(bytes(w3.eth.get_code(client.address)))
    assert not settlement.is_deployed_code(codes[0])
    chain.close()
