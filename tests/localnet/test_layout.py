"""Data-dir layout: ports chosen once and remembered, busy ones skipped, damage named."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from verinfer.localnet.layout import Layout, LayoutError


def test_ports_remembered_and_extended(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = layout.load_ports(2)
    assert len({first.chain, first.gateway, *first.nodes}) == 4
    again = Layout(tmp_path).load_ports(3)
    assert (again.chain, again.gateway, again.nodes[:2]) == (first.chain, first.gateway, first.nodes)
    assert again.nodes[2] not in (again.chain, again.gateway, *again.nodes[:2])


def test_busy_port_skipped(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "network.json").write_text(json.dumps({"chain": port}))
        assert Layout(tmp_path).load_ports(1).chain != port


def test_two_data_dirs_are_independent(tmp_path: Path) -> None:
    a = Layout(tmp_path / "a")
    b = Layout(tmp_path / "b")
    assert a.node_dir(1) != b.node_dir(1)
    assert a.gateway_dir.parent != b.gateway_dir.parent


def test_damaged_file_named(tmp_path: Path) -> None:
    (tmp_path / "network.json").write_text("{not json")
    with pytest.raises(LayoutError, match="delete it"):
        Layout(tmp_path).load_ports(1)
