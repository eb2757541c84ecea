"""The rules mirror (`verinfer.protocol.ledger`) reproduces settlement-v2.json, which covers
every outcome of the rules; the file is what its generator writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from verinfer.protocol.ledger import CLEARED, LAPSED, PASSED, SLASHED, UINT256_MAX
from verinfer.protocol.ledger_codec import BadVector, params_from_json, run_case

VECTORS = Path(__file__).parents[1] / "vectors" / "protocol"
DATA = json.loads((VECTORS / "settlement-v2.json").read_text())


@pytest.mark.parametrize("case", DATA["cases"], ids=[c["name"] for c in DATA["cases"]])
def test_the_rules_reproduce_the_vector(case: dict[str, Any]) -> None:
    expected, reverts = run_case(case, DATA["parties"], DATA["genesis"], DATA["epoch_seconds"],
                                 DATA["max_pause"])
    assert reverts == [op.get("revert") for op in case["operations"]]
    assert expected == case["expected_state"]


def test_the_vectors_cover_the_outcomes() -> None:
    assert DATA["version"] == 2 and DATA["spec"] == "docs/settlement-rules.md"
    cases = DATA["cases"]
    reverts = {op.get("revert") for c in cases for op in c["operations"]}
    assert {"zero beneficiary", "zero address in receipt", "fee above uint256", "paused",
            "pause cooldown", "appeal needs more arbitrators", "deadline passed",
            "open challenge", "appeal window open"} <= reverts
    statuses = {s for c in cases for s in c["expected_state"]["cases"].values()}
    assert {PASSED, SLASHED, CLEARED, LAPSED} <= statuses
    unpaid = {v for c in cases for v in c["expected_state"]["unpaid"].values()}
    assert UINT256_MAX in unpaid
    assert any(c["expected_state"]["treasury"] == 0 and c["expected_state"]["cases"]
               for c in cases)  # a pass with an empty treasury


def test_a_vector_with_a_partial_challenge_rate_is_refused() -> None:
    params = dict(DATA["cases"][0]["params"], challenge_ppm=500_000)
    with pytest.raises(BadVector, match="challenge_ppm"):
        params_from_json(params)


def test_vector_file_matches_its_generator() -> None:
    subprocess.run([sys.executable, str(VECTORS / "make_settlement_v2_vectors.py"), "--check"],
                   check=True, env={"PYTHONPATH": str(Path(__file__).parents[2] / "src")})
