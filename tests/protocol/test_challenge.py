"""Challenge decisions and outcomes: exact probability, majority, verdicts, and the vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from verinfer.protocol.challenge import (
    ChallengeError,
    NoMajority,
    arbitrate,
    decide_challenge,
    is_challenged,
)
from verinfer.protocol.settlement import Outcome

VECTORS = Path(__file__).parents[1] / "vectors" / "protocol"
GOOD, BAD = hashlib.sha256(b"good").digest(), hashlib.sha256(b"bad").digest()
V = ("0x" + "0c" * 20, "0x" + "0d" * 20, "0x" + "0e" * 20)


def test_challenge_rate_matches_ppm() -> None:
    beacon = hashlib.sha256(b"beacon").digest()
    trials = 20_000
    hits = sum(is_challenged(hashlib.sha256(i.to_bytes(4, "big")).digest(), beacon, 100_000)
               for i in range(trials))
    # Binomial(20000, 0.1): sd 42; 4 sd bounds.
    assert abs(hits - 2000) < 4 * 42


def test_challenge_boundaries() -> None:
    c, b = GOOD, BAD
    assert not is_challenged(c, b, 0)
    assert is_challenged(c, b, 1_000_000)
    with pytest.raises(ChallengeError):
        is_challenged(c, b, 1_000_001)
    with pytest.raises(ChallengeError):
        is_challenged(c[:31], b, 10)


def test_verdicts() -> None:
    assert decide_challenge(GOOD, V, [GOOD] * 3).outcome is Outcome.PASSED
    wrong = decide_challenge(BAD, V, [GOOD, BAD, GOOD], [GOOD, GOOD, BAD])
    assert (wrong.outcome, wrong.faulty_validators) == (Outcome.ASSERTER_FAULT, ())
    lazy = decide_challenge(GOOD, V, [GOOD, BAD, GOOD], [GOOD, GOOD, GOOD])
    assert (lazy.outcome, lazy.faulty_validators) == (Outcome.VALIDATOR_FAULT, (V[1],))
    with pytest.raises(ChallengeError, match="arbitration"):
        decide_challenge(GOOD, V, [GOOD, BAD, GOOD])


def test_arbitration_needs_a_strict_majority() -> None:
    assert arbitrate([GOOD, BAD, GOOD]) == GOOD
    with pytest.raises(NoMajority):
        arbitrate([GOOD, BAD])


def _cases() -> list[dict]:
    data = json.loads((VECTORS / "challenge-v1.json").read_text())
    assert data["version"] == 1
    return data["cases"]


def _b(x: str) -> bytes:
    return bytes.fromhex(x[2:])


@pytest.mark.parametrize("case", _cases())
def test_challenge_vectors(case: dict) -> None:
    if case["kind"] == "decision":
        got = is_challenged(_b(case["commitment"]), _b(case["beacon"]), case["challenge_ppm"])
        assert got == case["expected_challenged"]
        return
    votes = case["arbitration_votes"]
    verdict = decide_challenge(_b(case["asserter_hash"]), case["validators"],
                               [_b(x) for x in case["validator_hashes"]],
                               None if votes is None else [_b(x) for x in votes])
    assert verdict.outcome.value == case["expected_outcome"]
    assert list(verdict.faulty_validators) == case["expected_faulty_validators"]
