"""kill -9 of the gateway in the middle of traffic, on a real local network (p = 0.2): after a
restart on the same data directory no acknowledged receipt and no recorded outcome is lost,
and every epoch that holds one, the one open at the kill included, settles on chain.

The contract takes an epoch's commit until the end of the next epoch, so a gateway must be
back within about one epoch; the kill comes early in an epoch of 20 s (`verinfer up`'s
default), which leaves the restart close to two epochs. p = 0.2 and light traffic (one user,
a request every 2 s) keep the challenges within the settlement window on 2 shared cores; at
p = 1 the gateway's challenges fall behind it (BENCHMARKS.md, "Heterogeneous honest nodes")."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from verinfer.localnet.demo import chain_client
from verinfer.localnet.up import Network, UpOptions, gateway_spec, start_network

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

from challenges import Traffic, send_one, store_facts


def rows(network: Network) -> tuple[dict[str, int], dict[str, tuple[str, str]]]:
    """The store's receipts (id -> epoch) and outcomes (id -> outcome, detail), read-only."""
    db = sqlite3.connect(f"file:{network.layout.gateway_dir / 'gateway.sqlite'}?mode=ro",
                         uri=True, timeout=30)
    try:
        receipts = {str(r).lower(): int(e)
                    for r, e in db.execute("SELECT receipt_id, epoch FROM receipts")}
        outcomes = {str(r).lower(): (str(o), str(d))
                    for r, o, d in db.execute("SELECT receipt_id, outcome, detail FROM outcomes")}
    finally:
        db.close()
    return receipts, outcomes


def gateway_service(network: Network) -> Any:
    return next(s for s in network.supervisor.services if s.spec.name == "gateway")


def test_kill_9_of_the_gateway_mid_traffic_loses_nothing_and_settles(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path / "net", model=REPO / "models" / "demo", nodes=3,
                        challenge_ppm=200_000, validators=1, arbitrators=1,
                        epoch_seconds=20.0)
    console = Console(width=160)
    network = start_network(options, say=console.print)
    try:
        client = chain_client(network)
        start_block = int(client.w3.eth.block_number)
        traffic = Traffic("demo", 8)
        acknowledged: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def send(worker: int) -> None:
            headers = {"Authorization": f"Bearer {network.api_key}"}
            with httpx.Client(headers=headers, timeout=120) as http:
                i = worker
                while not stop.is_set():
                    path, body = traffic.request(i)
                    try:
                        receipt = send_one(http, network.gateway_url, path, body)
                        acknowledged.append(str(receipt["receiptId"]).lower())
                    except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                        # the kill cuts requests in flight: expected
                        failed.append(str(exc))
                    stop.wait(2.0)
                    i += 1

        workers = [threading.Thread(target=send, args=(0,), daemon=True)]
        for w in workers:
            w.start()
        # Kill once receipts have been acknowledged and some challenge outcomes recorded.
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            if len(acknowledged) >= 8 and rows(network)[1]:
                break
            time.sleep(1)
        while True:  # early in an epoch, by the chain's clock (it may run ahead of ours)
            start, _ = client.epoch_bounds(client.current_epoch())
            now = max(time.time(), float(client.w3.eth.get_block("latest")["timestamp"]))
            if now - start < 3:
                break
            time.sleep(0.5)
        gateway = gateway_service(network)
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(timeout=30)
        acked_at_kill = list(acknowledged)
        before_receipts, before_outcomes = rows(network)
        assert len(acked_at_kill) >= 8 and before_outcomes

        network.supervisor.services.remove(gateway)
        gateway.log_file.close()
        network.supervisor.start(gateway_spec(network.layout, network.ports, options,
                                              network.rpc_url, network.contract))
        time.sleep(20)  # traffic goes on after the restart, then stops
        stop.set()
        for w in workers:
            w.join(timeout=180)
        assert len(acknowledged) > len(acked_at_kill)  # the restarted gateway serves again

        after_receipts, after_outcomes = rows(network)
        assert set(acked_at_kill) <= set(before_receipts)  # acknowledged means stored
        assert set(before_receipts) <= set(after_receipts)
        assert {r: before_receipts[r] for r in before_receipts} == {
            r: after_receipts[r] for r in before_receipts}  # same epochs
        assert all(after_outcomes[r] == o for r, o in before_outcomes.items())

        # Every recorded receipt (the acknowledged ones and any whose answer the kill cut off)
        # settles on chain, the epochs open at the kill included.
        wanted = set(rows(network)[0])
        assert set(acknowledged) <= wanted
        params = client.params()
        settle_by = time.monotonic() + 20 * options.epoch_seconds + params.challenge_window \
            + params.appeal_window + 120
        while True:
            facts = store_facts(network, wanted)
            if (facts["stored"] == len(wanted) and not facts["unsettled"]) \
                    or time.monotonic() > settle_by:
                break
            time.sleep(3)
        assert facts["stored"] == len(wanted)
        assert facts["unsettled"] == 0 and facts["missed"] == 0
        assert set(facts["outcomes"]) == {"PASSED"}  # honest nodes only
        settled = {e.epoch: e for e in client.epochs(from_block=start_block)}
        assert {before_receipts[r] for r in acked_at_kill} <= set(settled)
        assert sum(settled[e].requests for e in facts["epochs"]) >= len(wanted)
        # every receipt the chain challenged has its outcome in the store, none lost
        assert sum(settled[e].challenged for e in facts["epochs"]) == sum(
            facts["outcomes"].values())
        assert not client.slashes(from_block=start_block)
    finally:
        network.stop()
