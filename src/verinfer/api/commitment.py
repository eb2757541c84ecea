"""What an API request commits to: its prompt ids, its rows' sampling values and seeds.

The node and the gateway both derive the protocol's `Request` commitment here, so the job a
gateway signs commits to exactly what the node will run. The rules (also in docs/node.md):

- `max_tokens`: completions default to 16 (OpenAI's default), chats to the rest of the
  context; a prompt plus `max_tokens` beyond the context is refused (`ContextExceeded`).
- seeds: a request without `seed` gets a random one (`secrets`); with `n > 1`, row 0 uses the
  seed and row i > 0 the first 8 bytes (little-endian) of
  SHA-256(`verinfer-choice-v1` || seed as uint64 LE || i as uint32 LE).
- `top_k = -1` (vLLM's "none") is 0.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from verinfer.api.schemas import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingRequest,
)
from verinfer.engine.params import TEMPERATURE_UNIT, TOP_P_UNIT, SamplingParams
from verinfer.errors import GenerationParamsError
from verinfer.protocol import wire

CHOICE_SEED_DOMAIN = b"verinfer-choice-v1"


class ContextExceeded(GenerationParamsError):
    """Prompt plus max_tokens do not fit in the model's context."""


class Prompts(Protocol):
    """How a model's prompts become token ids (`verinfer.api.prompt.PromptBuilder`, which node
    and gateway both use, so both sides commit to the same ids)."""

    def chat(self, messages: list[ChatMessage]) -> list[int]: ...

    def completion(self, prompt: str | list[int]) -> list[int]: ...


def choice_seed(seed: int, index: int) -> int:
    """The seed of row (choice) `index` of a request with `seed`."""
    if index == 0:
        return seed
    digest = hashlib.sha256(CHOICE_SEED_DOMAIN + struct.pack("<QI", seed, index)).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class RowCommitment:
    """One independent generation (choice) of a request: its parameters and commitment."""

    index: int
    params: SamplingParams
    request: wire.Request


@dataclass(frozen=True)
class RequestCommitment:
    prompt_ids: list[int]
    rows: list[RowCommitment]


def prompt_ids_of(request: CompletionRequest | ChatCompletionRequest, prompts: Prompts) -> list[int]:
    if isinstance(request, ChatCompletionRequest):
        return prompts.chat(request.messages)
    return prompts.completion(request.prompt)


def resolve_max_tokens(
    request: CompletionRequest | ChatCompletionRequest, prompt_length: int, context: int
) -> int:
    if prompt_length >= context:
        raise ContextExceeded(f"the prompt has {prompt_length} tokens; the model's context is {context}")
    if isinstance(request, ChatCompletionRequest):
        wanted = request.max_new_tokens
    else:
        wanted = request.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
    max_tokens = context - prompt_length if wanted is None else wanted
    if prompt_length + max_tokens > context:
        raise ContextExceeded(
            f"prompt ({prompt_length} tokens) plus max_tokens ({max_tokens}) exceed the "
            f"model's context of {context} tokens: lower max_tokens"
        )
    return max_tokens


def sampling_params(request: SamplingRequest, max_tokens: int, seed: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_k=max(request.top_k, 0),
        top_p=request.top_p,
        seed=seed,
        stop=request.stop_sequences,
        ignore_eos=request.ignore_eos,
    )


def request_commitment(model_id: bytes, prompt_ids: Sequence[int], params: SamplingParams) -> wire.Request:
    return wire.Request.build(
        model_id,
        prompt_ids,
        max_tokens=params.max_tokens,
        temperature_milli=params.temperature_milli,
        top_k=params.top_k,
        top_p_micro=params.top_p_micro,
        seed=params.seed,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
    )


def commit(
    request: CompletionRequest | ChatCompletionRequest,
    model_id: bytes,
    prompts: Prompts,
    context: int,
) -> RequestCommitment:
    """Prompt ids and every row's parameters and `Request` commitment. A gateway that wants to
    sign a job sets `seed` first (else the seed is random here and on the node)."""
    prompt_ids = prompt_ids_of(request, prompts)
    max_tokens = resolve_max_tokens(request, len(prompt_ids), context)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    rows = []
    for index in range(request.n):
        params = sampling_params(request, max_tokens, choice_seed(seed, index))
        rows.append(RowCommitment(index, params, request_commitment(model_id, prompt_ids, params)))
    return RequestCommitment(prompt_ids, rows)


def params_of(request: wire.Request, stop: Sequence[str]) -> SamplingParams:
    """The engine's parameters from a request commitment's integers (a validator's view)."""
    return SamplingParams(
        max_tokens=request.max_tokens,
        temperature=request.temperature_milli / TEMPERATURE_UNIT,
        top_k=request.top_k,
        top_p=request.top_p_micro / TOP_P_UNIT,
        seed=request.seed,
        stop=tuple(stop),
        ignore_eos=request.ignore_eos,
    )
