"""A stage that returns wrong activations is pinned by its own signed commitment (must-show 6)."""

from __future__ import annotations

import dataclasses

import pytest
from stagefarm import StageFarm

from verinfer.engine import Engine
from verinfer.engine.params import SamplingParams
from verinfer.pipeline.checker import check_stages
from verinfer.pipeline.commitment import OFFCHAIN_DOMAIN
from verinfer.pipeline.driver import PipelineResult, RouteDriver, StageSpec

PROMPTS = [[256, 87, 104, 111, 32, 105, 115], [256, 66]]
PARAMS = [SamplingParams(max_tokens=5, ignore_eos=True),
          SamplingParams(max_tokens=5, temperature=0.7, seed=5, ignore_eos=True)]


def _run(engine: Engine, route: list[StageSpec]) -> PipelineResult:
    driver = RouteDriver(route, engine.config, engine.tokenizer, prefill_chunk=4)
    try:
        return driver.generate(PROMPTS, PARAMS)
    finally:
        driver.close()


@pytest.mark.slow
def test_a_cheating_stage_is_pinned_and_honest_ones_pass(
    split_engine: Engine, stage_farm: StageFarm
) -> None:
    honest = stage_farm.start_many(["0:3", "6:8"])
    cheater = stage_farm.start("3:6", "--cheat", "wrong-activations")
    route = [honest[0].spec(0, 3), cheater.spec(3, 6), honest[1].spec(6, 8)]
    result = _run(split_engine, route)
    faults = check_stages(split_engine, result.stages, result.frames)
    assert len(faults) == 1
    fault = faults[0]
    assert fault.node == cheater.address and fault.layers == (3, 6) and fault.stage == 1
    assert fault.seq == 0  # its very first frame was already wrong
    assert fault.evidence.commitment.node == cheater.address
    fault.evidence.check(OFFCHAIN_DOMAIN)

    # The same processes re-arranged without the cheater: nothing to pin, and the run equals
    # the single engine.
    clean = _run(split_engine, [honest[0].spec(0, 4), honest[1].spec(4, 8)])
    assert check_stages(split_engine, clean.stages, clean.frames) == []
    expected = split_engine.generate(PROMPTS, PARAMS)
    assert [r.token_ids for r in clean.results] == [r.token_ids for r in expected]

    # A kept frame swapped after the fact (a driver lying about a stage's input) is noticed.
    forged = {b: dict(steps) for b, steps in clean.frames.items()}
    forged[4][0] = forged[4][1]
    faults = check_stages(split_engine, clean.stages, forged)
    assert [(f.stage, f.seq) for f in faults] == [(1, 0)]
    assert "signed input hash" in faults[0].reason
    assert dataclasses.asdict(faults[0].evidence.commitment)["seq"] == 0
