"""verinfer.pipeline: split inference across nodes — the partition planner and node profiles.

Public API: the planner's inputs (`Cluster`, `NodeSpec`, `Link`, `ModelSpec`,
`model_spec_from_config`), `plan`, `replan`, `evaluate`, the baselines
(`memory_proportional`, `best_single_node`), `Plan`, `ModelDoesNotFit`, and the node's
start-up measurements (`profile_config`, `profile_model`, `measure_link`). The planner is pure:
measured figures in, a plan out. Resolved lazily (PEP 562): importing the package loads
neither SciPy nor torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verinfer.pipeline.cluster import Cluster, Link, ModelSpec, NodeSpec, model_spec_from_config
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
}

__all__ = [
    "Cluster", "Link", "ModelDoesNotFit", "ModelSpec", "NodeSpec", "Plan", "best_single_node",
    "evaluate", "measure_link", "memory_proportional", "model_spec_from_config", "plan",
    "profile_config", "profile_model", "replan",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verinfer.pipeline' has no attribute {name!r}")
