"""verinfer.engine: bit-exact integer inference for Llama-family models.

Public API: `Engine` (load, generate, stream, layer ranges), `SamplingParams`,
`GenerationResult`, `TokenEvent`, `output_hash`. Resolved lazily (PEP 562), so importing the
package — as the command line does for `--help` — does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verinfer.engine.api import Engine
    from verinfer.engine.generate import GenerationResult, TokenEvent, output_hash
    from verinfer.engine.params import SamplingParams

_EXPORTS = {
    "Engine": "verinfer.engine.api",
    "GenerationResult": "verinfer.engine.generate",
    "TokenEvent": "verinfer.engine.generate",
    "output_hash": "verinfer.engine.generate",
    "SamplingParams": "verinfer.engine.params",
}

__all__ = ["Engine", "GenerationResult", "SamplingParams", "TokenEvent", "output_hash"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'verinfer.engine' has no attribute {name!r}")
