"""Stage node processes for the pipeline tests: `verinfer node --layers A:B` on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verinfer.engine import Engine, GenerationResult
from verinfer.engine.params import SamplingParams
from verinfer.pipeline.driver import PipelineResult, RouteDriver, StageSpec

SRC = Path(__file__).resolve().parents[2] / "src"
READY = re.compile(r"^verinfer stage (0x[0-9a-fA-F]{40}) layers (\d+):(\d+) listening on "
                   r"tcp://([0-9.]+):(\d+) model (\S+)$")
SPLIT_LAYERS = 8  # enough for 4 stages of 2 layers


def generate_as_one_node(engine: Engine, route: list[StageSpec], prompts: Sequence[Sequence[int]],
                         params: Sequence[SamplingParams], **driver_args: Any,
                         ) -> tuple[RouteDriver, PipelineResult, list[GenerationResult]]:
    """Run `prompts` through `route`, check that the tokens and logits hashes are the single
    engine's, and return the (closed) driver, the result and the single engine's results for
    the test's own checks."""
    expected = engine.generate(prompts, params)
    driver = RouteDriver(route, engine.config, engine.tokenizer, **driver_args)
    try:
        got = driver.generate(prompts, params)
    finally:
        driver.close()
    assert [r.token_ids for r in got.results] == [r.token_ids for r in expected]
    assert [r.logits_hash for r in got.results] == [r.logits_hash for r in expected]
    return driver, got, expected


class StageProcess:
    """One `verinfer node --layers A:B` process on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, model: Path, layers: str, state: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "verinfer.cli", "node", "--model", str(model),
               "--layers", layers, "--port", "0", "--data-dir", str(state), "--threads", "1",
               *extra]
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.address, self.host, self.port = "", "", 0

    def wait_ready(self) -> StageProcess:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = READY.match(line)
        if not match:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"stage did not start: {line!r} {err}")
        self.address = match.group(1)
        self.host, self.port = match.group(4), int(match.group(5))
        return self

    def spec(self, start: int, end: int) -> StageSpec:
        return StageSpec(self.host, self.port, start, end)

    def kill(self) -> None:
        """kill -9: no goodbye, the connection just drops."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.communicate(timeout=30)


class StageFarm:
    def __init__(self, model: Path, root: Path) -> None:
        self.model, self.root = model, root
        self.procs: list[StageProcess] = []

    def start(self, layers: str, *extra: str) -> StageProcess:
        return self.start_many([layers], *extra)[0]

    def start_many(self, layers: list[str], *extra: str) -> list[StageProcess]:
        """Start the processes together (each loads the model), then wait for each."""
        started = []
        for rng in layers:
            state = self.root / f"stage{len(self.procs)}"
            proc = StageProcess(self.model, rng, state, *extra)
            self.procs.append(proc)
            started.append(proc)
        return [p.wait_ready() for p in started]
