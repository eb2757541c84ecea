"""verinfer.pipeline.planner: optimality against exhaustive search, memory, contiguity,
coverage, infeasibility, baselines, the time limit, re-planning."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from verinfer.pipeline import exhaustive
from verinfer.pipeline.cluster import DRIVER, Cluster, ClusterError, Link, NodeSpec
from verinfer.pipeline.planner import (
    ModelDoesNotFit,
    PlanError,
    best_single_node,
    evaluate,
    memory_proportional,
    plan,
    replan,
    stage_memory,
)
from verinfer.pipeline.testing import llama_spec, random_cluster

SMALL = [(seed, nodes, layers) for seed, (nodes, layers) in
         enumerate([(3, 6), (4, 8), (4, 10), (5, 12), (6, 16), (3, 16)])]


def _check_route(cluster: Cluster, model, p) -> None:
    """Contiguous ranges covering every layer once, in route order, within memory."""
    assert p.stages[0].start == 0 and p.stages[-1].end == model.num_layers
    for a, b in zip(p.stages, p.stages[1:]):
        assert a.end == b.start
    assert all(s.layers >= 1 for s in p.stages)
    assert len({s.node for s in p.stages}) == len(p.stages)
    for position, s in enumerate(p.stages):
        first, last = position == 0, position == len(p.stages) - 1
        assert s.memory_bytes == stage_memory(model, s.layers, first, last)
        assert s.memory_bytes <= cluster.node(s.node).free_bytes


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_dynamic_program_equals_brute_force(objective: str) -> None:
    for seed in range(4):
        model = llama_spec(7, sequences=3)
        cluster = random_cluster(seed, 4, model)
        best = exhaustive.brute_force(cluster, model, objective)  # type: ignore[arg-type]
        assert best is not None
        assert exhaustive.optimum(cluster, model, objective) == pytest.approx(  # type: ignore[arg-type]
            best.value, rel=1e-12)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@pytest.mark.parametrize(("seed", "nodes", "layers"), SMALL)
def test_milp_is_optimal_on_small_clusters(objective: str, seed: int, nodes: int, layers: int) -> None:
    model = llama_spec(layers, sequences=4)
    cluster = random_cluster(100 + seed, nodes, model)
    p = plan(cluster, model, objective)  # type: ignore[arg-type]
    optimum = exhaustive.optimum(cluster, model, objective)  # type: ignore[arg-type]
    assert p.solve is not None and p.solve.status == "optimal"
    assert p.value == pytest.approx(optimum, rel=1e-3)
    assert p.value >= optimum * (1 - 1e-9)
    _check_route(cluster, model, p)


def test_plans_respect_memory_and_cover_layers_on_larger_clusters() -> None:
    for seed, nodes, layers in [(1, 12, 32), (2, 20, 48)]:
        model = llama_spec(layers, sequences=8)
        cluster = random_cluster(seed, nodes, model)
        for objective in ("latency", "throughput"):
            p = plan(cluster, model, objective)  # type: ignore[arg-type]
            _check_route(cluster, model, p)
            again = evaluate(cluster, model, p.route, objective)  # type: ignore[arg-type]
            assert again.latency_s == p.latency_s and again.bottleneck_s == p.bottleneck_s


def _two_nodes(fast_free: int, slow_free: int, model, wan: float = 0.05) -> Cluster:
    """A fast node far from the driver, a slow one next to it."""
    fast = NodeSpec("fast", 1e-3, 2e-3, fast_free)
    slow = NodeSpec("slow", 10e-3, 20e-3, slow_free)
    lan, far = Link(1e-4, 1e9), Link(wan, 1e7)
    return Cluster((fast, slow), {(DRIVER, "slow"): lan, (DRIVER, "fast"): far,
                                  ("fast", "slow"): far}).validate()


def test_never_worse_than_the_best_single_node_and_leaves_out_nodes_that_do_not_help() -> None:
    model = llama_spec(16)
    whole = stage_memory(model, 16, True, True)
    cluster = _two_nodes(whole, whole, model, wan=1e-3)
    p = plan(cluster, model, "latency")
    single = best_single_node(cluster, model, "latency")
    assert single is not None and p.value <= single.value
    # the fast node holds everything: a second stage would only add transfers
    assert p.route == (("fast", 16),)


def test_the_model_split_when_no_node_holds_it() -> None:
    model = llama_spec(16)
    half = stage_memory(model, 9, True, True)
    cluster = _two_nodes(half, half, model)
    assert best_single_node(cluster, model) is None
    p = plan(cluster, model)
    assert sorted(n for n, _ in p.route) == ["fast", "slow"]
    _check_route(cluster, model, p)


def test_does_not_fit_names_the_missing_memory_and_that_memory_suffices() -> None:
    model = llama_spec(16)
    cluster = _two_nodes(stage_memory(model, 5, True, True), stage_memory(model, 4, True, True),
                         model)
    with pytest.raises(ModelDoesNotFit) as caught:
        plan(cluster, model)
    message = str(caught.value)
    assert "does not fit" in message and "of memory is missing" in message
    need = model.num_layers * model.layer_bytes + model.embed_bytes + model.head_bytes
    free = sum(n.free_bytes for n in cluster.nodes)
    missing = caught.value.missing_bytes
    assert missing >= need + model.stage_fixed_bytes - free
    assert sum(caught.value.missing_by_node.values()) == missing
    # giving that much more memory where the message says makes it fit
    richer = cluster
    for name, extra in caught.value.missing_by_node.items():
        node = richer.node(name)
        richer = richer.with_node(replace(node, free_bytes=node.free_bytes + extra))
    _check_route(richer, model, plan(richer, model))


def test_memory_proportional_uses_every_node_in_memory_order() -> None:
    model = llama_spec(20)
    cluster = random_cluster(5, 6, model, memory_scale=0.5)
    p = memory_proportional(cluster, model)
    frees = [cluster.node(s.node).free_bytes for s in p.stages]
    assert frees == sorted(frees, reverse=True)
    assert sum(s.layers for s in p.stages) == 20
    best = plan(cluster, model)
    if p.fits:
        assert best.value <= p.value


def test_time_limit_is_honoured_and_a_plan_still_comes_back() -> None:
    model = llama_spec(80, sequences=8)
    cluster = random_cluster(7, 32, model)
    p = plan(cluster, model, "throughput", time_limit=0.3)
    assert p.solve is not None
    assert p.solve.seconds < 0.3 + 2.0  # the model build and the baselines come on top
    assert 0.0 <= p.solve.gap <= 1.0
    _check_route(cluster, model, p)


def test_bad_inputs_are_refused() -> None:
    model = llama_spec(8)
    good = NodeSpec("a", 1e-3, 1e-3, 10**12)
    with pytest.raises(ClusterError, match="layer_seconds"):
        Cluster((replace(good, layer_seconds=-1.0),), default_link=Link(0, 1e9)).validate()
    with pytest.raises(ClusterError, match="unknown node 'b'"):
        Cluster((good,), {("a", "b"): Link(0, 1e9)}, Link(0, 1e9)).validate()
    with pytest.raises(ClusterError, match="no link between a and driver"):
        Cluster((good,)).validate()
    with pytest.raises(ClusterError, match="bandwidth"):
        Cluster((good,), default_link=Link(0, 0)).validate()
    cluster = Cluster((good,), default_link=Link(0, 1e9)).validate()
    with pytest.raises(PlanError, match="objective"):
        plan(cluster, model, "speed")  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="time limit"):
        plan(cluster, model, time_limit=0)
    with pytest.raises(PlanError, match="serves 7 layers"):
        evaluate(cluster, model, [("a", 7)])


def test_replan_keeps_a_good_route_and_moves_layers_off_a_slowed_node() -> None:
    model = llama_spec(24, sequences=4)
    cluster = random_cluster(3, 6, model)
    current = plan(cluster, model, "throughput")
    same = replan(current, cluster, model)
    assert not same.changed and same.plan.route == current.route and same.moves == ()
    slowest = max(current.stages, key=lambda s: s.compute_s).node
    node = cluster.node(slowest)
    slowed = cluster.with_node(replace(node, layer_seconds=node.layer_seconds * 20))
    moved = replan(current, slowed, model)
    assert moved.changed and moved.previous is not None
    assert moved.plan.value < moved.previous.value * 0.95
    served = {s.node: s.layers for s in moved.plan.stages}
    assert served.get(slowest, 0) < dict(current.route)[slowest]
    assert any(m.node == slowest and m.drop for m in moved.moves)


def test_replan_after_a_node_leaves() -> None:
    model = llama_spec(24, sequences=4)
    cluster = random_cluster(4, 6, model, memory_scale=0.3)
    current = plan(cluster, model)
    gone = current.stages[0].node
    after = replan(current, cluster.without({gone}), model)
    assert after.changed and after.previous is None
    assert gone not in {s.node for s in after.plan.stages}
    loads = sum(b - a for m in after.moves for a, b in m.load)
    assert loads >= current.stages[0].layers  # its layers were loaded elsewhere
    assert math.isfinite(after.plan.value)
