"""Chat prompts: the model's own template when it has one, the plain documented one otherwise."""

from __future__ import annotations

import pytest

from verinfer.api.prompt import PromptBuilder, plain_chat_prompt
from verinfer.api.schemas import ChatMessage
from verinfer.engine.testing import byte_tokenizer
from verinfer.errors import GenerationParamsError

CHAT = [ChatMessage(role="system", content="Be terse."),
        ChatMessage(role="user", content=[{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}])]  # type: ignore[list-item]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_plain_template() -> None:
    assert plain_chat_prompt(CHAT) == "System: Be terse.\nUser: Hi!\nAssistant:"
    builder = PromptBuilder(byte_tokenizer())
    assert builder.chat_text(CHAT) == plain_chat_prompt(CHAT)
    assert builder.chat(CHAT) == byte_tokenizer().encode(plain_chat_prompt(CHAT)).ids


def test_model_template_is_rendered_with_its_special_tokens() -> None:
    config = {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": {"content": "</s>"}}
    builder = PromptBuilder(byte_tokenizer(), config)
    text = builder.chat_text(CHAT)
    assert text == "<s><|system|>Be terse.</s><|user|>Hi!</s><|assistant|>"
    ids = builder.chat(CHAT)
    assert ids[0] == byte_tokenizer().token_to_id("<s>") and ids.count(ids[0]) == 1


def test_template_refusals_are_clear() -> None:
    template = "{{ raise_exception('only user messages') }}"
    builder = PromptBuilder(byte_tokenizer(), {"chat_template": template})
    with pytest.raises(GenerationParamsError, match="only user messages"):
        builder.chat(CHAT)
