"""Selection: uniform draws, asserter by stake x reputation, committees, and the vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from verinfer.errors import ProtocolError
from verinfer.protocol.selection import (
    Candidate,
    NotEnoughNodes,
    select_asserter,
    select_committee,
    select_validators,
    uniform_int,
)
from verinfer.protocol.settlement import Reputation

VECTORS = Path(__file__).parents[1] / "vectors" / "protocol"
A, B, C, D = (f"0x0b{'00' * 18}{i:02x}" for i in range(1, 5))


def test_uniform_int_is_deterministic_in_range_and_unbiased() -> None:
    draws = [uniform_int(i.to_bytes(4, "big"), 3) for i in range(3000)]
    assert draws == [uniform_int(i.to_bytes(4, "big"), 3) for i in range(3000)]
    counts = Counter(draws)
    assert set(counts) == {0, 1, 2}
    # Chi-square with 2 degrees of freedom; 13.8 is the 0.1% critical value.
    assert sum((c - 1000) ** 2 / 1000 for c in counts.values()) < 13.8
    assert uniform_int(b"x", 1) == 0
    with pytest.raises(ProtocolError):
        uniform_int(b"x", 0)


def test_asserter_weight_is_stake_times_reputation() -> None:
    # A: 1000 stake, rep 1e6; B: 1000 stake, one failure -> rep 1e6 * 1 // 5: one fifth of A.
    nodes = [Candidate(A, 1000), Candidate(B, 1000, Reputation(failed=1)), Candidate(C, 10)]
    picks = Counter(select_asserter(nodes, 100, i.to_bytes(4, "big")) for i in range(6000))
    assert C not in picks  # below min_stake: inactive
    assert abs(picks[B] / 6000 - 1 / 6) < 0.02


def test_committee_excludes_asserter_and_never_repeats() -> None:
    nodes = [Candidate(x, 1000) for x in (A, B, C, D)]
    for i in range(200):
        chosen = select_validators(nodes, 1000, i.to_bytes(4, "big"), 3, A)
        assert sorted(chosen) == [B, C, D]
    with pytest.raises(NotEnoughNodes):
        select_committee(nodes, 1000, b"r", 2, exclude=(A, B, C))


def test_selection_ignores_candidate_order() -> None:
    nodes = [Candidate(x, 100 * (i + 1)) for i, x in enumerate((A, B, C, D))]
    for i in range(50):
        r = i.to_bytes(4, "big")
        assert select_asserter(nodes, 1, r) == select_asserter(nodes[::-1], 1, r)
        assert select_committee(nodes, 1, r, 2) == select_committee(nodes[::-1], 1, r, 2)


def test_duplicate_candidates_are_refused() -> None:
    with pytest.raises(ProtocolError, match="twice"):
        select_asserter([Candidate(A, 1), Candidate(A, 1)], 1, b"r")


def _cases() -> list[dict]:
    data = json.loads((VECTORS / "selection-v1.json").read_text())
    assert data["version"] == 1
    return data["cases"]


@pytest.mark.parametrize("case", _cases())
def test_selection_vectors(case: dict) -> None:
    if case["kind"] == "uniform_int":
        seed = bytes.fromhex(case["seed"][2:])
        assert uniform_int(seed, int(case["bound"]), case["index"]) == int(case["expected"])
        return
    nodes = [Candidate(c["address"], c["stake"], Reputation(passed=c["passed"], failed=c["failed"]))
             for c in case["candidates"]]
    asserter = select_asserter(nodes, case["min_stake"], bytes.fromhex(case["randomness"][2:]))
    assert asserter == case["expected_asserter"]
    validators = select_validators(nodes, case["min_stake"],
                                   bytes.fromhex(case["validator_randomness"][2:]),
                                   case["validator_count"], asserter)
    assert list(validators) == case["expected_validators"]


def test_vector_files_match_their_generator() -> None:
    subprocess.run([sys.executable, str(VECTORS / "make_pos_vectors.py"), "--check"],
                   check=True, env={"PYTHONPATH": str(Path(__file__).parents[2] / "src")})
