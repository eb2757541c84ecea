"""Loading checkpoints: sharded equals single-file, quantized round trip keeps model_id, and
every kind of bad model directory gets one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from verinfer.engine import Engine
from verinfer.engine.model import IntModel
from verinfer.engine.quantize import (
    QUANTIZED_WEIGHTS,
    load_quantized,
    quantize_checkpoint,
    save_quantized,
)
from verinfer.engine.testing import tiny_config, write_random_checkpoint
from verinfer.errors import ModelError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_quantization_is_a_pure_function_of_the_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    again = write_random_checkpoint(tmp_path / "again", tiny_config(), seed=1)
    assert quantize_checkpoint(tiny_dir).model_id == quantize_checkpoint(again).model_id
    other = write_random_checkpoint(tmp_path / "other", tiny_config(), seed=2)
    assert quantize_checkpoint(other).model_id != quantize_checkpoint(tiny_dir).model_id


def test_one_changed_weight_changes_model_id(tiny_dir: Path, tmp_path: Path) -> None:
    changed = _copy(tiny_dir, tmp_path / "changed")
    tensors = load_file(str(changed / "model.safetensors"))
    w = tensors["model.layers.1.mlp.down_proj.weight"]
    w[3, 5] = w[3, 5] * 0.5 + 0.01
    save_file(tensors, str(changed / "model.safetensors"))
    assert quantize_checkpoint(changed).model_id != quantize_checkpoint(tiny_dir).model_id


def test_sharded_checkpoint_equals_single_file(tmp_path: Path) -> None:
    single = write_random_checkpoint(tmp_path / "single", tiny_config(), seed=3)
    sharded = write_random_checkpoint(tmp_path / "sharded", tiny_config(), seed=3, shard_bytes=40_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert quantize_checkpoint(single).model_id == quantize_checkpoint(sharded).model_id


def _save(model_dir: Path, out: Path) -> Path:
    return save_quantized(quantize_checkpoint(model_dir), out, model_dir / "tokenizer.json")


def test_quantized_save_and_load_round_trip(tiny_dir: Path, tiny_engine: Engine, tmp_path: Path) -> None:
    out = _save(tiny_dir, tmp_path / "q")
    loaded = Engine.load(out)
    assert loaded.model_id == tiny_engine.model_id
    a = loaded.generate(["round trip"])[0]
    b = tiny_engine.generate(["round trip"])[0]
    assert (a.token_ids, a.logits_hash) == (b.token_ids, b.logits_hash)


def test_tampered_quantized_weights_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    out = _save(tiny_dir, tmp_path / "q")
    tensors = load_file(str(out / QUANTIZED_WEIGHTS))
    tensors["model.norm.weight"][0] += 1
    save_file(tensors, str(out / QUANTIZED_WEIGHTS))
    with pytest.raises(ModelError, match="model_id"):
        Engine.load(out)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_quantized_weights_are_refused(cut: float, tiny_dir: Path, tmp_path: Path) -> None:
    out = _save(tiny_dir, tmp_path / "q")
    data = (out / QUANTIZED_WEIGHTS).read_bytes()
    (out / QUANTIZED_WEIGHTS).write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelError, match="unreadable"):
        Engine.load(out)


def test_loaded_model_keeps_one_copy_of_stacked_weights(tiny_dir: Path, tmp_path: Path) -> None:
    qmodel = load_quantized(_save(tiny_dir, tmp_path / "q"))
    model = IntModel(qmodel)
    stacked = model.layers[0].qkv_proj.weight_t.t()
    q_part = qmodel.tensors["model.layers.0.self_attn.q_proj.weight"]
    v_part = qmodel.tensors["model.layers.0.self_attn.v_proj.weight"]
    assert q_part.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()
    assert torch.equal(v_part, stacked[-v_part.shape[0] :])
    assert v_part.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()


def _break(kind: str, model: Path) -> None:
    if kind == "no-config":
        (model / "config.json").unlink()
    elif kind == "bad-json":
        (model / "config.json").write_text("{not json")
    elif kind == "architecture":
        config = json.loads((model / "config.json").read_text())
        config["architectures"] = ["GPT2LMHeadModel"]
        (model / "config.json").write_text(json.dumps(config))
    elif kind == "heads":
        config = json.loads((model / "config.json").read_text())
        config["num_key_value_heads"] = 3
        (model / "config.json").write_text(json.dumps(config))
    elif kind == "rope":
        config = json.loads((model / "config.json").read_text())
        config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
        (model / "config.json").write_text(json.dumps(config))
    elif kind == "no-weights":
        (model / "model.safetensors").unlink()
    elif kind == "corrupt":
        (model / "model.safetensors").write_bytes(b"\x10\x00garbage" * 10)
    elif kind == "truncated":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "missing-tensor":
        tensors = load_file(str(model / "model.safetensors"))
        del tensors["model.layers.0.self_attn.k_proj.weight"]
        save_file(tensors, str(model / "model.safetensors"))
    elif kind == "shape":
        config = json.loads((model / "config.json").read_text())
        config["intermediate_size"] = 128
        (model / "config.json").write_text(json.dumps(config))
    elif kind == "nan":
        tensors = load_file(str(model / "model.safetensors"))
        tensors["model.norm.weight"][0] = float("nan")
        save_file(tensors, str(model / "model.safetensors"))
    elif kind == "huge-gain":
        tensors = load_file(str(model / "model.safetensors"))
        tensors["model.norm.weight"][0] = 4096.0
        save_file(tensors, str(model / "model.safetensors"))
    elif kind == "int-weights":
        tensors = load_file(str(model / "model.safetensors"))
        tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
        save_file(tensors, str(model / "model.safetensors"))
    elif kind == "no-tokenizer":
        (model / "tokenizer.json").unlink()
    elif kind == "bad-tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0"}')


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no-config", "no config.json"),
        ("bad-json", "not valid JSON"),
        ("architecture", "unsupported architecture 'GPT2LMHeadModel'"),
        ("heads", "not a multiple"),
        ("rope", "unsupported rope_scaling type 'yarn'"),
        ("no-weights", "no \\*.safetensors"),
        ("corrupt", "not a readable safetensors"),
        ("truncated", "safetensors"),
        ("missing-tensor", "lacks tensor model.layers.0.self_attn.k_proj.weight"),
        ("shape", "has shape"),
        ("nan", "NaN"),
        ("huge-gain", "model.norm.weight has values of magnitude >= 2048"),
        ("int-weights", "expected a float"),
        ("no-tokenizer", "no tokenizer.json"),
        ("bad-tokenizer", "not a valid tokenizer.json"),
    ],
)
def test_bad_model_directories_get_one_clear_error(
    kind: str, message: str, tiny_dir: Path, tmp_path: Path
) -> None:
    model = _copy(tiny_dir, tmp_path / kind)
    _break(kind, model)
    with pytest.raises(ModelError, match=message):
        Engine.load(model)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Engine.load(tmp_path / "nowhere")


def test_rope_parameters_dict_is_read() -> None:
    from verinfer.engine.config import parse_config

    config = tiny_config()
    del config["rope_theta"]
    config["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
    parsed = parse_config(config)
    assert parsed.rope_theta == "1000000.0" and parsed.rope_scaling is None
    config["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "linear", "factor": 2.0}
    assert parse_config(config).rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_mlp_bias_is_refused() -> None:
    from verinfer.engine.config import parse_config

    with pytest.raises(ModelError, match="mlp_bias"):
        parse_config(tiny_config(mlp_bias=True))
