"""Reading Hugging Face checkpoints from a local directory: safetensors (single or sharded).

Only reading and validating happens here; every failure (missing file, corrupt safetensors,
missing tensor, wrong shape or dtype) becomes one `ModelError` naming the file and the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from verinfer.engine.config import ModelConfig
from verinfer.errors import ModelError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the engine needs, with its shape; biases are listed by `optional_shapes`."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q_out, d),
            p + "self_attn.k_proj.weight": (kv_out, d),
            p + "self_attn.v_proj.weight": (kv_out, d),
            p + "self_attn.o_proj.weight": (d, q_out),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
        if config.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q_out,),
                p + "self_attn.k_proj.bias": (kv_out,),
                p + "self_attn.v_proj.bias": (kv_out,),
            }
    return shapes


def optional_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensors a checkpoint may carry (Llama with attention_bias also biases o_proj)."""
    return {
        f"model.layers.{i}.self_attn.o_proj.bias": (config.hidden_size,)
        for i in range(config.num_hidden_layers)
    }


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> file, from the shard index or the single safetensors file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{index}: not a valid shard index ({exc})") from exc
        files = {name: model_dir / shard for name, shard in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise ModelError(f"{model_dir}: shard {path.name} named in the index is missing")
        return files
    candidates = sorted(model_dir.glob("*.safetensors"))
    if not candidates:
        raise ModelError(f"{model_dir}: no *.safetensors weights (PyTorch .bin is not supported)")
    files = {}
    for path in candidates:
        for name in _keys(path):
            files[name] = path
    return files


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_tensors(
    model_dir: Path, config: ModelConfig, wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every needed tensor (those `wanted` accepts, when given: the
    others are not read), validated, one file open at a time."""
    files = _tensor_files(model_dir)
    wanted_shapes = expected_shapes(config)
    missing = [name for name in wanted_shapes if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(f"{model_dir}: checkpoint lacks tensor {missing[0]}{more}")
    wanted_shapes |= {k: v for k, v in optional_shapes(config).items() if k in files}
    by_file: dict[Path, list[str]] = {}
    for name in sorted(n for n in wanted_shapes if wanted is None or wanted(n)):
        by_file.setdefault(files[name], []).append(name)
    for path, names in sorted(by_file.items()):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in names:
                    tensor = f.get_tensor(name)
                    _check(path, name, tensor, wanted_shapes[name])
                    yield name, tensor
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot read tensor data ({exc})") from exc


def _check(path: Path, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ModelError(
            f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, config.json implies {shape}"
        )
    if tensor.dtype not in FLOAT_DTYPES:
        raise ModelError(f"{path.name}: tensor {name} has dtype {tensor.dtype}, expected a float")
    if not bool(torch.isfinite(tensor).all()):
        raise ModelError(f"{path.name}: tensor {name} contains NaN or infinity")
