"""The same scenario through the Python client over JSON-RPC and directly in titanoboa ends in
the same state, with the same reverts; plus the client's own conversions."""

from __future__ import annotations

from typing import Any

import boa
import pytest
from boa_driver import apply_op, read_state
from conftest import PARAMS, params_tuple
from eth_account import Account
from web3 import Web3

from verinfer.chain.client import ChainRevert, Role, SettlementClient, proof_args
from verinfer.chain.devkeys import dev_address, dev_private_key
from verinfer.protocol.merkle import merkle_proof, merkle_root
from verinfer.protocol.settlement_codec import batch_from_json

OWNER, U1, U2, A, B, C, D = (dev_address(i).lower() for i in range(7))
INDEX = {dev_address(i).lower(): i for i in range(10)}
ROOT = "0x" + "44" * 32


def _challenge(user: str, asserter: str, fee: int, validators: list[str], outcome: str,
               faulty: list[str] | None = None) -> dict[str, Any]:
    return {"user": user, "asserter": asserter, "fee": fee, "validators": validators,
            "outcome": outcome, "faulty_validators": faulty or []}


SCENARIO: list[dict[str, Any]] = [
    {"op": "deposit", "address": U1, "amount": 5000},
    {"op": "deposit", "address": U2, "amount": 300},
    *[{"op": "deposit", "address": n, "amount": 1500} for n in (A, B, C, D)],
    *[{"op": "stake", "node": n, "amount": 1200} for n in (A, B, C, D)],
    {"op": "fund_treasury", "amount": 400},
    {"op": "settle", "batch": {"epoch": 1, "receipts_root": ROOT, "requests": [
        {"user": U1, "asserter": A, "fee": 100}, {"user": U2, "asserter": B, "fee": 250},
        {"user": U1, "asserter": C, "fee": 70}], "challenges": [
        _challenge(U1, A, 100, [B, C, D], "PASSED")]}},
    {"op": "settle", "batch": {"epoch": 2, "receipts_root": ROOT, "requests": [
        {"user": U1, "asserter": B, "fee": 900}], "challenges": [
        _challenge(U1, B, 900, [A, C], "ASSERTER_FAULT"),
        _challenge(U2, C, 40, [A, B, D], "VALIDATOR_FAULT", [D])]}},
    {"op": "settle", "batch": {"epoch": 2, "receipts_root": ROOT, "requests": [],
                               "challenges": []}, "revert": "epoch already settled"},
    {"op": "unstake", "node": A, "amount": 800},
    {"op": "settle", "batch": {"epoch": 3, "receipts_root": ROOT, "requests": [], "challenges": [
        _challenge(U1, A, 10, [C], "ASSERTER_FAULT")]}},
    {"op": "settle", "batch": {"epoch": 4, "receipts_root": ROOT, "requests": [], "challenges": [
        _challenge(U1, D, 10, [C], "ASSERTER_FAULT"),
        _challenge(U1, D, 10, [C], "ASSERTER_FAULT")]}, "revert": "slash exceeds stake"},
    {"op": "withdraw", "address": U2, "amount": 10_000, "revert": "insufficient balance"},
    {"op": "withdraw", "address": U1, "amount": 1234},
    {"op": "unstake", "node": B, "amount": 5000, "revert": "insufficient stake"},
]


def _send(clients: dict[str, SettlementClient], op: dict[str, Any]) -> Any:
    kind = op["op"]
    if kind == "deposit":
        return clients[op["address"]].deposit(op["amount"])
    if kind == "fund_treasury":
        return clients[OWNER].fund_treasury(op["amount"])
    if kind == "stake":
        return clients[op["node"]].stake(op["amount"])
    if kind == "unstake":
        return clients[op["node"]].unstake(op["amount"])
    if kind == "withdraw":
        return clients[op["address"]].withdraw(op["amount"])
    return clients[OWNER].settle_batch(batch_from_json(op["batch"]))


@pytest.mark.timeout(240)
def test_client_over_json_rpc_matches_titanoboa(
    devchain_process: Any, settlement_deployer: Any
) -> None:
    chain = devchain_process(deploy=False)
    w3 = Web3(Web3.HTTPProvider(chain.url))
    owner, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), PARAMS,
                                       rpc_url=chain.url)
    clients = {a: SettlementClient(w3, owner.address, Account.from_key(dev_private_key(i)),
                                   rpc_url=chain.url) for a, i in INDEX.items()}
    timed_ops = []
    for op in SCENARIO:
        if "revert" in op:
            with pytest.raises(ChainRevert) as info:
                _send(clients, op)
            assert info.value.reason == op["revert"]
            timed_ops.append(op)
        else:
            receipt = _send(clients, op)
            # Replay in titanoboa at the very timestamp the dev chain mined it with.
            stamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
            timed_ops.append({**op, "time": stamp})
    parties, epochs = list(INDEX), [1, 2, 3, 4]
    on_chain = owner.ledger_state(parties, epochs)
    assert owner.contract_funds() == on_chain.total_funds()

    boa.env.timestamp = timed_ops[0]["time"]
    boa.env.set_balance(dev_address(0), 10**24)
    with boa.env.prank(dev_address(0)):
        contract = settlement_deployer.deploy(params_tuple(PARAMS))
        for op in timed_ops:
            if "revert" in op:
                with boa.reverts(op["revert"]):
                    apply_op(contract, op)
            else:
                apply_op(contract, op)
    in_boa = read_state(contract, parties, epochs)
    assert on_chain == in_boa
    assert on_chain.unbonding and on_chain.reputation and on_chain.epoch_roots  # not vacuous
    assert boa.env.get_balance(contract.address) == owner.contract_funds()


def test_roles_and_receipt_proofs_through_the_client(tmp_path: Any) -> None:
    from verinfer.chain.devchain import DevChain, DevChainProvider
    from verinfer.protocol.settlement import Batch

    chain = DevChain(tmp_path)
    w3 = Web3(DevChainProvider(chain))
    owner, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), PARAMS)
    gateway = SettlementClient(w3, owner.address, Account.from_key(dev_private_key(5)))
    leaves = [b"receipt-a", b"receipt-b", b"receipt-c"]
    batch = Batch(7, merkle_root(leaves))
    with pytest.raises(ChainRevert, match="caller is not a settler"):
        gateway.settle_batch(batch)
    owner.grant_role(dev_address(5), Role.SETTLER)
    assert gateway.roles_of(dev_address(5)) == Role.SETTLER
    gateway.settle_batch(batch)
    assert owner.epoch_root(7) == batch.receipts_root and owner.epoch_root(8) is None
    assert [b.epoch for b in owner.batches()] == [7]
    for i, leaf in enumerate(leaves):
        assert gateway.verify_receipt(7, leaf, merkle_proof(leaves, i))
    assert not gateway.verify_receipt(7, b"forged", merkle_proof(leaves, 0))
    owner.pause()
    assert owner.paused()
    with pytest.raises(ChainRevert, match="paused"):
        gateway.settle_batch(Batch(8, batch.receipts_root))
    chain.close()


def test_proof_args_bitmask() -> None:
    proof = [(True, b"\x01" * 32), (False, b"\x02" * 32), (True, b"\x03" * 32)]
    siblings, bits = proof_args(proof)
    assert siblings == [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32] and bits == 0b101
