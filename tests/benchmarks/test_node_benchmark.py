"""benchmarks/node.py on a tiny model: it runs, checks its replays, and refuses bad options."""

from __future__ import annotations

from pathlib import Path

import pytest

import node


def test_runs_and_prints_ratios(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert node.main(["--model", str(tiny_model), "--new-tokens", "3", "--replays", "1",
                      "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "vs 1 stream" in out and "replay / serve =" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == list(node.STREAMS)


def test_bad_options_are_refused(tiny_model: Path) -> None:
    with pytest.raises(SystemExit):
        node.main(["--model", str(tiny_model), "--new-tokens", "0"])
