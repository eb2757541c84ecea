"""Router decisions: weighted choice as the protocol draws it, health, fail-over, speed."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import pytest
from gateway_fakes import NODES

from verinfer.gateway.router import NoNodeAvailable, RegisteredNode, Router
from verinfer.protocol.selection import Candidate, select_asserter
from verinfer.protocol.settlement import Reputation

MODEL, MID = "demo", b"\x11" * 32


def router(stakes: list[int], reps: list[Reputation] | None = None) -> Router:
    r = Router(min_stake=1000)
    reps = reps or [Reputation()] * len(stakes)
    r.update_registry(RegisteredNode(n.address, f"http://127.0.0.1:{9000 + i}", s, rep)
                      for i, (n, s, rep) in enumerate(zip(NODES, stakes, reps, strict=False)))
    for n in NODES[:len(stakes)]:
        r.probe_succeeded(n.address, {MODEL: MID}, now=0)
    return r


def seed(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def test_the_choice_is_the_protocols_stake_times_reputation_draw() -> None:
    stakes = [1000, 2000, 3000, 4000]
    reps = [Reputation(), Reputation(passed=3), Reputation(failed=2), Reputation()]
    r = router(stakes, reps)
    cands = [Candidate(n.address.lower(), s, rep) for n, s, rep in zip(NODES, stakes, reps,
                                                                      strict=False)]
    for i in range(300):
        chosen = r.pick(MODEL, MID, seed(i))
        assert chosen.address.lower() == select_asserter(cands, 1000, seed(i))


def test_a_thousand_requests_in_under_a_second_follow_the_weights() -> None:
    stakes = [1000, 3000, 6000]
    r = router(stakes)
    start = time.perf_counter()
    counts = Counter(r.pick(MODEL, MID, seed(i)).address for i in range(1000))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"1000 routing decisions took {elapsed:.2f} s"
    for n, stake in zip(NODES, stakes, strict=False):
        share = counts[n.address] / 1000
        assert abs(share - stake / 10_000) < 0.05, (share, stake)


def test_unhealthy_unstaked_and_other_model_nodes_are_skipped() -> None:
    r = router([5000, 5000, 5000, 500])
    r.probe_failed(NODES[0].address, now=1)
    r.probe_succeeded(NODES[1].address, {"other": MID}, now=1)
    r.probe_succeeded(NODES[2].address, {MODEL: b"\x22" * 32}, now=1)  # another model_id
    with pytest.raises(NoNodeAvailable, match="no healthy node serves model 'demo'"):
        for i in range(50):
            r.pick(MODEL, MID, seed(i))
    r.probe_succeeded(NODES[0].address, {MODEL: MID}, now=2)
    assert {r.pick(MODEL, MID, seed(i)).address for i in range(50)} == {NODES[0].address}


def test_never_probed_nodes_get_no_work() -> None:
    r = Router(min_stake=1)
    r.update_registry([RegisteredNode(NODES[0].address, "http://127.0.0.1:1", 10)])
    with pytest.raises(NoNodeAvailable):
        r.pick(MODEL, MID, seed(0))


def test_fail_over_moves_to_another_node_until_none_is_left() -> None:
    r = router([1000, 1000, 1000])
    failed: list[str] = []
    for _ in range(3):
        node = r.pick(MODEL, MID, seed(7), exclude=failed)
        assert node.address not in failed
        failed.append(node.address)
        r.request_failed(node.address)
    assert set(failed) == {n.address for n in NODES[:3]}
    with pytest.raises(NoNodeAvailable, match="3 failed this request"):
        r.pick(MODEL, MID, seed(7), exclude=failed)


def test_models_report_the_model_id_most_stake_claims() -> None:
    r = router([1000, 1000, 3000])
    r.probe_succeeded(NODES[2].address, {MODEL: b"\x22" * 32}, now=1)
    assert r.models() == {MODEL: b"\x22" * 32}
