"""Integer sampling: canonical parameters, tie-breaking, seeded draws that follow the
integer distribution, and clear errors for out-of-range parameters."""

from __future__ import annotations

import collections

import pytest
import torch

from verinfer.engine import fixedpoint as fp
from verinfer.engine.sampler import SamplingParams, argmax_lowest_id, sample, uniform_below
from verinfer.errors import GenerationParamsError

ONE = 1 << fp.ACT_FRAC


def test_greedy_breaks_ties_by_lowest_token_id() -> None:
    logits = torch.tensor([1, 5, 3, 5, 5], dtype=torch.int32)
    assert argmax_lowest_id(logits) == 1
    assert sample(logits, SamplingParams(), step=0) == 1


def test_canonical_integers() -> None:
    p = SamplingParams(max_tokens=3, temperature=0.7, top_p=0.95, seed=9)
    assert p.canonical()["temperature_milli"] == 700
    assert p.canonical()["top_p_micro"] == 950_000


def test_same_seed_and_step_same_token_other_seeds_vary() -> None:
    logits = torch.zeros(50, dtype=torch.int32)  # uniform distribution over 50 tokens
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(40)]
    first = [sample(logits, p, step=3) for p in params]
    assert first == [sample(logits, p, step=3) for p in params]
    assert len(set(first)) > 10


def test_draws_follow_the_integer_distribution() -> None:
    # Two tokens, logit gap ln(3): weights 1 and 1/3 -> P(token 0) = 0.75.
    gap = round(1.0986122886681098 * ONE)
    logits = torch.tensor([gap, 0], dtype=torch.int32)
    params = SamplingParams(temperature=1.0, seed=11)
    counts = collections.Counter(sample(logits, params, step) for step in range(4000))
    share = counts[0] / 4000
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.tensor([3 * ONE, 7 * ONE, 7 * ONE - 1, -ONE], dtype=torch.int32)
    for step in range(20):
        assert sample(logits, SamplingParams(temperature=2.0, top_k=1, seed=step), step) == 1
        assert sample(logits, SamplingParams(temperature=2.0, top_p=1e-6, seed=step), step) == 1


def test_top_p_cuts_the_tail() -> None:
    logits = torch.tensor([4 * ONE, 4 * ONE, -20 * ONE, -20 * ONE], dtype=torch.int32)
    seen = {sample(logits, SamplingParams(temperature=1.0, top_p=0.9, seed=s), 0) for s in range(200)}
    assert seen == {0, 1}


def test_uniform_below_range() -> None:
    values = [uniform_below(7, seed=1, step=s) for s in range(700)]
    assert min(values) == 0 and max(values) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 0.0001}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(GenerationParamsError, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]
