"""Random Hugging Face checkpoints for tests and benchmarks, identical on every machine.

Weights come from NumPy's PCG64 raw 64-bit stream (a stable, platform-independent bit
generator), mapped to floats with exact integer-to-float conversions and power-of-two scalings,
so a (config, seed) pair always yields the same checkpoint bytes. The tokenizer is byte-level
with no merges: any text round-trips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from verinfer.engine.checkpoint import expected_shapes
from verinfer.engine.config import parse_config

SPECIAL_TOKENS = ("<s>", "</s>")

TINY_LLAMA_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A small Llama config for fast tests (vocab covers the byte-level tokenizer)."""
    config = {
        **TINY_LLAMA_1B,
        "vocab_size": 320,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": 256,
        "eos_token_id": 257,
    }
    config.update(overrides)
    return config


def byte_tokenizer() -> Tokenizer:
    """Byte-level BPE with the 256 byte symbols and two special tokens, no merges."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], log2_half_width: int) -> torch.Tensor:
    """Uniform floats in [-2**w, 2**w) on a 2**-23 grid, exactly reproducible."""
    count = int(np.prod(shape))
    raw = rng.bit_generator.random_raw(count)
    ints = (raw >> np.uint64(40)).astype(np.int64) - (1 << 23)  # uniform in [-2**23, 2**23)
    values = torch.from_numpy(ints.astype(np.float32))  # exact: |ints| < 2**24
    return (values * 2.0 ** (log2_half_width - 23)).reshape(shape)


def write_random_checkpoint(
    path: str | Path,
    config: dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int = 1 << 30,
) -> Path:
    """Write config.json, safetensors (sharded above `shard_bytes`) and tokenizer.json."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    parsed = parse_config(config)
    rng = np.random.Generator(np.random.PCG64(seed))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in sorted(expected_shapes(parsed).items()):
        if len(shape) == 1:  # norm gains near 1, biases small
            base = 1.0 if "norm" in name else 0.0
            tensor = base + _uniform(rng, shape, -3)
        else:
            fan_in = shape[1]
            tensor = _uniform(rng, shape, -((fan_in.bit_length() + 1) // 2))  # ~ 1/sqrt(fan_in)
        tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards):
            filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / filename), metadata={"format": "pt"})
            weight_map |= {name: filename for name in shard}
        index = {"metadata": {}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    byte_tokenizer().save(str(out / "tokenizer.json"))
    return out
