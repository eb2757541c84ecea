"""`verinfer generate` and `verinfer model ...` as a user runs them: output, hash, errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from verinfer.engine import Engine, SamplingParams


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verinfer.cli", *args],
        check=False, capture_output=True, text=True, timeout=300,
    )


def test_generate_prints_completion_then_hash(tiny_dir: Path, tiny_engine: Engine) -> None:
    done = _run("generate", "--model", str(tiny_dir), "--max-tokens", "9", "--temperature", "0.5",
                "--seed", "4", "Hello there")
    assert done.returncode == 0, done.stderr
    expected = tiny_engine.generate(["Hello there"], SamplingParams(max_tokens=9, temperature=0.5, seed=4))[0]
    lines = done.stdout.splitlines()
    assert lines[-1] == f"output_hash: {expected.output_hash}"
    assert re.fullmatch(r"output_hash: [0-9a-f]{64}", lines[-1])
    assert expected.text in done.stdout
    assert f"model_id: {tiny_engine.model_id}" in done.stderr


def test_model_inspect_and_quantize(tiny_dir: Path, tiny_engine: Engine, tmp_path: Path) -> None:
    shown = _run("model", "inspect", str(tiny_dir), "--json")
    assert shown.returncode == 0, shown.stderr
    assert tiny_engine.model_id in shown.stdout and '"parameters"' in shown.stdout
    saved = _run("model", "quantize", str(tiny_dir), "--out", str(tmp_path / "q"))
    assert saved.returncode == 0, saved.stderr
    assert tiny_engine.model_id in saved.stdout
    assert Engine.load(tmp_path / "q").model_id == tiny_engine.model_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "-1", "hi"], "max_tokens must be a positive integer"),
        (["--top-p", "1.5", "hi"], "top_p must be in (0, 1]"),
        (["--temperature", "-2", "hi"], "temperature must be in"),
        ([""], "the prompt is empty"),
        (["x" * 600], "context"),
    ],
)
def test_bad_generation_parameters_get_one_line(tiny_dir: Path, args: list[str], message: str) -> None:
    done = _run("generate", "--model", str(tiny_dir), *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bad_model_directory_gets_one_line(tmp_path: Path) -> None:
    done = _run("generate", "--model", str(tmp_path / "absent"), "hi")
    assert done.returncode == 2
    assert done.stderr.startswith("error: model directory") and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["generate"], ["model", "inspect"], ["model", "quantize"]])
def test_help(command: list[str]) -> None:
    done = _run(*command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout
