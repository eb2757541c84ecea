"""`verinfer econ ...`: each command runs, and bad input gives one line and a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from verinfer.cli import app
from verinfer.econ.calculator import EconParamsError
from verinfer.econ.check import UnsafeParameters

runner = CliRunner()
SRC = str(Path(__file__).parents[2] / "src")


def test_calc_prints_p_min() -> None:
    result = runner.invoke(app, ["econ", "calc", "--slash", "99", "-n", "1", "-m", "1",
                                 "--p", "0.02"])
    assert result.exit_code == 0, result.output
    assert re.search(r"minimal p .*│\s+0\.01\s+│", result.output), result.output
    assert "honest is the best response" in result.output
    low = runner.invoke(app, ["econ", "calc", "--slash", "99", "-n", "1", "-m", "1", "--p",
                              "0.005"])
    assert "CHEATING PAYS" in low.output


def test_check_safe_and_unsafe() -> None:
    ok = runner.invoke(app, ["econ", "check", "--p", "0.02", "--slash", "99", "-n", "1"])
    assert ok.exit_code == 0 and ok.output.startswith("safe")
    bad = runner.invoke(app, ["econ", "check", "--p", "0.005", "--slash", "99", "-n", "1"])
    assert isinstance(bad.exception, UnsafeParameters)
    assert "raise p from 0.005" in str(bad.exception)
    forced = runner.invoke(app, ["econ", "check", "--p", "0.005", "--slash", "99", "-n", "1",
                                 "--force"])
    assert forced.exit_code == 0 and forced.output.startswith("warning (forced)")


def test_bad_probability_is_an_econ_error() -> None:
    result = runner.invoke(app, ["econ", "check", "--p", "1.5", "--slash", "10"])
    assert isinstance(result.exception, EconParamsError)


def test_main_turns_errors_into_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    for args in (["--p", "1.5", "--slash", "10"], ["--p", "0.001", "--slash", "10"],
                 ["--p", "0.5", "--slash", "10", "--collusion", "2"]):
        proc = subprocess.run([sys.executable, "-m", "verinfer.cli", "econ", "check", *args],
                              check=False, capture_output=True, text=True, env=env)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_simulate_prints_strategies() -> None:
    result = runner.invoke(app, ["econ", "simulate", "--epochs", "3", "--requests-per-epoch",
                                 "50"])
    assert result.exit_code == 0, result.output
    for word in ("honest", "always-cheat", "random-cheat", "lazy", "colluding", "accepted"):
        assert word in result.output


def test_plot_writes_pngs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["econ", "plot", "--out", str(tmp_path), "--requests", "300"])
    assert result.exit_code == 0, result.output
    for name in ("cheater_profit.png", "detection_time.png", "accepted_bad.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["econ", "--help"])
    assert result.exit_code == 0
    for cmd in ("calc", "simulate", "check", "plot"):
        assert cmd in result.output
