"""The route driver: runs a generation through a chain of stage nodes, as the engine would.

It mirrors `verinfer.engine.generate` step for step (each prompt prefilled alone in chunks,
then every unfinished row decoded together) and samples with the engine's own `RowState`, so
tokens, logits hash and output hash are the bytes a single node gives. Every frame goes
driver -> stage -> driver: the driver checks each stage's signed commitment and keeps the
frame at every layer boundary, which is what fail-over and rebalancing replay. When a stage
dies, the driver re-routes (a spare serving the range, else the survivors re-split the
layers), replays the kept inputs into the changed stages to rebuild their KV caches, checks
that the replay reproduces the kept frames byte for byte, and goes on from the step it was at.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer

from verinfer.engine.config import ModelConfig
from verinfer.engine.generate import DEFAULT_PREFILL_CHUNK, GenerationResult, RowState, check_prompt
from verinfer.engine.params import SamplingParams
from verinfer.errors import GenerationParamsError, LocalError, RemoteError
from verinfer.pipeline import frames
from verinfer.pipeline.commitment import (
    OFFCHAIN_DOMAIN,
    SignedCommitment,
    StageCommitment,
    StageRecord,
    batch_of,
    prove_all,
)
from verinfer.pipeline.frames import Frame, Kind
from verinfer.pipeline.transport import DelayLine, Msg, StageConnection, StageUnavailable
from verinfer.protocol import wire


class RouteError(LocalError):
    """The route cannot serve: no stage left for a layer range, or a bad route description."""


class ReplayMismatch(RemoteError):
    """A replayed stage returned a frame that differs from the one kept at that step."""


@dataclass(frozen=True)
class StageSpec:
    """Where a stage listens and the layers it serves, [start, end)."""

    host: str
    port: int
    start: int
    end: int

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def with_layers(self, start: int, end: int) -> StageSpec:
        return StageSpec(self.host, self.port, start, end)


def parse_stage(text: str) -> StageSpec:
    """`HOST:PORT=A:B` (e.g. 127.0.0.1:9101=0:11)."""
    address, sep, layers = text.partition("=")
    host, _, port = address.rpartition(":")
    start, _, end = layers.partition(":")
    if not sep or not host or not port.isdigit() or not start.isdigit() or not end.isdigit():
        raise RouteError(f"a stage is HOST:PORT=START:END (e.g. 127.0.0.1:9101=0:11), got {text!r}")
    return StageSpec(host, int(port), int(start), int(end))


def check_route(route: Sequence[StageSpec], num_layers: int) -> None:
    """The ranges must be contiguous, non-empty and cover 0..num_layers in order."""
    at = 0
    for stage in route:
        if stage.start != at or stage.end <= stage.start:
            raise RouteError(f"stage {stage.endpoint} serves {stage.start}:{stage.end}; "
                             f"the next range must start at layer {at} and be non-empty")
        at = stage.end
    if at != num_layers:
        raise RouteError(f"the route ends at layer {at}; the model has {num_layers}")


@dataclass
class StageStats:
    """What the driver measured of one stage on the current route."""

    compute_s: list[float] = field(default_factory=list)  # the stage's own figure, per frame
    round_trip_s: list[float] = field(default_factory=list)  # driver's wall clock, per frame
    tokens: list[int] = field(default_factory=list)  # positions per row in each frame (1: decode)
    bytes_in: int = 0
    bytes_out: int = 0
    frames: int = 0


@dataclass
class _Live:
    spec: StageSpec
    conn: StageConnection
    node: str
    commitments: list[SignedCommitment] = field(default_factory=list)
    pending: dict[int, StageCommitment] = field(default_factory=dict)  # step -> not yet signed
    stats: StageStats = field(default_factory=StageStats)
    weight_bytes: int | None = None  # what the stage's HELLO said it holds (None: not said)


def _weight_bytes(hello: dict[str, Any]) -> int | None:
    value = hello.get("weight_bytes")
    return value if isinstance(value, int) and value >= 0 else None


@dataclass
class PipelineResult:
    results: list[GenerationResult]
    session: bytes
    stages: list[StageRecord]  # every stage that served, in order of use, with commitments
    events: list[str]  # re-routes and re-plans, in the order they happened
    step_seconds: list[float]  # wall time of each decode step (all active rows)
    frames: dict[int, dict[int, bytes]]  # layer boundary -> step -> the frame kept there


Links = Callable[[Sequence[StageSpec], int], tuple[DelayLine | None, DelayLine | None]]
Rebalance = Callable[["RouteDriver"], list[StageSpec] | None]
Observe = Callable[["RouteDriver", int], None]


class RouteDriver:
    """Drives generations through `route`; `spares` can take over a dead stage's range.

    `links(route, i)` gives simulated delay lines into and out of stage i (benchmarks);
    `rebalance(driver)` is asked after every decode step and may return a new route;
    `observe(driver, seq)` is told of every step done (monitoring, tests).
    """

    def __init__(self, route: Sequence[StageSpec], config: ModelConfig, tokenizer: Tokenizer,
                 spares: Sequence[StageSpec] = (), domain: wire.Domain = OFFCHAIN_DOMAIN,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, timeout_s: float = 30.0,
                 links: Links | None = None, rebalance: Rebalance | None = None,
                 observe: Observe | None = None) -> None:
        check_route(route, config.num_hidden_layers)
        if prefill_chunk < 1:
            raise GenerationParamsError(f"prefill chunk must be positive, got {prefill_chunk}")
        self.config, self.tokenizer, self.domain = config, tokenizer, domain
        self.prefill_chunk, self.timeout_s = prefill_chunk, timeout_s
        self.links, self.rebalance, self.observe = links, rebalance, observe
        self.spares = list(spares)
        self.model_id = b""
        self.serving: dict[str, tuple[int, int]] = {}  # endpoint -> the layers it was told to serve
        self.rebuilding_from: int | None = None  # set while a re-route is not finished
        self.live = [self._connect(route, i) for i in range(len(route))]
        self.events: list[str] = []
        self.retired: list[_Live] = []

    # --- stage connections ---------------------------------------------------------------

    def _connect(self, route: Sequence[StageSpec], index: int) -> _Live:
        spec = route[index]
        link_in, link_out = self.links(route, index) if self.links else (None, None)
        conn = StageConnection(spec.host, spec.port, self.timeout_s, link_in, link_out)
        try:
            hello = conn.call_json(Msg.HELLO, {})
            if tuple(hello["layers"]) != (spec.start, spec.end):
                hello = conn.call_json(Msg.ASSIGN, {"start": spec.start, "end": spec.end})
            model_id = bytes.fromhex(str(hello["model_id"]).removeprefix("0x"))
            node = wire.check_address(str(hello["node"]))
        except (KeyError, ValueError, wire.WireFormatError) as exc:
            conn.close()
            raise RouteError(f"stage {spec.endpoint} sent a malformed HELLO: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if hello.get("num_layers") != self.config.num_hidden_layers:
            conn.close()
            raise RouteError(f"stage {spec.endpoint} serves a model with {hello.get('num_layers')} "
                             f"layers, this one has {self.config.num_hidden_layers}")
        if self.model_id and model_id != self.model_id:
            conn.close()
            raise RouteError(f"stage {spec.endpoint} serves model 0x{model_id.hex()}, "
                             f"the route serves 0x{self.model_id.hex()}")
        self.model_id = model_id
        self.serving[spec.endpoint] = (spec.start, spec.end)
        return _Live(spec, conn, node, weight_bytes=_weight_bytes(hello))

    @property
    def route(self) -> list[StageSpec]:
        return [s.spec for s in self.live]

    def close(self) -> None:
        for stage in self.live + self.retired:
            stage.conn.close()

    def _forward(self, stage: _Live, raw: bytes, seq: int) -> bytes:
        """One frame through one stage; its commitment is checked and kept."""
        began = time.perf_counter()
        reply, body = stage.conn.call(Msg.FORWARD, raw)
        elapsed = time.perf_counter() - began
        if reply != Msg.RESULT or len(body) < 4:
            raise RemoteError(f"stage {stage.spec.endpoint} sent no result for step {seq}")
        micros, out = int.from_bytes(body[:4], "little"), body[4:]
        stage.pending[seq] = StageCommitment(self.session, seq, self.model_id, stage.spec.start,
                                             stage.spec.end, frames.frame_hash(raw),
                                             frames.frame_hash(out), stage.node)
        stats = stage.stats
        stats.compute_s.append(micros / 1e6)
        stats.round_trip_s.append(elapsed)
        stats.tokens.append(frames.HEADER.unpack_from(raw)[8])
        stats.bytes_in += len(raw)
        stats.bytes_out += len(out)
        stats.frames += 1
        return out

    # --- generation ----------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: Sequence[SamplingParams]) -> PipelineResult:
        """Complete a batch of tokenized prompts; the same result a single engine gives."""
        if len(prompts) != len(params):
            raise GenerationParamsError("one SamplingParams per prompt is needed")
        context = self.config.context_length
        for i, prompt in enumerate(prompts):
            check_prompt(self.config, prompt, f"prompt {i}")
        limits = [min(p.max_tokens, context - len(x)) for x, p in zip(prompts, params, strict=True)]
        self.length = max(len(x) + n for x, n in zip(prompts, limits, strict=True))
        self.batch = len(prompts)
        # A result lists only this generation's stages, events and commitments.
        for old in self.retired:
            if all(old.conn is not s.conn for s in self.live):
                old.conn.close()
        self.retired, self.events, self.rebuilding_from = [], [], None
        self.live = [_Live(s.spec, s.conn, s.node, weight_bytes=s.weight_bytes) for s in self.live]
        self.session = os.urandom(frames.SESSION_BYTES)
        self.seq = 0
        self.kept: dict[int, dict[int, bytes]] = {0: {}}  # layer boundary -> step -> frame
        for stage in self.live:
            self._open(stage)
        eos = self.config.eos_token_ids
        states = [RowState(i, list(x), p, self.tokenizer, eos, n)
                  for i, (x, p, n) in enumerate(zip(prompts, params, limits, strict=True))]
        first = [self._prefill(s.index, s.result.prompt_ids) for s in states]
        self.step_seconds: list[float] = []
        step_seconds = self.step_seconds
        active, logits = list(states), first
        while True:
            for state, row_logits in zip(active, logits, strict=True):
                state.accept(row_logits)
            active = [s for s in active if not s.result.finish_reason]
            if not active:
                break
            if self.rebalance is not None and (new_route := self.rebalance(self)) is not None:
                try:
                    self.reroute(new_route, reason="re-plan from measured stage speeds")
                except StageUnavailable as exc:  # a stage of either route died meanwhile
                    if exc.endpoint is None:
                        raise
                    self._fail_over(exc.endpoint, exc)
            began = time.perf_counter()
            tokens = torch.tensor([[[s.result.token_ids[-1]]] for s in active])  # (B, 1, 1)
            logits = list(self._step([s.index for s in active],
                                     [s.position - 1 for s in active], tokens))
            step_seconds.append(time.perf_counter() - began)
        for stage in self.live:
            self._close_session(stage)
        records = [self._record(s) for s in self.retired + self.live]
        return PipelineResult([s.result for s in states], self.session, records,
                              list(self.events), step_seconds, self.kept)

    def _record(self, stage: _Live) -> StageRecord:
        return StageRecord(stage.node, stage.spec.endpoint, stage.spec.start, stage.spec.end,
                           tuple(stage.commitments), stage.weight_bytes)

    def _open(self, stage: _Live) -> None:
        stage.conn.call_json(Msg.OPEN, {"session": self.session.hex(), "batch": self.batch,
                                        "length": self.length})

    def _collect(self, stage: _Live) -> None:
        """Fetch and check the stage's signed batch over every step it computed for us."""
        if not stage.pending:
            return
        reply = stage.conn.call_json(Msg.SIGNATURES, {"session": self.session.hex()})
        commitments = [stage.pending[seq] for seq in sorted(stage.pending)]
        batch = batch_of(commitments)
        if reply.get("steps") != batch.steps or reply.get("root") != "0x" + batch.root.hex():
            raise RemoteError(f"stage {stage.spec.endpoint} signed other steps than it computed "
                              f"for this driver ({reply.get('steps')} vs {batch.steps})")
        signature = wire.signature_from_json(reply.get("signature"))
        wire.check_signed_by(self.domain, batch, signature, stage.node)  # InvalidSignature
        stage.commitments += prove_all(commitments, batch, signature)
        stage.pending.clear()

    def _close_session(self, stage: _Live) -> None:
        try:
            self._collect(stage)
            stage.conn.call_json(Msg.CLOSE, {"session": self.session.hex()})
        except StageUnavailable:
            pass  # a stage gone by now holds nothing of ours; its unsigned steps are dropped

    def _prefill(self, row: int, prompt: list[int]) -> torch.Tensor:
        """Run one prompt in chunks; logits (V,) of its last position."""
        logits = None
        for start in range(0, len(prompt), self.prefill_chunk):
            piece = prompt[start : start + self.prefill_chunk]
            tokens = torch.tensor(piece).view(1, -1, 1)
            logits = self._step([row], [start], tokens)[0]
        assert logits is not None  # check_prompt refused empty prompts
        return logits

    def _step(self, rows: list[int], starts: list[int], tokens: torch.Tensor) -> torch.Tensor:
        """One frame of token ids through the whole route; (B, V) int32 logits."""
        seq = self.seq
        raw = frames.encode(Frame(Kind.TOKENS, self.session, seq, tuple(rows), tuple(starts), tokens))
        self.kept[0][seq] = raw
        index = 0
        while index < len(self.live):
            stage = self.live[index]
            try:
                out = self._forward(stage, raw, seq)
            except StageUnavailable as exc:
                index = self._fail_over(stage.spec.endpoint, exc)
                raw = self.kept[self.live[index].spec.start][seq]
                continue
            if stage.spec.end < self.config.num_hidden_layers:
                self.kept.setdefault(stage.spec.end, {})[seq] = out
            raw, index = out, index + 1
        self.seq += 1
        if self.observe is not None:
            self.observe(self, seq)
        result = frames.decode(raw)
        if result.kind != Kind.LOGITS or result.rows != tuple(rows):
            raise RemoteError(f"the last stage answered step {seq} with a {result.kind.name} frame")
        return result.data[:, 0].to(torch.int32)

    # --- fail-over and re-routing ----------------------------------------------------------

    def _fail_over(self, endpoint: str, exc: StageUnavailable) -> int:
        """Route around the dead stage at `endpoint`; returns the first index to run again. A
        stage (or spare) that fails while the route is being rebuilt is replaced the same way,
        so several failures at once are survived as long as one stage is left."""
        dead = {endpoint}
        self.events.append(f"step {self.seq}: stage {endpoint} failed: {exc}")
        while True:
            try:
                return self._route_around(dead, exc)
            except StageUnavailable as again:
                if again.endpoint is None or again.endpoint in dead:
                    raise
                dead.add(again.endpoint)
                self.events.append(f"step {self.seq}: {again.endpoint} failed while the route "
                                   f"was rebuilt: {again}")

    def _route_around(self, dead: set[str], exc: Exception) -> int:
        """The route without the `dead` endpoints: spares take their ranges while any is
        left, else the survivors re-split the layers."""
        spares = [s for s in self.spares if s.endpoint not in dead]
        route, reasons = [], []
        for stage in self.live:
            spec = stage.spec
            if spec.endpoint not in dead:
                route.append(spec)
            elif spares:
                spare = spares.pop(0)
                route.append(spare.with_layers(spec.start, spec.end))
                reasons.append(f"spare {spare.endpoint} takes {spec.start}:{spec.end}")
        taken = {s.endpoint for s in route}
        if len(route) < len(self.live):  # no spare for some: the survivors re-split
            if not route:
                raise RouteError("every stage of the route has failed") from exc
            route = even_split(route, self.config.num_hidden_layers)
            reasons.append("survivors re-split the layers")
        dead_now = {i for i, s in enumerate(self.live) if s.spec.endpoint in dead}
        # A re-route that failed part-way may have reset caches from its own first stage on:
        # this one rebuilds from there at the latest.
        first = self.reroute(route, reason="; ".join(reasons), dead=dead_now,
                             at_most=self.rebuilding_from)
        self.spares = [s for s in self.spares if s.endpoint not in taken | dead]
        return first

    def reroute(self, route: Sequence[StageSpec], reason: str,
                dead: frozenset[int] | set[int] = frozenset(), at_most: int | None = None) -> int:
        """Switch to `route` between steps (or mid-step after a failure): stages from the first
        one that changed (or from `at_most`, if earlier) get fresh caches, rebuilt by replaying
        the frames kept at that boundary. Returns the index of the first changed stage.

        A failure part-way leaves a state a second call can finish from: a stage is retired
        once, connections this call opened are closed, and a reused stage is told its range
        whenever what it serves (not what the old route said) differs."""
        check_route(route, self.config.num_hidden_layers)
        old = self.live
        first = next((i for i, (a, b) in enumerate(zip(old, route))
                      if a.spec != b or i in dead), min(len(old), len(route)))
        if at_most is not None:
            first = min(first, at_most)
        self.rebuilding_from = first
        self.events.append(f"step {self.seq}: {reason}; new route "
                           + " ".join(f"{s.endpoint}={s.start}:{s.end}" for s in route))
        kept_live = {s.spec.endpoint: s for i, s in enumerate(old[first:], start=first)
                     if i not in dead}
        for i in sorted(dead):
            self._retire(old[i])
        new_live, opened = old[:first], []
        try:
            for i, spec in enumerate(route[first:], start=first):
                reuse = kept_live.pop(spec.endpoint, None)
                if reuse is not None:
                    self._close_session(reuse)
                    self._retire(_Live(reuse.spec, reuse.conn, reuse.node, reuse.commitments,
                                       weight_bytes=reuse.weight_bytes))
                    held = reuse.weight_bytes
                    if self.serving.get(spec.endpoint) != (spec.start, spec.end):
                        # the stage loads the layers it lacks and frees the others
                        hello = reuse.conn.call_json(Msg.ASSIGN, {"start": spec.start,
                                                                  "end": spec.end})
                        self.serving[spec.endpoint] = (spec.start, spec.end)
                        held = _weight_bytes(hello)
                    live = _Live(spec, reuse.conn, reuse.node, weight_bytes=held)
                else:
                    live = self._connect(route, i)
                    opened.append(live)
                self._open(live)
                new_live.append(live)
        except BaseException:
            for live in opened:
                live.conn.close()
            raise
        for leftover in kept_live.values():  # stages the new route leaves out
            self._close_session(leftover)
            self._retire(leftover)
        self.live = new_live
        self._replay(first)
        self.rebuilding_from = None
        return first

    def _retire(self, stage: _Live) -> None:
        """Keep a stage's record of this generation (once, however many re-routes see it)."""
        if not any(r.conn is stage.conn and r.spec == stage.spec
                   and r.commitments is stage.commitments for r in self.retired):
            self.retired.append(stage)

    def _replay(self, first: int) -> None:
        """Rebuild the KV caches of stages `first`.. from the frames kept at their input
        boundary, for every step before the current one."""
        boundary = self.live[first].spec.start
        num_layers = self.config.num_hidden_layers
        for seq in sorted(s for s in self.kept[boundary] if s < self.seq):
            raw = self.kept[boundary][seq]
            for stage in self.live[first:]:
                raw = self._forward(stage, raw, seq)
                end = stage.spec.end
                if end < num_layers:
                    known = self.kept.setdefault(end, {}).get(seq)
                    if known is not None and known != raw:
                        raise ReplayMismatch(f"replay of step {seq} through {stage.spec.endpoint} "
                                             f"differs from the frame kept at layer {end}")
                    self.kept[end][seq] = raw


def even_split(stages: Sequence[StageSpec], num_layers: int) -> list[StageSpec]:
    """The stages in order, layers shared as evenly as possible (earlier ones get the rest)."""
    count = min(len(stages), num_layers)
    base, extra = divmod(num_layers, count)
    route, at = [], 0
    for i, stage in enumerate(stages[:count]):
        size = base + (1 if i < extra else 0)
        route.append(stage.with_layers(at, at + size))
        at += size
    return route
