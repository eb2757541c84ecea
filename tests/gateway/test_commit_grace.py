"""A gateway that falls behind under load still commits and settles a short epoch.

With 5-second epochs the pipeline's tick can come well after the next epoch has ended (here:
8 seconds after the epoch's end, beyond the one epoch version 2 first allowed). The contract
takes a commit up to `commit_grace` (a minute at least) after the epoch's end, so the epoch is
committed, its receipts are paid, and the cheater among them is still challenged. Real dev
chain, real contract, the gateway's own pipeline and settler.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace
from pathlib import Path

from gateway_chain import EVERY_NODE_DRAWN, deploy
from gateway_fakes import PARAMS, ScriptedValidators, make_bundle, pos

from verinfer.gateway.chain_settler import ChainV2Settler
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire
from verinfer.protocol.settlement import commit_grace

EPOCH = 5
LAG = 8  # seconds after the epoch's end when the gateway gets to commit it
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=400, unbonding_delay=500,
                       challenge_ppm=1_000_000, challenge_window=200, appeal_window=50)


def test_a_late_commit_of_a_short_epoch_is_accepted_and_settled(tmp_path: Path) -> None:
    assert EPOCH < LAG < commit_grace(EPOCH)
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=4, user=7)
    chain, w3, owner, gateway, nodes, user = (net.chain, net.w3, net.owner, net.gateway, net.nodes,
                                              net.user)
    settler = ChainV2Settler(owner)
    assert settler.committees == EVERY_NODE_DRAWN  # read from the contract, not assumed
    domain = settler.domain
    net.allow_gateway(5000)

    genesis, length = settler.epoch_clock()
    epoch = owner.current_epoch() + 1  # an epoch whose whole length is ahead
    start = genesis + epoch * length
    store = GatewayStore(tmp_path / "gateway.sqlite")
    truth: dict[bytes, bytes] = {}
    ids = []
    for i in range(3):
        output = [7, i]
        truth[wire.output_hash(output)] = hashlib.sha256(bytes(output)).digest()
        asserter = nodes[0] if i == 0 else nodes[1 + i % 3]
        claimed = b"\x00" * 32 if i == 0 else truth[wire.output_hash(output)]
        bundle = make_bundle(asserter, output, claimed, nonce=i, price=3, user=user,
                             domain=domain, gateway=gateway, deadline=start + 2)
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        store.add_receipt(bundle.receipt_id, user.address, receipt.node, receipt.fee,
                          bundle.to_json(), epoch)
        ids.append(bundle.receipt_id)

    # The gateway is busy: its next tick comes LAG seconds after the epoch's end.
    # The dev chain's clock is the wall clock plus an offset (what evm_increaseTime returns).
    offset = int(w3.provider.make_request("evm_increaseTime", [0])["result"])  # type: ignore[arg-type]
    jump = start + length + LAG - int(time.time()) - offset
    w3.provider.make_request("evm_increaseTime", [jump])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert owner.current_epoch() >= epoch + 2  # v2's first window (one epoch) has closed
    validators = ScriptedValidators(truth, {n.address: n for n in nodes}, domain=domain,
                                    gateway=gateway)
    pipeline = EpochPipeline(store, settler, validators, gateway, domain, pos(validators=1),
                             epoch_seconds=EPOCH)
    asyncio.run(pipeline.step())
    assert store.epoch(epoch).state != "missed"
    commitment = owner.commitment(gateway.address, epoch)
    assert commitment is not None and commitment["settled"]
    # Paid and challenged: the cheater is accused, the honest receipts passed.
    assert [owner.case(epoch, rid).state for rid in ids] == ["accused", "passed", "passed"]
    chain.close()
    store.close()
