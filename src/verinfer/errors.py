"""The project's exception hierarchy: one root, and local faults kept apart from remote ones.

A `LocalError` means we (or our user) broke a rule: bad input, a missing file, a bad parameter.
A `RemoteError` means a peer broke the protocol; it is evidence that may justify a slash.
Errors of libraries underneath (torch, web3, httpx) are translated into these at the boundary,
with a message a user can act on.
"""

from __future__ import annotations


class VerinferError(Exception):
    """Root of every error verinfer raises on purpose."""


class LocalError(VerinferError):
    """We, or our caller, broke a rule (bad input, bad configuration, missing files)."""


class RemoteError(VerinferError):
    """A peer broke the protocol; the instance carries what is needed as evidence."""


class ModelError(LocalError):
    """A model directory or checkpoint cannot be used (missing, corrupt, unsupported)."""


class GenerationParamsError(LocalError):
    """A generation request's parameters are out of range."""


class ProtocolError(LocalError):
    """A protocol rule was violated by the caller's own inputs."""


class ChainError(VerinferError):
    """A chain operation failed (revert, unreachable node, bad configuration)."""
