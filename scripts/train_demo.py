"""Train the small demo checkpoint (`models/demo`) from English text that ships with CPython.

The corpus needs no download: the language reference that `pydoc` carries as plain text
(`pydoc_data.topics`) plus the docstrings of the installed standard library, collected with
`ast` in sorted file order. A deterministic slice of it is held out for perplexity. The script
trains a byte-level BPE tokenizer (`tokenizers`) and a small grouped-query-attention
`transformers.LlamaForCausalLM` in fp32 on CPU, then saves it in bfloat16 with safetensors,
next to `tokenizer.json`, `heldout.txt` and `TRAINING.md` (what was run and what it reached).

    /tmp/v1/bin/python scripts/train_demo.py --out models/demo --minutes 9 --seed 0

`--minutes` fixes the number of steps from the speed of the first steps (and TRAINING.md records
it); `--steps N` instead trains exactly N steps, which is what reproduces a recorded run.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import pydoc_data.topics
import re
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: the Llama convention
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SEQ_LEN = 256
ROPE_THETA = 10000.0
HELDOUT_MAX_BYTES = 95_000
# Every HELDOUT_EVERY-th document (by a hash of its name) is held out, until the cap is reached.
HELDOUT_EVERY = 12
# Standard-library folders whose docstrings are tests, demos or vendored code, not prose.
SKIPPED_STDLIB_DIRS = {
    "__pycache__", "site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
    "ensurepip", "config-3.11-x86_64-linux-gnu",
}
DEMO_PROMPT = "The return value is"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def prose(text: str) -> str:
    """The English paragraphs of a docstring or reference page, each joined into one line.

    Indented blocks (code, grammar rules, tables), interactive sessions and heading underlines
    are dropped, and hard-wrapped lines are joined: otherwise a small model spends its capacity
    on line breaks and indentation instead of words.
    """
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        lines = [line for line in lines if not set(line.strip()) <= set("*=-~^#")]
        if not lines or any(line.startswith((" ", "\t")) for line in lines):
            continue
        if any(line.startswith((">>>", "...")) for line in lines):
            continue
        paragraphs.append(" ".join(" ".join(lines).split()))
    return "\n\n".join(paragraphs)


def collect_documents() -> list[Document]:
    """The corpus, in an order that depends only on the installed CPython."""
    documents = [
        Document(f"topic:{key}", prose(pydoc_data.topics.topics[key]))
        for key in sorted(pydoc_data.topics.topics)
    ]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_STDLIB_DIRS)
        for filename in sorted(files):
            if not filename.endswith(".py"):
                continue
            path = Path(root) / filename
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are templates or in other encodings
            relative = path.relative_to(stdlib).as_posix()
            for node in ast.walk(tree):
                if not isinstance(
                    node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
                ):
                    continue
                docstring = ast.get_docstring(node)
                text = prose(docstring) if docstring else ""
                if len(text.split()) >= 8:  # one-liners like "Return x." teach little
                    name = getattr(node, "name", "<module>")
                    documents.append(Document(f"doc:{relative}:{name}:{getattr(node, 'lineno', 0)}", text))
    return [d for d in documents if d.text]


def split_documents(documents: list[Document]) -> tuple[list[Document], list[Document]]:
    """Deterministic train / held-out split by a hash of each document's name."""
    train, heldout, heldout_bytes = [], [], 0
    for doc in documents:
        bucket = int.from_bytes(hashlib.sha256(doc.name.encode()).digest()[:4], "big")
        size = len(doc.text.encode()) + 2
        if bucket % HELDOUT_EVERY == 0 and heldout_bytes + size <= HELDOUT_MAX_BYTES:
            heldout.append(doc)
            heldout_bytes += size
        else:
            train.append(doc)
    return train, heldout


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All documents as one stream, each framed by <s> ... </s>."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.append(BOS_ID)
        ids.extend(encoding.ids)
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.long)


def model_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=ROPE_THETA,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        attn_implementation="sdpa",
    )


def learning_rate(progress: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine decay to a tenth."""
    if progress < warmup:
        return peak * max(progress, 0.002) / warmup
    fraction = min(1.0, (progress - warmup) / (1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * fraction)))


@torch.no_grad()
def heldout_loss(model: LlamaForCausalLM, stream: torch.Tensor) -> float:
    """Mean next-token loss over consecutive, non-overlapping windows of the held-out stream."""
    model.eval()
    windows = stream[: (len(stream) - 1) // SEQ_LEN * SEQ_LEN + 1]
    total, count = 0.0, 0
    for start in range(0, len(windows) - 1, SEQ_LEN):
        chunk = windows[start : start + SEQ_LEN + 1].unsqueeze(0)
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total += loss.item()
        count += chunk.shape[1] - 1
    model.train()
    return total / count


@torch.no_grad()
def greedy_sample(model: LlamaForCausalLM, tokenizer: Tokenizer, prompt: str, n: int) -> str:
    model.eval()
    ids = torch.tensor([[BOS_ID, *tokenizer.encode(prompt).ids]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=EOS_ID)
    return tokenizer.decode(out[0, 1:].tolist())


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="output directory")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=9.0, help="wall-time budget for training")
    budget.add_argument("--steps", type=int, help="exact number of optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 10:
        parser.error("--steps must be at least 10")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/train_demo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    documents = collect_documents()
    train_docs, heldout_docs = split_documents(documents)
    train_texts = [d.text for d in train_docs]
    heldout_text = "\n\n".join(d.text for d in heldout_docs) + "\n"
    print(
        f"corpus: {len(documents)} documents, {sum(len(t) for t in train_texts):,} train chars, "
        f"{len(heldout_text):,} held-out chars"
    )

    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    train_stream = token_stream(tokenizer, train_texts)
    heldout_stream = token_stream(tokenizer, [d.text for d in heldout_docs])
    print(f"tokens: {len(train_stream):,} train, {len(heldout_stream):,} held out")

    config = model_config(tokenizer.get_vocab_size())
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)
    offsets = torch.arange(SEQ_LEN + 1)

    def step_once(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_stream) - SEQ_LEN - 1, (args.batch_size,),
                               generator=generator)
        batch = train_stream[starts[:, None] + offsets]  # (B, SEQ_LEN + 1)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    # With --minutes the schedule follows elapsed time, not a step count guessed up front: on a
    # shared machine the speed changes during the run, and every minute of the budget is used.
    budget_s = None if args.steps is not None else args.minutes * 60
    model.train()
    train_started = time.time()
    losses: list[float] = []
    bar = tqdm(total=args.steps or round(budget_s or 0), unit="step" if args.steps else "s",
               dynamic_ncols=True)
    while True:
        elapsed = time.time() - train_started
        progress = len(losses) / args.steps if budget_s is None else elapsed / budget_s
        if progress >= 1.0:
            break
        losses.append(step_once(learning_rate(progress, args.lr)))
        recent = sum(losses[-20:]) / len(losses[-20:])
        bar.update(1 if budget_s is None else min(round(time.time() - train_started),
                                                  bar.total) - bar.n)
        bar.set_postfix(step=len(losses), loss=f"{recent:.3f}")
        if len(losses) % 50 == 0:
            tqdm.write(f"step {len(losses)}  {elapsed:.0f} s  train loss {recent:.4f}")
    bar.close()
    total_steps = len(losses)
    train_seconds = time.time() - train_started
    final_train_loss = sum(losses[-20:]) / len(losses[-20:])
    fp32_heldout = heldout_loss(model, heldout_stream)

    # Saved in bfloat16: half the bytes, and the engine's bf16 loading path gets exercised.
    model = model.to(torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save(str(args.out / "tokenizer.json"))
    (args.out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": config.max_position_embeddings,
    }, indent=2) + "\n")
    (args.out / "heldout.txt").write_text(heldout_text, encoding="utf-8")

    reloaded = LlamaForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32)
    reloaded_tokenizer = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    bf16_heldout = heldout_loss(reloaded, heldout_stream)
    sample = greedy_sample(reloaded, reloaded_tokenizer, DEMO_PROMPT, 48)
    total_seconds = time.time() - started

    reproduce = (
        f"python scripts/train_demo.py --out {args.out} --steps {total_steps} --seed {args.seed}"
        f" --threads {args.threads} --batch-size {args.batch_size} --lr {args.lr:g}"
        f" --vocab-size {args.vocab_size}"
    )
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    report = f"""# Demo checkpoint: how it was trained

Written by `scripts/train_demo.py`. The run below was budgeted by {"steps" if budget_s is None
else "wall time (the learning rate followed elapsed time)"}; this command replays the same number
of steps, same data order and initialization, with the schedule over steps{"" if budget_s is None
else " (so the replay is close to, not bit-identical with, the time-budgeted run)"}. The corpus is
what the installed CPython ships, so another Python version gives a slightly different corpus.

    {reproduce}

| | |
|---|---|
| command run | `{command}` |
| seed | {args.seed} |
| steps | {total_steps} (batch {args.batch_size} x {SEQ_LEN} tokens, AdamW, peak LR {args.lr:g}, warm-up then cosine over {"the steps" if budget_s is None else f"{args.minutes:g} minutes of wall time"}) |
| training wall time | {train_seconds / 60:.1f} min (whole script {total_seconds / 60:.1f} min) |
| final train loss (mean of last 20 steps) | {final_train_loss:.4f} |
| held-out loss, fp32 weights | {fp32_heldout:.4f} (perplexity {math.exp(fp32_heldout):.2f}) |
| held-out loss, saved bf16 weights | {bf16_heldout:.4f} (perplexity {math.exp(bf16_heldout):.2f}) |
| parameters | {n_params:,} (tied embeddings) |
| architecture | LlamaForCausalLM, hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, {config.num_key_value_heads} KV heads, MLP {config.intermediate_size}, vocab {config.vocab_size}, rope_theta {ROPE_THETA:g} |
| corpus | `pydoc_data.topics` + stdlib docstrings, prose paragraphs only (code, grammar, sessions dropped): {len(train_stream):,} train tokens, {len(heldout_stream):,} held-out tokens (`heldout.txt`) |
| tokenizer | byte-level BPE, vocab {tokenizer.get_vocab_size()}, specials `<unk>`=0 `<s>`=1 `</s>`=2 |
| machine | {machine_description()} |
| checkpoint size | {size / 1e6:.1f} MB |

Greedy continuation of the demo prompt `{DEMO_PROMPT}` (transformers, saved weights in fp32):

```text
{sample}
```
"""
    (args.out / "TRAINING.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
