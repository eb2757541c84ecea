"""`verinfer node` as a process against the dev chain: refuses to serve unregistered, serves
after `--dev-register`, prints its one ready line, keeps its key (0600) across restarts."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider, make_server
from verinfer.chain.local import ensure_deployed
from verinfer.chain.settings import ChainSettings

SRC = Path(__file__).parents[2] / "src"
READY = re.compile(r"^verinfer node (0x[0-9a-fA-F]{40}) listening on (http://\S+) models (\S+)=0x")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, SettlementClient]]:
    network = tmp_path_factory.mktemp("network")
    settings = ChainSettings(data_dir=network)
    dev = DevChain(settings.devchain_dir)
    address = ensure_deployed(dev, settings)
    server = make_server(dev, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    reader = SettlementClient(Web3(DevChainProvider(dev)), address)
    yield network, f"http://127.0.0.1:{server.server_address[1]}", reader
    server.shutdown()
    server.server_close()
    dev.close()


def _node(network: Path, rpc: str, model: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "verinfer.cli", "node", "--model", str(model), "--port", "0",
           "--data-dir", str(state), "--threads", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(SRC), "VERINFER_DATA_DIR": str(network),
           "VERINFER_CHAIN_RPC": rpc}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_node_serves_only_once_registered_and_staked(
    chain: tuple[Path, str, SettlementClient], tiny_dir: Path, tmp_path: Path
) -> None:
    network, rpc, reader = chain
    state = tmp_path / "node"
    refused = _node(network, rpc, tiny_dir, state)
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, (out, err)
    assert "is not registered" in err and "--dev-register" in err and "Traceback" not in err
    key_file = state / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in out + err  # the key is never printed

    serving = _node(network, rpc, tiny_dir, state, "--dev-register")
    try:
        assert serving.stdout is not None
        line = serving.stdout.readline()
        match = READY.match(line)
        assert match, (line, serving.stderr.read() if serving.poll() is not None else "")
        address, url, name = match.groups()
        assert name == tiny_dir.name and reader.is_active(address)
        assert address in err  # the same identity as the refused start: the key file was kept
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["address"] == address and health["models"] == [tiny_dir.name]
    finally:
        serving.send_signal(signal.SIGTERM)
        _, serving_err = serving.communicate(timeout=60)
    # uvicorn shuts down gracefully, then lets the signal end the process as it would have
    assert serving.returncode in (0, -signal.SIGTERM), serving_err
    assert "Traceback" not in serving_err


def test_node_without_a_chain_says_so(tiny_dir: Path, tmp_path: Path) -> None:
    proc = _node(tmp_path, "http://127.0.0.1:9", tiny_dir, tmp_path / "node")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "unreachable" in err and "Traceback" not in err
