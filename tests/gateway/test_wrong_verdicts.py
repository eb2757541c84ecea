"""A validator that vouched for a cheat is slashed on chain with the evidence the gateway holds.

Real dev chain and contract, the gateway's pipeline and settler: a cheating asserter's receipt
is challenged; one drawn validator colludes and signs the asserter's claimed logits hash, the
others the true one; arbitration finds the asserter at fault, the accusation is executed after
its appeal window, and the gateway then sends the colluder's signed verdict, which the outcome
contradicts: the colluder loses `slash`, the honest validators nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from gateway_chain import deploy
from gateway_fakes import PARAMS, ScriptedValidators, make_bundle, pos

from verinfer.gateway.chain_settler import ChainV2Settler
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire

EPOCH = 10**6
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=4 * EPOCH, unbonding_delay=5 * EPOCH,
                       challenge_ppm=1_000_000, challenge_window=600, appeal_window=50)


def test_a_validator_that_vouched_for_a_cheat_is_slashed(tmp_path: Path) -> None:
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=5, user=7)
    chain, w3, owner, gateway, nodes, user = (net.chain, net.w3, net.owner, net.gateway, net.nodes,
                                              net.user)
    owner.fund_treasury(10**6)
    settler = ChainV2Settler(owner)
    domain = settler.domain
    net.allow_gateway(5000)
    genesis, length = settler.epoch_clock()
    epoch = owner.current_epoch()
    cheater, colluder, honest = nodes[0], nodes[1], nodes[2:]
    output = [9, 1]
    truth = {wire.output_hash(output): hashlib.sha256(bytes(output)).digest()}
    bundle = make_bundle(cheater, output, b"\x00" * 32, nonce=1, price=3, user=user,
                         domain=domain, gateway=gateway,
                         deadline=genesis + epoch * length + length // 2)
    receipt = bundle.receipt.message
    assert isinstance(receipt, wire.Receipt)
    store = GatewayStore(tmp_path / "gateway.sqlite")
    store.add_receipt(bundle.receipt_id, user.address, receipt.node, receipt.fee,
                      bundle.to_json(), epoch)
    validators = ScriptedValidators(truth, {n.address: n for n in nodes}, domain=domain,
                                    gateway=gateway, vouchers={colluder.address})
    pipeline = EpochPipeline(store, settler, validators, gateway, domain, pos(validators=1),
                             epoch_seconds=3600)
    asyncio.run(pipeline.step(force_close=True))
    assert owner.case(epoch, bundle.receipt_id).state == "accused"
    w3.provider.make_request("evm_increaseTime", [CHAIN_PARAMS.appeal_window + 120])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    asyncio.run(pipeline.step())
    assert owner.case(epoch, bundle.receipt_id).state == "slashed"
    assert owner.stake_of(cheater.address) == 2000 - CHAIN_PARAMS.slash
    assert owner.stake_of(colluder.address) == 2000 - CHAIN_PARAMS.slash
    assert owner.reputation_of(colluder.address).failed == 1
    assert all(owner.stake_of(n.address) == 2000 for n in honest)
    chain.close()
    store.close()
