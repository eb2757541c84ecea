"""The epoch pipeline against the real settlement v2 contract on the embedded py-evm dev chain:
commit, beacon, settle, evidence (pass and accuse with signed verdicts), appeal window, finalize."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from gateway_chain import EVERY_NODE_DRAWN, deploy
from gateway_fakes import PARAMS, ScriptedValidators, make_bundle, pos

from verinfer.gateway.chain_settler import ChainV2Settler
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire
from verinfer.protocol.challenge import is_challenged
from verinfer.protocol.merkle import merkle_root

EPOCH = 10**6  # one long epoch: the test never crosses an epoch boundary
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=4 * EPOCH, unbonding_delay=5 * EPOCH,
                       challenge_ppm=1_000_000, challenge_window=600, appeal_window=50)


def test_an_epoch_commits_challenges_and_settles_on_the_dev_chain(tmp_path: Path) -> None:
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=5, user=7)
    chain, w3, owner, gateway, nodes, user = (net.chain, net.w3, net.owner, net.gateway, net.nodes,
                                              net.user)
    owner.fund_treasury(10**6)
    settler = ChainV2Settler(owner)
    assert settler.committees == EVERY_NODE_DRAWN  # read from the contract, not assumed
    domain = settler.domain
    assert settler.spendable(user.address) == 0  # no allowance yet
    net.allow_gateway(5000)
    assert settler.spendable(user.address) == 5000  # the cap, below the deposit
    assert {n.address for n in settler.registry()} == {n.address for n in nodes}

    genesis, length = settler.epoch_clock()
    epoch = owner.current_epoch()
    deadline = genesis + epoch * length + length // 2
    store = GatewayStore(tmp_path / "gateway.sqlite")
    truth: dict[bytes, bytes] = {}
    cheater = nodes[0]
    ids = []
    for i in range(4):
        output = [9, i]
        truth[wire.output_hash(output)] = hashlib.sha256(bytes(output)).digest()
        asserter = cheater if i == 0 else nodes[1 + i % 3]
        claimed = b"\x00" * 32 if asserter is cheater else truth[wire.output_hash(output)]
        bundle = make_bundle(asserter, output, claimed, nonce=i, price=3, user=user,
                             domain=domain, gateway=gateway, deadline=deadline)
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        store.add_receipt(bundle.receipt_id, user.address, receipt.node, receipt.fee,
                          bundle.to_json(), epoch)
        ids.append(bundle.receipt_id)
    validators = ScriptedValidators(truth, {n.address: n for n in nodes}, domain=domain,
                                    gateway=gateway)
    pipeline = EpochPipeline(store, settler, validators, gateway, domain, pos(validators=1),
                             epoch_seconds=3600)
    asyncio.run(pipeline.step(force_close=True))
    commitment = owner.commitment(gateway.address, epoch)
    assert commitment is not None and commitment["settled"]
    assert commitment["root"] == merkle_root(sorted(ids)) == store.epoch(epoch).root
    assert all(is_challenged(rid, commitment["beacon"], 1_000_000) for rid in ids)
    outcome = store.outcome(ids[0])
    assert outcome is not None and outcome.outcome == "ASSERTER_FAULT"
    assert [owner.case(epoch, rid).state for rid in ids] == ["accused"] + ["passed"] * 3
    assert store.epoch(epoch).state == "decided"  # the accusation waits out its appeal window
    assert owner.stake_of(cheater.address) == 2000

    asyncio.run(pipeline.step())  # still inside the appeal window: nothing changes
    assert owner.case(epoch, ids[0]).state == "accused"
    # Blocks mined in a burst are stamped a second apart, ahead of the wall clock: move well past.
    w3.provider.make_request("evm_increaseTime", [CHAIN_PARAMS.appeal_window + 120])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    asyncio.run(pipeline.step())
    assert owner.case(epoch, ids[0]).state == "slashed"
    assert store.epoch(epoch).state == "settled"
    assert settler.settled_root(epoch) == merkle_root(sorted(ids))
    assert owner.stake_of(cheater.address) == 2000 - CHAIN_PARAMS.slash
    assert owner.reputation_of(cheater.address).failed == 1
    assert all(owner.stake_of(n.address) == 2000 for n in nodes[1:])
    assert [s.node for s in owner.slashes()] == [cheater.address]
    held = owner.ledger_state([n.address for n in nodes] + [user.address, gateway.address])
    assert owner.contract_funds() == held.total_funds() + owner.escrow_total()
    chain.close()
    store.close()
