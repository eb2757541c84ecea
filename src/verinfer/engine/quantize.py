"""Deterministic int8 quantization of a checkpoint, the model_id commitment, save and load.

Quantization is a pure function of the checkpoint's bytes:
- matrices (linear weights, embeddings): symmetric per-output-row int8,
  `q = round_half_even(w * 127 / max|w_row|)` in float64, where every step is a single IEEE
  operation (exact `w * 127`, a correctly rounded division, an exact rounding), so the integers
  are the same on any machine; the row scale `max|w_row| / 127` is turned into an integer
  mantissa/exponent pair from the float's exact bits (`frexp`), with no rounding in float;
- norm gains and biases: fixed point with `ACT_FRAC` fraction bits (an exact power-of-two
  scaling, then one rounding).
`model_id` is a Merkle root over every quantized tensor (name, dtype, shape, little-endian bytes)
plus a leaf for the configuration and the engine's numerics version, so two nodes that claim the
same model_id run the same integers with the same arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from verinfer.engine import fixedpoint as fp
from verinfer.engine import hugepages
from verinfer.engine.checkpoint import read_tensors
from verinfer.engine.config import ModelConfig, load_config
from verinfer.errors import ModelError
from verinfer.protocol.merkle import LEAF_PREFIX, leaf_hash, merkle_root_of_hashes

# Bumped whenever any integer kernel changes what it computes: it is part of model_id.
# v2: the q/k/v, down and head projections take wide (15-bit) inputs (fidelity); gains < 2**11.
NUMERICS_VERSION = 2
QUANTIZED_MANIFEST = "verinfer-model.json"
QUANTIZED_WEIGHTS = "weights.safetensors"
FORMAT_NAME = "verinfer-int8"
_BIAS_LIMIT = 1 << 15  # |bias| must stay below this (stored in int32)
_GAIN_LIMIT = 1 << 11  # |norm gain| must stay below this: RMSNorm's wide rows need the headroom


@dataclass(frozen=True)
class QuantizedModel:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    model_id: str


def is_matrix(name: str) -> bool:
    return name.endswith(".weight") and ("_proj." in name or "embed_tokens" in name or "lm_head" in name)


def quantize_matrix(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row int8 of a float matrix: (q int8, scale mantissa int32, scale exponent int32)."""
    w64 = w.to(torch.float64)
    amax = w64.abs().amax(dim=1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    q = torch.round(w64 * 127 / safe[:, None]).to(torch.int8)
    frac, exponent = torch.frexp(safe)  # safe = frac * 2**exponent, frac in [0.5, 1)
    mantissa53 = (frac * (1 << 53)).to(torch.int64)  # exact: frac has 53 significant bits
    mant, exp = fp.ratio_to_scale(mantissa53, 127, 0)
    exp = exp + 53 - exponent.to(torch.int64)
    zero = amax == 0
    mant = torch.where(zero, 0, mant)
    exp = torch.where(zero, 0, exp)
    return q, mant.to(torch.int32), exp.to(torch.int32)


def quantize_vector(name: str, v: torch.Tensor) -> torch.Tensor:
    """Norm gain or bias to int32 fixed point (ACT_FRAC fraction bits)."""
    v64 = v.to(torch.float64)
    limit = _BIAS_LIMIT if name.endswith(".bias") else _GAIN_LIMIT
    if bool((v64.abs() >= limit).any()):
        raise ModelError(f"tensor {name} has values of magnitude >= {limit}, not supported")
    return torch.round(v64 * (1 << fp.ACT_FRAC)).to(torch.int32)


def quantize_checkpoint(
    model_dir: str | Path, progress: Callable[[str], None] | None = None
) -> QuantizedModel:
    """Quantize a Hugging Face checkpoint directory (float safetensors) into int8 tensors."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in read_tensors(model_dir, config):
        if progress:
            progress(name)
        tensors |= quantize_tensor(name, tensor)
    return QuantizedModel(config, tensors, compute_model_id(config, tensors))


def quantize_tensor(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The quantized tensors of one checkpoint tensor: a matrix's int8 rows and row scales, or
    a vector's fixed point. The whole-model load and a stage's partial load both use this."""
    if is_matrix(name):
        q, mant, exp = quantize_matrix(tensor)
        return {name: q, name + "_scale_mant": mant, name + "_scale_exp": exp}
    return {name: quantize_vector(name, tensor)}


def source_name(name: str) -> str:
    """The checkpoint tensor a quantized tensor comes from (a row scale -> its matrix)."""
    return name.removesuffix("_scale_mant").removesuffix("_scale_exp")


def iter_quantized(
    model_dir: Path, config: ModelConfig, wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, quantized tensor) of a checkpoint directory (float or quantized), one source
    tensor at a time; with `wanted`, only the tensors whose checkpoint name it accepts are read."""
    if is_quantized_dir(model_dir):
        path = model_dir / QUANTIZED_WEIGHTS
        try:
            yield from _iter_tensors(path, None if wanted is None else lambda n: wanted(source_name(n)))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelError(f"{path}: unreadable ({exc})") from exc
        return
    for name, tensor in read_tensors(model_dir, config, wanted):
        yield from quantize_tensor(name, tensor).items()


def model_id_of_leaves(config: ModelConfig, leaves: dict[str, bytes]) -> str:
    """`compute_model_id` from each tensor's `tensor_leaf_hash`, for a load that keeps only some."""
    hashes = [leaf_hash(config_leaf(config))] + [leaves[n] for n in sorted(leaves)]
    return merkle_root_of_hashes(hashes).hex()


def tensor_leaf_hash(name: str, tensor: torch.Tensor) -> bytes:
    """`leaf_hash` of one tensor's canonical bytes: name, dtype, shape, little-endian contents.

    Hashed incrementally, so the contents are never copied into one bytes object.
    """
    t = tensor.detach().to("cpu").contiguous().numpy()
    t = t.astype(t.dtype.newbyteorder("<"), copy=False)
    dtype = str(t.dtype).encode()
    encoded_name = name.encode()
    header = struct.pack("<I", len(encoded_name)) + encoded_name
    header += struct.pack("<I", len(dtype)) + dtype + struct.pack("<I", t.ndim)
    header += b"".join(struct.pack("<Q", s) for s in t.shape)
    digest = hashlib.sha256(LEAF_PREFIX + b"verinfer-tensor-v1\x00" + header)
    digest.update(t.reshape(-1).view(np.uint8).data)
    return digest.digest()


def config_leaf(config: ModelConfig) -> bytes:
    body = {"config": config.to_dict(), "numerics_version": NUMERICS_VERSION, "format": FORMAT_NAME}
    return b"verinfer-config-v1\x00" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def compute_model_id(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> str:
    hashes = [leaf_hash(config_leaf(config))] + [tensor_leaf_hash(n, tensors[n]) for n in sorted(tensors)]
    return merkle_root_of_hashes(hashes).hex()


def save_quantized(model: QuantizedModel, out_dir: str | Path, tokenizer_file: Path) -> Path:
    """Write a quantized model directory: manifest, int8 weights, tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.tensors.items()}, str(out / QUANTIZED_WEIGHTS))
    shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    manifest = {
        "format": FORMAT_NAME,
        "numerics_version": NUMERICS_VERSION,
        "model_id": model.model_id,
        "config": model.config.to_dict(),
        # Each tensor's leaf of model_id: a pipeline stage checks the leaves against model_id
        # and then reads only its own layers' tensors (`verinfer.pipeline.weights`).
        "tensor_leaves": {n: tensor_leaf_hash(n, model.tensors[n]).hex() for n in sorted(model.tensors)},
    }
    (out / QUANTIZED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def is_quantized_dir(model_dir: Path) -> bool:
    return (model_dir / QUANTIZED_MANIFEST).is_file()


def read_manifest(model_dir: Path) -> tuple[ModelConfig, str]:
    """The configuration and claimed model_id of a quantized directory (format checked)."""
    manifest_path = model_dir / QUANTIZED_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        config = ModelConfig.from_dict(manifest["config"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT_NAME or manifest.get("numerics_version") != NUMERICS_VERSION:
        raise ModelError(
            f"{model_dir}: quantized with format {manifest.get('format')!r} numerics "
            f"v{manifest.get('numerics_version')}; this engine needs {FORMAT_NAME} "
            f"v{NUMERICS_VERSION}: quantize the original checkpoint again"
        )
    return config, str(manifest.get("model_id"))


def read_manifest_leaves(model_dir: Path) -> dict[str, bytes] | None:
    """The per-tensor leaf hashes a quantized directory's manifest lists (None: an older
    manifest without them). Not checked here: `model_id_of_leaves` checks them."""
    try:
        leaves = json.loads((model_dir / QUANTIZED_MANIFEST).read_text()).get("tensor_leaves")
        if leaves is None:
            return None
        return {str(name): bytes.fromhex(str(digest)) for name, digest in leaves.items()}
    except (OSError, AttributeError, ValueError, TypeError) as exc:
        raise ModelError(f"{model_dir / QUANTIZED_MANIFEST}: unreadable tensor_leaves ({exc})") from exc


def load_quantized(model_dir: str | Path) -> QuantizedModel:
    """Load a directory written by `save_quantized`, checking its model_id against its bytes."""
    model_dir = Path(model_dir)
    config, claimed = read_manifest(model_dir)
    try:
        tensors = dict(_iter_tensors(model_dir / QUANTIZED_WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{model_dir / QUANTIZED_WEIGHTS}: unreadable ({exc})") from exc
    model_id = compute_model_id(config, tensors)
    if model_id != claimed:
        raise ModelError(
            f"{model_dir}: weights do not match the manifest's model_id (corrupt or altered files)"
        )
    return QuantizedModel(config, tensors, model_id)


_DTYPES = {"I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}


def _iter_tensors(
    path: Path, wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The integer tensors of a safetensors file (those `wanted` accepts), read into ordinary
    memory one by one (weights into huge pages: `hugepages.empty`); the others are skipped.

    Not memory-mapped: mapped pages stay resident for as long as any tensor of the file lives,
    next to the copies the model makes (stacked weights), which would double peak memory.
    """
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        file_size = f.seek(0, 2)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if wanted is not None and not wanted(name):
                continue
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"tensor {name} has dtype {info['dtype']}, expected an integer type")
            start, end = (8 + header_len + offset for offset in info["data_offsets"])
            tensor = hugepages.empty(info["shape"], _DTYPES[info["dtype"]])  # weights: huge pages
            raw = tensor.view(-1).view(torch.uint8).numpy()
            if end - start != raw.nbytes or end > file_size:
                raise ValueError(f"tensor {name} does not fit its shape or the file")
            f.seek(start)
            if f.readinto(raw.data) != raw.nbytes:
                raise ValueError(f"tensor {name} is truncated")
            yield name, tensor
