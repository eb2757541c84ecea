"""The partition planner: which nodes serve which contiguous layer ranges, in which order.

A mixed-integer program (SciPy's `milp`, HiGHS underneath) over a route that starts and ends
at the driver. Variables per node: used or not, its layer count, its first layer, whether it is
the first or last stage; per ordered pair of nodes: whether the route goes from one to the
other. Along an arc i -> j the next range starts where the previous ended
(`start_j >= start_i + layers_i`); since every used node serves at least one layer, starts
strictly increase along the route, which rules out cycles that miss the driver, and
`sum(layers) == L` with the first range at 0 and the last ending at L makes the ranges a
partition of the layers in route order. Memory per node: its layers' weights and KV cache,
the embedding table on the first stage, the head on the last one.

Objectives (per generated token, decode at batch 1 per sequence):
- latency: compute of every stage plus every transfer along the route, driver to driver;
- throughput: the pipeline's cycle, `max(slowest stage or link, latency / sequences)`, since
  `sequences` generations in flight keep the stages busy; ties are broken towards the lower
  latency with a weight small enough to cost at most 0.01% of throughput.

The MILP's answer is compared with the baselines (the best single node, the memory-
proportional split) and the best is returned, so a plan is never worse than them even when
the time limit stops the solver early; the reported gap is measured against the solver's
lower bound. Pure: figures in, a `Plan` out; `replan` takes the current plan and new figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from verinfer.errors import LocalError
from verinfer.pipeline.cluster import DRIVER, Cluster, ClusterError, ModelSpec

Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput")
DEFAULT_TIME_LIMIT_S = 10.0
_MS = 1e3  # the MILP works in milliseconds: coefficients near 1 for typical figures
_TIE_BREAK = 1e-4  # weight of latency / sequences in the throughput objective
_GROUP_JUMP = 2.0
_CUTOFF_SLACK = 1e-6  # the heuristic's own point stays feasible despite rounding  # a merge this much farther than the last closes a group of nodes


class PlanError(LocalError):
    """No plan can be made (the model does not fit, or the inputs are inconsistent)."""


class ModelDoesNotFit(PlanError):
    """The nodes' free memory cannot hold the model; `missing_bytes` says by how much, and
    `missing_by_node` where adding it would be enough (empty when the solver did not say)."""

    def __init__(self, message: str, missing_bytes: int,
                 missing_by_node: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.missing_bytes = missing_bytes
        self.missing_by_node = missing_by_node or {}


@dataclass(frozen=True)
class Stage:
    node: str
    start: int  # first layer served
    end: int  # one past the last layer served
    memory_bytes: int
    free_bytes: int
    compute_s: float  # per token: layers, plus embedding on the first and head on the last
    transfer_in_s: float  # per token, from the previous party (the driver for the first stage)

    @property
    def layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SolveInfo:
    status: str  # "optimal", "time limit", "no solution in time"
    seconds: float
    lower_bound: float  # on the objective, seconds (0 when the solver found no bound)
    gap: float  # (objective - lower bound) / objective of the returned plan
    milp_objective: float | None  # the MILP's own best plan, seconds (None: none found)


@dataclass(frozen=True)
class Plan:
    method: str  # "milp", "single node", "memory-proportional", "given"
    objective: Objective
    stages: tuple[Stage, ...]
    transfer_out_s: float  # last stage -> driver, per token
    latency_s: float  # per token, driver to driver
    bottleneck_s: float  # slowest stage or link serialization, per token
    sequences: int
    fits: bool
    solve: SolveInfo | None = None

    @property
    def cycle_s(self) -> float:
        """Seconds per token of the whole pipeline with `sequences` generations in flight."""
        return max(self.bottleneck_s, self.latency_s / self.sequences)

    @property
    def throughput_tps(self) -> float:
        """Tokens per second over all sequences in flight."""
        return 1.0 / self.cycle_s

    @property
    def value(self) -> float:
        """The objective's figure in seconds (lower is better)."""
        return self.latency_s if self.objective == "latency" else self.cycle_s

    @property
    def route(self) -> tuple[tuple[str, int], ...]:
        return tuple((s.node, s.layers) for s in self.stages)

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "objective": self.objective,
            "fits": self.fits,
            "latency_ms": self.latency_s * 1e3,
            "bottleneck_ms": self.bottleneck_s * 1e3,
            "throughput_tps": self.throughput_tps,
            "sequences": self.sequences,
            "transfer_out_ms": self.transfer_out_s * 1e3,
            "stages": [
                {"node": s.node, "layers": [s.start, s.end], "memory_bytes": s.memory_bytes,
                 "free_bytes": s.free_bytes, "compute_ms": s.compute_s * 1e3,
                 "transfer_in_ms": s.transfer_in_s * 1e3}
                for s in self.stages
            ],
            "solve": None if self.solve is None else {
                "status": self.solve.status, "seconds": self.solve.seconds,
                "lower_bound_ms": self.solve.lower_bound * 1e3, "gap": self.solve.gap,
            },
        }


def stage_memory(model: ModelSpec, layers: int, first: bool, last: bool) -> int:
    """Bytes a stage holds: its layers (weights + KV), the tables its position needs."""
    memory = model.stage_fixed_bytes + layers * model.layer_bytes
    if first:
        memory += model.embed_bytes
    if last:
        memory += model.head_bytes
    if first and last and model.tied_embeddings:
        memory -= model.embed_bytes
    return memory


def evaluate(
    cluster: Cluster, model: ModelSpec, route: Sequence[tuple[str, int]],
    objective: Objective = "latency", method: str = "given",
) -> Plan:
    """The predicted figures of a route: (node, layer count) pairs in pipeline order."""
    if not route or any(count < 1 for _, count in route):
        raise PlanError("a route needs at least one stage, each with at least one layer")
    if sum(count for _, count in route) != model.num_layers:
        raise PlanError(f"the route serves {sum(c for _, c in route)} layers, "
                        f"the model has {model.num_layers}")
    names = [name for name, _ in route]
    if len(set(names)) != len(names):
        raise PlanError("a node appears twice in the route")
    stages: list[Stage] = []
    previous, start = DRIVER, 0
    bottleneck = 0.0
    for position, (name, count) in enumerate(route):
        node = cluster.node(name)
        first, last = position == 0, position == len(route) - 1
        compute = count * node.layer_seconds
        compute += (node.embed_seconds if first else 0.0) + (node.head_seconds if last else 0.0)
        nbytes = model.input_bytes if first else model.activation_bytes
        link = cluster.link(previous, name)
        stages.append(Stage(name, start, start + count, stage_memory(model, count, first, last),
                            node.free_bytes, compute, link.seconds(nbytes)))
        bottleneck = max(bottleneck, compute, link.serialization_s(nbytes))
        previous, start = name, start + count
    out_link = cluster.link(previous, DRIVER)
    bottleneck = max(bottleneck, out_link.serialization_s(model.result_bytes))
    transfer_out = out_link.seconds(model.result_bytes)
    latency = sum(s.compute_s + s.transfer_in_s for s in stages) + transfer_out
    return Plan(method, objective, tuple(stages), transfer_out, latency, bottleneck,
                model.sequences, all(s.memory_bytes <= s.free_bytes for s in stages))


def best_single_node(cluster: Cluster, model: ModelSpec, objective: Objective = "latency") -> Plan | None:
    """The best plan that puts the whole model on one node, or None when no node can hold it."""
    plans = [evaluate(cluster, model, [(n.name, model.num_layers)], objective, "single node")
             for n in cluster.nodes]
    fitting = [p for p in plans if p.fits]
    return min(fitting, key=lambda p: (p.value, p.stages[0].node)) if fitting else None


def memory_proportional(cluster: Cluster, model: ModelSpec, objective: Objective = "latency") -> Plan:
    """The split other systems use (exo, Petals-like): every node, largest free memory first,
    layers in proportion to free memory; the layers rounding leaves over go one by one to the
    node with the most memory left. Speeds and links are ignored, which is the point of the
    comparison. The result may not fit (the embedding, head and buffers are not accounted
    for in the shares); `fits` says so.
    """
    nodes = sorted(cluster.nodes, key=lambda n: (-n.free_bytes, n.name))
    total = sum(n.free_bytes for n in nodes) or 1
    counts = [model.num_layers * n.free_bytes // total for n in nodes]
    for _ in range(model.num_layers - sum(counts)):
        roomiest = max(range(len(nodes)),
                       key=lambda i: (nodes[i].free_bytes - counts[i] * model.layer_bytes, -i))
        counts[roomiest] += 1
    route = [(n.name, c) for n, c in zip(nodes, counts) if c > 0]
    return evaluate(cluster, model, route, objective, "memory-proportional")


@dataclass
class _Program:
    """Index bookkeeping of one MILP: variable blocks and the constraint rows built so far."""

    n: int
    objective: Objective
    with_slack: bool

    def __post_init__(self) -> None:
        n = self.n
        self.used = np.arange(n)
        self.layers = n + np.arange(n)
        self.start = 2 * n + np.arange(n)
        self.first = 3 * n + np.arange(n)
        self.last = 4 * n + np.arange(n)
        self.both = 5 * n + np.arange(n)  # first and last at once (one shared tied table)
        self.arcs = [(i, j) for i in range(n) for j in range(n) if i != j]
        self.arc = {a: 6 * n + k for k, a in enumerate(self.arcs)}
        nxt = 6 * n + len(self.arcs)
        self.cycle = nxt if self.objective == "throughput" else -1
        nxt += self.objective == "throughput"
        self.slack = nxt + np.arange(n) if self.with_slack else np.arange(0)
        self.size = nxt + (n if self.with_slack else 0)
        self.rows: list[dict[int, float]] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, coefs: dict[int, float], lower: float, upper: float) -> None:
        self.rows.append(coefs)
        self.lower.append(lower)
        self.upper.append(upper)

    def constraint(self) -> LinearConstraint:
        data, rows, cols = [], [], []
        for r, coefs in enumerate(self.rows):
            for c, v in coefs.items():
                rows.append(r)
                cols.append(c)
                data.append(v)
        matrix = coo_array((data, (rows, cols)), shape=(len(self.rows), self.size)).tocsr()
        return LinearConstraint(matrix, np.array(self.lower), np.array(self.upper))


def _build(cluster: Cluster, model: ModelSpec, objective: Objective,
           with_slack: bool) -> tuple[_Program, np.ndarray, Bounds, np.ndarray]:
    nodes = cluster.nodes
    n, layers = len(nodes), model.num_layers
    p = _Program(n, objective, with_slack)
    unit = model.layer_bytes or 1  # memory rows in units of one layer's bytes
    cost = np.zeros(p.size)
    lo, hi = np.zeros(p.size), np.ones(p.size)
    integrality = np.zeros(p.size)
    integrality[np.concatenate([p.used, p.layers, p.first, p.last])] = 1
    integrality[list(p.arc.values())] = 1
    hi[p.start] = layers
    for i, node in enumerate(nodes):
        # Presolve: a node's layer count is bounded by its memory (the embedding and head
        # only add to a stage), and a node that cannot hold one layer is left out.
        room = (node.free_bytes - model.stage_fixed_bytes) // unit if model.layer_bytes else layers
        hi[p.layers[i]] = max(0, min(layers, room)) if not with_slack else layers
        if hi[p.layers[i]] < 1:
            hi[p.used[i]] = hi[p.first[i]] = hi[p.last[i]] = hi[p.both[i]] = 0
    if p.cycle >= 0:
        hi[p.cycle] = np.inf
    hi[p.slack] = np.inf

    def link_ms(a: str, b: str, nbytes: int) -> tuple[float, float]:
        link = cluster.link(a, b)
        return link.seconds(nbytes) * _MS, link.serialization_s(nbytes) * _MS

    latency: dict[int, float] = {}
    for i, node in enumerate(nodes):
        latency[p.layers[i]] = node.layer_seconds * _MS
        into, _ = link_ms(DRIVER, node.name, model.input_bytes)
        out, _ = link_ms(node.name, DRIVER, model.result_bytes)
        latency[p.first[i]] = node.embed_seconds * _MS + into
        latency[p.last[i]] = node.head_seconds * _MS + out
    for (i, j), k in p.arc.items():
        latency[k] = link_ms(nodes[i].name, nodes[j].name, model.activation_bytes)[0]

    shared = model.embed_bytes if model.tied_embeddings else 0
    for i, node in enumerate(nodes):
        u, x, s, f, g, z = (int(v[i]) for v in (p.used, p.layers, p.start, p.first, p.last, p.both))
        arcs_in = [p.arc[(j, i)] for j in range(n) if j != i]
        arcs_out = [p.arc[(i, j)] for j in range(n) if j != i]
        p.add({a: 1.0 for a in arcs_in} | {f: 1.0, u: -1.0}, 0, 0)  # one way in when used
        p.add({a: 1.0 for a in arcs_out} | {g: 1.0, u: -1.0}, 0, 0)  # one way out when used
        p.add({x: 1.0, u: -1.0}, 0, np.inf)  # a used node serves a layer
        p.add({x: 1.0, u: -float(layers)}, -np.inf, 0)  # an unused one serves none
        p.add({s: 1.0, x: 1.0}, -np.inf, layers)  # its range ends inside the model
        p.add({s: 1.0, f: float(layers)}, -np.inf, layers)  # the first range starts at 0
        p.add({s: 1.0, x: 1.0, g: -float(layers)}, 0, np.inf)  # the last one ends at L
        p.add({z: 1.0, f: -1.0}, -np.inf, 0)
        p.add({z: 1.0, g: -1.0}, -np.inf, 0)
        # Memory, with the node's free memory scaled by `used`: the same integer points as
        # `... <= free`, but a node used a fraction u in the relaxation gets only u of its
        # memory, so the relaxation cannot put many layers on a barely-used fast node.
        memory = {x: 1.0, f: model.embed_bytes / unit, g: model.head_bytes / unit,
                  z: -shared / unit, u: (model.stage_fixed_bytes - node.free_bytes) / unit}
        if with_slack:
            memory[int(p.slack[i])] = -1.0
        p.add(memory, -np.inf, 0)
        if p.cycle >= 0:
            p.add({p.cycle: 1.0, x: -node.layer_seconds * _MS, f: -node.embed_seconds * _MS,
                   g: -node.head_seconds * _MS}, 0, np.inf)
            p.add({p.cycle: 1.0, f: -link_ms(DRIVER, node.name, model.input_bytes)[1]}, 0, np.inf)
            p.add({p.cycle: 1.0, g: -link_ms(node.name, DRIVER, model.result_bytes)[1]}, 0, np.inf)
    for (i, j), k in p.arc.items():
        # along the arc i -> j, j's range starts where i's ends (or later; equality follows)
        p.add({int(p.start[j]): 1.0, int(p.start[i]): -1.0, int(p.layers[i]): -1.0,
               k: -float(layers)}, -float(layers), np.inf)
        if p.cycle >= 0:
            ser = link_ms(nodes[i].name, nodes[j].name, model.activation_bytes)[1]
            p.add({p.cycle: 1.0, k: -ser}, 0, np.inf)
    _add_subtour_cuts(p, cluster)
    p.add({int(v): 1.0 for v in p.first}, 1, 1)
    p.add({int(v): 1.0 for v in p.last}, 1, 1)
    p.add({int(v): 1.0 for v in p.layers}, layers, layers)

    if with_slack:
        cost[p.slack] = 1.0
    elif objective == "latency":
        for k, v in latency.items():
            cost[k] = v
    else:
        p.add({p.cycle: 1.0} | {k: -v / model.sequences for k, v in latency.items()}, 0, np.inf)
        cost[p.cycle] = 1.0
        for k, v in latency.items():
            cost[k] = _TIE_BREAK * v / model.sequences
    return p, cost, Bounds(lo, hi), integrality


def _add_subtour_cuts(p: _Program, cluster: Cluster) -> None:
    """Valid inequalities that tighten the relaxation: the route enters every group of nodes
    it visits from outside (from another node or the driver).

    The start variables already forbid cycles, but only weakly when arcs are fractional:
    the relaxation then circles between nearby nodes and ignores the expensive links between
    groups. Groups: every pair, and the groups single-linkage clustering of link latencies
    forms (nodes on one LAN), each with one cut per member.
    """
    n = p.n
    for i in range(n):
        for j in range(i + 1, n):
            for k in (i, j):
                p.add({p.arc[(i, j)]: 1.0, p.arc[(j, i)]: 1.0, int(p.used[k]): -1.0}, -np.inf, 0)
    if n < 4:
        return
    names = [node.name for node in cluster.nodes]
    distance = np.array([[0.0 if a == b else cluster.link(a, b).latency_s + cluster.link(b, a).latency_s
                          for b in names] for a in names])
    for group in _linkage_groups(distance):
        if not 3 <= len(group) < n:
            continue
        outside = [i for i in range(n) if i not in group]
        entering = {p.arc[(i, j)]: 1.0 for i in outside for j in group} | {
            int(p.first[j]): 1.0 for j in group}
        for k in group:
            p.add(entering | {int(p.used[k]): -1.0}, 0, np.inf)


def _linkage_groups(distance: np.ndarray) -> list[list[int]]:
    """The clusters single-linkage merging forms, at the merges where distance jumps
    (a merge at least `_GROUP_JUMP` times as far as the previous one closes a group)."""
    n = len(distance)
    members = {i: [i] for i in range(n)}
    owner = list(range(n))
    pairs = sorted((distance[i, j], i, j) for i in range(n) for j in range(i + 1, n))
    groups: list[list[int]] = []
    last = 0.0
    for d, i, j in pairs:
        a, b = owner[i], owner[j]
        if a == b:
            continue
        if last > 0 and d >= _GROUP_JUMP * last:
            groups += [sorted(g) for g in members.values() if len(g) > 1]
        merged = members.pop(a) + members.pop(b)
        for k in merged:
            owner[k] = a
        members[a] = merged
        last = d
    return [list(g) for g in {tuple(g) for g in groups}]


def _route_of(p: _Program, cluster: Cluster, x: np.ndarray) -> list[tuple[str, int]]:
    """Follow the arcs of a MILP solution from the first stage to the last."""
    nodes = cluster.nodes
    chosen = {i: j for (i, j), k in p.arc.items() if x[k] > 0.5}
    current = int(np.argmax(x[p.first]))
    route: list[tuple[str, int]] = []
    while True:
        route.append((nodes[current].name, round(x[p.layers[current]])))
        if current not in chosen:
            return route
        current = chosen[current]


def _objective_with_tie_break(plan: Plan) -> float:
    if plan.objective == "latency":
        return plan.latency_s
    return plan.cycle_s + _TIE_BREAK * plan.latency_s / plan.sequences


def _check_inputs(cluster: Cluster, model: ModelSpec, objective: str, time_limit: float) -> None:
    if objective not in OBJECTIVES:
        raise PlanError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not time_limit > 0:
        raise PlanError(f"the time limit must be > 0 seconds, got {time_limit}")
    cluster.validate()
    model.validate()


def plan(
    cluster: Cluster, model: ModelSpec, objective: Objective = "latency",
    time_limit: float = DEFAULT_TIME_LIMIT_S, mip_rel_gap: float = 1e-4,
) -> Plan:
    """The best partition found within `time_limit` seconds (never worse than the baselines).

    Raises ModelDoesNotFit, naming the memory missing, when no route can hold the model.
    """
    _check_inputs(cluster, model, objective, time_limit)
    started = time.perf_counter()
    single = best_single_node(cluster, model, objective)
    proportional = memory_proportional(cluster, model, objective)
    heuristics = [c for c in (single, proportional) if c is not None and c.fits]
    p, cost, bounds, integrality = _build(cluster, model, objective, with_slack=False)
    if heuristics:
        # The best heuristic plan as a cutoff: the search drops every branch whose bound is
        # no better (what a warm start's incumbent does; SciPy's milp takes no start point).
        incumbent = min(_objective_with_tie_break(c) for c in heuristics) * _MS
        p.add({int(k): float(v) for k, v in enumerate(cost) if v != 0},
              -np.inf, incumbent * (1 + _CUTOFF_SLACK))
    result = milp(cost, constraints=p.constraint(), bounds=bounds, integrality=integrality,
                  options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    seconds = time.perf_counter() - started
    candidates: list[Plan] = []
    milp_objective = None
    if result.x is not None:
        found = evaluate(cluster, model, _route_of(p, cluster, result.x), objective, "milp")
        if found.fits:  # always, unless the solver's tolerances let a byte slip
            candidates.append(found)
            milp_objective = found.value
    candidates += heuristics
    if not candidates:
        if result.status == 2:  # proven infeasible
            raise _does_not_fit(cluster, model, time_limit)
        raise PlanError(f"no plan found within the time limit of {time_limit:g} s: "
                        "raise --time-limit")
    best = min(candidates, key=_objective_with_tie_break)
    bound = getattr(result, "mip_dual_bound", None)
    lower = (bound / _MS) if bound is not None and math.isfinite(bound) else 0.0
    value = _objective_with_tie_break(best)
    gap = max(0.0, (value - lower) / value) if value > 0 else 0.0
    status = {0: "optimal", 1: "time limit"}.get(result.status, result.message)
    if result.status == 2 and heuristics:  # nothing beats the cutoff: the heuristic is optimal
        status, lower, gap = "optimal", value, 0.0
    if result.x is None and result.status == 1:
        status = "no solution in time"
    return replace(best, solve=SolveInfo(status, seconds, lower, gap, milp_objective))


def _does_not_fit(cluster: Cluster, model: ModelSpec, time_limit: float) -> ModelDoesNotFit:
    """The least memory that, added to the nodes, would let some route hold the model."""
    p, cost, bounds, integrality = _build(cluster, model, "latency", with_slack=True)
    result = milp(cost, constraints=p.constraint(), bounds=bounds, integrality=integrality,
                  options={"time_limit": time_limit})
    unit = model.layer_bytes or 1
    free = sum(n.free_bytes for n in cluster.nodes)
    per_node: list[tuple[str, int]] = []
    if result.x is None:
        needed = stage_memory(model, model.num_layers, True, True)
        missing = max(needed - free, 1)
        where = ""
    else:
        per_node = [(cluster.nodes[i].name, math.ceil(result.x[p.slack[i]] * unit))
                    for i in range(p.n)]
        per_node = [(name, b) for name, b in per_node if b > 0]
        missing = max(sum(b for _, b in per_node), 1)
        where = " (for example " + ", ".join(f"{_gib(b)} more on {name}"
                                             for name, b in per_node) + ")"
    return ModelDoesNotFit(
        f"model {model.name} does not fit: {_gib(missing)} of memory is missing{where}; "
        f"the {len(cluster.nodes)} node(s) have {_gib(free)} free, the model needs "
        f"{_gib(model.layer_bytes)} per layer × {model.num_layers} (weights + KV cache for "
        f"{model.sequences} × {model.context} tokens) plus the embedding and head; "
        "add nodes, free memory, or lower --context / --sequences",
        missing, dict(per_node),
    )


def _gib(nbytes: float) -> str:
    """A byte count in the largest binary unit that keeps it at 1 or more."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes:.0f} bytes"


@dataclass(frozen=True)
class Move:
    """Layers a node must load (`load`) or may free (`drop`) to go from one plan to the next."""

    node: str
    load: tuple[tuple[int, int], ...]
    drop: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Replan:
    plan: Plan  # the plan to run now
    previous: Plan | None  # the current route under the new figures (None: it cannot run)
    changed: bool
    moves: tuple[Move, ...]


def _minus(a: tuple[int, int], b: tuple[int, int] | None) -> tuple[tuple[int, int], ...]:
    """Layer range a without range b, as at most two ranges."""
    if b is None or b[1] <= a[0] or a[1] <= b[0]:
        return (a,) if a[0] < a[1] else ()
    parts = ((a[0], b[0]), (b[1], a[1]))
    return tuple(r for r in parts if r[0] < r[1])


def moves_between(old: Plan | None, new: Plan) -> tuple[Move, ...]:
    old_ranges = {s.node: (s.start, s.end) for s in old.stages} if old else {}
    new_ranges = {s.node: (s.start, s.end) for s in new.stages}
    moves = []
    for node in sorted(old_ranges.keys() | new_ranges.keys()):
        before, after = old_ranges.get(node), new_ranges.get(node)
        load = _minus(after, before) if after else ()
        drop = _minus(before, after) if before else ()
        if load or drop:
            moves.append(Move(node, load, drop))
    return tuple(moves)


def replan(
    current: Plan, cluster: Cluster, model: ModelSpec, min_gain: float = 0.05,
    time_limit: float = DEFAULT_TIME_LIMIT_S,
) -> Replan:
    """Re-plan from new figures (a node slowed, left, or reported less memory).

    The current route is kept while it still runs and a new plan would not be better by more
    than `min_gain` (a fraction): moving layers costs loading weights, so small predicted gains
    are not worth it. A route with a node gone or over its memory is always replaced.
    """
    if not 0 <= min_gain < 1:
        raise PlanError(f"min_gain must be in [0, 1), got {min_gain}")
    objective = current.objective
    names = {n.name for n in cluster.nodes}
    previous = None
    if all(s.node in names for s in current.stages):
        try:
            previous = evaluate(cluster, model, current.route, objective, current.method)
        except (PlanError, ClusterError):
            previous = None
        if previous is not None and not previous.fits:
            previous = None
    fresh = plan(cluster, model, objective, time_limit)
    if previous is not None and fresh.value >= previous.value * (1 - min_gain):
        return Replan(replace(previous, solve=fresh.solve), previous, False, ())
    return Replan(fresh, previous, True, moves_between(current, fresh))
