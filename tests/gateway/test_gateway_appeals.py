"""The gateway appeals a framing accusation within the appeal window, with its own evidence.

Real dev chain and contract, the gateway's pipeline and settler. Three colluding nodes accuse
an honest asserter's receipt with their signed conflicting verdicts as soon as its challenge
opens. The gateway's own challenge draws every node: the colluders disagree, so arbitration
runs, and the four honest arbitrators agree with the receipt. The gateway appeals with their
verdicts (more than accused): the case is cleared, the asserter is paid, each colluder is
slashed as an accuser, and again for its wrong verdict as a validator.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from gateway_chain import deploy
from gateway_fakes import PARAMS, ScriptedValidators, make_bundle, pos

from verinfer.gateway.chain_settler import ChainV2Settler, message_fields
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire

EPOCH = 10**6
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=4 * EPOCH, unbonding_delay=5 * EPOCH,
                       challenge_ppm=1_000_000, challenge_window=600, appeal_window=300)


def test_the_gateway_appeals_a_framing_accusation(tmp_path: Path) -> None:
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=8, user=9)
    chain, owner, gateway, nodes, user = net.chain, net.owner, net.gateway, net.nodes, net.user
    settler = ChainV2Settler(owner)
    domain = settler.domain
    net.allow_gateway(5000)
    genesis, length = settler.epoch_clock()
    epoch = owner.current_epoch()
    asserter, framers, honest = nodes[0], nodes[1:4], nodes[4:]
    output = [5, 6]
    truth = {wire.output_hash(output): hashlib.sha256(bytes(output)).digest()}
    bundle = make_bundle(asserter, output, truth[wire.output_hash(output)], nonce=1, price=3,
                         user=user, domain=domain, gateway=gateway,
                         deadline=genesis + epoch * length + length // 2)
    receipt = bundle.receipt.message
    assert isinstance(receipt, wire.Receipt)
    store = GatewayStore(tmp_path / "gateway.sqlite")
    store.add_receipt(bundle.receipt_id, user.address, receipt.node, receipt.fee,
                      bundle.to_json(), epoch)
    validators = ScriptedValidators(truth, {n.address: n for n in nodes}, domain=domain,
                                    gateway=gateway, liars={f.address for f in framers})
    pipeline = EpochPipeline(store, settler, validators, gateway, domain, pos(validators=1),
                             epoch_seconds=3600)
    asyncio.run(pipeline.close_and_commit(force_close=True))  # committed; the case is open
    assert owner.case(epoch, bundle.receipt_id).state == "open"

    framing = []
    for framer in framers:
        v = wire.Verdict(bundle.receipt_id, receipt.request, receipt.output_hash, b"\x66" * 32,
                         False, 1, framer.address, gateway.address)
        framing.append((message_fields(v), wire.sign(domain, v, framer.private_key)))
    owner.accuse(epoch, message_fields(receipt), bundle.receipt.signature, framing)
    assert owner.case(epoch, bundle.receipt_id).state == "accused"

    asyncio.run(pipeline.step())
    assert owner.case(epoch, bundle.receipt_id).state == "cleared"
    assert owner.stake_of(asserter.address) == 2000
    assert owner.balance_of(asserter.address) > 0  # its fee, and a share of the slashes
    assert all(owner.stake_of(f.address) == 2000 - 2 * CHAIN_PARAMS.slash for f in framers)
    assert all(owner.stake_of(n.address) == 2000 for n in honest)
    chain.close()
    store.close()
