"""The epoch pipeline against the real v1 contract on the embedded py-evm dev chain."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from eth_account import Account
from gateway_fakes import DOMAIN, GATEWAY, PARAMS, USER, ScriptedValidators, make_bundle, pos
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider
from verinfer.chain.devkeys import dev_private_key
from verinfer.gateway.chain_settler import ChainV1Settler
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.keyfile import Identity
from verinfer.protocol import wire
from verinfer.protocol.merkle import merkle_proof


def dev_identity(i: int) -> Identity:
    key = bytes(dev_private_key(i))
    return Identity(key, wire.address_of(key))


def test_an_epoch_commits_challenges_and_settles_on_the_dev_chain(tmp_path: Path) -> None:
    chain = DevChain(tmp_path / "chain")
    w3 = Web3(DevChainProvider(chain))
    owner, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), PARAMS)
    nodes = [dev_identity(i) for i in range(1, 6)]
    for i, node in enumerate(nodes):
        client = SettlementClient(w3, owner.address, Account.from_key(node.private_key))
        client.register(hashlib.sha256(node.address.encode()).digest(),
                        f"http://127.0.0.1:{9100 + i}")
        client.stake(2000, value=2000)
    owner.deposit(10**6, USER.address)
    owner.fund_treasury(10**6)
    settler = ChainV1Settler(owner)
    assert {n.address for n in settler.registry()} == {n.address for n in nodes}
    assert settler.spendable(USER.address) == 10**6

    store = GatewayStore(tmp_path / "gateway.sqlite")
    truth: dict[bytes, bytes] = {}
    cheater = nodes[0]
    ids = []
    for i in range(4):
        output = [9, i]
        truth[wire.output_hash(output)] = hashlib.sha256(bytes(output)).digest()
        asserter = cheater if i == 0 else nodes[1 + i % 3]
        claimed = b"\x00" * 32 if asserter is cheater else truth[wire.output_hash(output)]
        bundle = make_bundle(asserter, output, claimed, nonce=i, price=3)
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        store.add_receipt(bundle.receipt_id, USER.address, receipt.node, receipt.fee,
                          bundle.to_json())
        ids.append(bundle.receipt_id)
    validators = ScriptedValidators(truth, {n.address: n for n in nodes})
    pipeline = EpochPipeline(store, settler, validators, GATEWAY, DOMAIN, pos(validators=1),
                             epoch_seconds=3600)
    asyncio.run(pipeline.step(force_close=True))
    assert store.epoch(0).state == "settled"
    root = wire.receipts_root(ids)
    assert owner.epoch_root(0) == root
    for i, rid in enumerate(ids):  # every receipt provably in the batch, checked by the contract
        assert owner.verify_receipt(0, rid, merkle_proof(ids, i))
    outcome = store.outcome(ids[0])
    assert outcome is not None and outcome.outcome == "ASSERTER_FAULT"
    assert owner.stake_of(cheater.address) == 2000 - PARAMS.slash
    assert owner.reputation_of(cheater.address).failed == 1
    fees = sum(3 * (3 + 2) for _ in ids)
    assert owner.balance_of(USER.address) < 10**6 - fees + PARAMS.slash  # paid, then refunded
    assert all(owner.stake_of(n.address) == 2000 for n in nodes[1:])
    chain.close()
    store.close()
