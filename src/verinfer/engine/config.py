"""Model configuration: the subset of a Hugging Face `config.json` the engine runs, validated.

Supported: LlamaForCausalLM, MistralForCausalLM (sliding window treated as off: the context is
capped at the window, so full attention is exact), Qwen2ForCausalLM (q/k/v biases). Everything
else is refused with a message that names what is unsupported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from verinfer.errors import ModelError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: str  # kept as the decimal text of config.json: exact, no float rounding
    rope_theta: str
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    attention_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @property
    def family(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)

    def rope_theta_fraction(self) -> Fraction:
        return Fraction(self.rope_theta)

    def eps_fraction(self) -> Fraction:
        return Fraction(self.rms_norm_eps)

    def parameter_count(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        if self.attention_bias:
            attn += hd * (self.num_attention_heads + 2 * self.num_key_value_heads)
        per_layer = attn + 3 * d * f + 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + d


def _number_text(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ModelError(f"config.json: {name} must be a number, got {value!r}")
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        if Fraction(text) <= 0:
            raise ModelError(f"config.json: {name} must be positive, got {text}")
    except ValueError as exc:
        raise ModelError(f"config.json: {name} is not a number: {text!r}") from exc
    return text


def _positive_int(raw: dict[str, Any], name: str, default: int | None = None) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"config.json: {name} must be a positive integer, got {value!r}")
    return value


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    """Validate a `config.json` dict; raise ModelError naming the first problem."""
    archs = raw.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ModelError(f"unsupported architecture {arch!r} in config.json (supported: {supported})")
    hidden = _positive_int(raw, "hidden_size")
    heads = _positive_int(raw, "num_attention_heads")
    kv_heads = _positive_int(raw, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise ModelError(
            f"config.json: num_attention_heads ({heads}) is not a multiple of "
            f"num_key_value_heads ({kv_heads})"
        )
    head_dim = raw.get("head_dim") or hidden // heads
    if not isinstance(head_dim, int) or head_dim % 2 or (raw.get("head_dim") is None and hidden % heads):
        raise ModelError(f"config.json: head dimension {head_dim!r} must be an even integer")
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelError(f"unsupported hidden_act {raw.get('hidden_act')!r} (only silu)")
    if raw.get("partial_rotary_factor", 1) != 1:
        raise ModelError("unsupported partial_rotary_factor (only full rotary embeddings)")
    if raw.get("mlp_bias", False):
        raise ModelError("unsupported mlp_bias = true (MLP projections without bias only)")
    # transformers >= 5 writes RoPE settings as one `rope_parameters` dict (theta, type and
    # scaling fields); older configs use top-level `rope_theta` and `rope_scaling`.
    rope_parameters = raw.get("rope_parameters")
    scaling: dict[str, Any] | None
    if isinstance(rope_parameters, dict):
        theta = rope_parameters.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = rope_parameters
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ModelError(f"config.json: rope_scaling must be an object, got {scaling!r}")
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelError(
                f"unsupported rope_scaling type {rope_type!r} "
                f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"} | {"rope_type": rope_type}
        if rope_type == "default":
            scaling = None
    context = _positive_int(raw, "max_position_embeddings")
    family = SUPPORTED_ARCHITECTURES[arch]
    window = raw.get("sliding_window")
    windowed = family == "mistral" or (family == "qwen2" and raw.get("use_sliding_window", False))
    if windowed and isinstance(window, int) and window > 0:
        context = min(context, window)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    default_bias = family == "qwen2"
    return ModelConfig(
        architecture=arch,
        vocab_size=_positive_int(raw, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_positive_int(raw, "intermediate_size"),
        num_hidden_layers=_positive_int(raw, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=context,
        rms_norm_eps=_number_text(raw.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        rope_theta=_number_text(theta, "rope_theta"),
        rope_scaling=scaling,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", default_bias)),
        bos_token_id=raw.get("bos_token_id") if isinstance(raw.get("bos_token_id"), int) else None,
        eos_token_ids=eos_ids,
    )


def load_config(model_dir: Path) -> ModelConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return parse_config(raw)
