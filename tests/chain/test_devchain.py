"""The dev chain: JSON-RPC answers, journal replay to the identical state, SIGKILL durability."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from verinfer.chain.client import ChainRevert, ChainUnreachable, SettlementClient
from verinfer.chain.devchain import JOURNAL_NAME, DevChain, DevChainProvider, make_server
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.settings import DEV_EPOCH_SECONDS, DEV_PARAMS
from verinfer.errors import ChainError

PARAMS = DEV_PARAMS


def _client(chain: DevChain, key_index: int = 0) -> SettlementClient:
    w3 = Web3(DevChainProvider(chain))
    return SettlementClient(w3, "0x" + "00" * 20, Account.from_key(dev_private_key(key_index)))


def _deploy(chain: DevChain) -> SettlementClient:
    w3 = Web3(DevChainProvider(chain))
    client, _ = SettlementClient.deploy(
        w3, Account.from_key(dev_private_key(0)), PARAMS, epoch_seconds=DEV_EPOCH_SECONDS
    )
    return client


def _state_fingerprint(chain: DevChain) -> tuple[int, str, str]:
    head = chain.tester.backend.chain.get_canonical_head()
    return head.block_number, head.hash.hex(), head.state_root.hex()


def test_rpc_basics(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    w3 = Web3(DevChainProvider(chain))
    assert w3.eth.chain_id == DEV_CHAIN_ID
    assert w3.net.version == str(DEV_CHAIN_ID)
    assert w3.eth.block_number == 0
    assert w3.eth.get_balance(dev_address(3)) == 10**24
    assert w3.eth.accounts[0] == dev_address(0)
    tx_hash = w3.eth.send_transaction({"from": dev_address(1), "to": dev_address(2), "value": 5})
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    assert w3.eth.get_balance(dev_address(2)) == 10**24 + 5
    assert w3.eth.get_block("latest")["number"] == 1
    bad = chain.handle({"jsonrpc": "2.0", "id": 7, "method": "eth_noSuchThing", "params": []})
    assert bad["error"]["code"] == -32601 and bad["id"] == 7
    assert chain.handle({"id": 1})["error"]["code"] == -32600
    batch = chain.handle([{"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber"} for i in (1, 2)])
    assert [r["result"] for r in batch] == ["0x1", "0x1"]
    snapshot = chain.handle({"jsonrpc": "2.0", "id": 1, "method": "evm_snapshot", "params": []})
    assert "not supported" in snapshot["error"]["message"]
    chain.close()


def test_reverts_carry_their_reason_through_json_rpc(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    client = _deploy(chain)
    with pytest.raises(ChainRevert) as info:
        client.withdraw(1)
    assert info.value.reason == "withdrawal not due"
    assert str(info.value) == "withdraw reverted: withdrawal not due"
    with pytest.raises(ChainRevert, match="caller is not the owner"):
        SettlementClient(
            client.w3, client.address, Account.from_key(dev_private_key(4))
        ).propose_params(PARAMS)
    chain.close()


def test_calls_see_the_current_time_and_evm_increase_time(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    owner = _deploy(chain)
    node = SettlementClient(owner.w3, owner.address, Account.from_key(dev_private_key(1)))
    node.register("http://127.0.0.1:9001")
    node.stake(1000, value=1000)
    node.unstake(400)
    with pytest.raises(ChainRevert, match="withdrawal not due"):
        node.withdraw(400)
    # Block times can run a few seconds ahead of the wall clock (each block is a second after
    # its parent): jump well past the release time.
    owner.w3.provider.make_request("evm_increaseTime", [PARAMS.unbonding_delay + 60])
    node.withdraw(400)  # the estimate and the transaction both run at the moved clock
    assert node.unbonding_of(dev_address(1)).amount == 0
    chain.close()


def test_replay_restores_identical_state(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    client = _deploy(chain)
    for i in range(1, 4):
        user = SettlementClient(client.w3, client.address, Account.from_key(dev_private_key(i)))
        user.deposit(100 * i)
    client.w3.provider.make_request("evm_increaseTime", [50])
    client.w3.provider.make_request("evm_mine", [])
    client.w3.eth.send_transaction({"from": dev_address(5), "to": dev_address(6), "value": 1})
    before = _state_fingerprint(chain)
    chain.close()
    again = DevChain(tmp_path)
    assert again.replayed == len((tmp_path / JOURNAL_NAME).read_text().splitlines())
    assert _state_fingerprint(again) == before
    reopened = SettlementClient(Web3(DevChainProvider(again)), client.address)
    assert [reopened.balance_of(dev_address(i)) for i in range(1, 4)] == [100, 200, 300]
    again.close()


def test_torn_last_record_is_dropped_and_divergence_is_detected(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    _deploy(chain)
    before = _state_fingerprint(chain)
    chain.close()
    journal = tmp_path / JOURNAL_NAME
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op":"raw","ts":1,"raw":"0xdead')  # a crash mid-write
    again = DevChain(tmp_path)
    assert _state_fingerprint(again) == before and journal.read_bytes() == good
    again.close()
    record = json.loads(good.splitlines()[0])
    record["block"] = "0x" + "00" * 32
    journal.write_bytes(json.dumps(record).encode() + b"\n")
    with pytest.raises(ChainError, match="line 1: replay diverged"):
        DevChain(tmp_path)


def test_http_server_on_loopback(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    server = make_server(chain, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
        assert w3.eth.chain_id == DEV_CHAIN_ID
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}", data=b"{not json", method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["error"]["code"] == -32700
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        chain.close()


def test_unreachable_chain_is_one_clear_error() -> None:
    w3 = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2}))
    client = SettlementClient(w3, "0x" + "00" * 20, rpc_url="http://127.0.0.1:9")
    with pytest.raises(ChainUnreachable, match="start it with `verinfer chain`"):
        client.treasury()


@pytest.mark.timeout(240)
def test_sigkill_during_a_stream_of_transactions_loses_nothing_confirmed(
    devchain_process: Any, tmp_path: Path
) -> None:
    """Kill -9 the dev chain while deposits stream in; every confirmed one survives the restart."""
    first = devchain_process()
    confirmed: list[tuple[str, int, str]] = []  # (account, amount, tx hash) with a receipt
    in_flight: dict[str, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream(index: int) -> None:
        w3 = Web3(Web3.HTTPProvider(first.url, request_kwargs={"timeout": 10}))
        client = SettlementClient(
            w3, first.contract, Account.from_key(dev_private_key(index)), rpc_url=first.url
        )
        amount = 1
        while not stop.is_set():
            in_flight[dev_address(index)] = amount
            try:
                receipt = client.deposit(amount)
            except ChainError as exc:
                if not stop.is_set():
                    errors.append(exc)
                return
            confirmed.append((dev_address(index), amount, "0x" + bytes(receipt["transactionHash"]).hex()))
            amount += 1

    threads = [threading.Thread(target=stream, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(confirmed) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    first.kill()  # mid-stream: the writers are still sending
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(confirmed) >= 30
    snapshot = list(confirmed)

    second = devchain_process(first.data_dir)
    assert second.contract == first.contract  # not redeployed: the deployment survived
    w3 = Web3(Web3.HTTPProvider(second.url))
    client = SettlementClient(w3, second.contract, rpc_url=second.url)
    for _, _, tx_hash in snapshot:
        assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    total = 0
    for index in (1, 2, 3):
        address = dev_address(index)
        sent = sum(amount for a, amount, _ in snapshot if a == address)
        held = client.balance_of(address)
        # At most the one deposit in flight at the kill may also have made it (unconfirmed).
        assert held in (sent, sent + in_flight[address])
        total += held
    assert client.contract_funds() == total


def test_a_failed_journal_write_stops_further_changes(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    w3 = Web3(DevChainProvider(chain))
    w3.eth.send_transaction({"from": dev_address(1), "to": dev_address(2), "value": 1})

    def disk_full(record: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    chain.journal.append = disk_full  # type: ignore[method-assign]
    with pytest.raises(Exception, match="journal write failed"):
        w3.eth.send_transaction({"from": dev_address(1), "to": dev_address(2), "value": 1})
    with pytest.raises(Exception, match="restart the dev chain"):
        w3.eth.send_transaction({"from": dev_address(3), "to": dev_address(2), "value": 1})
    assert w3.eth.block_number == 2  # reads still work
    chain.close()
    assert DevChain(tmp_path).replayed == 1  # what was acknowledged is what comes back
