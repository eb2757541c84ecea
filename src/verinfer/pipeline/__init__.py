"""verinfer.pipeline: split inference across nodes — planner, node profiles, and execution.

Public API: the planner's inputs (`Cluster`, `NodeSpec`, `Link`, `ModelSpec`,
`model_spec_from_config`), `plan`, `replan`, `evaluate`, the baselines
(`memory_proportional`, `best_single_node`), `Plan`, `ModelDoesNotFit`, and the node's
start-up measurements (`profile_config`, `profile_model`, `measure_link`). The planner is pure:
measured figures in, a plan out. Execution (docs/pipeline.md): `RouteDriver` drives a
generation through `StageSpec` stages (`PipelineResult`), `Rebalancer` re-plans at run time,
`check_stages` pins a stage whose signed output is wrong. Resolved lazily (PEP 562): importing
the package loads neither SciPy nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verinfer.pipeline.checker import check_stages
    from verinfer.pipeline.cluster import Cluster, Link, ModelSpec, NodeSpec, model_spec_from_config
    from verinfer.pipeline.driver import PipelineResult, RouteDriver, StageSpec
    from verinfer.pipeline.planner import (
        ModelDoesNotFit,
        Plan,
        best_single_node,
        evaluate,
        memory_proportional,
        plan,
        replan,
    )
    from verinfer.pipeline.profile import measure_link, profile_config, profile_model
    from verinfer.pipeline.rebalance import Rebalancer

_EXPORTS = {
    "Cluster": "verinfer.pipeline.cluster",
    "Link": "verinfer.pipeline.cluster",
    "ModelSpec": "verinfer.pipeline.cluster",
    "NodeSpec": "verinfer.pipeline.cluster",
    "model_spec_from_config": "verinfer.pipeline.cluster",
    "ModelDoesNotFit": "verinfer.pipeline.planner",
    "Plan": "verinfer.pipeline.planner",
    "best_single_node": "verinfer.pipeline.planner",
    "evaluate": "verinfer.pipeline.planner",
    "memory_proportional": "verinfer.pipeline.planner",
    "plan": "verinfer.pipeline.planner",
    "replan": "verinfer.pipeline.planner",
    "measure_link": "verinfer.pipeline.profile",
    "profile_config": "verinfer.pipeline.profile",
    "profile_model": "verinfer.pipeline.profile",
    "PipelineResult": "verinfer.pipeline.driver",
    "RouteDriver": "verinfer.pipeline.driver",
    "StageSpec": "verinfer.pipeline.driver",
    "Rebalancer": "verinfer.pipeline.rebalance",
    "check_stages": "verinfer.pipeline.checker",
}

__all__ = [
    "Cluster", "Link", "ModelDoesNotFit", "ModelSpec", "NodeSpec", "PipelineResult", "Plan",
    "Rebalancer", "RouteDriver", "StageSpec", "best_single_node", "check_stages", "evaluate",
    "measure_link", "memory_proportional", "model_spec_from_config", "plan", "profile_config",
    "profile_model", "replan",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verinfer.pipeline' has no attribute {name!r}")
