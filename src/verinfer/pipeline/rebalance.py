"""Run-time rebalancing: watch each stage's measured speed, re-plan when one falls behind.

After every decode step the driver asks the `Rebalancer`. When a stage's compute time per
step (the stage's own figure, the median of the last `window` steps) exceeds what the plan
predicted by more than `margin` (and by `min_excess_s` seconds), every stage's measured figures replace the ones the plan was
made from, the planner re-plans (`planner.replan`: only when the gain is worth moving layers)
and the driver switches to the new route between two steps, rebuilding the caches of the
stages that changed from the frames it kept; the generation goes on with the same tokens.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from verinfer.pipeline.cluster import Cluster, ModelSpec
from verinfer.pipeline.driver import StageSpec
from verinfer.pipeline.planner import DEFAULT_TIME_LIMIT_S, Plan, replan

if TYPE_CHECKING:
    from verinfer.pipeline.driver import RouteDriver


@dataclass(frozen=True)
class Rebalanced:
    decode_step: int  # decode steps done when the re-plan took effect
    slow_node: str
    measured_s: float  # that stage's median compute per step
    planned_s: float  # what the plan predicted for it
    before: Plan | None  # the old route under the measured figures (None: it cannot run)
    after: Plan  # the plan switched to (or kept, when moving was not worth it)
    moved: bool


def node_name(host: str, port: int) -> str:
    """A stage's name in the planner's cluster: its endpoint."""
    return f"{host}:{port}"


class Rebalancer:
    """Decides, between decode steps, whether the route should change (see the module doc)."""

    def __init__(self, plan: Plan, cluster: Cluster, model: ModelSpec, margin: float = 0.5,
                 window: int = 3, min_gain: float = 0.05, min_excess_s: float = 0.002,
                 time_limit: float = DEFAULT_TIME_LIMIT_S) -> None:
        if margin <= 0 or window < 1:
            raise ValueError("margin must be > 0 and window >= 1")
        self.plan, self.cluster, self.model = plan, cluster, model
        self.margin, self.window, self.min_gain, self.time_limit = margin, window, min_gain, time_limit
        # Sub-millisecond stages jitter by more than `margin` on a busy machine: an excess must
        # also be this large in seconds, or equal nodes would trade layers back and forth.
        self.min_excess_s = min_excess_s
        self.history: list[Rebalanced] = []
        self._marks: dict[int, int] = {}  # id of a driver's stage -> samples before the last re-plan

    def _recent(self, driver: RouteDriver) -> list[float] | None:
        """Each stage's median compute of its last `window` decode steps, None until all have
        them. Prefill frames and the cache rebuilds after a move carry many positions per row:
        they are left out, since the plan's figures are per decoded token."""
        figures = []
        for live in driver.live:
            stats, mark = live.stats, self._marks.get(id(live), 0)
            samples = [c for c, t in zip(stats.compute_s[mark:], stats.tokens[mark:], strict=True)
                       if t == 1]
            if len(samples) < self.window:
                return None
            figures.append(statistics.median(samples[-self.window:]))
        return figures

    def __call__(self, driver: RouteDriver) -> list[StageSpec] | None:
        figures = self._recent(driver)
        if figures is None:
            return None
        planned = {s.node: s for s in self.plan.stages}
        names = [node_name(s.spec.host, s.spec.port) for s in driver.live]
        slow = [(name, measured, planned[name].compute_s) for name, measured in zip(names, figures)
                if name in planned and measured > planned[name].compute_s * (1 + self.margin)
                and measured - planned[name].compute_s > self.min_excess_s]
        if not slow:
            return None
        cluster = self.cluster
        for name, measured, live in zip(names, figures, driver.live):
            node = cluster.node(name)
            fixed = node.embed_seconds * (live.spec.start == 0) + node.head_seconds * (
                live.spec.end == self.model.num_layers)
            per_layer = max(measured - fixed, 0.0) / (live.spec.end - live.spec.start)
            cluster = cluster.with_node(replace(node, layer_seconds=per_layer))
        outcome = replan(self.plan, cluster, self.model, self.min_gain, self.time_limit)
        self.cluster, self.plan = cluster, outcome.plan
        slowest = max(slow, key=lambda s: s[1] / max(s[2], 1e-12))
        self.history.append(Rebalanced(len(driver.step_seconds), slowest[0], slowest[1], slowest[2],
                                       outcome.previous, outcome.plan, outcome.changed))
        self._marks = {id(live): len(live.stats.compute_s) for live in driver.live}
        if not outcome.changed:
            return None
        route = []
        for stage in outcome.plan.stages:
            host, _, port = stage.node.rpartition(":")
            route.append(StageSpec(host, int(port), stage.start, stage.end))
        return route
