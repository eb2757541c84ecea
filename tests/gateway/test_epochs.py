"""The epoch pipeline with an in-memory chain and scripted validators."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from gateway_fakes import (
    DOMAIN,
    GATEWAY,
    NODES,
    PARAMS,
    USER,
    FakeSettler,
    ScriptedValidators,
    make_bundle,
    pos,
)

from verinfer.chain.client import ChainRevert
from verinfer.gateway.epochs import SKIPPED, EpochPipeline, committee_seed
from verinfer.gateway.router import RegisteredNode
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire
from verinfer.protocol.selection import Candidate, select_validators


def registry(count: int = 6) -> list[RegisteredNode]:
    return [RegisteredNode(n.address, f"http://127.0.0.1:{9000 + i}", 2000 + 100 * i)
            for i, n in enumerate(NODES[:count])]


def setup(tmp_path: Path, nodes: int = 6, p_ppm: int = 1_000_000, liars: set[str] | None = None,
          silent: set[str] | None = None) -> tuple[GatewayStore, FakeSettler, ScriptedValidators,
                                             EpochPipeline, dict[bytes, bytes]]:
    if silent is None:
        silent = set()
    if liars is None:
        liars = set()
    store = GatewayStore(tmp_path / "gw.sqlite")
    settler = FakeSettler(registry(nodes))
    truth: dict[bytes, bytes] = {}
    validators = ScriptedValidators(truth, {n.address: n for n in NODES}, liars, silent)
    pipeline = EpochPipeline(store, settler, validators, GATEWAY, DOMAIN, pos(p_ppm),
                             epoch_seconds=3600)
    return store, settler, validators, pipeline, truth


def serve(store: GatewayStore, truth: dict[bytes, bytes], node_index: int, nonce: int,
          cheat: bool = False) -> bytes:
    output = [5, 6, nonce % 50]
    true_logits = hashlib.sha256(bytes(output)).digest()
    truth[wire.output_hash(output)] = true_logits
    claimed = hashlib.sha256(b"cheap").digest() if cheat else true_logits
    bundle = make_bundle(NODES[node_index], output, claimed, nonce)
    receipt = bundle.receipt.message
    assert isinstance(receipt, wire.Receipt)
    store.add_receipt(bundle.receipt_id, USER.address, receipt.node, receipt.fee, bundle.to_json())
    return bundle.receipt_id


def test_agreeing_validators_pass_and_the_epoch_settles(tmp_path: Path) -> None:
    store, settler, validators, pipeline, truth = setup(tmp_path)
    ids = [serve(store, truth, i % 3, nonce=i) for i in range(5)]
    asyncio.run(pipeline.step(force_close=True))
    assert store.epoch(0).state == "settled"
    assert settler.commits[0] == wire.receipts_root(sorted(ids))  # the committed order: ascending ids
    outcomes = [store.outcome(r) for r in ids]
    assert [o.outcome for o in outcomes if o] == ["PASSED"] * 5
    # each challenge went to n = 2 validators, never the asserter, drawn by the protocol's rule
    assert len(validators.asked) == 10
    batch = settler.settled[0].batch()
    assert len(batch.requests) == 5 and len(batch.challenges) == 5
    first = store.receipt(ids[0])
    assert first is not None
    cands = [Candidate(n.address.lower(), n.stake) for n in registry()]
    expected = select_validators(cands, PARAMS.min_stake,
                                 committee_seed(store.epoch(0).beacon or b"", ids[0],
                                                "validators"), 2, first.node.lower())
    assert batch.challenges[0].validators == expected
    assert store.open_epoch().epoch == 1


def test_a_cheating_asserter_is_outvoted_in_arbitration_and_slashed(tmp_path: Path) -> None:
    store, settler, _validators, pipeline, truth = setup(tmp_path)
    rid = serve(store, truth, 0, nonce=1, cheat=True)
    asyncio.run(pipeline.step(force_close=True))
    outcome = store.outcome(rid)
    assert outcome is not None and outcome.outcome == "ASSERTER_FAULT"
    assert len(outcome.detail["arbitrators"]) == 3
    cheater = NODES[0].address.lower()
    assert settler.state.reputation_of(cheater).failed == 1
    # the evidence carries every signed verdict; each recovers to its member
    for member, verdict in zip(outcome.detail["arbitrators"], outcome.detail["arbitration"],
                               strict=True):
        signed = wire.Signed.from_json(wire.Verdict, verdict)
        assert signed.signer(DOMAIN) == member


def test_a_lying_validator_loses_arbitration(tmp_path: Path) -> None:
    liar = NODES[4].address
    store, _settler, _validators, pipeline, truth = setup(tmp_path, liars={liar})
    # find a receipt whose validators include the liar
    for nonce in range(100):
        rid = serve(store, truth, 0, nonce=nonce)
        asyncio.run(pipeline.step(force_close=True))
        outcome = store.outcome(rid)
        assert outcome is not None
        if liar in outcome.detail["validators"]:
            assert outcome.outcome == "VALIDATOR_FAULT"
            assert outcome.detail["faulty"] == [liar]
            return
        assert outcome.outcome in ("PASSED", "VALIDATOR_FAULT")
    pytest.fail("the liar was never drawn as a validator in 100 challenges")


def test_silent_validators_are_replaced_never_blamed(tmp_path: Path) -> None:
    silent = {NODES[3].address, NODES[5].address}
    store, _settler, _validators, pipeline, truth = setup(tmp_path, silent=silent)
    ids = [serve(store, truth, 0, nonce=i) for i in range(10)]
    asyncio.run(pipeline.step(force_close=True))
    for rid in ids:
        outcome = store.outcome(rid)
        assert outcome is not None and outcome.outcome == "PASSED"
        assert not set(outcome.detail["validators"]) & silent
    assert store.epoch(0).state == "settled"


def test_no_beacon_yet_means_no_challenge_yet_and_p_zero_challenges_nothing(
        tmp_path: Path) -> None:
    store, settler, validators, pipeline, truth = setup(tmp_path)
    settler.beacon_ready = False
    serve(store, truth, 0, nonce=1)
    asyncio.run(pipeline.step(force_close=True))
    assert store.epoch(0).state == "committed" and not validators.asked
    settler.beacon_ready = True
    asyncio.run(pipeline.step())
    assert store.epoch(0).state == "settled"

    store2, settler2, validators2, pipeline2, truth2 = setup(tmp_path / "p0", p_ppm=0)
    serve(store2, truth2, 0, nonce=1)
    asyncio.run(pipeline2.step(force_close=True))
    assert store2.epoch(0).state == "settled" and not validators2.asked
    assert settler2.settled[0].challenges == ()


def test_too_few_nodes_to_draw_validators_settles_unchallenged(tmp_path: Path) -> None:
    store, _settler, _validators, pipeline, truth = setup(tmp_path, nodes=2)
    rid = serve(store, truth, 0, nonce=1)
    asyncio.run(pipeline.step(force_close=True))
    outcome = store.outcome(rid)
    assert outcome is not None and outcome.outcome == SKIPPED
    assert store.epoch(0).state == "settled"


def test_a_restart_after_the_commit_resumes_without_recommitting_differently(
        tmp_path: Path) -> None:
    store, settler, validators, pipeline, truth = setup(tmp_path)
    settler.beacon_ready = False
    ids = [serve(store, truth, 0, nonce=i) for i in range(3)]
    asyncio.run(pipeline.step(force_close=True))
    store.close()
    reopened = GatewayStore(tmp_path / "gw.sqlite")
    settler.beacon_ready = True
    again = EpochPipeline(reopened, settler, validators, GATEWAY, DOMAIN, pos(),
                          epoch_seconds=3600)
    asyncio.run(again.step())
    assert reopened.epoch(0).state == "settled"
    assert [o.receipt_id for o in reopened.outcomes_of_epoch(0)] == ids


class ClockedSettler(FakeSettler):
    """A chain that numbers epochs (100 s from t = 0), runs `skew` seconds ahead, and refuses
    commits of epochs listed in `too_late`."""

    skew: float = 0.0
    too_late: frozenset[int] = frozenset()

    def epoch_clock(self) -> tuple[int, int]:
        return 0, 100

    def clock_skew(self) -> float:
        return self.skew

    def commit(self, epoch: int, receipts_root: bytes, count: int) -> str:
        if epoch in self.too_late:
            raise ChainRevert("commit window closed", "commit epoch")
        return super().commit(epoch, receipts_root, count)


def test_chain_clocked_epochs_close_on_the_chains_time_and_a_missed_commit_is_recorded(
        tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.sqlite")
    settler = ClockedSettler(registry())
    settler.too_late = frozenset({3})
    truth: dict[bytes, bytes] = {}
    now = [510.0]  # epoch 5 ends at 600; it closes a quarter epoch later, at 625
    pipeline = EpochPipeline(store, settler, ScriptedValidators(truth, {n.address: n
                                                                        for n in NODES}),
                             GATEWAY, DOMAIN, pos(0), epoch_seconds=3600, clock=lambda: now[0])
    for epoch, nonce in ((3, 1), (5, 2)):
        output = [5, 6, nonce]
        truth[wire.output_hash(output)] = hashlib.sha256(bytes(output)).digest()
        bundle = make_bundle(NODES[0], output, truth[wire.output_hash(output)], nonce)
        store.add_receipt(bundle.receipt_id, USER.address, NODES[0].address, 1,
                          bundle.to_json(), epoch)
    asyncio.run(pipeline.step())
    assert store.epoch(3).state == "missed" and store.epoch(5).state == "open"
    settler.skew = 120.0  # the chain's time is 630: past epoch 5's closing time
    asyncio.run(pipeline.step())
    assert store.epoch(5).state == "settled" and 5 in settler.commits
    assert 3 not in settler.commits


def test_every_committed_epoch_is_opened_on_chain_before_any_challenge_is_decided(
        tmp_path: Path) -> None:
    # Deciding one epoch's challenges takes time; a later epoch's receipts must reach the chain
    # within their own window meanwhile (its beacon is fixed, and its receipts settled on chain,
    # between the challenges of the earlier epoch).
    store, settler, validators, pipeline, truth = setup(tmp_path)
    settler.beacon_ready = False  # commit two epochs without deciding either
    first = serve(store, truth, 0, nonce=1)
    asyncio.run(pipeline.step(force_close=True))
    second = serve(store, truth, 1, nonce=2)
    asyncio.run(pipeline.step(force_close=True))
    assert [store.receipt(r).epoch for r in (first, second)] == [0, 1]  # type: ignore[union-attr]
    assert [e.epoch for e in store.epochs_in("committed")] == [0, 1]
    events: list[tuple[str, object]] = []
    opened = settler.open_challenges

    def recording_open(epoch: int, bundles: tuple[tuple[bytes, dict[str, object]], ...]) -> None:
        events.append(("open", epoch))
        opened(epoch, bundles)

    asked = validators.verify

    async def recording_verify(node: RegisteredNode, challenge: wire.Signed,
                               bundle: wire.ReceiptBundle) -> dict[str, object]:
        message = challenge.message
        assert isinstance(message, wire.Challenge)
        events.append(("ask", message.receipt))
        return await asked(node, challenge, bundle)

    settler.open_challenges = recording_open  # type: ignore[method-assign]
    validators.verify = recording_verify  # type: ignore[method-assign]
    settler.beacon_ready = True
    asyncio.run(pipeline.step())
    first_ask = next(i for i, e in enumerate(events) if e[0] == "ask")
    assert ("open", 0) in events[:first_ask] and ("open", 1) in events[:first_ask]
    assert store.epoch(0).state == store.epoch(1).state == "settled"
