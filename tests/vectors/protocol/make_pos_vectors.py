"""Writes selection-v1.json and challenge-v1.json: conformance vectors for the draws and decisions.

Run from the repository root: `PYTHONPATH=src python tests/vectors/protocol/make_pos_vectors.py`
(`--check` compares instead of writing). The committed JSON files are the truth.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from verinfer.protocol.challenge import challenge_draw, decide_challenge, is_challenged
from verinfer.protocol.selection import (
    Candidate,
    select_asserter,
    select_validators,
    uniform_int,
)
from verinfer.protocol.settlement import Reputation

HERE = Path(__file__).parent


def h(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def node(i: int) -> str:
    return f"0x0b{'00' * 18}{i:02x}"


def selection_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for bound in (1, 2, 3, 10, 1_000_000, 2**255 + 1):
        for index in (0, 1, 7):
            seed = h("uniform", bound, index)
            cases.append({"kind": "uniform_int", "seed": "0x" + seed.hex(), "bound": str(bound),
                          "index": index, "expected": str(uniform_int(seed, bound, index))})
    for k in range(16):
        count = 3 + k % 7
        candidates = [
            Candidate(node(i), stake=300 + 100 * ((i * 7 + k) % 13) - 200 * (i == 1),
                      reputation=Reputation(passed=(i + k) % 5, failed=(i * k) % 3))
            for i in range(1, count + 1)
        ]
        randomness = h("request", k)
        min_stake = 300
        asserter = select_asserter(candidates, min_stake, randomness)
        others = [c for c in candidates if c.stake >= min_stake and c.address != asserter]
        n = min(len(others), 1 + k % 4)
        validators = select_validators(candidates, min_stake, h("validators", k), n, asserter)
        cases.append({
            "kind": "selection",
            "min_stake": min_stake,
            "candidates": [{"address": c.address, "stake": c.stake,
                            "passed": c.reputation.passed, "failed": c.reputation.failed}
                           for c in candidates],
            "randomness": "0x" + randomness.hex(),
            "expected_asserter": asserter,
            "validator_randomness": "0x" + h("validators", k).hex(),
            "validator_count": n,
            "expected_validators": list(validators),
        })
    return cases


def challenge_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for k, ppm in enumerate((0, 1, 50_000, 100_000, 500_000, 999_999, 1_000_000) * 3):
        commitment, beacon = h("commitment", k), h("beacon", k)
        cases.append({"kind": "decision", "commitment": "0x" + commitment.hex(),
                      "beacon": "0x" + beacon.hex(), "challenge_ppm": ppm,
                      "draw": "0x" + challenge_draw(commitment, beacon).to_bytes(32, "big").hex(),
                      "expected_challenged": is_challenged(commitment, beacon, ppm)})
    good, bad = h("output", "good"), h("output", "bad")
    v = [node(i) for i in range(2, 5)]
    outcomes = [
        ("all match", good, [good, good, good], None),
        ("asserter wrong", bad, [good, good, good], [good, good, good]),
        ("one validator wrong", good, [good, bad, good], [good, good, bad]),
        ("two validators wrong", good, [bad, bad, good], [good, bad, good]),
        ("colluding majority", bad, [bad, good, bad], [bad, bad, good]),
    ]
    for name, asserter_hash, hashes, votes in outcomes:
        verdict = decide_challenge(asserter_hash, v, hashes, votes)
        cases.append({"kind": "outcome", "name": name, "asserter_hash": "0x" + asserter_hash.hex(),
                      "validators": v, "validator_hashes": ["0x" + x.hex() for x in hashes],
                      "arbitration_votes": None if votes is None else
                      ["0x" + x.hex() for x in votes],
                      "expected_outcome": verdict.outcome.value,
                      "expected_faulty_validators": list(verdict.faulty_validators)})
    return cases


def files() -> dict[Path, str]:
    out = {}
    for name, cases, spec in (
        ("selection-v1.json", selection_cases(), "verinfer.protocol.selection"),
        ("challenge-v1.json", challenge_cases(), "verinfer.protocol.challenge"),
    ):
        out[HERE / name] = json.dumps({"version": 1, "spec": spec, "cases": cases}, indent=1) + "\n"
    return out


def main() -> None:
    for path, text in files().items():
        if "--check" in sys.argv:
            if path.read_text() != text:
                raise SystemExit(f"{path} is out of date")
        else:
            path.write_text(text)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
