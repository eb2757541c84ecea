"""Dishonest nodes, for demonstrations and detection tests: the corners a real cheater would cut.

Never on unless asked (`verinfer node --cheat STRATEGY`, `verinfer up --cheaters K --strategy S`).
A cheating node signs its receipts like an honest one; only what it computes or claims differs:

- `wrong-tokens`: returns random text (every output token drawn at random, not by the model);
- `skip-layers`: skips the last decoder layers (their output projections are zeroed, so the
  residual stream passes them unchanged — what skipping them computes);
- `substitute-model`: serves a cheaper model under the claimed model_id (its int8 weights
  rounded to 4-bit levels);
- `sometimes`: random text on a fraction of requests (by a hash of the request), honest otherwise;
- `late-divergence`: the model's own first tokens, then random ones.

Model-level cheats also shape the node's work as a validator (its replays use the same weights);
token-level cheats affect only what it serves. Random tokens come from SHA-256 over the request
and the step, so a cheater's behaviour is reproducible in tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from verinfer.engine.model import IntModel
from verinfer.errors import LocalError

STRATEGIES = ("wrong-tokens", "skip-layers", "substitute-model", "sometimes", "late-divergence")
_DOMAIN = b"verinfer-cheat-v1"


class UnknownStrategy(LocalError):
    """A cheat strategy name that does not exist."""


@dataclass(frozen=True)
class Cheat:
    strategy: str
    fraction_ppm: int = 300_000  # `sometimes`: share of requests cheated on
    honest_steps: int = 3  # `late-divergence`: tokens produced honestly first
    skipped_layers: int = 1  # `skip-layers`: decoder layers skipped at the end

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UnknownStrategy(
                f"unknown cheat strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}"
            )

    def corrupt(self, model: IntModel) -> None:
        """Change the model's weights in place (model-level strategies); model_id stays claimed."""
        if self.strategy == "skip-layers":
            count = min(self.skipped_layers, len(model.layers))
            for layer in model.layers[len(model.layers) - count:]:
                assert layer is not None  # a node holds the whole model
                for linear in (layer.o_proj, layer.down_proj):
                    linear.weight_t.zero_()
                    if linear.bias is not None:
                        linear.bias.zero_()
        elif self.strategy == "substitute-model":
            for layer in model.layers:
                assert layer is not None
                for linear in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                    w = linear.weight_t
                    w.copy_(torch.div(w, 16, rounding_mode="floor") * 16)

    def cheats_on(self, prompt: Sequence[int], seed: int) -> bool:
        """Whether token-level cheating applies to this request."""
        if self.strategy in ("wrong-tokens", "late-divergence"):
            return True
        if self.strategy == "sometimes":
            return _draw(_request_key(prompt, seed), b"sometimes") % 1_000_000 < self.fraction_ppm
        return False

    def token(self, prompt: Sequence[int], seed: int, step: int, honest: int, vocab: int) -> int:
        """The token a cheater claims at `step` where the model gives `honest`."""
        if not self.cheats_on(prompt, seed):
            return honest
        if self.strategy == "late-divergence" and step < self.honest_steps:
            return honest
        wrong = _draw(_request_key(prompt, seed), step.to_bytes(4, "big")) % (vocab - 1)
        return wrong if wrong < honest else wrong + 1  # never the honest token by chance


def _request_key(prompt: Sequence[int], seed: int) -> bytes:
    body = b"".join(t.to_bytes(4, "big") for t in prompt) + seed.to_bytes(8, "big")
    return hashlib.sha256(_DOMAIN + body).digest()


def _draw(key: bytes, label: bytes) -> int:
    return int.from_bytes(hashlib.sha256(key + label).digest()[:8], "big")
