"""A split run over real stage processes gives the single engine's bytes (must-show 1)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from stagefarm import SPLIT_LAYERS, SRC, StageFarm, generate_as_one_node

from verinfer.engine import Engine
from verinfer.engine.params import SamplingParams
from verinfer.pipeline.driver import RouteDriver, RouteError, StageSpec, check_route, parse_stage

PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98],
           [256, 65]]
PARAMS = [
    SamplingParams(max_tokens=8, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=0.9, top_k=40, seed=11, ignore_eos=True),
    SamplingParams(max_tokens=10, temperature=1.3, top_p=0.9, seed=12345, ignore_eos=True),
]


def _ranges(stages: int) -> list[tuple[int, int]]:
    cuts = {2: [0, 3, 8], 3: [0, 2, 5, 8], 4: [0, 2, 4, 6, 8]}[stages]
    return list(itertools.pairwise(cuts))


def test_parse_and_check_route() -> None:
    assert parse_stage("127.0.0.1:9101=0:4") == StageSpec("127.0.0.1", 9101, 0, 4)
    with pytest.raises(RouteError, match="HOST:PORT=START:END"):
        parse_stage("127.0.0.1:9101")
    with pytest.raises(RouteError, match="must start at layer 4"):
        check_route([StageSpec("h", 1, 0, 4), StageSpec("h", 2, 5, 8)], 8)
    with pytest.raises(RouteError, match="ends at layer 6"):
        check_route([StageSpec("h", 1, 0, 6)], 8)


@pytest.mark.slow
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_split_run_is_byte_identical_to_one_engine(
    stages: int, split_engine: Engine, stage_farm: StageFarm
) -> None:
    ranges = _ranges(stages)
    procs = stage_farm.start_many([f"{a}:{b}" for a, b in ranges])
    route = [p.spec(a, b) for p, (a, b) in zip(procs, ranges)]
    _, got, expected = generate_as_one_node(split_engine, route, PROMPTS, PARAMS, prefill_chunk=5)
    assert [r.output_hash for r in got.results] == [r.output_hash for r in expected]
    assert [r.text for r in got.results] == [r.text for r in expected]
    # Every stage signed every step, and the commitments chain: one's output is the next's input.
    assert [(s.layer_start, s.layer_end) for s in got.stages] == ranges
    assert [s.node for s in got.stages] == [p.address for p in procs]
    steps = len(got.stages[0].commitments)
    assert steps > 0 and all(len(s.commitments) == steps for s in got.stages)
    for before, after in zip(got.stages, got.stages[1:]):
        for a, b in zip(before.commitments, after.commitments):
            assert a.commitment.output_hash == b.commitment.input_hash
            assert a.commitment.seq == b.commitment.seq
    assert SPLIT_LAYERS == ranges[-1][1]
    # Each stage process holds only its range: together about the whole model's weights.
    held = [s.weight_bytes for s in got.stages]
    whole = split_engine.model.resident_bytes()
    assert all(isinstance(b, int) and 0 < b < whole for b in held)
    assert sum(b for b in held if b is not None) == whole


@pytest.mark.slow
def test_split_cli_prints_the_engine_result_and_checks_the_stages(
    split_engine: Engine, split_dir: Path, stage_farm: StageFarm
) -> None:
    honest, cheater = stage_farm.start_many(["0:5"])[0], stage_farm.start("5:8", "--cheat",
                                                                          "wrong-activations")
    args = ["--model", str(split_dir), "--prompt", "Hello there", "--max-tokens", "4", "--json"]
    stages = ["--stage", f"{honest.host}:{honest.port}=0:5",
              "--stage", f"{cheater.host}:{cheater.port}=5:8"]
    base = [sys.executable, "-m", "verinfer.cli", "split", *args, "--check"]
    done = subprocess.run([*base, *stages], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert [(f["node"], f["layers"]) for f in report["faults"]] == [(cheater.address, [5, 8])]

    # The cheater's range handed to the honest process: the engine's bytes, nothing to pin.
    done = subprocess.run([*base, "--stage", f"{honest.host}:{honest.port}=0:8"], check=False,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = split_engine.generate(["Hello there"], SamplingParams(max_tokens=4))[0]
    assert report["token_ids"] == expected.token_ids and report["faults"] == []
    assert report["logits_hash"] == expected.logits_hash
    assert len(report["stages"]) == 1 and report["stages"][0]["layers"] == [0, 8]


def test_split_cli_says_when_a_stage_is_not_running(split_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "verinfer.cli", "split", "--model", str(split_dir), "--prompt",
           "Hi", "--stage", f"127.0.0.1:{port}=0:8"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 2 and "is the stage running" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_one_driver_runs_generations_back_to_back(split_engine: Engine, stage_farm: StageFarm) -> None:
    procs = stage_farm.start_many(["0:4", "4:8"])
    driver = RouteDriver([procs[0].spec(0, 4), procs[1].spec(4, 8)], split_engine.config,
                         split_engine.tokenizer)
    try:
        first = driver.generate(PROMPTS[:1], PARAMS[:1])
        second = driver.generate(PROMPTS[1:], PARAMS[1:])
    finally:
        driver.close()
    expected = split_engine.generate(PROMPTS, PARAMS)
    assert first.results[0].token_ids == expected[0].token_ids
    assert [r.logits_hash for r in second.results] == [r.logits_hash for r in expected[1:]]
    assert first.session != second.session
    assert all(c.commitment.session == second.session
               for s in second.stages for c in s.commitments)
