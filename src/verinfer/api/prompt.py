"""From an API request to the prompt's token ids: the chat template and the tokenizer.

The node and the gateway both build prompts here, so both commit to the same token ids.
A chat is rendered with the model's own template (`chat_template` in its tokenizer_config.json)
when it has one and jinja2 is installed (sandboxed, as Hugging Face renders it); otherwise with
the plain template below, one line per message and an open assistant turn:

    System: You are terse.
    User: Hello!
    Assistant:

(roles capitalized: System, Developer, User, Assistant; a message's text as given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from verinfer.api.schemas import ChatMessage
from verinfer.errors import GenerationParamsError, ModelError

PLAIN_ROLES = {"system": "System", "developer": "Developer", "user": "User", "assistant": "Assistant"}


def plain_chat_prompt(messages: list[ChatMessage]) -> str:
    """The plain template (module docstring)."""
    lines = [f"{PLAIN_ROLES[m.role]}: {m.text}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


class PromptBuilder:
    """Token ids of completion prompts and chats for one model directory's tokenizer."""

    def __init__(self, tokenizer: Tokenizer, tokenizer_config: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = tokenizer_config or {}
        self.chat_template: str | None = None
        template = self.config.get("chat_template")
        if isinstance(template, str) and template.strip():
            try:
                import jinja2  # noqa: F401
            except ImportError:
                template = None
            self.chat_template = template

    @classmethod
    def from_dir(cls, model_dir: Path, tokenizer: Tokenizer) -> PromptBuilder:
        path = model_dir / "tokenizer_config.json"
        if not path.is_file():
            return cls(tokenizer)
        try:
            config = json.loads(path.read_text())
        except ValueError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls(tokenizer, config if isinstance(config, dict) else {})

    def completion(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt).ids
        else:
            ids = list(prompt)
        if not ids:
            raise GenerationParamsError("the prompt is empty")
        return ids

    def chat_text(self, messages: list[ChatMessage]) -> str:
        if self.chat_template is None:
            return plain_chat_prompt(messages)
        return self._render(messages)

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        text = self.chat_text(messages)
        # A template that writes the BOS itself must not get a second one from the tokenizer.
        ids = self.tokenizer.encode(text, add_special_tokens=self.chat_template is None).ids
        if not ids:
            raise GenerationParamsError("the chat renders to an empty prompt")
        return ids

    def _render(self, messages: list[ChatMessage]) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise GenerationParamsError(f"the model's chat template refused the chat: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        special = {k: _token_text(self.config.get(k)) for k in ("bos_token", "eos_token")}
        try:
            return env.from_string(self.chat_template or "").render(
                messages=[{"role": m.role, "content": m.text} for m in messages],
                add_generation_prompt=True,
                **special,
            )
        except TemplateError as exc:
            raise ModelError(f"the model's chat template failed: {exc}") from exc


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return "" if value is None else str(value)
