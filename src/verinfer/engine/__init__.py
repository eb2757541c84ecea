"""verinfer.engine: bit-exact integer inference for Llama-family models.

Public API: `Engine` (load, generate, stream, layer ranges), `SamplingParams`,
`GenerationResult`, `TokenEvent`, `output_hash`.
"""

from verinfer.engine.api import Engine
from verinfer.engine.generate import GenerationResult, TokenEvent, output_hash
from verinfer.engine.sampler import SamplingParams

__all__ = ["Engine", "GenerationResult", "SamplingParams", "TokenEvent", "output_hash"]
