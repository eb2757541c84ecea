"""Seeded heterogeneous clusters for tests and benchmarks: the same cluster on every machine.

Nodes are drawn from device classes (phones to GPU servers: decode speed, free memory) and
placed at sites: links inside a site are a LAN (sub-millisecond, gigabits), links between
sites a WAN (tens of milliseconds, tens to hundreds of megabits). The driver sits at site 0.
The model is a Llama-shaped `ModelSpec` sized so that it fits on only some single nodes.
"""

from __future__ import annotations

import random

from verinfer.engine.config import parse_config
from verinfer.pipeline.cluster import (
    DRIVER,
    Cluster,
    Link,
    ModelSpec,
    NodeSpec,
    model_spec_from_config,
)

# (name, decode speed in int8 multiply-adds per second, free memory in GiB), as ranges
DEVICE_CLASSES = (
    ("phone", (2e9, 8e9), (2.0, 6.0)),
    ("laptop", (1e10, 4e10), (6.0, 24.0)),
    ("desktop", (4e10, 1.5e11), (16.0, 48.0)),
    ("gpu", (3e11, 2e12), (8.0, 80.0)),
)


def llama_spec(layers: int, hidden: int = 4096, context: int = 2048, sequences: int = 1) -> ModelSpec:
    """A Llama-3-8B-like model (GQA 4:1, 128-dim heads, SwiGLU 3.5x) with `layers` layers."""
    config = parse_config({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": hidden,
        "intermediate_size": hidden * 7 // 2, "num_hidden_layers": layers,
        "num_attention_heads": hidden // 128, "num_key_value_heads": max(1, hidden // 512),
        "max_position_embeddings": context,
    })
    return model_spec_from_config(config, f"llama-{layers}L-{hidden}", context, sequences)


def random_cluster(seed: int, nodes: int, model: ModelSpec, sites: int | None = None,
                   memory_scale: float | None = None) -> Cluster:
    """`nodes` nodes of mixed classes; free memory scaled so the whole model needs about
    `memory_scale` (default: drawn in [0.25, 0.6]) of the cluster's memory."""
    rng = random.Random(seed)
    sites = sites if sites is not None else rng.randint(1, min(4, nodes))
    drawn = []
    for index in range(nodes):
        _, speed, memory = rng.choice(DEVICE_CLASSES)
        rate = speed[0] * (speed[1] / speed[0]) ** rng.random()
        drawn.append((f"n{index:02d}", rate, rng.uniform(*memory), rng.randrange(sites)))
    need = model.num_layers * model.layer_bytes + model.embed_bytes + model.head_bytes
    scale = memory_scale if memory_scale is not None else rng.uniform(0.25, 0.6)
    total = sum(gib for _, _, gib, _ in drawn)
    factor = need / (scale * total * 2**30)
    specs = tuple(
        NodeSpec(name, model.layer_macs / rate, model.head_macs / rate,
                 int(gib * 2**30 * factor) + model.stage_fixed_bytes)
        for name, rate, gib, _ in drawn
    )
    site = {name: s for name, _, _, s in drawn} | {DRIVER: 0}
    lan = {s: Link(rng.uniform(0.1e-3, 1e-3), rng.uniform(1e9, 10e9) / 8) for s in range(sites)}
    links: dict[tuple[str, str], Link] = {}
    parties = [n.name for n in specs] + [DRIVER]
    for a_index, a in enumerate(parties):
        for b in parties[a_index + 1:]:
            if site[a] == site[b]:
                base = lan[site[a]]
                links[(a, b)] = Link(base.latency_s * rng.uniform(0.8, 1.2), base.bandwidth_bps)
            else:
                links[(a, b)] = Link(rng.uniform(10e-3, 80e-3), rng.uniform(20e6, 500e6) / 8)
    return Cluster(specs, links).validate()
