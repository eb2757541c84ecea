"""The integer model tracks the float reference (transformers, fp32) on every supported variant,
and a layer range run alone composes to the whole model byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from verinfer.engine import Engine
from verinfer.engine.testing import tiny_config, write_random_checkpoint

VARIANTS = {
    "llama": tiny_config(),
    "llama-tied": tiny_config(tie_word_embeddings=True),
    "llama-rope-llama3": tiny_config(
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama-rope-linear": tiny_config(rope_scaling={"type": "linear", "factor": 2.0}),
    "llama-rope-parameters": {  # transformers >= 5 style: one dict for theta, type and scaling
        **{k: v for k, v in tiny_config().items() if k != "rope_theta"},
        "rope_parameters": {"rope_theta": 250000.0, "rope_type": "llama3", "factor": 4.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64},
    },
    "mistral": tiny_config(architectures=["MistralForCausalLM"], model_type="mistral",
                           sliding_window=None),
    "qwen2": tiny_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                         attention_bias=True, rope_theta=1000000.0),
}


def _float_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(ids).logits[0].double()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_float_reference(variant: str, tmp_path: Path) -> None:
    model_dir = write_random_checkpoint(tmp_path / variant, VARIANTS[variant], seed=7)
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(0))
    reference = _float_logits(model_dir, ids)
    ours = Engine.load(model_dir).logits(ids[0].tolist())
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=-1)
    assert float(cosine.min()) > 0.999, f"{variant}: min cosine {float(cosine.min()):.5f}"
    assert float((ours - reference).abs().max()) < 0.05 * float(reference.abs().max())


def test_layer_ranges_compose_to_the_whole_model(tiny_engine: Engine) -> None:
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    layers = tiny_engine.config.num_hidden_layers
    whole_cache = tiny_engine.new_cache(1, 16)
    whole = tiny_engine.head(tiny_engine.run_layers(tiny_engine.embed(ids), whole_cache, positions, 0, layers))
    split_cache = tiny_engine.new_cache(1, 16)
    h = tiny_engine.embed(ids)
    for start in range(layers):  # one "stage" per layer
        h = tiny_engine.run_layers(h, split_cache, positions, start, start + 1)
    assert torch.equal(tiny_engine.head(h), whole)
    assert all(torch.equal(a, b) for a, b in zip(whole_cache.k, split_cache.k))


def test_run_layers_rejects_bad_range(tiny_engine: Engine) -> None:
    from verinfer.errors import GenerationParamsError

    with pytest.raises(GenerationParamsError, match="layer range"):
        tiny_engine.run_layers(torch.zeros(1, 1, 64, dtype=torch.int64), tiny_engine.new_cache(1, 4),
                               torch.zeros(1, 1, dtype=torch.int64), 1, 5)
