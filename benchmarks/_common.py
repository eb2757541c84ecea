"""Shared pieces of the engine benchmarks: the machine, benchmark checkpoints, child processes.

Benchmark checkpoints that are too big to commit (the random TinyLlama-1.1B-shaped model and the
GGUF conversions for llama.cpp) are written once under `$VERINFER_BENCH_DIR` (default
`/tmp/verinfer-bench`) and reused by later runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "models" / "demo"
BENCH_DIR = Path(os.environ.get("VERINFER_BENCH_DIR", "/tmp/verinfer-bench"))
# Where the vendored llama.cpp sources of the llama-cpp-python sdist were unpacked (the GGUF
# converter `convert_hf_to_gguf.py` lives there); see benchmarks/engine.py for the commands.
LLAMA_CPP_SRC = Path(os.environ.get("VERINFER_LLAMA_CPP_SRC", str(BENCH_DIR / "llama.cpp")))
RESULT_PREFIX = "BENCH-RESULT "

def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "unknown"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "simd": " ".join(simd) or "none of avx2/avx512",
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def machine_line() -> str:
    """One line naming the machine and its load average, printed before a run's figures."""
    info = machine()
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory']}, {info['simd']}, "
            f"python {info['python']}, torch {info['torch']}; load average at start {info['load']}")


def wide_console() -> Console:
    """A rich console that does not squeeze tables to 80 columns when writing to a file."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def random_1b_checkpoint() -> Path:
    """Random bf16 weights in TinyLlama-1.1B's shape (1.1e9 parameters), written on first use."""
    out = BENCH_DIR / "tinyllama-1b-random"
    done = out / ".complete"
    if done.is_file():
        return out
    print(f"writing the random 1.1B checkpoint to {out} (once) ...", flush=True)
    # In a child process: a child inherits its parent's resident size as the floor of its own
    # peak RSS, so the benchmark's parent must stay small.
    code = (
        "import sys\n"
        "from verinfer.engine.testing import TINY_LLAMA_1B, write_random_checkpoint\n"
        "write_random_checkpoint(sys.argv[1], TINY_LLAMA_1B, seed=0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    # The demo's BPE tokenizer replaces the merge-less byte tokenizer: llama.cpp refuses to
    # load a BPE vocabulary without merges. Token ids below 4096 mean the same to every engine.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(DEMO_MODEL / name, out / name)
    done.write_text("ok\n")
    return out


def model_dir(name: str) -> Path:
    if name == "demo":
        return DEMO_MODEL
    if name == "1b":
        return random_1b_checkpoint()
    raise ValueError(f"unknown model {name!r} (use demo or 1b)")


def fingerprint(hf_dir: Path) -> str:
    """Names, sizes and modification times of a checkpoint's files: a retrained or rewritten
    checkpoint gets fresh conversions instead of stale cached ones."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns)
             for f in sorted(hf_dir.iterdir()) if f.is_file()]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def verinfer_quantized(model: str, hf_dir: Path) -> Path:
    """The checkpoint quantized once by the engine (so timed children load int8 directly).

    The cache is keyed by the engine's quantization and config code, so an engine change
    never benchmarks stale integers.
    """
    import verinfer.engine

    engine_src = Path(verinfer.engine.__file__).parent
    code_hash = hashlib.sha256(b"".join(
        (engine_src / name).read_bytes() for name in ("quantize.py", "config.py", "checkpoint.py")
    )).hexdigest()[:12]
    out = BENCH_DIR / f"{model}-verinfer-{code_hash}-{fingerprint(hf_dir)}"
    if (out / ".complete").is_file():
        return out
    print(f"quantizing {hf_dir} into {out} (once) ...", flush=True)
    code = (
        "import sys, pathlib\n"
        "from verinfer.engine.quantize import quantize_checkpoint, save_quantized\n"
        "src = pathlib.Path(sys.argv[1])\n"
        "save_quantized(quantize_checkpoint(src), sys.argv[2], src / 'tokenizer.json')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(hf_dir), str(out)], check=True)
    (out / ".complete").write_text("ok\n")
    return out


def llama_cpp_available(python: str | None = None) -> str | None:
    """None when llama-cpp-python imports (in `python`, default this one), else why not."""
    done = subprocess.run([python or sys.executable, "-c", "import llama_cpp, numpy, rich"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"llama-cpp-python is not installed for {python or sys.executable} ({last})"
    return None


def gguf_q8_0(model: str, hf_dir: Path) -> Path:
    """The checkpoint converted to GGUF Q8_0 with llama.cpp's own converter (cached)."""
    out = BENCH_DIR / f"{model}-{fingerprint(hf_dir)}-q8_0.gguf"
    if out.is_file():
        return out
    converter = LLAMA_CPP_SRC / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise FileNotFoundError(
            f"{converter} not found: unpack the llama-cpp-python sdist's vendor/llama.cpp there "
            "or set VERINFER_LLAMA_CPP_SRC"
        )
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    print(f"converting {hf_dir} to {out} with {converter} ...", flush=True)
    # Our BPE tokenizers are not in the converter's table of known pre-tokenizers; they split
    # text like GPT-2, so they are declared as such. The benchmark feeds token ids, never text.
    runner = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(LLAMA_CPP_SRC)!r}, {str(LLAMA_CPP_SRC / 'gguf-py')!r}]\n"
        "import conversion.base as base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
        f"sys.argv = [{str(converter)!r}, {str(hf_dir)!r}, '--outtype', 'q8_0',"
        f" '--outfile', {str(out) + '.part'!r}]\n"
        f"runpy.run_path({str(converter)!r}, run_name='__main__')\n"
    )
    subprocess.run([sys.executable, "-c", runner], check=True)
    Path(str(out) + ".part").rename(out)
    return out


def run_child(argv: list[str], timeout: float, env: dict[str, str] | None = None,
              python: str | None = None) -> dict[str, Any]:
    """Run `python benchmarks/engine.py --child ...` (with `python`, default this one, and
    `env` added to the environment) and return the JSON it reports."""
    proc = subprocess.run(
        [python or sys.executable, str(Path(__file__).with_name("engine.py")), *argv],
        capture_output=True,
        check=False,  # a failed child becomes an "error" row, not an aborted benchmark
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
