"""The continuous-batching scheduler, driven without threads or sockets."""

from __future__ import annotations

import pytest

from verinfer.engine import Engine, SamplingParams
from verinfer.node.scheduler import (
    QueueFull,
    ResumeMismatch,
    Scheduler,
    StepEvent,
    Submission,
    run_to_completion,
)

PROMPTS = ["Hello there", "A much longer prompt than the first one, to differ", "x", "Zebra"]
PARAMS = [
    SamplingParams(max_tokens=7),
    SamplingParams(max_tokens=12, temperature=0.8, seed=3),
    SamplingParams(max_tokens=3, temperature=1.2, top_k=5, seed=9),
    SamplingParams(max_tokens=9, temperature=0.6, top_p=0.7, seed=1),
]


class Collector:
    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def __call__(self, event: StepEvent) -> None:
        self.events.append(event)

    @property
    def last(self) -> StepEvent:
        return self.events[-1]


def _submission(engine: Engine, i: int, **extra: object) -> tuple[Submission, Collector]:
    sink = Collector()
    return Submission(engine.encode(PROMPTS[i]), PARAMS[i], sink, **extra), sink  # type: ignore[arg-type]


def test_requests_joining_midway_give_the_bytes_of_a_lone_run(tiny_engine: Engine) -> None:
    alone = [tiny_engine.generate([PROMPTS[i]], PARAMS[i])[0] for i in range(4)]
    scheduler = Scheduler(tiny_engine.model, tiny_engine.tokenizer, slots=2, max_queue=8)
    subs = [_submission(tiny_engine, i) for i in range(4)]
    scheduler.submit(subs[0][0])
    scheduler.step()
    scheduler.step()  # request 0 runs alone for two steps
    scheduler.submit(subs[1][0])  # joins the running batch
    batches = [scheduler.step().batch]
    scheduler.submit(subs[2][0])  # waits: both slots taken
    scheduler.submit(subs[3][0])
    while scheduler.has_work():
        batches.append(scheduler.step().batch)
    assert batches[0] == 2 and max(batches) == 2
    for (_, sink), want in zip(subs, alone, strict=True):
        got = sink.last.result
        assert got is not None
        assert got.token_ids == want.token_ids
        assert got.logits_hash == want.logits_hash
        assert got.finish_reason == want.finish_reason
        assert "".join(e.text for e in sink.events) == want.text


def test_queue_bound_and_cancel_frees_the_slot(tiny_engine: Engine) -> None:
    scheduler = Scheduler(tiny_engine.model, tiny_engine.tokenizer, slots=1, max_queue=1)
    long_params = SamplingParams(max_tokens=100, ignore_eos=True)
    first, first_sink = Submission(tiny_engine.encode("abc"), long_params, Collector()), None
    scheduler.submit(first)
    scheduler.step()
    assert scheduler.active == 1
    waiting, waiting_sink = _submission(tiny_engine, 0)
    scheduler.submit(waiting)
    with pytest.raises(QueueFull):
        scheduler.submit(_submission(tiny_engine, 1)[0])
    first.cancel()
    scheduler.step()  # the cancelled one leaves, the waiting one takes its slot
    assert scheduler.active == 1 and scheduler.queued == 0
    run_to_completion(scheduler, [])
    want = tiny_engine.generate([PROMPTS[0]], PARAMS[0])[0]
    assert waiting_sink.last.result is not None
    assert waiting_sink.last.result.token_ids == want.token_ids
    assert first_sink is None and len(first.sink.events) < 100  # type: ignore[attr-defined]


def test_resume_from_forced_tokens_continues_identically(tiny_engine: Engine) -> None:
    want = tiny_engine.generate([PROMPTS[1]], PARAMS[1])[0]
    scheduler = Scheduler(tiny_engine.model, tiny_engine.tokenizer, slots=2)
    sub, sink = _submission(tiny_engine, 1, forced=want.token_ids[:5])
    run_to_completion(scheduler, [sub])
    result = sink.last.result
    assert result is not None
    assert result.token_ids == want.token_ids and result.logits_hash == want.logits_hash
    assert [e.token_id for e in sink.events] == want.token_ids[5:]

    bad, bad_sink = _submission(tiny_engine, 1, forced=[want.token_ids[0] ^ 1])
    run_to_completion(scheduler, [bad])
    assert isinstance(bad_sink.last.error, ResumeMismatch)


def test_logprobs_are_reported_for_the_chosen_token(tiny_engine: Engine) -> None:
    scheduler = Scheduler(tiny_engine.model, tiny_engine.tokenizer, slots=1)
    sub, sink = _submission(tiny_engine, 0, logprobs=3)
    run_to_completion(scheduler, [sub])
    for event in sink.events:
        assert event.logprob is not None and event.logprob <= 0
        assert len(event.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert event.top_logprobs[0][0] == event.token_id
