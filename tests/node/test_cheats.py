"""Cheat strategies: each one really changes what the node serves, in the way it claims to."""

from __future__ import annotations

from pathlib import Path

import pytest

from verinfer.engine.api import Engine
from verinfer.engine.params import SamplingParams
from verinfer.node.cheats import STRATEGIES, Cheat, UnknownStrategy
from verinfer.node.scheduler import Scheduler, StepEvent, Submission, run_to_completion

PROMPTS = [[1, 5, 9, 13], [1, 7, 7, 2, 8], [1, 3], [1, 11, 12, 13, 14, 15]]
GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tiny_dir: Path) -> Path:
    return tiny_dir


def serve(model_dir, cheat: Cheat | None) -> list[list[int]]:
    engine = Engine.load(model_dir)
    if cheat is not None:
        cheat.corrupt(engine.model)
    scheduler = Scheduler(engine.model, engine.tokenizer, slots=2, cheat=cheat)
    outputs: list[list[int]] = [[] for _ in PROMPTS]

    def sink_for(i: int):
        def sink(event: StepEvent) -> None:
            assert event.error is None
            if event.token_id >= 0:
                outputs[i].append(event.token_id)
        return sink

    run_to_completion(scheduler, [Submission(p, GREEDY, sink_for(i)) for i, p in enumerate(PROMPTS)])
    return outputs


def test_unknown_strategy() -> None:
    with pytest.raises(UnknownStrategy, match="wrong-tokens"):
        Cheat("lazy")


def test_every_strategy_changes_some_output(model_dir) -> None:
    honest = serve(model_dir, None)
    for strategy in STRATEGIES:
        cheat = Cheat(strategy, fraction_ppm=500_000)
        cheated = serve(model_dir, cheat)
        assert cheated != honest, strategy
        if strategy == "late-divergence":
            for h, c in zip(honest, cheated, strict=True):
                assert c[: cheat.honest_steps] == h[: cheat.honest_steps]
                assert c[cheat.honest_steps] != h[cheat.honest_steps]
        if strategy == "wrong-tokens":
            assert all(c[0] != h[0] for h, c in zip(honest, cheated, strict=True))
        if strategy == "sometimes":
            on = [cheat.cheats_on(p, GREEDY.seed) for p in PROMPTS]
            for h, c, cheating in zip(honest, cheated, on, strict=True):
                assert (c != h) == cheating


def test_model_cheats_keep_the_claimed_model_id(model_dir) -> None:
    honest_id = Engine.load(model_dir).model_id
    for strategy in ("skip-layers", "substitute-model"):
        engine = Engine.load(model_dir)
        Cheat(strategy).corrupt(engine.model)
        assert engine.model_id == honest_id
