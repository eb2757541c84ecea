"""Verification by replay: check a claimed output with one teacher-forced prefill.

A validator is given a request (prompt ids, sampling parameters) and the output tokens an
asserter claims. One prefill over prompt + claimed output recomputes every step's integer
logits (`teacher_forced_logits`, equal byte for byte to what decoding had), and each claimed
token is checked against them as decoding would have chosen it: greedy, the argmax; sampled,
the seeded draw of that step. The end must be consistent too: the claim stops exactly where
decoding stops (end-of-sequence, a stop sequence, or the length limit), never before or after.
The logits hash is computed over every replayed step, whatever the verdict, so a validator
cannot vouch for a result without computing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from verinfer.engine.generate import (
    DEFAULT_PREFILL_CHUNK,
    RowState,
    check_prompt,
    teacher_forced_logits,
)
from verinfer.engine.model import IntModel
from verinfer.engine.sampler import SamplingParams
from verinfer.errors import GenerationParamsError


@dataclass(frozen=True)
class ReplayResult:
    valid: bool
    first_invalid_step: int  # 0 when valid; len(output) when the claim ends too early
    logits_hash: str  # hex SHA-256 over the replayed steps' int32 logits (little-endian)
    steps: int  # steps replayed (claimed steps up to the first that cannot be computed)
    reason: str  # why the claim is invalid; "" when valid


def replay(
    model: IntModel,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    output: Sequence[int],
    params: SamplingParams,
    chunk: int = DEFAULT_PREFILL_CHUNK,
) -> ReplayResult:
    """Check `output` as the continuation of `prompt` under `params`."""
    config = model.config
    check_prompt(config, prompt)
    if not output:
        raise GenerationParamsError("the claimed output is empty")
    room = config.context_length - len(prompt)  # steps whose logits fit in the context
    limit = min(params.max_tokens, room)
    outside = next((i for i, t in enumerate(output) if not 0 <= t < config.vocab_size), None)
    # Step i's logits need output[:i] only, so a token outside the vocabulary at step i still
    # lets step i be replayed (and found wrong).
    steps = min(len(output), room, len(output) if outside is None else outside + 1)
    logits = teacher_forced_logits(model, prompt, output[:steps], chunk)
    row = RowState(0, list(prompt), params, tokenizer, config.eos_token_ids, limit)
    digest = hashlib.sha256()
    first_invalid: int | None = None
    reason = ""
    for step in range(steps):
        step_logits = logits[step]
        digest.update(step_logits.to("cpu", torch.int32).numpy().astype("<i4").tobytes())
        if first_invalid is not None:
            continue
        claimed = output[step]
        if row.result.finish_reason:
            first_invalid = step
            reason = f"the claim goes on after decoding ended ({row.result.finish_reason})"
        elif step == outside:
            first_invalid, reason = step, f"token {claimed} is outside the vocabulary"
        elif (chosen := row.choose(step_logits)) != claimed:
            first_invalid, reason = step, f"claimed token {claimed}, the model gives {chosen}"
        else:
            row.take(step_logits, claimed)
    if first_invalid is None and steps < len(output):
        first_invalid = steps
        reason = f"the claim runs past the model's context ({config.context_length} tokens)"
    if first_invalid is None and not row.result.finish_reason:
        first_invalid = len(output)
        reason = "the claim ends before decoding does (no end-of-sequence, stop or length)"
    return ReplayResult(
        valid=first_invalid is None,
        first_invalid_step=first_invalid or 0,
        logits_hash=digest.hexdigest(),
        steps=steps,
        reason=reason,
    )
