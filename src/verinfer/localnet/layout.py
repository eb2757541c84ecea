"""Where a local network keeps its state: one data directory holds chain, nodes, gateway and ports.

Two data directories are two independent networks. Ports are chosen once (free ones, starting
from the defaults) and remembered in `network.json`, so a second `verinfer up` on the same data
directory comes back at the same addresses with the same chain, keys and gateway state.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from verinfer.errors import LocalError

DEFAULT_CHAIN_PORT = 8545
DEFAULT_GATEWAY_PORT = 8000
DEFAULT_NODE_PORT = 9001


class LayoutError(LocalError):
    """The data directory's network description is unreadable or inconsistent."""


@dataclass(frozen=True)
class Ports:
    chain: int
    gateway: int
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def network_file(self) -> Path:
        return self.data_dir / "network.json"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def gateway_dir(self) -> Path:
        return self.data_dir / "gateway"

    def node_dir(self, index: int) -> Path:
        return self.data_dir / "nodes" / f"node-{index}"

    def load_ports(self, node_count: int) -> Ports:
        """The remembered ports (extended with free ones if more nodes are asked for now)."""
        remembered = self._read()
        taken: set[int] = set()
        chain = _keep_or_pick(remembered.get("chain"), DEFAULT_CHAIN_PORT, taken)
        gateway = _keep_or_pick(remembered.get("gateway"), DEFAULT_GATEWAY_PORT, taken)
        listed = remembered.get("nodes")
        old_nodes = list(listed) if isinstance(listed, list) else []
        nodes = []
        for i in range(node_count):
            wanted = old_nodes[i] if i < len(old_nodes) else None
            nodes.append(_keep_or_pick(wanted, DEFAULT_NODE_PORT + i, taken))
        ports = Ports(chain, gateway, tuple(nodes))
        self._write(ports)
        return ports

    def _read(self) -> dict[str, object]:
        if not self.network_file.exists():
            return {}
        try:
            data = json.loads(self.network_file.read_text())
        except ValueError as exc:
            raise LayoutError(
                f"{self.network_file} is damaged ({exc}): delete it to choose ports again"
            ) from exc
        if not isinstance(data, dict):
            raise LayoutError(f"{self.network_file} is not a JSON object: delete it")
        return data

    def _write(self, ports: Ports) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.network_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(ports), indent=1) + "\n")
        tmp.replace(self.network_file)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _keep_or_pick(remembered: object, default: int, taken: set[int]) -> int:
    """The remembered port if it is still free, else the first free one from `default` up."""
    if isinstance(remembered, int) and remembered not in taken and port_is_free(remembered):
        taken.add(remembered)
        return remembered
    port = default
    while port in taken or not port_is_free(port):
        port += 1
        if port > 65535:
            raise LayoutError("no free TCP port on 127.0.0.1")
    taken.add(port)
    return port
