"""The gateway's settlement cycle through the Python client on the py-evm dev chain: allowances,
commit, beacon, settle, challenged receipts passed on validators' verdicts, and the ledger."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from v2kit import PARAMS, sign_typed, typed_digest
from web3 import Web3

from verinfer.chain.client import MAX_PASS_BATCH, ChainRevert, Role, SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider
from verinfer.chain.devkeys import dev_private_key
from verinfer.errors import ChainError
from verinfer.protocol.challenge import is_challenged
from verinfer.protocol.merkle import merkle_root

# One long epoch, so that the test never crosses an epoch boundary.
EPOCH = 10**6
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=4 * EPOCH, unbonding_delay=5 * EPOCH)


@pytest.fixture
def chain(tmp_path: Path) -> Any:
    c = DevChain(tmp_path)
    yield c
    c.close()


def client(w3: Web3, address: str, index: int) -> SettlementClient:
    return SettlementClient(w3, address, Account.from_key(dev_private_key(index)))


def deploy(w3: Web3, params: Any) -> SettlementClient:
    owner, _ = SettlementClient.deploy(
        w3, Account.from_key(dev_private_key(0)), params, epoch_seconds=EPOCH,
        committees=(255, 2, 255, 3),
    )
    return owner


def test_deploy_refuses_delays_that_let_money_escape(chain: DevChain) -> None:
    w3 = Web3(DevChainProvider(chain))
    with pytest.raises(ChainError, match="withdrawal_delay must exceed"):
        deploy(w3, PARAMS)


def test_the_gateway_cycle_through_the_client(chain: DevChain) -> None:
    w3 = Web3(DevChainProvider(chain))
    owner = deploy(w3, replace(CHAIN_PARAMS, challenge_ppm=1_000_000))
    gateway = client(w3, owner.address, 1)
    chain_id = w3.eth.chain_id
    with pytest.raises(ChainRevert, match="caller is not a settler"):
        gateway.commit_epoch(0, b"\x00" * 32, 0)
    owner.grant_role(gateway.account.address, Role.SETTLER)  # type: ignore[union-attr]
    assert gateway.roles_of(gateway.account.address) == Role.SETTLER  # type: ignore[union-attr]

    nodes = [client(w3, owner.address, i) for i in (2, 3, 4)]
    for n in nodes:
        n.register("http://127.0.0.1:9001")
        n.stake(2000, value=2000)
    user = client(w3, owner.address, 5)
    user.deposit(1000)
    me = user.account.address  # type: ignore[union-attr]
    allowance = {"user": me, "settler": gateway.account.address,  # type: ignore[union-attr]
                 "capPerEpoch": 500, "expiry": 2**40, "nonce": 1}
    anyone = client(w3, owner.address, 6)
    anyone.set_allowance(allowance, sign_typed(user.account, chain_id, owner.address,
                                               "Allowance", allowance))
    owner.fund_treasury(1000)

    epoch = gateway.current_epoch()
    start, _ = gateway.epoch_bounds(epoch)
    asserter = nodes[0].account.address  # type: ignore[union-attr]
    receipts = [
        {"request": bytes([i]) * 32, "job": b"\x02" * 32, "outputHash": b"\x03" * 32,
         "logitsHash": b"\x04" * 32, "outputLength": 3, "node": asserter,
         "gateway": gateway.account.address, "user": me, "fee": 100, "nonce": i,  # type: ignore[union-attr]
         "deadline": start + 10}
        for i in (1, 2)
    ]
    ids = {typed_digest(chain_id, owner.address, "Receipt", r): r for r in receipts}
    ordered = [ids[d] for d in sorted(ids)]
    gateway.commit_epoch(epoch, merkle_root(sorted(ids)), len(ordered))
    assert gateway.beacon(gateway.account.address, epoch) is None  # type: ignore[union-attr]
    anyone.deposit(1)  # a block after the commit: the beacon exists
    beacon = gateway.beacon(gateway.account.address, epoch)  # type: ignore[union-attr]
    assert beacon is not None and all(is_challenged(d, beacon, 1_000_000) for d in ids)
    gateway.settle_epoch(epoch, ordered)
    commitment = gateway.commitment(gateway.account.address, epoch)  # type: ignore[union-attr]
    assert commitment is not None and commitment["beacon"] == beacon and commitment["settled"]
    assert [c.state for c in owner.cases()] == ["open", "open"]
    assert user.balance_of(me) == 800 and owner.escrow_total() == 200

    receipt_id = min(ids)
    verdicts = []
    for v in nodes[1:]:
        verdict = {"receipt": receipt_id, "request": ids[receipt_id]["request"],
                   "outputHash": b"\x03" * 32, "logitsHash": b"\x04" * 32, "valid": True,
                   "firstInvalidStep": 0, "validator": v.account.address,  # type: ignore[union-attr]
                   "gateway": gateway.account.address}  # type: ignore[union-attr]
        verdicts.append((verdict, sign_typed(v.account, chain_id, owner.address, "Verdict",
                                             verdict)))
    anyone.pass_challenge(epoch, ids[receipt_id], verdicts)
    assert owner.case(epoch, receipt_id).state == "passed"
    assert [c.receipt for c in owner.cases()] == [sorted(ids)[1]]
    # Fee 100 less the 10% cut, plus R_A 10; each validator R_V // 2 = 4; the user half its fee.
    assert nodes[0].balance_of(asserter) == 100
    assert all(v.balance_of(v.account.address) == 4 for v in nodes[1:])  # type: ignore[union-attr]
    assert user.balance_of(me) == 850
    parties = [me, asserter, anyone.account.address, *(v.account.address for v in nodes)]  # type: ignore[union-attr]
    held = owner.ledger_state(parties)
    assert owner.contract_funds() == held.total_funds() + owner.escrow_total()
    assert [e.epoch for e in owner.epochs()] == [epoch]

    owner.pause()
    assert owner.paused()
    with pytest.raises(ChainRevert, match="paused"):
        gateway.commit_epoch(epoch, b"\x00" * 32, 0)


def test_a_pass_batch_of_no_case_or_too_many_is_refused_before_sending(chain: DevChain) -> None:
    w3 = Web3(DevChainProvider(chain))
    owner = deploy(w3, CHAIN_PARAMS)
    blocks = w3.eth.block_number
    for count in (0, MAX_PASS_BATCH + 1):
        with pytest.raises(ChainError, match=f"1 to {MAX_PASS_BATCH} cases, not {count}"):
            owner.pass_challenges(0, [({}, [])] * count)
    assert w3.eth.block_number == blocks
