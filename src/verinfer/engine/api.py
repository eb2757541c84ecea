"""`Engine`: the engine's public face — load a model, generate, stream, run layer ranges.

The node and the pipeline build on this class; everything below it is pure integer code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from verinfer.engine import fixedpoint as fp
from verinfer.engine import generate as gen
from verinfer.engine.config import ModelConfig
from verinfer.engine.generate import check_prompt
from verinfer.engine.model import IntModel, KVCache, embed, final_norm, forward_layers, head
from verinfer.engine.quantize import (
    QuantizedModel,
    is_quantized_dir,
    load_quantized,
    quantize_checkpoint,
)
from verinfer.engine.replay import ReplayResult, replay
from verinfer.engine.sampler import SamplingParams
from verinfer.errors import GenerationParamsError, ModelError

Prompt = str | Sequence[int]
GREEDY = SamplingParams()


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r} (use cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but no CUDA GPU is available: use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r} (use cpu or cuda)")
    return dev


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ModelError(f"{path.parent}: no tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelError(f"{path}: not a valid tokenizer.json ({exc})") from exc


class Engine:
    """A loaded, quantized model with its tokenizer, on one device."""

    def __init__(self, qmodel: QuantizedModel, tokenizer: Tokenizer, device: str = "cpu") -> None:
        # Only the device-resident integer model is kept: on another device the quantized
        # tensors would be a second copy of every weight.
        self.model = IntModel(qmodel, _resolve_device(device))
        self.tokenizer = tokenizer

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        progress: Callable[[str], None] | None = None,
    ) -> Engine:
        """Load a Hugging Face checkpoint directory (quantized on the fly) or a quantized one."""
        model_dir = Path(path)
        if not model_dir.is_dir():
            raise ModelError(f"model directory {str(path)!r} does not exist")
        tokenizer = _load_tokenizer(model_dir / "tokenizer.json")
        if is_quantized_dir(model_dir):
            qmodel = load_quantized(model_dir)
        else:
            qmodel = quantize_checkpoint(model_dir, progress)
        return cls(qmodel, tokenizer, device)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt (with the tokenizer's special tokens), or ids as given."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise GenerationParamsError("the prompt is empty")
            return self.tokenizer.encode(prompt).ids
        ids = [int(t) for t in prompt]
        if not ids:
            raise GenerationParamsError("the prompt is empty")
        return ids

    def _batch(
        self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
    ) -> tuple[list[list[int]], list[SamplingParams]]:
        ids = [self.encode(p) for p in prompts]
        if isinstance(params, SamplingParams):
            return ids, [params] * len(ids)
        return ids, list(params)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] = GREEDY,
        prefill_chunk: int = gen.DEFAULT_PREFILL_CHUNK,
    ) -> list[gen.GenerationResult]:
        """Complete a batch of prompts (text or token ids); one result per prompt."""
        ids, plist = self._batch(prompts, params)
        return gen.generate(self.model, self.tokenizer, ids, plist, prefill_chunk)

    def stream(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] = GREEDY,
        prefill_chunk: int = gen.DEFAULT_PREFILL_CHUNK,
        results: list[gen.GenerationResult] | None = None,
    ) -> Iterator[gen.TokenEvent]:
        """Like `generate`, yielding a `TokenEvent` per row per step as tokens are produced."""
        ids, plist = self._batch(prompts, params)
        return gen.generate_stream(self.model, self.tokenizer, ids, plist, prefill_chunk, results)

    def teacher_forced_logits(self, prompt: Sequence[int], output: Sequence[int]) -> torch.Tensor:
        """Int32 logits (len(output), V) of each step of `output`, by one prefill."""
        check_prompt(self.config, prompt)
        if not output or len(prompt) + len(output) - 1 > self.config.context_length:
            raise GenerationParamsError("the output must be non-empty and fit in the context")
        if min(output) < 0 or max(output) >= self.config.vocab_size:
            raise GenerationParamsError("the output has token ids outside the vocabulary")
        return gen.teacher_forced_logits(self.model, prompt, output)

    def replay(
        self, prompt: Sequence[int], output: Sequence[int], params: SamplingParams = GREEDY
    ) -> ReplayResult:
        """Check a claimed output by one teacher-forced prefill (`verinfer.engine.replay`)."""
        return replay(self.model, self.tokenizer, prompt, output, params)

    # Layer-range access, for split inference: embed -> run_layers (any range) -> logits.

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache.allocate(self.config, batch, length, self.model.device)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) int64 hidden states (ACT_FRAC fixed point)."""
        return embed(self.model, token_ids.to(self.model.device))

    def run_layers(
        self, hidden: torch.Tensor, cache: KVCache, positions: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        if not 0 <= start <= end <= self.config.num_hidden_layers:
            raise GenerationParamsError(
                f"layer range {start}..{end} outside 0..{self.config.num_hidden_layers}"
            )
        with torch.inference_mode():
            return forward_layers(self.model, hidden, cache, positions, start, end)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: int32 logits (ACT_FRAC fixed point)."""
        return head(self.model, hidden)

    # Float views for fidelity measurements (never used on the inference path).

    def _full_pass(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], device=self.model.device)
        cache = self.new_cache(1, ids.shape[1])
        positions = torch.arange(ids.shape[1], device=self.model.device).unsqueeze(0)
        with torch.inference_mode():
            return forward_layers(self.model, embed(self.model, ids), cache, positions)

    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Dequantized logits (T, V) float64 for every position of one sequence."""
        h = self._full_pass(token_ids)
        return head(self.model, h)[0].to(torch.float64) / (1 << fp.ACT_FRAC)

    def final_hidden(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Dequantized final-norm output (T, D) float64: what the LM head sees."""
        q, mant, exp = final_norm(self.model, self._full_pass(token_ids))
        return q[0].to(torch.float64) * mant[0].to(torch.float64) * torch.pow(2.0, -exp[0].to(torch.float64))
