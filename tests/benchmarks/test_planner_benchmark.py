"""benchmarks/planner.py: a quick run compares plans, baselines and the exact optimum."""

from __future__ import annotations

from pathlib import Path

import planner


def test_quick_run_reports_every_case_and_meets_the_aims(tmp_path: Path) -> None:
    chart = tmp_path / "planner.png"
    cases = planner.main(["--quick", "--seeds", "1", "--plot", str(chart)])
    assert len(cases) == 2 * len(planner.QUICK_SIZES)
    for case in cases:
        assert case.exact is not None  # quick sizes are all within the exact DP's reach
        assert case.plan_value >= case.exact * (1 - 1e-9)
        assert case.plan_value <= case.exact * 1.01
        if case.single is not None:
            assert case.plan_value <= case.single * (1 + 1e-9)
        if case.proportional is not None:
            assert case.plan_value <= case.proportional * (1 + 1e-9)
    assert all(line.endswith("met") or "met (" in line for line in planner.check_aims(cases))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
