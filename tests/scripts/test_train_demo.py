"""scripts/train_demo.py and the checkpoint it committed in models/demo."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo"


@pytest.fixture(scope="module")
def train_demo():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_demo", REPO / "scripts" / "train_demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module
    spec.loader.exec_module(module)
    return module


def test_split_is_deterministic_disjoint_and_capped(train_demo) -> None:  # type: ignore[no-untyped-def]
    docs = [train_demo.Document(f"doc:{i}", "word " * (i % 50 + 10)) for i in range(2000)]
    train, heldout = train_demo.split_documents(docs)
    assert (train, heldout) == train_demo.split_documents(docs)
    assert {d.name for d in train}.isdisjoint({d.name for d in heldout})
    assert len(train) + len(heldout) == len(docs)
    assert 0 < sum(len(d.text) + 2 for d in heldout) <= train_demo.HELDOUT_MAX_BYTES


def test_prose_keeps_paragraphs_and_drops_code(train_demo) -> None:  # type: ignore[no-untyped-def]
    text = ('The "if" statement\n******************\n\nReturn the sum of\nits arguments.\n\n'
            "   if_stmt ::= 'if' expr\n\n>>> add(1, 2)\n3\n\nIt is exact.")
    assert train_demo.prose(text) == (
        'The "if" statement\n\nReturn the sum of its arguments.\n\nIt is exact.'
    )


def test_tokenizer_round_trips_text_with_spaces(train_demo) -> None:  # type: ignore[no-untyped-def]
    texts = ["The return value is a list of strings.", "If the object is None, raise an error."]
    tokenizer = train_demo.train_tokenizer(texts * 20, vocab_size=300)
    assert tokenizer.token_to_id("<s>") == train_demo.BOS_ID
    assert tokenizer.token_to_id("</s>") == train_demo.EOS_ID
    for text in texts + ["unseen words, with punctuation!"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_learning_rate_warms_up_then_decays_to_a_tenth(train_demo) -> None:  # type: ignore[no-untyped-def]
    lr = [train_demo.learning_rate(s / 100, 1.0, warmup=0.1) for s in range(101)]
    assert lr[0] > 0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lr[10:]))
    assert lr[100] == pytest.approx(0.1)


def test_bad_arguments_are_rejected(train_demo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        train_demo.parse_args(["--steps", "3"])
    with pytest.raises(SystemExit):
        train_demo.parse_args(["--minutes", "0"])


# The committed checkpoint.


def test_demo_checkpoint_is_small_and_complete() -> None:
    names = {f.name for f in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "heldout.txt",
            "TRAINING.md"} <= names
    assert sum(f.stat().st_size for f in DEMO.iterdir()) <= 20 * 2**20
    assert (DEMO / "heldout.txt").stat().st_size <= 100_000


def test_demo_config_is_a_gqa_llama_in_bfloat16() -> None:
    config = json.loads((DEMO / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    assert config["dtype"] == "bfloat16"
    assert config["max_position_embeddings"] in (512, 1024)


def test_demo_weights_keep_hugging_face_names_in_bfloat16() -> None:
    from safetensors import safe_open

    with safe_open(str(DEMO / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
            assert str(f.get_tensor(name).dtype) == "torch.bfloat16"
    assert "model.embed_tokens.weight" in names and "model.layers.0.mlp.gate_proj.weight" in names


def test_demo_tokenizer_decodes_held_out_text_exactly() -> None:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    text = (DEMO / "heldout.txt").read_text(encoding="utf-8")[:5000]
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # BPE merges, not bytes
