"""A stage slower than planned triggers a re-plan; layers move mid-generation and the tokens
stay the single engine's (must-show 3)."""

from __future__ import annotations

import statistics

import pytest
from stagefarm import StageFarm, generate_as_one_node

from verinfer.engine import Engine
from verinfer.engine.params import SamplingParams
from verinfer.pipeline.cluster import Cluster, Link, NodeSpec, model_spec_from_config
from verinfer.pipeline.planner import evaluate, stage_memory
from verinfer.pipeline.rebalance import Rebalancer, node_name

THROTTLE_MS = 10.0  # per layer per step on the slow stage
PLANNED_LAYER_S = 0.002  # what the nodes' profiles claimed: 2 ms per layer per token


@pytest.mark.slow
def test_a_slow_stage_triggers_a_replan_and_the_tokens_do_not_change(
    split_engine: Engine, stage_farm: StageFarm
) -> None:
    fast = stage_farm.start_many(["0:3", "3:6"])
    slow = stage_farm.start("6:8", "--throttle-ms", str(THROTTLE_MS))
    procs = [*fast, slow]
    model = model_spec_from_config(split_engine.config, sequences=1)
    # Each node holds at most 5 of the 8 layers: the model needs two of them.
    free = stage_memory(model, 5, True, True)
    names = [node_name(p.host, p.port) for p in procs]
    cluster = Cluster(tuple(NodeSpec(n, PLANNED_LAYER_S, 0.0, free) for n in names),
                      default_link=Link(0.0002, float("inf"))).validate()
    plan = evaluate(cluster, model, [(names[0], 3), (names[1], 3), (names[2], 2)])
    rebalancer = Rebalancer(plan, cluster, model, margin=0.5, window=3, time_limit=5.0)
    route = [procs[0].spec(0, 3), procs[1].spec(3, 6), procs[2].spec(6, 8)]
    prompts = [[256, 83, 108, 111, 119, 32, 100, 111, 119, 110]]
    params = [SamplingParams(max_tokens=24, temperature=0.9, seed=3, ignore_eos=True)]
    driver, got, _ = generate_as_one_node(split_engine, route, prompts, params, rebalance=rebalancer)
    moved = [h for h in rebalancer.history if h.moved]
    assert len(moved) == 1, rebalancer.history
    event = moved[0]
    assert event.slow_node == names[2]
    assert event.measured_s >= 2 * THROTTLE_MS / 1e3 > event.planned_s
    assert names[2] not in [s.node for s in event.after.stages]  # its layers moved away
    assert [s.port for s in driver.route] != [p.port for p in procs]
    # The stages serving after the move loaded their new layers and freed the others: what
    # they hold adds up to the whole model again (the last records are the live route).
    live = got.stages[-len(driver.route):]
    assert [(s.layer_start, s.layer_end) for s in live] == [(r.start, r.end) for r in driver.route]
    assert sum(s.weight_bytes or 0 for s in live) == split_engine.model.resident_bytes()
    # Throughput before and after, against the planner's prediction of each route.
    step = event.decode_step
    before = statistics.median(got.step_seconds[:step])
    after = statistics.median(got.step_seconds[step:])
    assert event.before is not None
    assert after < before / 2
    print(f"rebalance: before {1 / before:.1f} tok/s (predicted {event.before.throughput_tps:.1f}), "
          f"after {1 / after:.1f} tok/s (predicted {event.after.throughput_tps:.1f})")
