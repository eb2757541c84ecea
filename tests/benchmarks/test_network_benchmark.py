"""benchmarks/network.py --quick: a real network and a real node, every table printed."""

from __future__ import annotations

import pytest

import network

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_quick_run_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert network.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| demo |")]
    assert len(rows) == 3  # (a) at p = 0, (b), (c)
    gateway, streams, replay = (r.strip("|").split("|") for r in rows)
    assert float(gateway[3]) > 0 and float(gateway[4]) > 0  # direct and gateway latency, ms
    assert [c.strip().endswith("x") for c in streams[-1:]] == [True]
    assert 0 < float(replay[-1])  # replay / serve


def test_bad_options_are_refused() -> None:
    for argv in (["--streams", "9"], ["--ps", "2000000"], ["--models", "7b"], ["--requests", "0"]):
        with pytest.raises(SystemExit):
            network.main(argv)
