"""verinfer.pipeline.profile: figures from the real engine's layers, free memory, links."""

from __future__ import annotations

import math

import pytest
import torch

from verinfer.engine.config import parse_config
from verinfer.engine.model import forward_layers
from verinfer.engine.testing import tiny_config
from verinfer.pipeline.cluster import model_spec_from_config
from verinfer.pipeline.profile import (
    ProfileError,
    free_memory_bytes,
    measure_link,
    profile_config,
    profile_model,
    synthetic_layers,
)


def test_synthetic_layers_have_the_models_shapes_and_run() -> None:
    config = parse_config(tiny_config(num_hidden_layers=6))
    model = synthetic_layers(config, 2)
    assert len(model.layers) == 2 and model.config.hidden_size == config.hidden_size
    spec = model_spec_from_config(config)
    # the planner's byte count of a layer equals the engine's (weights are int8, one per MAC)
    per_layer = (model.weight_bytes() - model.embed.weight_t.numel()
                 - model.lm_head.weight_t.numel()) // 2
    hd = config.head_dim
    rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * hd
    scales_and_norms = 16 * (rows + 2 * config.intermediate_size + 2 * config.hidden_size) \
        + 2 * 8 * config.hidden_size
    assert spec.layer_weight_bytes == per_layer + scales_and_norms
    h = torch.zeros((1, 3, config.hidden_size), dtype=torch.int64)
    cache_out = forward_layers(model, h, _cache(config), torch.arange(3).unsqueeze(0))
    assert cache_out.shape == h.shape


def _cache(config):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from verinfer.engine.model import KVCache

    return KVCache.allocate(replace(config, num_hidden_layers=2), 1, 8, torch.device("cpu"))


def test_profile_reports_positive_figures_quickly() -> None:
    config = parse_config(tiny_config(num_hidden_layers=8))
    measured = profile_config(config, layers=2, repeats=3)
    assert measured.layers_timed == 2
    for value in (measured.layer_seconds, measured.prefill_layer_seconds, measured.head_seconds,
                  measured.macs_per_second):
        assert math.isfinite(value) and value > 0
    # a prefilled token shares its layer's weights with the chunk: cheaper than a decoded one
    assert measured.prefill_layer_seconds < measured.layer_seconds
    assert measured.free_bytes > 0 and measured.seconds < 30
    node = measured.node_spec("me").validate()
    assert node.layer_seconds == measured.layer_seconds and node.free_bytes == measured.free_bytes


def test_profile_model_checks_its_arguments(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProfileError, match="layers must be in 1..2"):
        profile_model(tiny_engine.model, layers=3)
    measured = profile_model(tiny_engine.model, layers=1, repeats=1, free_bytes=123)
    assert measured.free_bytes == 123 and measured.layers_timed == 1


def test_free_memory_is_the_os_figure() -> None:
    free = free_memory_bytes("cpu")
    import os

    assert 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_measure_link_recovers_latency_and_bandwidth() -> None:
    now = [0.0]
    latency, bandwidth = 0.004, 12.5e6  # 4 ms one way, 100 Mbit/s
    jitter = iter([0.003, 0.0, 0.001] * 10)

    def round_trip(payload: bytes) -> None:  # a simulated wire: one way with the bytes, back
        now[0] += 2 * latency + len(payload) / bandwidth + next(jitter)

    link = measure_link(round_trip, small=100, large=1_000_100, repeats=3, clock=lambda: now[0])
    assert link.latency_s == pytest.approx(latency + 100 / bandwidth / 2)
    assert link.bandwidth_bps == pytest.approx(bandwidth)
    with pytest.raises(ProfileError):
        measure_link(round_trip, small=10, large=5)
