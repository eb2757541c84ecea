"""A stage holds only its range's weights: same integers and model_id as the whole model, about
half the layer bytes for half the layers, and a re-assigned range loads and frees layers."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch

from verinfer.engine import Engine
from verinfer.engine.model import IntModel, KVCache, Linear, embed, forward_layers, head
from verinfer.engine.quantize import load_quantized, quantize_checkpoint, save_quantized
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import ModelError
from verinfer.keyfile import Identity, new_private_key
from verinfer.pipeline.stage import StageServer
from verinfer.pipeline.transport import Msg, json_body
from verinfer.pipeline.weights import StageWeights
from verinfer.protocol import wire

SPLITS = [[(0, 4), (4, 8)], [(0, 3), (3, 6), (6, 8)], [(0, 2), (2, 4), (4, 6), (6, 8)]]
TOKENS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])


def _same_linear(a: Linear, b: Linear) -> bool:
    return (torch.equal(a.weight_t, b.weight_t) and torch.equal(a.mant, b.mant)
            and torch.equal(a.exp, b.exp)
            and (a.bias is None) == (b.bias is None)
            and (a.bias is None or b.bias is None or torch.equal(a.bias, b.bias)))


def _assert_holds_exactly(part: IntModel, whole: IntModel, start: int, end: int) -> None:
    last = end == whole.config.num_hidden_layers
    assert part.held_layers() == list(range(start, end))
    for i in range(start, end):
        a, b = part.layers[i], whole.layers[i]
        assert a is not None and b is not None
        assert torch.equal(a.input_norm, b.input_norm) and torch.equal(a.post_norm, b.post_norm)
        for x, y in ((a.qkv_proj, b.qkv_proj), (a.o_proj, b.o_proj),
                     (a.gate_up_proj, b.gate_up_proj), (a.down_proj, b.down_proj)):
            assert _same_linear(x, y)
    assert (part.embed is not None) == (start == 0 or (last and whole.config.tie_word_embeddings))
    if start == 0:
        assert part.embed is not None and whole.embed is not None
        assert _same_linear(part.embed, whole.embed)
    assert (part.norm is not None) == last and (part.lm_head is not None) == last
    if last:
        assert part.norm is not None and whole.norm is not None
        assert part.lm_head is not None and whole.lm_head is not None
        assert torch.equal(part.norm, whole.norm) and _same_linear(part.lm_head, whole.lm_head)


def _split_logits(parts: list[tuple[IntModel, int, int]]) -> torch.Tensor:
    config = parts[0][0].config
    cache = KVCache.allocate(config, 2, 8, torch.device("cpu"))
    positions = torch.arange(TOKENS.shape[1]).expand(2, -1)
    h = embed(parts[0][0], TOKENS)
    for model, start, end in parts:
        h = forward_layers(model, h, cache, positions, start, end)
    return head(parts[-1][0], h)


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: f"{len(s)}stages")
def test_a_split_of_partial_stages_equals_the_whole_model(
    split_engine: Engine, split_dir: Path, split: list[tuple[int, int]]
) -> None:
    whole = split_engine.model
    parts = []
    for start, end in split:
        weights = StageWeights(split_dir, start, end)
        assert weights.model_id == split_engine.model_id
        _assert_holds_exactly(weights.model, whole, start, end)
        parts.append((weights.model, start, end))
    expected = _split_logits([(whole, 0, whole.config.num_hidden_layers)])
    assert torch.equal(_split_logits(parts), expected)
    with pytest.raises(ValueError, match="does not hold layer"):
        forward_layers(parts[0][0], embed(whole, TOKENS), KVCache.allocate(whole.config, 2, 8, whole.device),
                       torch.arange(4).expand(2, -1), 0, whole.config.num_hidden_layers)


def test_half_the_layers_hold_half_the_layer_weights(split_engine: Engine, split_dir: Path) -> None:
    whole = split_engine.model
    assert whole.embed is not None and whole.lm_head is not None
    ends = whole.embed.weight_t.numel() + whole.lm_head.weight_t.numel()
    layer_bytes = whole.weight_bytes() - ends
    middle = StageWeights(split_dir, 2, 6)  # 4 of 8 layers, neither embedding nor head
    assert middle.model.weight_bytes() == layer_bytes // 2
    assert 0.45 < middle.resident_bytes() / (whole.resident_bytes() - _ends_resident(whole)) < 0.55
    first = StageWeights(split_dir, 0, 4)
    assert first.model.weight_bytes() == layer_bytes // 2 + whole.embed.weight_t.numel()
    assert first.resident_bytes() < whole.resident_bytes() * 0.7


def _ends_resident(model: IntModel) -> int:
    total = 0
    for x in (model.embed, model.lm_head):
        assert x is not None
        total += sum(p.numel() * p.element_size() for p in (x.weight_t, x.mant, x.exp, x.shift_base))
    assert model.norm is not None
    return total + model.norm.numel() * model.norm.element_size()


def test_reassigning_loads_the_missing_layers_and_frees_the_others(
    split_engine: Engine, split_dir: Path
) -> None:
    weights = StageWeights(split_dir, 0, 4)
    for start, end in ((2, 6), (4, 8), (0, 8), (6, 8), (0, 2)):
        weights.serve(start, end)
        _assert_holds_exactly(weights.model, split_engine.model, start, end)
        assert weights.resident_bytes() == StageWeights(split_dir, start, end).resident_bytes()
    weights.serve(0, 8)
    assert torch.equal(_split_logits([(weights.model, 0, 8)]),
                       _split_logits([(split_engine.model, 0, 8)]))


def test_a_tied_head_keeps_the_embedding_on_the_last_stage(tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path, tiny_config(num_hidden_layers=4,
                                                              tie_word_embeddings=True), seed=5)
    whole = Engine.load(model_dir).model
    last = StageWeights(model_dir, 2, 4)
    _assert_holds_exactly(last.model, whole, 2, 4)
    assert last.model.lm_head is last.model.embed
    first = StageWeights(model_dir, 0, 2)
    assert torch.equal(_split_logits([(first.model, 0, 2), (last.model, 2, 4)]),
                       _split_logits([(whole, 0, 4)]))
    last.serve(1, 3)  # neither end: the embedding goes too
    assert last.model.embed is None and last.model.lm_head is None


def test_a_quantized_directory_loads_partially_with_its_model_id(
    split_dir: Path, split_engine: Engine, tmp_path: Path
) -> None:
    out = save_quantized(quantize_checkpoint(split_dir), tmp_path / "q", split_dir / "tokenizer.json")
    weights = StageWeights(out, 3, 6)
    assert weights.model_id == split_engine.model_id == load_quantized(out).model_id
    _assert_holds_exactly(weights.model, split_engine.model, 3, 6)
    weights.serve(5, 8)
    _assert_holds_exactly(weights.model, split_engine.model, 5, 8)


def test_a_checkpoint_changed_after_start_is_refused_on_assign(tmp_path: Path, split_dir: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(split_dir, model_dir)
    weights = StageWeights(model_dir, 0, 4)
    other = write_random_checkpoint(tmp_path / "other", tiny_config(num_hidden_layers=8), seed=4)
    for path in other.glob("*.safetensors"):
        shutil.copyfile(path, model_dir / path.name)
    with pytest.raises(ModelError, match="changed since this stage started"):
        weights.serve(4, 8)
    with pytest.raises(ModelError, match="outside"):
        weights.serve(4, 9)


def test_the_stage_reports_its_weight_bytes_and_loads_on_assign(split_dir: Path) -> None:
    key = new_private_key()
    server = StageServer(StageWeights(split_dir, 0, 2), 0, 2, Identity(key, wire.address_of(key)))

    def call(kind: Msg, body: dict[str, object]) -> dict[str, object]:
        reply = asyncio.run(server.handle(kind, json_body(body)))
        assert reply[0] == Msg.OK, reply[5:]
        return dict(json.loads(reply[5:]))

    small = call(Msg.HELLO, {})["weight_bytes"]
    assert isinstance(small, int) and small > 0
    hello = call(Msg.ASSIGN, {"start": 0, "end": 8})
    assert hello["layers"] == [0, 8]
    assert isinstance(hello["weight_bytes"], int) and hello["weight_bytes"] > 3 * small


def test_a_quantized_directory_with_leaves_reads_only_the_range(
    split_dir: Path, split_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = save_quantized(quantize_checkpoint(split_dir), tmp_path / "q", split_dir / "tokenizer.json")
    assert json.loads((out / "verinfer-model.json").read_text())["tensor_leaves"]
    from verinfer.engine import quantize

    read: list[str] = []
    original = quantize._iter_tensors

    def counting(path: Path, wanted=None):  # type: ignore[no-untyped-def]
        for name, tensor in original(path, wanted):
            read.append(name)
            yield name, tensor

    monkeypatch.setattr(quantize, "_iter_tensors", counting)
    weights = StageWeights(out, 3, 6)
    assert weights.model_id == split_engine.model_id
    assert read and all(name.startswith(("model.layers.3.", "model.layers.4.", "model.layers.5."))
                        for name in read)
    _assert_holds_exactly(weights.model, split_engine.model, 3, 6)
    read.clear()
    weights.serve(5, 8)
    assert {n.split(".")[2] for n in read if n.startswith("model.layers.")} == {"6", "7"}
    assert "lm_head.weight" in read and "model.norm.weight" in read
    _assert_holds_exactly(weights.model, split_engine.model, 5, 8)


def test_altered_quantized_weights_or_leaves_are_refused(split_dir: Path, tmp_path: Path) -> None:
    out = save_quantized(quantize_checkpoint(split_dir), tmp_path / "q", split_dir / "tokenizer.json")
    manifest_path = out / "verinfer-model.json"
    honest = manifest_path.read_text()
    manifest = json.loads(honest)
    manifest["tensor_leaves"]["model.layers.4.mlp.down_proj.weight"] = "00" * 32
    manifest_path.write_text(json.dumps(manifest))  # a forged leaf no longer adds up to model_id
    with pytest.raises(ModelError, match="model_id"):
        StageWeights(out, 3, 6)
    manifest_path.write_text(honest)  # honest leaves, but other weights in the file
    other = write_random_checkpoint(tmp_path / "other", tiny_config(num_hidden_layers=8), seed=4)
    forged = save_quantized(quantize_checkpoint(other), tmp_path / "q2", split_dir / "tokenizer.json")
    shutil.copyfile(forged / "weights.safetensors", out / "weights.safetensors")
    with pytest.raises(ModelError, match="does not match the model_id"):
        StageWeights(out, 3, 6)
