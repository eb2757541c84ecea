"""Generation: streaming, stop sequences, limits, EOS, and clear errors for bad requests."""

from __future__ import annotations

import pytest

from verinfer.engine import Engine, SamplingParams, output_hash
from verinfer.errors import GenerationParamsError


def test_stream_concatenates_to_the_final_text(tiny_engine: Engine) -> None:
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=5)
    results: list = []
    pieces = [e.text for e in tiny_engine.stream(["Stream me"], params, results=results)]
    assert "".join(pieces) == results[0].text
    assert results[0].token_ids == tiny_engine.generate(["Stream me"], params)[0].token_ids


def test_max_tokens_and_length_finish(tiny_engine: Engine) -> None:
    r = tiny_engine.generate(["Count"], SamplingParams(max_tokens=7, ignore_eos=True))[0]
    assert len(r.token_ids) == 7 and r.finish_reason == "length"
    assert r.output_hash == output_hash(r.token_ids) and len(r.output_hash) == 64


def test_stop_sequence_cuts_text_and_stops(tiny_engine: Engine) -> None:
    sampled = {"max_tokens": 40, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    free = tiny_engine.generate(["Stop here"], SamplingParams(**sampled))[0]  # type: ignore[arg-type]
    stop = next(c for c in free.text[3:] if c.isascii() and c.isalnum())
    cut = tiny_engine.generate(["Stop here"], SamplingParams(**sampled, stop=(stop,)))[0]  # type: ignore[arg-type]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_eos_ends_generation_unless_ignored(tiny_engine: Engine) -> None:
    eos = tiny_engine.config.eos_token_ids[0]
    for seed in range(200):
        r = tiny_engine.generate(["e"], SamplingParams(max_tokens=60, temperature=5.0, seed=seed))[0]
        if r.finish_reason == "stop":
            assert r.token_ids[-1] == eos
            ignored = tiny_engine.generate(
                ["e"], SamplingParams(max_tokens=60, temperature=5.0, seed=seed, ignore_eos=True)
            )[0]
            assert ignored.token_ids[: len(r.token_ids)] == r.token_ids
            assert len(ignored.token_ids) == 60
            return
    pytest.fail("no sampled run hit EOS; the test needs another seed range")


def test_generation_stops_at_the_context_end(tiny_engine: Engine) -> None:
    context = tiny_engine.config.context_length
    prompt = [65] * (context - 3)
    r = tiny_engine.generate([prompt], SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert len(r.token_ids) == 3 and r.finish_reason == "length"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("", "empty"), ("   ", "empty"), ([], "empty"), ([65] * 256, "context"), ([99999], "vocabulary")],
)
def test_bad_prompts_are_refused(tiny_engine: Engine, prompt: object, message: str) -> None:
    with pytest.raises(GenerationParamsError, match=message):
        tiny_engine.generate([prompt], SamplingParams(max_tokens=2))  # type: ignore[list-item]
