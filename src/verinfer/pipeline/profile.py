"""A node's start-up benchmark: its compute time per layer of a model, free memory, links.

The figures a node reports to the planner. Compute is measured by running a few decoder layers
of the real engine (the same kernels that serve requests) at batch 1 decode and on a prefill
chunk; it takes seconds. Without loaded weights, `profile_config` builds those few layers with
random int8 weights of the model's shapes (speed does not depend on the values). Links are
measured over any round-trip callable, so the node server supplies the transport.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from verinfer.engine.checkpoint import expected_shapes
from verinfer.engine.config import ModelConfig
from verinfer.engine.model import IntModel, KVCache, embed, forward_layers, head
from verinfer.engine.quantize import QuantizedModel, is_matrix
from verinfer.errors import LocalError
from verinfer.pipeline.cluster import Link, NodeSpec, model_spec_from_config

_ONE = 1 << 16  # 1.0 in the engine's ACT_FRAC fixed point (norm gains)
_SCALE_EXP = 26  # weight scale 2**15 * 2**-26: int8 rows of magnitude ~1/32, like real weights


class ProfileError(LocalError):
    """The benchmark cannot run with these settings."""


@dataclass(frozen=True)
class NodeProfile:
    """What a node measured about itself for one model."""

    device: str
    layer_seconds: float  # decode, batch 1: per token per layer (attention over `position`)
    prefill_layer_seconds: float  # per token per layer within a prefill chunk of `chunk`
    head_seconds: float  # final norm and LM head, per token (decode)
    embed_seconds: float
    macs_per_second: float  # int8 multiply-adds per second at batch 1 decode
    free_bytes: int
    layers_timed: int
    position: int
    chunk: int
    seconds: float  # how long the benchmark took

    def node_spec(self, name: str) -> NodeSpec:
        return NodeSpec(name, self.layer_seconds, self.head_seconds, self.free_bytes,
                        self.embed_seconds)


def free_memory_bytes(device: str = "cpu") -> int:
    """Memory a model could still use: the GPU's free memory, or the OS's available memory."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def synthetic_layers(config: ModelConfig, layers: int, device: str = "cpu", seed: int = 0) -> IntModel:
    """An IntModel with `layers` decoder layers of `config`'s shapes and random int8 weights."""
    small = replace(config, num_hidden_layers=layers)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(small).items():
        if is_matrix(name):
            tensors[name] = torch.randint(-127, 128, shape, dtype=torch.int8, generator=generator)
            tensors[name + "_scale_mant"] = torch.full((shape[0],), 1 << 15, dtype=torch.int32)
            tensors[name + "_scale_exp"] = torch.full((shape[0],), _SCALE_EXP, dtype=torch.int32)
        elif name.endswith(".bias"):
            tensors[name] = torch.zeros(shape, dtype=torch.int32)
        else:
            tensors[name] = torch.full(shape, _ONE, dtype=torch.int32)
    return IntModel(QuantizedModel(small, tensors, "profile"), device)


def _median_seconds(step: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    step()  # warm-up: first-use allocations and kernel builds are not the node's speed
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_model(
    model: IntModel, layers: int | None = None, position: int = 256, chunk: int = 32,
    repeats: int = 5, free_bytes: int | None = None,
) -> NodeProfile:
    """Time the first `layers` decoder layers of a loaded model (all of them by default)."""
    started = time.perf_counter()
    config = model.config
    layers = config.num_hidden_layers if layers is None else layers
    if not 1 <= layers <= config.num_hidden_layers:
        raise ProfileError(f"layers must be in 1..{config.num_hidden_layers}, got {layers}")
    if chunk < 1 or repeats < 1:
        raise ProfileError("chunk and repeats must be >= 1")
    position = max(0, min(position, config.context_length - 1))
    chunk = min(chunk, config.context_length)
    device = model.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    cache = KVCache.allocate(replace(config, num_hidden_layers=layers), 1, config.context_length,
                             device)
    token = torch.tensor([[1]], device=device)
    hidden = embed(model, token)
    at = torch.tensor([[position]], device=device)
    prompt = torch.ones((1, chunk), dtype=torch.long, device=device)
    prompt_hidden = embed(model, prompt)
    from_zero = torch.arange(chunk, device=device).unsqueeze(0)
    with torch.inference_mode():
        decode = _median_seconds(lambda: forward_layers(model, hidden, cache, at, 0, layers),
                                 repeats, sync)
        prefill = _median_seconds(
            lambda: forward_layers(model, prompt_hidden, cache, from_zero, 0, layers), repeats, sync)
        head_s = _median_seconds(lambda: head(model, hidden), repeats, sync)
        embed_s = _median_seconds(lambda: embed(model, token), repeats, sync)
    layer_s = decode / layers
    spec = model_spec_from_config(config)
    return NodeProfile(
        device=str(device),
        layer_seconds=layer_s,
        prefill_layer_seconds=prefill / (layers * chunk),
        head_seconds=head_s,
        embed_seconds=embed_s,
        macs_per_second=spec.layer_macs / layer_s,
        free_bytes=free_memory_bytes(str(device)) if free_bytes is None else free_bytes,
        layers_timed=layers,
        position=position,
        chunk=chunk,
        seconds=time.perf_counter() - started,
    )


def profile_config(
    config: ModelConfig, device: str = "cpu", layers: int = 2, position: int = 256,
    chunk: int = 32, repeats: int = 5,
) -> NodeProfile:
    """Profile a model this node has not loaded: a few random layers of its shapes.

    Free memory is read before the random layers are built, so they do not count against it.
    """
    free = free_memory_bytes(device)
    model = synthetic_layers(config, min(layers, config.num_hidden_layers), device)
    return profile_model(model, None, position, chunk, repeats, free)


def measure_link(
    round_trip: Callable[[bytes], object], small: int = 64, large: int = 1 << 20,
    repeats: int = 5, clock: Callable[[], float] = time.perf_counter,
) -> Link:
    """A link's latency and bandwidth from timed round trips.

    `round_trip(payload)` must send `payload` to the peer and return once the peer's short
    acknowledgement has come back. Latency is half the quickest small round trip; bandwidth is
    what the extra bytes of a large payload cost (quickest of `repeats` each, the least
    disturbed by other traffic).
    """
    if not 0 < small < large or repeats < 1:
        raise ProfileError("measure_link needs 0 < small < large and repeats >= 1")

    def quickest(size: int) -> float:
        payload = bytes(size)
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            round_trip(payload)
            best = min(best, clock() - start)
        return best

    t_small, t_large = quickest(small), quickest(large)
    extra = t_large - t_small
    bandwidth = (large - small) / extra if extra > 0 else float("inf")
    return Link(latency_s=t_small / 2, bandwidth_bps=bandwidth)
