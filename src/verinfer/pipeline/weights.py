"""The weights a pipeline stage holds: only its layer range's, loaded and freed as the range moves.

A stage serving layers [A, B) keeps layers A..B-1, the embedding if A == 0, and the final norm
and head if B is the last layer (a head tied to the embedding keeps the embedding). It needs
every tensor's leaf hash of the model_id it claims (a Merkle root over all quantized tensors,
the one a whole-model node computes). A quantized directory's manifest lists them
(`tensor_leaves`): the stage checks them against the manifest's model_id and reads only its
range's tensors, each checked against its leaf. A float checkpoint (or an older manifest) has
no list: the stage reads and quantizes every tensor once, one at a time, to compute the leaves,
and keeps only its own; peak memory is its range plus one tensor. The leaves (32 bytes a
tensor) are kept, so a later `serve(C, D)` (a re-plan's ASSIGN) reads only the tensors it lacks,
checks each against its leaf, and frees those no longer served.
Quantization is `quantize.quantize_tensor`, the whole-model load's: the same integers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from verinfer.engine.api import _resolve_device
from verinfer.engine.config import ModelConfig, load_config
from verinfer.engine.model import IntModel
from verinfer.engine.quantize import (
    QuantizedModel,
    is_quantized_dir,
    iter_quantized,
    model_id_of_leaves,
    read_manifest,
    read_manifest_leaves,
    source_name,
    tensor_leaf_hash,
)
from verinfer.errors import ModelError

_EMBED = "model.embed_tokens.weight"
_ENDS = ("model.norm.weight", "lm_head.weight")


def range_needs(config: ModelConfig, start: int, end: int, name: str) -> bool:
    """Whether a stage serving layers [start, end) holds checkpoint tensor `name`."""
    last = end == config.num_hidden_layers
    if name.startswith("model.layers."):
        return start <= int(name.split(".")[2]) < end
    if name == _EMBED:
        return start == 0 or (last and config.tie_word_embeddings)
    if name in _ENDS:
        return last
    raise ModelError(f"tensor {name} belongs to no layer range")


class StageWeights:
    """A model part on one device: `config`, `model_id` and `model` (an `IntModel` holding
    only the served range), like an `Engine` as far as a stage needs."""

    def __init__(self, model_dir: str | Path, start: int, end: int, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelError(f"model directory {str(model_dir)!r} does not exist")
        quantized = is_quantized_dir(self.model_dir)
        if quantized:
            config, claimed = read_manifest(self.model_dir)
        else:
            config = load_config(self.model_dir)
        _check_range(config, start, end)
        listed = read_manifest_leaves(self.model_dir) if quantized else None
        kept: dict[str, torch.Tensor] = {}
        if listed is not None:  # the manifest's leaves: read only the range's tensors
            self.leaves = listed
            model_id = model_id_of_leaves(config, self.leaves)
            kept = self._read(config, lambda name: range_needs(config, start, end, name))
        else:  # every tensor once, one at a time, to compute model_id
            self.leaves = {}
            for name, tensor in iter_quantized(self.model_dir, config):
                self.leaves[name] = tensor_leaf_hash(name, tensor)
                if range_needs(config, start, end, source_name(name)):
                    kept[name] = tensor
            model_id = model_id_of_leaves(config, self.leaves)
        if quantized and model_id != claimed:
            raise ModelError(f"{self.model_dir}: weights do not match the manifest's model_id "
                             "(corrupt or altered files)")
        self.model = IntModel(QuantizedModel(config, kept, model_id), _resolve_device(device))
        self.start, self.end = start, end

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def serve(self, start: int, end: int) -> None:
        """Hold exactly what layers [start, end) need: load the missing tensors (checked
        against the leaves seen at start), then free what is no longer needed."""
        c = self.config
        _check_range(c, start, end)
        if (start, end) == (self.start, self.end):
            return
        old_start, old_end = self.start, self.end

        def missing(name: str) -> bool:
            return (range_needs(c, start, end, name)
                    and not range_needs(c, old_start, old_end, name))

        loaded = self._read(c, missing)
        model = self.model
        for i in range(c.num_hidden_layers):
            if not start <= i < end:
                model.drop_layer(i)
        model.drop_ends(embedding=not range_needs(c, start, end, _EMBED),
                        head=end != c.num_hidden_layers)
        model.install(loaded)
        self.start, self.end = start, end

    def _read(self, config: ModelConfig, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        """The quantized tensors of the checkpoint tensors `wanted` accepts, each checked
        against its leaf of model_id; all that the leaves list must be there."""
        loaded: dict[str, torch.Tensor] = {}
        for name, tensor in iter_quantized(self.model_dir, config, wanted):
            if self.leaves.get(name) != tensor_leaf_hash(name, tensor):
                raise ModelError(f"{self.model_dir}: tensor {name} changed since this stage "
                                 "started or does not match the model_id (corrupt or altered files)")
            loaded[name] = tensor
        absent = sorted(n for n in self.leaves if wanted(source_name(n)) and n not in loaded)
        if absent:
            raise ModelError(f"{self.model_dir}: the weights lack tensor {absent[0]}")
        return loaded

    def resident_bytes(self) -> int:
        return self.model.resident_bytes()


def _check_range(config: ModelConfig, start: int, end: int) -> None:
    if not 0 <= start < end <= config.num_hidden_layers:
        raise ModelError(f"layer range {start}:{end} outside 0:{config.num_hidden_layers}")
