"""`verinfer plan` and `verinfer profile`: tables, JSON, the format in --help, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from verinfer.cli import app
from verinfer.engine.testing import TINY_LLAMA_1B, tiny_config
from verinfer.pipeline.cluster import load_model_config, model_spec_from_config
from verinfer.pipeline.planner import evaluate

runner = CliRunner()
SRC = str(Path(__file__).parents[2] / "src")

NODES = """
[default_link]
latency_ms = 30.0
bandwidth_mbit = 100.0

[[node]]
name = "laptop"
layer_ms = 2.0
free_gib = 0.9

[[node]]
name = "desktop"
gmacs = 60.0
free_gib = 0.8

[[node]]
name = "phone"
layer_ms = 15.0
head_ms = 40.0
free_gib = 0.5

[[link]]
a = "driver"
b = "laptop"
latency_ms = 0.3
bandwidth_mbit = 1000.0

[[link]]
a = "laptop"
b = "desktop"
latency_ms = 0.5
bandwidth_mbit = 1000.0
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A TinyLlama-1.1B-shaped config (no weights: the planner reads config.json only)."""
    out = tmp_path / "tinyllama"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(TINY_LLAMA_1B))
    return out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    return path


def test_plan_prints_the_plan_and_the_baselines(tmp_path: Path, model_dir: Path) -> None:
    result = runner.invoke(app, ["plan", "--nodes", str(_write(tmp_path, NODES)),
                                 "--model", str(model_dir), "--context", "512"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    # TinyLlama's hidden size is 2048: an int32 frame of 4 x 2048 B plus 64 B of header
    for text in ("plan for tinyllama (latency)", "laptop", "desktop", "ms per token",
                 "solver: optimal", "memory-proportional", "best single node",
                 "frames per token: 8,256 B between stages", "16,448 B if a frame falls back"):
        assert text in out, out
    # 1.1B int8 weights (~1.1 GiB) fit on no single node here
    assert "no node holds the model" in out


def test_plan_json_matches_an_independent_evaluation(tmp_path: Path, model_dir: Path) -> None:
    nodes = _write(tmp_path, NODES)
    result = runner.invoke(app, ["plan", "--nodes", str(nodes), "--model", str(model_dir),
                                 "--context", "512", "--objective", "throughput",
                                 "--sequences", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    stages = out["plan"]["stages"]
    assert stages[0]["layers"][0] == 0 and stages[-1]["layers"][1] == 22
    assert out["plan"]["objective"] == "throughput" and out["plan"]["sequences"] == 3
    from verinfer.pipeline.nodesfile import load_nodes

    spec = model_spec_from_config(load_model_config(model_dir), "x", 512, 3)
    cluster = load_nodes(nodes, spec)
    route = [(s["node"], s["layers"][1] - s["layers"][0]) for s in stages]
    again = evaluate(cluster, spec, route, "throughput")
    assert again.fits
    assert out["plan"]["latency_ms"] == pytest.approx(again.latency_s * 1e3)
    assert out["plan"]["throughput_tps"] == pytest.approx(again.throughput_tps)
    assert out["best_single_node"] is None
    assert out["model"]["activation_bytes"] == 64 + 4 * 2048
    assert out["model"]["activation_bytes_int64"] == 64 + 8 * 2048
    assert out["memory_proportional"]["method"] == "memory-proportional"


def test_plan_reads_a_quantized_model_manifest(tmp_path: Path) -> None:
    from verinfer.engine.config import parse_config
    from verinfer.engine.quantize import QUANTIZED_MANIFEST
    from verinfer.pipeline.cluster import QUANTIZED_MANIFEST as planner_manifest

    assert planner_manifest == QUANTIZED_MANIFEST
    quantized = tmp_path / "q"
    quantized.mkdir()
    config = parse_config(tiny_config())
    (quantized / QUANTIZED_MANIFEST).write_text(json.dumps({"config": config.to_dict()}))
    assert load_model_config(quantized) == config


def test_help_documents_the_nodes_file() -> None:
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0
    for text in ("[[node]]", "[[link]]", "[default_link]", "layer_ms", "gmacs", "free_gib",
                 "latency_ms", "bandwidth_mbit", "driver"):
        assert text in result.output, text


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("layer_ms = 2.0", "layer_ms = -2.0"), "node 'laptop': layer_ms must be >= 0"),
    (lambda t: t.replace("free_gib = 0.8\n", ""), "node 'desktop': missing field free_gib"),
    (lambda t: t.replace('b = "laptop"', 'b = "tablet"'), "link 1: unknown node 'tablet'"),
    (lambda t: t.replace("gmacs = 60.0", "gmacs = 60.0\nlayer_ms = 1.0"), "exactly one of layer_ms or gmacs"),
    (lambda t: t.replace("free_gib = 0.5", "free_gb = 0.5"), "unknown field free_gb"),
    (lambda t: t.replace("bandwidth_mbit = 100.0", "bandwidth_mbit = 0"), "bandwidth_mbit must be > 0"),
    (lambda t: t.replace("[default_link]\nlatency_ms = 30.0\nbandwidth_mbit = 100.0", ""),
     "no link between"),
    (lambda t: t.replace('name = "phone"', 'name = "laptop"'), "node 'laptop' is listed twice"),
    (lambda t: t + "\n[[node\n", "not valid TOML"),
    (lambda t: t.replace("free_gib = 0.9", "free_gib = 0.01").replace("free_gib = 0.8", "free_gib = 0.01")
     .replace("free_gib = 0.5", "free_gib = 0.01"), "does not fit"),
])
def test_bad_nodes_files_give_one_line_errors(tmp_path: Path, model_dir: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    nodes = _write(tmp_path, change(NODES))
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-m", "verinfer.cli", "plan", "--nodes", str(nodes),
                           "--model", str(model_dir)],
                          check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_bad_options_give_one_line_errors(tmp_path: Path, model_dir: Path) -> None:
    nodes = str(_write(tmp_path, NODES))
    for args, message in ((["--objective", "speed"], "--objective"),
                          (["--sequences", "0"], "--sequences"),
                          (["--result", "probs"], "result must be")):
        result = runner.invoke(app, ["plan", "--nodes", nodes, "--model", str(model_dir), *args])
        assert result.exit_code != 0 and message in str(result.exception), result.output
    missing = runner.invoke(app, ["plan", "--nodes", str(tmp_path / "none.toml"), "--model",
                                  str(model_dir)])
    assert "no such file" in str(missing.exception)


def test_profile_prints_a_nodes_entry_that_plans(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(tiny_config()))
    result = runner.invoke(app, ["profile", "--model", str(model), "--name", "me"])
    assert result.exit_code == 0, result.output
    assert "[[node]]" in result.output and 'name = "me"' in result.output
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(result.output + "\n[default_link]\nlatency_ms = 0.1\nbandwidth_mbit = 1000\n")
    planned = runner.invoke(app, ["plan", "--nodes", str(nodes), "--model", str(model), "--json"])
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.output)["plan"]["stages"][0]["node"] == "me"
