"""Which node serves a request: the registry's nodes, their health, and the weighted draw.

Plain code, no I/O: the server feeds it the registry (from the chain) and health observations
(from its probes) and asks for an asserter; a thousand decisions take milliseconds. The draw is
`verinfer.protocol.selection.select_asserter` (stake × reputation) over the nodes that are
healthy, serve the requested model with the model_id the gateway commits to, and have not
already failed this request; fail-over asks again with the failed node excluded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from verinfer.errors import LocalError
from verinfer.protocol.selection import Candidate, NotEnoughNodes, select_asserter
from verinfer.protocol.settlement import Reputation

# A node that failed this many probes or requests in a row is skipped until a probe succeeds.
MAX_FAILURES = 1


class NoNodeAvailable(LocalError):
    """No healthy node serves the requested model (or every one has failed this request)."""


@dataclass(frozen=True)
class RegisteredNode:
    """A node as the registry (the settlement contract) lists it."""

    address: str  # EIP-55
    endpoint: str
    stake: int
    reputation: Reputation = field(default_factory=Reputation)


@dataclass
class NodeHealth:
    """What the gateway last saw of a node: the models it serves (name → model_id) and failures."""

    models: dict[str, bytes] = field(default_factory=dict)
    failures: int = MAX_FAILURES  # unknown until the first probe succeeds
    checked_at: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.failures < MAX_FAILURES


class Router:
    """The registry view and the asserter draw; `min_stake` is the contract's."""

    def __init__(self, min_stake: int) -> None:
        self.min_stake = min_stake
        self.nodes: dict[str, RegisteredNode] = {}
        self.health: dict[str, NodeHealth] = {}

    def update_registry(self, nodes: Iterable[RegisteredNode]) -> None:
        """Replace the registry; health already known is kept for nodes still listed."""
        self.nodes = {n.address: n for n in nodes}
        self.health = {a: self.health.get(a, NodeHealth()) for a in self.nodes}

    def probe_succeeded(self, address: str, models: Mapping[str, bytes], now: float) -> None:
        if address in self.health:
            self.health[address] = NodeHealth(dict(models), 0, now)

    def probe_failed(self, address: str, now: float) -> None:
        if address in self.health:
            h = self.health[address]
            self.health[address] = NodeHealth(h.models, h.failures + 1, now)

    def request_failed(self, address: str) -> None:
        """A node that failed a request is out until its next successful probe."""
        if address in self.health:
            self.health[address].failures = max(self.health[address].failures + 1, MAX_FAILURES)

    def serving(self, model: str, model_id: bytes | None = None) -> list[RegisteredNode]:
        """Healthy, staked nodes that serve `model` (with `model_id` when given)."""
        out = []
        for address, node in sorted(self.nodes.items()):
            h = self.health[address]
            if not h.healthy or node.stake < self.min_stake or model not in h.models:
                continue
            if model_id is not None and h.models[model] != model_id:
                continue
            out.append(node)
        return out

    def model_ids(self, model: str) -> dict[bytes, int]:
        """Stake behind each model_id healthy nodes claim for `model`."""
        claims: dict[bytes, int] = {}
        for node in self.serving(model):
            mid = self.health[node.address].models[model]
            claims[mid] = claims.get(mid, 0) + node.stake
        return claims

    def models(self) -> dict[str, bytes]:
        """Every model some healthy node serves, with the model_id most stake claims for it."""
        names = {m for a, h in self.health.items() if h.healthy for m in h.models}
        out = {}
        for name in sorted(names):
            claims = self.model_ids(name)
            if claims:
                out[name] = max(claims, key=lambda mid: (claims[mid], mid))
        return out

    def pick(self, model: str, model_id: bytes, randomness: bytes,
             exclude: Collection[str] = ()) -> RegisteredNode:
        """The asserter for one request: a stake × reputation draw among eligible nodes."""
        eligible = [n for n in self.serving(model, model_id) if n.address not in exclude]
        candidates = [Candidate(n.address.lower(), n.stake, n.reputation) for n in eligible]
        try:
            chosen = select_asserter(candidates, self.min_stake, randomness)
        except NotEnoughNodes:
            tried = f" ({len(exclude)} failed this request)" if exclude else ""
            raise NoNodeAvailable(f"no healthy node serves model {model!r}{tried}") from None
        return next(n for n in eligible if n.address.lower() == chosen)
