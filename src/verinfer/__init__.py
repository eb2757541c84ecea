"""verinfer: verifiable, decentralized LLM inference.

The public API is re-exported here; see README.md for the quick start.
"""

from verinfer.errors import (
    ChainError,
    GenerationParamsError,
    LocalError,
    ModelError,
    ProtocolError,
    RemoteError,
    VerinferError,
)

__version__ = "0.1.0"

__all__ = [
    "ChainError",
    "GenerationParamsError",
    "LocalError",
    "ModelError",
    "ProtocolError",
    "RemoteError",
    "VerinferError",
    "__version__",
]
