"""kill -9 of the node serving a stream, through the gateway, on a real local network: the user's
stream continues on another node and equals an undisturbed run token for token."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from verinfer.localnet.up import Network, UpOptions, start_network

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
BODY = {"model": "demo", "prompt": "The import statement", "max_tokens": 160,
        "temperature": 0.8, "seed": 11, "stream": True}


def stream(network: Network, on_text: object = None) -> tuple[str, dict]:
    """The streamed text and the final receipt; `on_text(n)` is called after the n-th text chunk."""
    text, receipt, chunks = "", {}, 0
    headers = {"Authorization": f"Bearer {network.api_key}"}
    with httpx.stream("POST", network.gateway_url + "/completions", json=BODY, headers=headers,
                      timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    text += choice["text"]
                    chunks += 1
                    if callable(on_text):
                        on_text(chunks)
            receipt = chunk.get("verinfer") or receipt
    return text, receipt


def active_requests(port: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("verinfer_node_active_requests")]
    return sum(values)


def test_kill_9_of_the_serving_node_mid_stream(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path / "net", model=REPO / "models" / "demo", nodes=3,
                        challenge_ppm=0, validators=1, arbitrators=1, epoch_seconds=30.0,
                        force=True)  # p = 0: no challenges, this test is about fail-over
    network = start_network(options, say=Console(width=160).print)
    try:
        undisturbed_text, undisturbed = stream(network)
        killed: list[int] = []

        def kill_the_server(chunks: int) -> None:
            if chunks != 3 or killed:
                return
            for service in network.supervisor.services:
                if service.name.startswith("node-"):
                    port = network.ports.nodes[int(service.name.split("-")[1]) - 1]
                    if active_requests(port) > 0:
                        os.kill(service.process.pid, signal.SIGKILL)
                        killed.append(port)
                        return

        started = time.monotonic()
        text, receipt = stream(network, kill_the_server)
        assert killed, "no node was serving the stream when its third chunk arrived"
        assert text == undisturbed_text
        assert receipt["outputTokenIds"] == undisturbed["outputTokenIds"]
        assert receipt["receipt"]["logitsHash"] == undisturbed["receipt"]["logitsHash"]
        index = network.ports.nodes.index(killed[0]) + 1
        assert receipt["receipt"]["node"] != network.node_addresses[index]  # finished elsewhere
        assert time.monotonic() - started < 600
        metrics = httpx.get(f"http://127.0.0.1:{network.ports.gateway}/metrics", timeout=5).text
        failovers = [float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("verinfer_gateway_failovers_total")]
        assert failovers and failovers[0] >= 1
    finally:
        network.stop()
