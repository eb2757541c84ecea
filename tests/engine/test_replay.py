"""Teacher-forced replay: one prefill gives decoding's logits byte for byte; claims are checked."""

from __future__ import annotations

import hashlib

import pytest
import torch

from verinfer.engine import Engine, SamplingParams
from verinfer.engine.generate import GenerationResult

PROMPT = "The quick brown fox"


def _hash(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.numpy().astype("<i4").tobytes()).hexdigest()


def _generate(engine: Engine, params: SamplingParams) -> GenerationResult:
    return engine.generate([PROMPT], params)[0]


def _eos_ending(engine: Engine) -> tuple[SamplingParams, GenerationResult]:
    """A sampled run that ends by end-of-sequence (searched over seeds; deterministic)."""
    for seed in range(64):
        params = SamplingParams(max_tokens=200, temperature=1.5, seed=seed)
        result = _generate(engine, params)
        if result.finish_reason == "stop":
            return params, result
    raise AssertionError("no seed below 64 ends by end-of-sequence")


def _stop_ending(engine: Engine) -> tuple[SamplingParams, GenerationResult]:
    free = _generate(engine, SamplingParams(max_tokens=12, temperature=0.7, seed=5))
    stop = next(c for c in free.text[2:] if c != "\ufffd")
    params = SamplingParams(max_tokens=12, temperature=0.7, seed=5, stop=(stop,))
    result = _generate(engine, params)
    assert result.finish_reason == "stop" and len(result.token_ids) < 12
    return params, result


ENDINGS = ["greedy-length", "sampled-length", "sampled-top", "stop-sequence", "eos"]


def _case(engine: Engine, ending: str) -> tuple[SamplingParams, GenerationResult]:
    if ending == "eos":
        return _eos_ending(engine)
    if ending == "stop-sequence":
        return _stop_ending(engine)
    params = {
        "greedy-length": SamplingParams(max_tokens=9),
        "sampled-length": SamplingParams(max_tokens=9, temperature=0.9, seed=11),
        "sampled-top": SamplingParams(max_tokens=9, temperature=1.3, top_k=20, top_p=0.8, seed=3),
    }[ending]
    return params, _generate(engine, params)


@pytest.mark.parametrize("ending", ENDINGS)
def test_teacher_forced_logits_equal_decoding(tiny_engine: Engine, ending: str) -> None:
    _, result = _case(tiny_engine, ending)
    logits = tiny_engine.teacher_forced_logits(result.prompt_ids, result.token_ids)
    assert logits.dtype == torch.int32 and logits.shape[0] == len(result.token_ids)
    assert _hash(logits) == result.logits_hash


def test_teacher_forced_logits_do_not_depend_on_chunking(tiny_engine: Engine) -> None:
    from verinfer.engine.generate import teacher_forced_logits

    result = _generate(tiny_engine, SamplingParams(max_tokens=20))
    whole = teacher_forced_logits(tiny_engine.model, result.prompt_ids, result.token_ids, 128)
    for chunk in (1, 3, 7):
        parts = teacher_forced_logits(tiny_engine.model, result.prompt_ids, result.token_ids, chunk)
        assert torch.equal(parts, whole)


@pytest.mark.parametrize("ending", ENDINGS)
def test_honest_claim_is_valid_with_the_decoding_hash(tiny_engine: Engine, ending: str) -> None:
    params, result = _case(tiny_engine, ending)
    verdict = tiny_engine.replay(result.prompt_ids, result.token_ids, params)
    assert verdict.valid, verdict.reason
    assert verdict.first_invalid_step == 0 and verdict.logits_hash == result.logits_hash


@pytest.mark.parametrize("ending", ["greedy-length", "sampled-length"])
def test_a_wrong_token_is_found_at_its_step(tiny_engine: Engine, ending: str) -> None:
    params, result = _case(tiny_engine, ending)
    for step in (0, 4, len(result.token_ids) - 1):
        claim = list(result.token_ids)
        claim[step] = (claim[step] + 1) % tiny_engine.config.vocab_size
        verdict = tiny_engine.replay(result.prompt_ids, claim, params)
        assert not verdict.valid and verdict.first_invalid_step == step
        assert verdict.steps == len(claim)
        # computed over the claim's steps: a changed token changes the logits after it
        last = step == len(claim) - 1
        assert (verdict.logits_hash == result.logits_hash) == last


def test_endings_must_match(tiny_engine: Engine) -> None:
    params, result = _case(tiny_engine, "greedy-length")
    ids = result.token_ids
    short = tiny_engine.replay(result.prompt_ids, ids[:-1], params)
    assert not short.valid and short.first_invalid_step == len(ids) - 1
    longer = SamplingParams(max_tokens=params.max_tokens + 1)
    extra = _generate(tiny_engine, longer).token_ids
    assert extra[:-1] == ids
    past = tiny_engine.replay(result.prompt_ids, extra, params)
    assert not past.valid and past.first_invalid_step == len(ids)
    eos_params, eos_result = _eos_ending(tiny_engine)
    claim = eos_result.token_ids + [5]
    after_eos = tiny_engine.replay(eos_result.prompt_ids, claim, eos_params)
    assert not after_eos.valid and after_eos.first_invalid_step == len(eos_result.token_ids)


def test_out_of_vocabulary_token_is_invalid(tiny_engine: Engine) -> None:
    params, result = _case(tiny_engine, "greedy-length")
    claim = list(result.token_ids)
    claim[3] = tiny_engine.config.vocab_size + 7
    verdict = tiny_engine.replay(result.prompt_ids, claim, params)
    assert not verdict.valid and verdict.first_invalid_step == 3 and verdict.steps == 4
