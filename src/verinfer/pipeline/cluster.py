"""What the planner plans over: the model's per-layer costs and the nodes' measured figures.

Pure values, no I/O. Units are SI throughout: seconds, bytes, bytes per second. A node's
figures come from its own start-up benchmark (`verinfer.pipeline.profile`); link figures come
from round trips the node server measures. The driver (the gateway or client that feeds token
ids in and takes results out) is a party of every route, named `DRIVER`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from verinfer.engine.config import ModelConfig, load_config
from verinfer.errors import LocalError, ModelError

DRIVER = "driver"
TOKEN_ID_BYTES = 4  # the driver sends each token id as a uint32
LOGIT_BYTES = 4  # the head's int32 logits
# The residual stream is int64 fixed point (ACT_FRAC bits, |x| < 2**46), but a frame carries
# it as int32 whenever every value fits (100% of measured frames, docs/pipeline.md), so the
# planner counts 4 bytes per value. A frame that does not fit goes as int64: 8 bytes per value
# (`ModelSpec.activation_bytes_int64`), which the plan does not assume.
RESIDUAL_BYTES = 4
RESIDUAL_BYTES_INT64 = 8
# Every frame's fixed part: its 56-byte header and one row's cache row and start position
# (int32 each). A one-token decode step of one sequence pays it once per hop.
FRAME_OVERHEAD = 56 + 8
_SCALE_BYTES = 16  # a weight row's scale: int64 mantissa and int64 exponent, on the device
_VECTOR_BYTES = 8  # norm gains and biases are int64 on the device
QUANTIZED_MANIFEST = "verinfer-model.json"  # as verinfer.engine.quantize, without torch


class ClusterError(LocalError):
    """A cluster description is unusable (negative figures, unknown nodes, missing links)."""


@dataclass(frozen=True)
class ModelSpec:
    """Per-layer costs of one model at a planned context length and concurrency.

    Decoder layers of Llama-family models are identical, so one layer's figures stand for all.
    The first stage also holds the embedding table and the last one the final norm and head.
    """

    name: str
    num_layers: int
    layer_weight_bytes: int
    kv_bytes_per_token_layer: int  # K and V of one token in one layer
    embed_bytes: int
    head_bytes: int
    tied_embeddings: bool  # the head reuses the embedding table (held once on one node)
    stage_fixed_bytes: int  # every stage: RoPE tables and working buffers (an estimate)
    layer_macs: int  # int8 multiply-adds per token of one layer (wide inputs count twice)
    head_macs: int
    activation_bytes: int  # one decode token's frame across a stage boundary (int32 residual)
    input_bytes: int = FRAME_OVERHEAD + TOKEN_ID_BYTES  # one token's frame, driver -> first stage
    result_bytes: int = 0  # one token's frame, last stage -> driver
    context: int = 2048
    sequences: int = 1  # generations in flight, each with its own KV cache

    @property
    def activation_bytes_int64(self) -> int:
        """The boundary frame when a value does not fit int32 (never seen, see RESIDUAL_BYTES)."""
        width = (self.activation_bytes - FRAME_OVERHEAD) // RESIDUAL_BYTES
        return FRAME_OVERHEAD + width * RESIDUAL_BYTES_INT64

    @property
    def layer_bytes(self) -> int:
        """Memory one layer needs on its node: weights plus KV cache for every sequence."""
        return self.layer_weight_bytes + self.kv_bytes_per_token_layer * self.context * self.sequences

    def with_context(self, context: int, sequences: int) -> ModelSpec:
        if context < 1 or sequences < 1:
            raise ClusterError(f"context ({context}) and sequences ({sequences}) must be >= 1")
        return replace(self, context=context, sequences=sequences)

    def validate(self) -> ModelSpec:
        if self.num_layers < 1:
            raise ClusterError(f"model {self.name}: needs at least one layer")
        for name in ("layer_weight_bytes", "kv_bytes_per_token_layer", "embed_bytes", "head_bytes",
                     "stage_fixed_bytes", "layer_macs", "head_macs", "activation_bytes",
                     "input_bytes", "result_bytes"):
            if getattr(self, name) < 0:
                raise ClusterError(f"model {self.name}: {name} must be >= 0")
        self.with_context(self.context, self.sequences)
        return self


def model_spec_from_config(
    config: ModelConfig, name: str = "model", context: int | None = None, sequences: int = 1,
    prefill_chunk: int = 64, result: str = "logits",
) -> ModelSpec:
    """The planner's view of a model, from its configuration alone (no weights needed).

    Byte counts follow the engine's device layout (`verinfer.engine.model.IntModel`): int8
    weight matrices, 16 bytes of scale per row, int64 gains and biases, an int32 KV cache.
    `result` is what the last stage returns per token: "logits" (int32, the driver samples) or
    "token" (the stage samples and returns the token id).
    """
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    heads, kv_heads, vocab = config.num_attention_heads, config.num_key_value_heads, config.vocab_size
    qkv_rows = (heads + 2 * kv_heads) * hd

    def matrix(rows: int, cols: int) -> int:
        return rows * cols + rows * _SCALE_BYTES

    layer_weights = (matrix(qkv_rows, d) + matrix(d, heads * hd) + matrix(2 * f, d) + matrix(d, f)
                     + 2 * d * _VECTOR_BYTES
                     + (qkv_rows * _VECTOR_BYTES if config.attention_bias else 0))
    table = matrix(vocab, d)
    context = config.context_length if context is None else context
    rope_tables = 2 * config.context_length * (hd // 2) * 8
    # Working buffers of one prefill chunk: the widest int64 intermediates (gate/up, logits).
    workspace = prefill_chunk * (2 * f + 4 * d + vocab) * 8
    # Wide (15-bit) inputs feed q/k/v, down and the head as two int8 products each.
    layer_macs = 2 * qkv_rows * d + d * heads * hd + 2 * f * d + 2 * d * f
    if result not in ("logits", "token"):
        raise ClusterError(f"result must be 'logits' or 'token', got {result!r}")
    return ModelSpec(
        name=name,
        num_layers=config.num_hidden_layers,
        layer_weight_bytes=layer_weights,
        kv_bytes_per_token_layer=2 * kv_heads * hd * 4,
        embed_bytes=table,
        head_bytes=table + d * _VECTOR_BYTES,
        tied_embeddings=config.tie_word_embeddings,
        stage_fixed_bytes=rope_tables + workspace,
        layer_macs=layer_macs,
        head_macs=2 * vocab * d,
        activation_bytes=FRAME_OVERHEAD + d * RESIDUAL_BYTES,
        result_bytes=FRAME_OVERHEAD + (vocab * LOGIT_BYTES if result == "logits" else TOKEN_ID_BYTES),
        context=context,
        sequences=sequences,
    ).validate()


@dataclass(frozen=True)
class NodeSpec:
    """One node's measured figures for one model."""

    name: str
    layer_seconds: float  # decode at batch 1: seconds per token per decoder layer
    head_seconds: float  # final norm and LM head, per token (only on the last stage)
    free_bytes: int
    embed_seconds: float = 0.0  # embedding lookup per token (first stage): a gather, tiny

    def validate(self) -> NodeSpec:
        if not self.name or self.name == DRIVER:
            raise ClusterError(f"node name {self.name!r} is reserved or empty")
        for name in ("layer_seconds", "head_seconds", "embed_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ClusterError(f"node {self.name}: {name} must be a finite number >= 0, got {value}")
        if self.free_bytes < 0:
            raise ClusterError(f"node {self.name}: free memory must be >= 0, got {self.free_bytes}")
        return self


@dataclass(frozen=True)
class Link:
    """A one-way path between two parties: time to send b bytes is latency + b / bandwidth."""

    latency_s: float
    bandwidth_bps: float  # bytes per second (math.inf: same machine)

    def seconds(self, nbytes: int) -> float:
        return self.latency_s + (nbytes / self.bandwidth_bps if nbytes else 0.0)

    def serialization_s(self, nbytes: int) -> float:
        """The part a pipelined stream cannot overlap: the bytes on the wire."""
        return nbytes / self.bandwidth_bps if nbytes else 0.0


@dataclass(frozen=True)
class Cluster:
    """Nodes and the links between every ordered pair of parties (nodes and the driver).

    `links` maps (from, to) to a Link; a pair given one way only is taken to be symmetric;
    pairs missing both ways use `default_link`, or are an error when it is None.
    """

    nodes: tuple[NodeSpec, ...]
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    default_link: Link | None = None

    def validate(self) -> Cluster:
        if not self.nodes:
            raise ClusterError("the cluster has no nodes")
        names = [n.validate().name for n in self.nodes]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ClusterError(f"node {dup!r} is listed twice")
        known = set(names) | {DRIVER}
        for (a, b), link in self.links.items():
            for end in (a, b):
                if end not in known:
                    raise ClusterError(f"link {a} -> {b}: unknown node {end!r}")
            if a == b:
                raise ClusterError(f"link {a} -> {b}: a link needs two different ends")
            _check_link(link, f"link {a} -> {b}")
        if self.default_link is not None:
            _check_link(self.default_link, "default link")
        parties = names + [DRIVER]
        for a in parties:
            for b in parties:
                if a != b:
                    self.link(a, b)
        return self

    def link(self, a: str, b: str) -> Link:
        found = self.links.get((a, b)) or self.links.get((b, a)) or self.default_link
        if found is None:
            raise ClusterError(f"no link between {a} and {b}: measure it or give a default link")
        return found

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ClusterError(f"unknown node {name!r}")

    def without(self, names: set[str]) -> Cluster:
        """The cluster after the named nodes left."""
        return replace(self, nodes=tuple(n for n in self.nodes if n.name not in names),
                       links={k: v for k, v in self.links.items() if not names & set(k)})

    def with_node(self, node: NodeSpec) -> Cluster:
        """The cluster with one node's figures replaced (a new measurement)."""
        return replace(self, nodes=tuple(node if n.name == node.name else n for n in self.nodes))


def _check_link(link: Link, what: str) -> None:
    if not (math.isfinite(link.latency_s) and link.latency_s >= 0):
        raise ClusterError(f"{what}: latency must be a finite number >= 0, got {link.latency_s}")
    if not link.bandwidth_bps > 0:
        raise ClusterError(f"{what}: bandwidth must be > 0, got {link.bandwidth_bps}")


def node_from_rate(name: str, model: ModelSpec, macs_per_second: float, free_bytes: int) -> NodeSpec:
    """A node's figures for `model` from its measured decode rate in int8 multiply-adds per
    second (how a node measured on one model is planned for another)."""
    if not macs_per_second > 0:
        raise ClusterError(f"node {name}: speed must be > 0, got {macs_per_second}")
    return NodeSpec(name, model.layer_macs / macs_per_second, model.head_macs / macs_per_second,
                    free_bytes)


def load_model_config(model_dir: Path) -> ModelConfig:
    """A model directory's configuration: Hugging Face (config.json) or quantized (manifest).

    Reads JSON only, so planning needs no weights and no torch.
    """
    if (model_dir / "config.json").is_file() or not (model_dir / QUANTIZED_MANIFEST).is_file():
        return load_config(model_dir)
    path = model_dir / QUANTIZED_MANIFEST
    try:
        return ModelConfig.from_dict(json.loads(path.read_text())["config"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from exc
