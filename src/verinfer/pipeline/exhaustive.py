"""Exact optima of the planning problem by exhaustive search: the planner's yardstick.

Two independent methods, for checking the MILP and each other:
- `brute_force`: every ordered subset of nodes and every split of the layers among them,
  each route scored by `planner.evaluate` (tiny cases only: it grows factorially);
- `optimum`: a Held-Karp dynamic program over (set of nodes used, last node, layers covered),
  exact for the latency objective; for throughput it minimizes latency under a cap on every
  stage and link term and bisects the cap (latency under a cap falls as the cap rises, so the
  best cycle `max(cap, latency / sequences)` sits where the two cross). Exponential in the
  number of nodes, polynomial in layers: tractable to about 10 nodes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np

from verinfer.pipeline.cluster import DRIVER, Cluster, ModelSpec
from verinfer.pipeline.planner import Objective, Plan, evaluate, stage_memory

_REL_TOL = 1e-12  # a stage term equal to the cap (computed the same way) stays under it


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write `total` as an ordered sum of `parts` positive integers."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def brute_force(cluster: Cluster, model: ModelSpec, objective: Objective = "latency") -> Plan | None:
    """The best fitting route over all orders and splits, or None when nothing fits."""
    names = [n.name for n in cluster.nodes]
    best: Plan | None = None
    for size in range(1, min(len(names), model.num_layers) + 1):
        for order in itertools.permutations(names, size):
            for counts in _compositions(model.num_layers, size):
                candidate = evaluate(cluster, model, list(zip(order, counts)), objective, "exhaustive")
                if candidate.fits and (best is None or candidate.value < best.value):
                    best = candidate
    return best


def _capacity(model: ModelSpec, free: int, first: bool, last: bool) -> int:
    """Most layers a node can hold in a position (0: none)."""
    room = free - stage_memory(model, 0, first, last)
    if room < 0:
        return 0
    if model.layer_bytes == 0:
        return model.num_layers
    return min(model.num_layers, room // model.layer_bytes)


def _min_latency(cluster: Cluster, model: ModelSpec, cap: float) -> float:
    """Least per-token latency over routes whose stage and link terms are all <= cap."""
    nodes = cluster.nodes
    n, layers = len(nodes), model.num_layers
    limit = cap * (1 + _REL_TOL) if math.isfinite(cap) else math.inf
    t = np.array([x.layer_seconds for x in nodes])
    head = np.array([x.head_seconds for x in nodes])
    emb = np.array([x.embed_seconds for x in nodes])
    cin = [cluster.link(DRIVER, x.name) for x in nodes]
    cout = [cluster.link(x.name, DRIVER) for x in nodes]
    ks = np.arange(layers + 1)

    def allowed(j: int, first: bool, last: bool) -> np.ndarray:
        """Layer counts 0..L node j may take in this position (memory and the cap)."""
        most = _capacity(model, nodes[j].free_bytes, first, last)
        term = ks * t[j] + (emb[j] if first else 0.0) + (head[j] if last else 0.0)
        ok = (ks >= 1) & (ks <= most) & (term <= limit)
        if first and cin[j].serialization_s(model.input_bytes) > limit:
            ok[:] = False
        if last and cout[j].serialization_s(model.result_bytes) > limit:
            ok[:] = False
        return ok

    best = math.inf
    # value[mask][i][l]: least latency of a partial route over node set `mask` ending at i
    # with layers 0..l-1 served (l < L), transfers into every stage included.
    value: dict[int, np.ndarray] = {}
    for i in range(n):
        start = np.full(layers + 1, math.inf)
        into = cin[i].seconds(model.input_bytes) + emb[i]
        ok = allowed(i, True, False)
        start[ok] = into + ks[ok] * t[i]
        start[layers] = math.inf
        value.setdefault(1 << i, np.full((n, layers + 1), math.inf))[i] = start
        if allowed(i, True, True)[layers]:
            best = min(best, into + layers * t[i] + head[i] + cout[i].seconds(model.result_bytes))
    middle = [allowed(j, False, False) for j in range(n)]
    final = [allowed(j, False, True) for j in range(n)]
    # shift[m, k] = m - k: reaching m layers by adding k to a route that served m - k
    m_grid, k_grid = np.meshgrid(ks, ks, indexing="ij")
    source = m_grid - k_grid
    for mask in range(1, 1 << n):
        table = value.get(mask)
        if table is None:
            continue
        for i in range(n):
            row = table[i]
            if not (mask >> i) & 1 or not np.isfinite(row).any():
                continue
            for j in range(n):
                if (mask >> j) & 1:
                    continue
                link = cluster.link(nodes[i].name, nodes[j].name)
                if link.serialization_s(model.activation_bytes) > limit:
                    continue
                hop = link.seconds(model.activation_bytes)
                fin = final[j]
                if fin.any():
                    k = ks[fin]
                    closing = row[layers - k] + hop + k * t[j] + head[j]
                    best = min(best, float(closing.min()) + cout[j].seconds(model.result_bytes))
                mid = middle[j]
                valid = mid[k_grid] & (source >= 0)
                candidates = np.where(valid, row[np.clip(source, 0, layers)] + hop + k_grid * t[j],
                                      math.inf)
                reached = candidates.min(axis=1)
                reached[layers] = math.inf
                if np.isfinite(reached).any():
                    target = value.setdefault(mask | (1 << j), np.full((n, layers + 1), math.inf))
                    np.minimum(target[j], reached, out=target[j])
    return best


def _terms(cluster: Cluster, model: ModelSpec) -> list[float]:
    """Every value a stage or link term of any route can take: the candidate bottlenecks."""
    values: set[float] = set()
    for node in cluster.nodes:
        for k in range(1, model.num_layers + 1):
            base = k * node.layer_seconds
            values |= {base, base + node.embed_seconds, base + node.head_seconds,
                       base + node.embed_seconds + node.head_seconds}
        values.add(cluster.link(DRIVER, node.name).serialization_s(model.input_bytes))
        values.add(cluster.link(node.name, DRIVER).serialization_s(model.result_bytes))
        for other in cluster.nodes:
            if other.name != node.name:
                link = cluster.link(node.name, other.name)
                values.add(link.serialization_s(model.activation_bytes))
    return sorted(values)


def optimum(cluster: Cluster, model: ModelSpec, objective: Objective = "latency") -> float:
    """The optimal objective value in seconds (math.inf when nothing fits)."""
    if objective == "latency":
        return _min_latency(cluster, model, math.inf)
    caps = _terms(cluster, model)
    seq = model.sequences

    def latency_under(index: int) -> float:
        return _min_latency(cluster, model, caps[index])

    # Find the first cap at least as large as the least latency / sequences under it.
    lo, hi = 0, len(caps) - 1
    if not math.isfinite(latency_under(hi)):
        return math.inf
    while lo < hi:
        mid = (lo + hi) // 2
        if caps[mid] >= latency_under(mid) / seq:
            hi = mid
        else:
            lo = mid + 1
    best = max(caps[lo], latency_under(lo) / seq)
    if lo > 0:
        best = min(best, max(caps[lo - 1], latency_under(lo - 1) / seq))
    return best
