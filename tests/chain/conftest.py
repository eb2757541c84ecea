"""Fixtures of the chain tests: the contract compiled once per session, fresh per test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boa
import pytest

from verinfer.chain.artifact import SOURCE_PATH
from verinfer.protocol.settlement import SettlementParams

SRC = Path(__file__).parents[2] / "src"
PARAMS = SettlementParams(
    min_stake=1000,
    unbonding_delay=100,
    reward_asserter=10,
    reward_validators=9,
    slash=500,
    protocol_fee_bps=1000,
    discount_bps=5000,
    challenger_share_bps=5000,
)


@pytest.fixture(scope="session")
def settlement_deployer() -> Any:
    return boa.load_partial(str(SOURCE_PATH))


@pytest.fixture
def deploy(settlement_deployer: Any) -> Callable[..., Any]:
    """Deploy a fresh contract (from boa's default account, which gets every role)."""

    def _deploy(params: SettlementParams = PARAMS) -> Any:
        return settlement_deployer.deploy(params_tuple(params))

    return _deploy


def params_tuple(params: SettlementParams) -> tuple[int, ...]:
    return (
        params.min_stake,
        params.unbonding_delay,
        params.reward_asserter,
        params.reward_validators,
        params.slash,
        params.protocol_fee_bps,
        params.discount_bps,
        params.challenger_share_bps,
    )


class DevChainProcess:
    """`verinfer chain serve` as a child process on an ephemeral loopback port."""

    def __init__(self, data_dir: Path, deploy: bool = True, timeout_s: float = 90.0) -> None:
        cmd = [sys.executable, "-m", "verinfer.cli", "chain", "serve", "--port", "0",
               "--data-dir", str(data_dir)]
        if not deploy:
            cmd.append("--no-deploy")
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        self.lines: list[str] = []
        self.url = ""
        self.contract = ""
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while not self.url:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"dev chain did not start: {self.lines}")
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"dev chain exited ({self.proc.returncode}): {self.lines}")
            self.lines.append(line.rstrip())
            if m := re.match(r"settlement contract at (0x[0-9a-fA-F]{40})", line):
                self.contract = m.group(1)
            if m := re.match(r"listening on (http://127\.0\.0\.1:\d+)", line):
                self.url = m.group(1)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def devchain_process(tmp_path: Path) -> Iterator[Callable[..., DevChainProcess]]:
    """Start dev chains (same data dir unless told); every one is stopped at the end."""
    started: list[DevChainProcess] = []

    def _start(data_dir: Path | None = None, deploy: bool = True) -> DevChainProcess:
        chain = DevChainProcess(data_dir or tmp_path / "data", deploy=deploy)
        started.append(chain)
        return chain

    yield _start
    for chain in started:
        chain.stop()
