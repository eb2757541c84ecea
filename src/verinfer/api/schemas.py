"""Request and response schemas of the OpenAI-compatible API, with verinfer's extension fields.

One module that the node, the gateway and their clients all import (like vLLM's `protocol.py`).
The OpenAI fields keep OpenAI's names, defaults and ranges; verinfer adds:

- requests: `top_k` (0: no cut), `ignore_eos`, and a `verinfer` object holding the
  gateway-signed `job` (protocol v2 JSON transport) and `resume_token_ids` (output tokens a
  failed node already sent: the node teacher-forces them, checks each is what the model gives,
  and continues after them; its receipt covers the whole output);
- responses: a `verinfer` field holding the signed receipt (docs/protocol-v2.md's JSON transport
  object) — one object when `n == 1`, a list in choice order when `n > 1`; in a stream it rides
  on the last chunk.

Protocol messages (job, receipt, challenge, verdict) travel here as plain JSON objects; their
rules and signatures are `verinfer.protocol.wire`'s. Unknown request fields are refused (400),
so a parameter the node cannot honour is never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = (1 << 64) - 1
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 5
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

Transport = dict[str, Any]  # a protocol v2 message as its JSON transport object


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """Responses: extra fields are kept so a newer peer's additions pass through."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------- errors


class ErrorBody(_Open):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(_Open):
    """OpenAI's error envelope: `{"error": {"message", "type", "code"}}`."""

    error: ErrorBody


# ---------------------------------------------------------------------------- requests


class StreamOptions(_Strict):
    include_usage: bool = False


class VerinferRequestExtension(_Strict):
    """What a gateway adds to a request (field `verinfer`)."""

    job: Transport | None = None
    resume_token_ids: list[int] = Field(default_factory=list)


class SamplingRequest(_Strict):
    """Fields common to completions and chat completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # extension; -1 (vLLM's "none") means 0
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # extension
    user: str | None = None
    verinfer: VerinferRequestExtension | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported (their result would not be verifiable)")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def job(self) -> Transport | None:
        return self.verinfer.job if self.verinfer else None

    @property
    def resume_token_ids(self) -> list[int]:
        return self.verinfer.resume_token_ids if self.verinfer else []


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions`: one prompt, as text or as token ids."""

    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Literal[False] = False
    best_of: Literal[1] | None = None
    suffix: None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[int]) -> str | list[int]:
        if not value:
            raise ValueError("the prompt is empty")
        return value


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def max_new_tokens(self) -> int | None:
        """`max_completion_tokens` (the newer name) or `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


# ---------------------------------------------------------------------------- responses


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(_Open):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Open):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None  # streams: ids of the steps since the last chunk


class CompletionResponse(_Open):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    verinfer: Transport | list[Transport] | None = None


class TopLogprob(_Open):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(_Open):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Open):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(_Open):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    verinfer: Transport | list[Transport] | None = None


class ChatDelta(_Open):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Open):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None  # ids of the steps since the last chunk


class ChatCompletionChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    verinfer: Transport | list[Transport] | None = None


class CompletionChunk(_Open):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    verinfer: Transport | list[Transport] | None = None


class ModelCard(_Open):
    id: str  # the model's name (its directory name); requests may also use model_id
    object: Literal["model"] = "model"
    created: int
    owned_by: str  # the serving node's address
    model_id: str  # extension: `0x` + the engine's model_id (Merkle root over the tensors)
    context_length: int


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Open):
    status: Literal["ok"] = "ok"
    address: str
    models: list[str]
    slots: int
    active: int
    queued: int


# ---------------------------------------------------------------------------- validation


class VerifyRequest(_Strict):
    """`POST /verify`: a gateway-signed challenge, the request and the claimed output tokens."""

    challenge: Transport  # Challenge fields + "signature"
    request: Transport  # Request fields + "promptTokenIds" + "stop"
    output_token_ids: list[int] = Field(min_length=1)


class VerifyResponse(_Open):
    verdict: Transport  # Verdict fields + "signature"
    # Display only (not signed): where the replay disagreed and why.
    detail: str = ""
