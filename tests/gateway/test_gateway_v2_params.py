"""On settlement v2, p and the epoch length are the contract's: the gateway refuses a
different `--p` or `--epoch-seconds` with one line, and its settler reads the committees."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider, make_server
from verinfer.chain.devkeys import dev_private_key
from verinfer.chain.settings import DEV_EPOCH_SECONDS, DEV_PARAMS
from verinfer.gateway.chain_settler import ChainV2Settler

SRC = Path(__file__).parents[2] / "src"
COMMITTEES = (9, 3, 11, 5)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp("v2params")
    dev = DevChain(root / "devchain")
    client, _ = SettlementClient.deploy(
        Web3(DevChainProvider(dev)), Account.from_key(dev_private_key(0)),
        replace(DEV_PARAMS, challenge_ppm=20_000), epoch_seconds=DEV_EPOCH_SECONDS,
        committees=COMMITTEES)
    assert ChainV2Settler(client).committees == COMMITTEES
    server = make_server(dev, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", client.address, root
    server.shutdown()
    server.server_close()
    dev.close()


def gateway(chain: tuple[str, str, Path], tmp_path: Path, *args: str,
            model: Path | None = None) -> subprocess.CompletedProcess[str]:
    rpc, contract, _ = chain
    env = {**os.environ, "PYTHONPATH": str(SRC), "VERINFER_CHAIN_RPC": rpc}
    return subprocess.run(
        [sys.executable, "-m", "verinfer.cli", "gateway", "--model", str(model or tmp_path / "none"),
         "--data-dir", str(tmp_path), "--contract", contract, *args],
        capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--p", "10000", "p is a contract parameter"),
    ("--epoch-seconds", "5", "the epoch length is a contract parameter"),
])
def test_a_setting_the_contract_fixes_is_refused_in_one_line(
        chain: tuple[str, str, Path], tmp_path: Path, flag: str, value: str, says: str) -> None:
    done = gateway(chain, tmp_path, flag, value)
    assert done.returncode != 0
    assert says in done.stderr and chain[1] in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_contracts_own_values_are_accepted(chain: tuple[str, str, Path],
                                               tmp_path: Path) -> None:
    done = gateway(chain, tmp_path, "--p", "20000", "--epoch-seconds", str(DEV_EPOCH_SECONDS))
    # Past the parameter checks: it stops at the missing model directory.
    assert "contract parameter" not in done.stderr
    assert "none" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_taken_port_is_a_one_line_error(chain: tuple[str, str, Path], tmp_path: Path) -> None:
    import socket

    demo = Path(__file__).parents[2] / "models" / "demo"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = gateway(chain, tmp_path, "--port", str(port), model=demo)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert " on http://" not in done.stdout  # never announced as listening
