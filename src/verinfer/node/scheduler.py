"""Continuous batching: which requests run each step, over one KV cache with fixed slots.

Plain code driven by `step()`, no threads and no sockets, so tests drive it directly; the
node's worker thread (`verinfer.node.worker`) calls `step()` in a loop. Each step:

1. drops cancelled requests (a client that went away frees its slot at once);
2. admits waiting requests into free slots and prefills them (prompt and any forced tokens);
3. chooses one token for every running request from its pending logits;
4. decodes one step for every request still running, all in one batch.

A request joins the batch at the step after it arrives and leaves it when done; the waiting
queue is bounded (`QueueFull`). Because the engine's arithmetic is exact and row-wise, a
request's tokens and logits do not depend on which slot it gets or what else runs beside it:
it produces the bytes `Engine.generate` produces for it alone.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from verinfer.engine import fixedpoint as fp
from verinfer.engine.generate import (
    DEFAULT_PREFILL_CHUNK,
    GenerationResult,
    RowState,
    check_prompt,
    decode_one_token,
    prefill_logits,
)
from verinfer.engine.model import IntModel, KVCache
from verinfer.engine.params import SamplingParams
from verinfer.errors import GenerationParamsError, LocalError
from verinfer.node.cheats import Cheat


class QueueFull(LocalError):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429)."""


class ResumeMismatch(GenerationParamsError):
    """A forced (resumed) token is not what the model gives at its step."""


@dataclass(frozen=True)
class StepEvent:
    """What one request gets from one step: a token, or its end, or its failure."""

    token_id: int = -1
    text: str = ""
    finish_reason: str | None = None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    result: GenerationResult | None = None  # set on the last event
    error: Exception | None = None


Sink = Callable[[StepEvent], None]


@dataclass
class Submission:
    """A request for the scheduler: prompt ids, parameters, and where its events go."""

    prompt: list[int]
    params: SamplingParams
    sink: Sink
    forced: list[int] = field(default_factory=list)  # output tokens to teacher-force first
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the top k
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Ask the scheduler to drop this request (thread-safe: read at the next step)."""
        self.cancelled = True


@dataclass
class _Running:
    submission: Submission
    row: RowState
    pending: torch.Tensor | None = None  # logits (V,) of the next step


@dataclass(frozen=True)
class StepStats:
    batch: int  # requests that got a token this step
    admitted: int
    seconds: float


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """Display-only log-probabilities from integer logits: the token's and the `top` best."""
    values = torch.log_softmax(logits.to("cpu", torch.float64) / (1 << fp.ACT_FRAC), dim=0)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        found = torch.topk(values, top)
        best = tuple((int(i), float(v)) for v, i in zip(found.values, found.indices, strict=True))
    chosen = float(values[token])
    return (chosen if math.isfinite(chosen) else -9999.0), best


class Scheduler:
    """Continuous batching of one model over `slots` cache rows, with a bounded queue."""

    def __init__(
        self,
        model: IntModel,
        tokenizer: Tokenizer,
        slots: int = 4,
        max_queue: int = 32,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        cheat: Cheat | None = None,
    ) -> None:
        if slots < 1 or max_queue < 0 or prefill_chunk < 1:
            raise LocalError("slots and the prefill chunk must be positive, the queue bound >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.cheat = cheat  # demonstrations and detection tests only (verinfer.node.cheats)
        self.slots, self.max_queue, self.prefill_chunk = slots, max_queue, prefill_chunk
        config = model.config
        self.cache = KVCache.allocate(config, slots, config.context_length, model.device)
        self._lock = threading.Lock()
        self._waiting: deque[Submission] = deque()
        self._running: dict[int, _Running] = {}  # slot -> request
        self.cancelled_total = 0  # requests dropped because their client went away

    # ---------------------------------------------------------------- any thread

    def submit(self, submission: Submission) -> None:
        """Queue a request (checked here, so a bad one fails before it waits)."""
        config = self.model.config
        check_prompt(config, submission.prompt)
        forced = submission.forced
        if forced and (min(forced) < 0 or max(forced) >= config.vocab_size):
            raise GenerationParamsError("resumed tokens are outside the vocabulary")
        if len(forced) >= self.limit(submission):
            raise GenerationParamsError("no room left after the resumed tokens")
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting)")
            self._waiting.append(submission)

    def limit(self, submission: Submission) -> int:
        """Tokens the request may produce: max_tokens, within the model's context."""
        room = self.model.config.context_length - len(submission.prompt)
        return min(submission.params.max_tokens, room)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    # ---------------------------------------------------------------- the worker thread

    def fail_all(self, error: Exception) -> None:
        """End every request with `error` (after a step failed: its state is not trusted)."""
        with self._lock:
            doomed = [r.submission for r in self._running.values()] + list(self._waiting)
            self._running.clear()
            self._waiting.clear()
        for submission in doomed:
            submission.sink(StepEvent(error=error))

    def step(self) -> StepStats:
        """One scheduling step (see the module docstring)."""
        start = time.perf_counter()
        self._drop_cancelled()
        with torch.inference_mode():
            admitted = self._admit()
            batch = self._choose_tokens()
            self._decode()
        return StepStats(batch, admitted, time.perf_counter() - start)

    def _drop_cancelled(self) -> None:
        for slot in [s for s, r in self._running.items() if r.submission.cancelled]:
            del self._running[slot]
            self.cancelled_total += 1
        with self._lock:
            if any(s.cancelled for s in self._waiting):
                kept = deque(s for s in self._waiting if not s.cancelled)
                self.cancelled_total += len(self._waiting) - len(kept)
                self._waiting = kept

    def _admit(self) -> int:
        admitted = 0
        free = [s for s in range(self.slots) if s not in self._running]
        for slot in free:
            with self._lock:
                if not self._waiting:
                    break
                submission = self._waiting.popleft()
            try:
                self._running[slot] = self._prefill(slot, submission)
                admitted += 1
            except Exception as exc:  # noqa: BLE001 - a failed request must not stop the others
                submission.sink(StepEvent(error=exc))
        return admitted

    def _prefill(self, slot: int, submission: Submission) -> _Running:
        eos = self.model.config.eos_token_ids
        row = RowState(slot, list(submission.prompt), submission.params, self.tokenizer, eos,
                       self.limit(submission))
        tokens = submission.prompt + submission.forced
        logits = prefill_logits(self.model, self.cache, slot, tokens, len(submission.prompt) - 1,
                                self.prefill_chunk)
        for step, token in enumerate(submission.forced):
            chosen = row.choose(logits[step])
            if chosen != token:
                raise ResumeMismatch(
                    f"resumed token {token} at step {step} is not what the model gives ({chosen})"
                )
            row.take(logits[step], token)
            if row.result.finish_reason:
                raise ResumeMismatch(f"the resumed tokens go on after decoding ended (step {step})")
        return _Running(submission, row, pending=logits[len(submission.forced)])

    def _choose_tokens(self) -> int:
        batch = 0
        for slot, running in list(self._running.items()):
            logits = running.pending
            if logits is None:
                continue
            batch += 1
            row, submission = running.row, running.submission
            token = row.choose(logits)
            if self.cheat is not None:
                token = self.cheat.token(submission.prompt, submission.params.seed, row.step,
                                         token, self.model.config.vocab_size)
            logprob: float | None = None
            top: tuple[tuple[int, float], ...] = ()
            if submission.logprobs is not None:
                logprob, top = token_logprobs(logits, token, submission.logprobs)
            event = row.take(logits, token)
            done = event.finish_reason is not None
            if done:
                del self._running[slot]
            running.pending = None
            submission.sink(
                StepEvent(token, event.text, event.finish_reason, logprob, top,
                          result=row.result if done else None)
            )
        return batch

    def _decode(self) -> None:
        live = sorted(self._running.items())
        if not live:
            return
        device = self.model.device
        rows = torch.tensor([slot for slot, _ in live], device=device)
        tokens = torch.tensor([r.row.result.token_ids[-1] for _, r in live], device=device)
        positions = torch.tensor([r.row.position - 1 for _, r in live], device=device)
        logits = decode_one_token(self.model, self.cache, rows, tokens, positions)
        for (_, running), row_logits in zip(live, logits, strict=True):
            running.pending = row_logits


def run_to_completion(scheduler: Scheduler, submissions: Sequence[Submission]) -> None:
    """Submit `submissions` and step until the scheduler is idle (tests, benchmarks)."""
    for submission in submissions:
        scheduler.submit(submission)
    while scheduler.has_work():
        scheduler.step()
