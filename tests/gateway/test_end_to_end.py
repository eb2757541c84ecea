"""End to end: the official `openai` client through the gateway to real node processes on
loopback, every receipt verified, then the epoch challenged (p = 1) by replay on other nodes and
settled on the dev chain's contract."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from eth_account import Account
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider, make_server
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.settings import (
    DEV_EPOCH_SECONDS,
    DEV_PARAMS,
    ChainSettings,
    record_deployment,
)
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.gateway.chain_settler import ChainV2Settler
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.router import Router
from verinfer.gateway.server import HttpValidators, create_app, refresh
from verinfer.gateway.service import GatewayService, ModelSpec
from verinfer.gateway.store import GatewayStore
from verinfer.keyfile import Identity, load_or_create_key
from verinfer.node.client import NodeClient
from verinfer.protocol import wire
from verinfer.protocol.params import PosParams
from verinfer.verify import check_inclusion, inclusion_of, load_bundle

pytestmark = pytest.mark.slow

SRC = Path(__file__).parents[2] / "src"
READY = re.compile(r"^verinfer node (0x[0-9a-fA-F]{40}) listening on (http://\S+) models")
USER = dev_address(7)
KEY = "vi-e2e-key"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, DevChain,
                                                                        str, Path]]:
    root = tmp_path_factory.mktemp("network")
    dev = DevChain(root / "devchain")
    w3 = Web3(DevChainProvider(dev))
    # p = 1: every receipt is challenged; the deployer (dev account 0) is the gateway.
    owner, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)),
                                       replace(DEV_PARAMS, challenge_ppm=1_000_000),
                                       epoch_seconds=DEV_EPOCH_SECONDS)
    address = owner.address
    record_deployment(ChainSettings(data_dir=root), DEV_CHAIN_ID, {"address": address})  # nodes
    user = Identity(bytes(dev_private_key(7)), USER)
    domain = wire.Domain(w3.eth.chain_id, address)
    allowance = wire.Allowance(USER, dev_address(0), 10**18, 2**40, 1)
    owner.set_allowance({f.name: getattr(allowance, f.attr) for f in allowance.FIELDS},
                        wire.sign(domain, allowance, user.private_key))
    server = make_server(dev, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    model = write_random_checkpoint(root / "tiny", tiny_config(), seed=1)
    rpc = f"http://127.0.0.1:{server.server_address[1]}"
    yield root, rpc, dev, address, model
    server.shutdown()
    server.server_close()
    dev.close()


def start_nodes(root: Path, rpc: str, model: Path, count: int,
                name: str = "node") -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "VERINFER_DATA_DIR": str(root),
           "VERINFER_CHAIN_RPC": rpc}
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "verinfer.cli", "node", "--model", str(model), "--port",
               "0", "--data-dir", str(root / f"{name}{i}"), "--threads", "1", "--dev-register",
               "--dev-funder", str(i + 1)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    return procs


def test_openai_client_through_the_gateway_to_real_nodes_then_challenged_and_settled(
        network: tuple[Path, str, DevChain, str, Path], tmp_path: Path) -> None:
    root, rpc, dev, contract, model = network
    procs = start_nodes(root, rpc, model, 3)
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert READY.match(line), (line, proc.stderr.read() if proc.poll() is not None
                                       else "")
        w3 = Web3(DevChainProvider(dev))
        key = bytes(dev_private_key(0))  # the deployer holds the settler role
        gateway = Identity(key, wire.address_of(key))
        owner = SettlementClient(w3, contract, Account.from_key(key))
        owner.deposit(10**17, USER)
        owner.fund_treasury(10**18)
        settler = ChainV2Settler(owner)
        store = GatewayStore(tmp_path / "gateway.sqlite")
        store.add_api_key(KEY, USER)
        params = owner.params()
        service = GatewayService(store, settler, Router(params.min_stake),
                                 {model.name: ModelSpec.from_dir(model)}, gateway,
                                 settler.domain, 10**9,
                                 lambda node: NodeClient(node.endpoint, timeout_s=60))
        app = create_app(service)
        asyncio.run(refresh(service))
        assert len(service.router.serving(model.name)) == 3
        receipts = asyncio.run(_traffic(app, model.name))
        for data in receipts:
            _, receipt = load_bundle(data)
            assert receipt.gateway == gateway.address and receipt.user == USER
        assert store.count_receipts() == 3

        pos = PosParams(1_000_000, 1, 1, params)
        pipeline = EpochPipeline(store, settler, HttpValidators(), gateway, settler.domain, pos,
                                 epoch_seconds=3600)
        ids = [wire.ReceiptBundle.from_json(d).receipt_id for d in receipts]
        epochs = sorted({stored.epoch for rid in ids if (stored := store.receipt(rid))})
        asyncio.run(pipeline.step(force_close=True))
        assert [store.epoch(e).state for e in epochs] == ["settled"] * len(epochs)
        outcomes = [o.outcome for e in epochs for o in store.outcomes_of_epoch(e)]
        assert outcomes == ["PASSED"] * 3  # honest nodes replayed and agreed
        assert all(owner.case(e, rid).state == "passed" for e in epochs for rid in ids
                   if store.receipt(rid).epoch == e)  # type: ignore[union-attr]
        record = service.receipt_record(ids[0])
        assert record is not None
        inclusion = inclusion_of(record)
        assert inclusion is not None
        check_inclusion(ids[0], inclusion)
        assert settler.settled_root(inclusion.epoch) == inclusion.receipts_root
        store.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=60)


async def _traffic(app: object, model: str) -> list[dict[str, object]]:
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url="http://gateway/v1",
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                                      timeout=120))
    models = await client.models.list()
    assert [m.id for m in models.data] == [model]
    out = []
    completion = await client.completions.create(model=model, prompt="def main", max_tokens=6,
                                                 seed=3, temperature=0)
    out.append((completion.model_extra or {})["verinfer"])
    chat = await client.chat.completions.create(model=model, max_tokens=5, seed=4,
                                                messages=[{"role": "user", "content": "Hi"}])
    out.append((chat.model_extra or {})["verinfer"])
    pieces, receipt = [], None
    stream = await client.chat.completions.create(
        model=model, max_tokens=5, seed=4, stream=True,
        messages=[{"role": "user", "content": "Hi"}])
    async for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        receipt = (chunk.model_extra or {}).get("verinfer") or receipt
    assert "".join(pieces) == chat.choices[0].message.content  # same seed: same bytes
    out.append(receipt)
    return out


def test_verinfer_gateway_process_serves_survives_kill_9_and_keeps_receipts(
        network: tuple[Path, str, DevChain, str, Path], tmp_path: Path) -> None:
    root, rpc, dev, contract, model = network
    # A node of its own: settlement v2 keeps the endpoint a node registered with, and the
    # nodes of the test before listened on other ports.
    procs = start_nodes(root, rpc, model, 1, name="kill9-node")
    env = {**os.environ, "PYTHONPATH": str(SRC), "VERINFER_DATA_DIR": str(root),
           "VERINFER_CHAIN_RPC": rpc}
    state = tmp_path / "gw"
    owner = SettlementClient(Web3(DevChainProvider(dev)), contract,
                             Account.from_key(dev_private_key(0)))
    user = Identity(bytes(dev_private_key(8)), dev_address(8))
    owner.deposit(10**16, user.address)
    gateway, _ = load_or_create_key(state / "gateway" / "key")  # the gateway process's key
    allowance = wire.Allowance(user.address, gateway.address, 10**16, 2**40, 1)
    owner.set_allowance({f.name: getattr(allowance, f.attr) for f in allowance.FIELDS},
                        wire.sign(wire.Domain(owner.w3.eth.chain_id, contract), allowance,
                                  user.private_key))
    added = subprocess.run([sys.executable, "-m", "verinfer.cli", "gateway", "keys", "add",
                            "--user", user.address, "--data-dir", str(state)], capture_output=True,
                           text=True, env=env, timeout=120, check=True)
    key = added.stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "verinfer.cli", "gateway", "--port", str(port), "--model",
           str(model), "--data-dir", str(state), "--contract", contract]

    def start() -> subprocess.Popen[str]:
        gw = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env)
        assert gw.stdout is not None
        for _ in range(5):
            line = gw.stdout.readline()
            if line.startswith("gateway "):
                break
        assert line.startswith("gateway "), line
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    return gw
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the gateway did not answer /health")

    gateways: list[subprocess.Popen[str]] = []
    try:
        assert procs[0].stdout is not None and READY.match(procs[0].stdout.readline())
        gw = start()
        gateways.append(gw)
        with openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1",
                           timeout=120) as client:
            chat = client.chat.completions.create(model=model.name, max_tokens=4, seed=1,
                                                  messages=[{"role": "user", "content": "Hi"}])
        receipt_id = (chat.model_extra or {})["verinfer"]["receiptId"]
        os.kill(gw.pid, signal.SIGKILL)
        gw.communicate(timeout=30)
        gw = start()
        gateways.append(gw)
        fetched = httpx.get(f"http://127.0.0.1:{port}/v1/receipts/{receipt_id}",
                            headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert fetched.status_code == 200 and fetched.json()["receiptId"] == receipt_id
        load_bundle(fetched.json())
    finally:
        for proc in gateways + procs:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def test_the_gateway_refuses_to_start_with_parameters_under_which_cheating_pays(
        network: tuple[Path, str, DevChain, str, Path], tmp_path: Path) -> None:
    root, rpc, dev, _, model = network
    env = {**os.environ, "PYTHONPATH": str(SRC), "VERINFER_DATA_DIR": str(root),
           "VERINFER_CHAIN_RPC": rpc}
    # Settlement v2 fixes p in the contract: one that challenges 1 receipt in a million.
    w3 = Web3(DevChainProvider(dev))
    rare, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)),
                                      replace(DEV_PARAMS, challenge_ppm=1),
                                      epoch_seconds=DEV_EPOCH_SECONDS)
    contract = rare.address
    done = subprocess.run([sys.executable, "-m", "verinfer.cli", "gateway", "--model", str(model),
                           "--data-dir", str(tmp_path), "--contract", contract, "--p", "1",
                           "--validators", "1"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "cheating pays" in done.stderr and "raise p" in done.stderr
    assert "Traceback" not in done.stderr
