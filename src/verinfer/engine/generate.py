"""Decoding: prefill -> decode_one_token -> decode_n_tokens (streamed) -> generate.

Prompts of different lengths share one preallocated KV cache, one row each. Each prompt is
prefilled on its own (in chunks), then all unfinished rows decode together, one token per step.
Because the arithmetic is exact and row-wise, a row's tokens and logits are the same bytes
alone or in any batch, whatever the chunk size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from verinfer.engine.config import ModelConfig
from verinfer.engine.model import IntModel, KVCache, embed, forward_layers, head
from verinfer.engine.sampler import SamplingParams, sample
from verinfer.errors import GenerationParamsError
from verinfer.protocol import wire

DEFAULT_PREFILL_CHUNK = 128


def output_hash(token_ids: Sequence[int]) -> str:
    """The output commitment of the wire protocol (`verinfer.protocol.wire.output_hash`), hex."""
    return wire.output_hash(token_ids).hex()


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step of one row: its new token and the text it completes (may be empty)."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    logits_hash: str = ""

    @property
    def output_hash(self) -> str:
        return output_hash(self.token_ids)


def check_prompt(config: ModelConfig, prompt: Sequence[int], label: str = "the prompt") -> None:
    """Refuse a prompt that is empty, leaves no room in the context, or leaves the vocabulary."""
    context = config.context_length
    if not prompt:
        raise GenerationParamsError(f"{label} is empty")
    if len(prompt) >= context:
        raise GenerationParamsError(
            f"{label} has {len(prompt)} tokens; the model's context is {context} tokens "
            "and at least one must remain for the output: shorten the prompt"
        )
    if min(prompt) < 0 or max(prompt) >= config.vocab_size:
        raise GenerationParamsError(f"{label} has token ids outside the vocabulary")


def prefill_logits(
    model: IntModel, cache: KVCache, row: int, tokens: Sequence[int], first: int, chunk: int
) -> torch.Tensor:
    """Run `tokens` through cache row `row` in chunks; int32 logits (T - first, V) of
    positions `first`..T-1 (the head runs on those positions only)."""
    device = model.device
    rows = torch.tensor([row], device=device)
    pieces = []
    for start in range(0, len(tokens), chunk):
        piece = torch.tensor([list(tokens[start : start + chunk])], device=device)
        positions = torch.arange(start, start + piece.shape[1], device=device).unsqueeze(0)
        h = forward_layers(model, embed(model, piece), cache, positions, rows=rows)
        if start + piece.shape[1] > first:
            pieces.append(head(model, h[:, max(first - start, 0) :])[0])
    return torch.cat(pieces)


def prefill(
    model: IntModel, cache: KVCache, row: int, prompt: Sequence[int], chunk: int
) -> torch.Tensor:
    """Run `prompt` through cache row `row` in chunks; logits (V,) of its last position."""
    return prefill_logits(model, cache, row, prompt, len(prompt) - 1, chunk)[0]


def teacher_forced_logits(
    model: IntModel, prompt: Sequence[int], output: Sequence[int], chunk: int = DEFAULT_PREFILL_CHUNK
) -> torch.Tensor:
    """Int32 logits (len(output), V) of every generation step of `output` after `prompt`, by one
    prefill over prompt + output[:-1]: step i's row is, byte for byte, the logits decoding had
    when it chose output[i] (the arithmetic is exact whatever the chunking)."""
    tokens = list(prompt) + list(output[:-1])
    cache = KVCache.allocate(model.config, 1, len(tokens), model.device)
    with torch.inference_mode():
        return prefill_logits(model, cache, 0, tokens, len(prompt) - 1, chunk)


def decode_one_token(
    model: IntModel, cache: KVCache, rows: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """One step for the batch entries `rows`: tokens (B,) at positions (B,) -> logits (B, V)."""
    h = embed(model, tokens.unsqueeze(1))
    h = forward_layers(model, h, cache, positions.unsqueeze(1), rows=rows)
    return head(model, h)[:, 0]


class RowState:
    """Decoding state of one sequence: its tokens, text, stop handling and logits digest.

    `accept` = `take(logits, choose(logits))`; a replay calls `choose` to check a claimed
    token and `take` to follow the claim (`verinfer.engine.replay`)."""

    def __init__(self, index: int, prompt: list[int], params: SamplingParams, tokenizer: Tokenizer,
                 eos: tuple[int, ...], limit: int) -> None:
        self.index, self.params, self.tokenizer = index, params, tokenizer
        self.eos = () if params.ignore_eos else eos
        self.limit = limit  # tokens this row may still produce (max_tokens, context)
        self.result = GenerationResult(prompt_ids=prompt)
        self.digest = hashlib.sha256()
        self.emitted = 0  # characters of text already streamed
        self.hold = max((len(s) for s in params.stop), default=1) - 1

    @property
    def position(self) -> int:
        return len(self.result.prompt_ids) + len(self.result.token_ids)

    @property
    def step(self) -> int:
        return len(self.result.token_ids)

    def choose(self, logits: torch.Tensor) -> int:
        """The token this row's parameters draw from `logits` at its current step."""
        return sample(logits, self.params, self.step)

    def accept(self, logits: torch.Tensor) -> TokenEvent:
        return self.take(logits, self.choose(logits))

    def take(self, logits: torch.Tensor, token: int) -> TokenEvent:
        """Append `token` as this step's output (`logits` enter the digest); its event."""
        self.digest.update(logits.to("cpu", torch.int32).numpy().astype("<i4").tobytes())
        ids = self.result.token_ids
        ids.append(token)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        reason = None
        if token in self.eos:
            reason = "stop"
        cut = min((i for s in self.params.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        if reason is None and len(ids) >= self.limit:
            reason = "length"
        self.result.text = text
        if reason:
            self.result.finish_reason = reason
            self.result.logits_hash = self.digest.hexdigest()
            delta, self.emitted = text[self.emitted :], len(text)
        else:
            # Hold back what may still become a stop sequence or an incomplete character.
            safe = len(text) - self.hold
            while safe > self.emitted and text[safe - 1] == "\ufffd":
                safe -= 1
            delta = text[self.emitted : max(safe, self.emitted)]
            self.emitted += len(delta)
        return TokenEvent(self.index, token, delta, reason)


def decode_n_tokens(
    model: IntModel, cache: KVCache, states: list[RowState], first_logits: list[torch.Tensor]
) -> Iterator[TokenEvent]:
    """Accept each row's first token, then step all unfinished rows together until done."""
    device = model.device
    active, logits = list(states), first_logits
    while True:
        for state, row_logits in zip(active, logits, strict=True):
            yield state.accept(row_logits)
        active = [s for s in active if not s.result.finish_reason]
        if not active:
            return
        rows = torch.tensor([s.index for s in active], device=device)
        tokens = torch.tensor([s.result.token_ids[-1] for s in active], device=device)
        positions = torch.tensor([s.position - 1 for s in active], device=device)
        logits = list(decode_one_token(model, cache, rows, tokens, positions))


def generate_stream(
    model: IntModel,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    results: list[GenerationResult] | None = None,
) -> Iterator[TokenEvent]:
    """Stream token events for a batch of tokenized prompts; fills `results` when given."""
    if len(prompts) != len(params):
        raise GenerationParamsError("one SamplingParams per prompt is needed")
    if prefill_chunk < 1:
        raise GenerationParamsError(f"prefill chunk must be positive, got {prefill_chunk}")
    context = model.config.context_length
    for i, prompt in enumerate(prompts):
        check_prompt(model.config, prompt, f"prompt {i}")
    limits = [min(p.max_tokens, context - len(x)) for x, p in zip(prompts, params, strict=True)]
    length = max(len(x) + n for x, n in zip(prompts, limits, strict=True))
    cache = KVCache.allocate(model.config, len(prompts), length, model.device)
    eos = model.config.eos_token_ids
    states = [
        RowState(i, list(x), p, tokenizer, eos, n)
        for i, (x, p, n) in enumerate(zip(prompts, params, limits, strict=True))
    ]
    if results is not None:
        results.extend(s.result for s in states)
    with torch.inference_mode():
        first = [prefill(model, cache, s.index, s.result.prompt_ids, prefill_chunk) for s in states]
        yield from decode_n_tokens(model, cache, states, first)


def generate(
    model: IntModel,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> list[GenerationResult]:
    results: list[GenerationResult] = []
    for _ in generate_stream(model, tokenizer, prompts, params, prefill_chunk, results):
        pass
    return results
