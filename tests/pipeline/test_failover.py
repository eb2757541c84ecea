"""kill -9 of a stage during a generation: the driver re-routes, replays, and the tokens are
the undisturbed run's (must-show 2)."""

from __future__ import annotations

import pytest
from stagefarm import StageFarm, StageProcess, generate_as_one_node

from verinfer.engine import Engine
from verinfer.engine.params import SamplingParams
from verinfer.pipeline.driver import Observe, RouteDriver, StageSpec

PROMPTS = [[256, 72, 105, 32, 116, 104, 101, 114, 101], [256, 79, 75]]
PARAMS = [SamplingParams(max_tokens=12, ignore_eos=True),
          SamplingParams(max_tokens=12, temperature=0.8, seed=99, ignore_eos=True)]


def _kill_at(proc: StageProcess, at_seq: int) -> Observe:
    def observe(_driver: RouteDriver, seq: int) -> None:
        if seq == at_seq:
            proc.kill()
    return observe


@pytest.mark.slow
def test_a_spare_takes_over_a_killed_middle_stage(split_engine: Engine, stage_farm: StageFarm) -> None:
    procs = stage_farm.start_many(["0:3", "3:6", "6:8", "3:6"])
    route = [procs[0].spec(0, 3), procs[1].spec(3, 6), procs[2].spec(6, 8)]
    # Step 8 is a decode step: both prompts are prefilled by then (chunks of 2).
    driver, got, _ = generate_as_one_node(split_engine, route, PROMPTS, PARAMS, prefill_chunk=2,
                                        spares=[procs[3].spec(3, 6)],
                                        observe=_kill_at(procs[1], 8))
    assert procs[1].proc.returncode == -9
    assert any("failed" in e for e in got.events) and any("spare" in e for e in got.events)
    assert driver.route[1].port == procs[3].port
    # The spare rebuilt its cache from the kept frames: it signed every step up to the end.
    spare = next(s for s in got.stages if s.node == procs[3].address)
    assert [c.commitment.seq for c in spare.commitments] == list(range(driver.seq))


@pytest.mark.slow
def test_survivors_re_split_the_layers_when_no_spare_is_left(
    split_engine: Engine, stage_farm: StageFarm
) -> None:
    procs = stage_farm.start_many(["0:2", "2:5", "5:8"])
    route = [procs[0].spec(0, 2), procs[1].spec(2, 5), procs[2].spec(5, 8)]
    driver, got, _ = generate_as_one_node(split_engine, route, PROMPTS, PARAMS, prefill_chunk=3,
                                        observe=_kill_at(procs[2], 2))  # mid-prefill
    assert [(s.port, s.start, s.end) for s in driver.route] == [
        (procs[0].port, 0, 4), (procs[1].port, 4, 8)]
    assert any("survivors re-split" in e for e in got.events)


@pytest.mark.slow
def test_two_stages_killed_at_once_are_both_routed_around(
    split_engine: Engine, stage_farm: StageFarm
) -> None:
    procs = stage_farm.start_many(["0:3", "3:6", "6:8", "3:6"])
    route = [procs[0].spec(0, 3), procs[1].spec(3, 6), procs[2].spec(6, 8)]

    def kill_two(_driver: RouteDriver, seq: int) -> None:
        if seq == 8:  # a decode step: the middle and the last stage die together
            procs[1].kill()
            procs[2].kill()

    driver, got, _ = generate_as_one_node(split_engine, route, PROMPTS, PARAMS, prefill_chunk=2,
                                        spares=[procs[3].spec(3, 6)], observe=kill_two)
    # The spare took the middle's place, found the last stage dead while rebuilding, and the
    # two that are left serve every layer.
    assert any("failed while the route was rebuilt" in e for e in got.events), got.events
    assert [(s.port, s.start, s.end) for s in driver.route] == [
        (procs[0].port, 0, 4), (procs[3].port, 4, 8)]
    assert driver.spares == []
    # Each stage that served is recorded once per range it served.
    keys = [(s.endpoint, s.layer_start, s.layer_end) for s in got.stages]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.slow
def test_a_re_plan_onto_a_dead_stage_falls_back_and_the_tokens_do_not_change(
    split_engine: Engine, stage_farm: StageFarm
) -> None:
    procs = stage_farm.start_many(["0:3", "3:6", "6:8", "3:6"])
    route = [procs[0].spec(0, 3), procs[1].spec(3, 6), procs[2].spec(6, 8)]
    procs[3].kill()
    asked = []

    def move_to_the_dead_one(driver: RouteDriver) -> list[StageSpec] | None:
        asked.append(driver.seq)
        if len(asked) != 3:
            return None
        return [procs[0].spec(0, 3), procs[3].spec(3, 6), procs[2].spec(6, 8)]

    driver, got, _ = generate_as_one_node(split_engine, route, PROMPTS, PARAMS, prefill_chunk=2,
                                        rebalance=move_to_the_dead_one)
    assert any(f":{procs[3].port} failed" in e for e in got.events), got.events
    assert [s.port for s in driver.route] == [p.port for p in procs[:3]]
