"""`verinfer up` for real: dev chain, three heterogeneous honest nodes and one cheater as separate
processes on loopback, the gateway challenging every receipt (p = 1). The cheater is slashed on
chain, no honest node is, and a second start on the same data directory reuses everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from verinfer.localnet.demo import chain_client, send_traffic, wait_for_settlement
from verinfer.localnet.up import UpOptions, start_network

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_cheater_slashed_honest_nodes_never(tmp_path: Path) -> None:
    options = UpOptions(data_dir=tmp_path / "net", model=REPO / "models" / "demo", nodes=3,
                        cheaters=1, strategy="wrong-tokens", challenge_ppm=1_000_000,
                        validators=1, arbitrators=1, epoch_seconds=15.0)
    console = Console(width=160)
    network = start_network(options, say=console.print)
    try:
        client = chain_client(network)
        start_block = int(client.w3.eth.block_number)
        cheater = network.node_addresses[4].lower()
        honest = {network.node_addresses[i].lower() for i in (1, 2, 3)}
        receipts: list[str] = []
        # The asserter is drawn at random (a quarter of the stake is the cheater's): send
        # batches until the cheater has served something (all 40 miss it with p = 1e-5).
        for _ in range(5):
            batch = send_traffic(network, "demo", 8, console)
            assert len(batch) == 8  # fail-over answers every request
            receipts += batch
            facts = wait_for_settlement(network, receipts, 600, console)
            if facts["served"].get(cheater, 0):
                break
        assert facts["unsettled"] == 0
        assert facts["missed"] == 0  # every epoch was committed in its window
        served_by_cheater = facts["served"].get(cheater, 0)
        assert served_by_cheater > 0
        slashed = [str(r.node).lower() for r in client.slashes(from_block=start_block)]
        assert cheater in slashed
        assert not set(slashed) & honest
        assert facts["mismatches"].get(cheater, 0) == served_by_cheater
        assert sum(facts["challenged"].values()) == len(receipts)  # p = 1
        assert all(facts["mismatches"].get(a, 0) == 0 for a in honest)
        first_ports = network.ports
    finally:
        network.stop()
    again = start_network(options, say=console.print)
    try:
        assert again.ports == first_ports
        assert again.node_addresses == network.node_addresses
        assert again.api_key == network.api_key
    finally:
        again.stop()
