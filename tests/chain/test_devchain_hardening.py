"""The dev chain under attack: each test is an exploit that once worked against it.

Hostile requests go to a real server on loopback (a child process where a regression would
crash the interpreter); journal damage is made on disk and the chain reopened.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from verinfer.chain import devchain
from verinfer.chain.devchain import JOURNAL_NAME, DevChain, make_server
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.errors import ChainError


def post(
    port: int, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST `body` to the chain at `port`, as a client that sets the headers it is told to."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", "/", body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def call(port: int, method: str, params: list[Any], **headers: str) -> tuple[int, dict[str, Any]]:
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return post(port, json.dumps(request).encode(), headers)


class Served:
    """A `DevChain` behind the real HTTP server, in a thread of this process."""

    def __init__(self, data_dir: Path) -> None:
        self.chain = DevChain(data_dir)
        self.server = make_server(self.chain, "127.0.0.1", 0)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.chain.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    chain = Served(tmp_path / "chain")
    yield chain
    chain.stop()


def _block_number(port: int) -> int:
    status, answer = call(port, "eth_blockNumber", [])
    assert status == 200, answer
    return int(answer["result"], 16)


def _transfer(port: int, sender: int = 1, **headers: str) -> tuple[int, dict[str, Any]]:
    tx = {"from": dev_address(sender), "to": dev_address(9), "value": "0x1", "gas": "0x5208"}
    return call(port, "eth_sendTransaction", [tx], **headers)


# ---------------------------------------------------------------- size and nesting


@pytest.mark.timeout(180)
def test_deeply_nested_json_is_refused_and_the_server_lives(devchain_process: Any) -> None:
    """100,000 nested arrays once overflowed the C stack of the JSON parser: SIGSEGV."""
    chain = devchain_process(deploy=False)
    port = int(chain.url.rsplit(":", 1)[1])
    status, answer = post(port, b"[" * 100_000 + b"]" * 100_000)
    assert status == 200 and answer["error"]["code"] == -32600
    assert "nested deeper than" in answer["error"]["message"]
    status, answer = post(port, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    assert "nested deeper than" in answer["error"]["message"]
    status, answer = post(port, b"[" * 100_000)  # never closed: not JSON, and never parsed
    assert answer["error"]["code"] == -32700
    # Brackets inside strings are text, not nesting.
    status, answer = call(port, "web3_clientVersion", ["[" * 100_000])
    assert status == 200 and answer["result"].startswith("verinfer-devchain")
    assert chain.proc.poll() is None and _block_number(port) == 0


def test_oversized_request_is_refused_unread(served: Served) -> None:
    """The answer comes from the headers alone: the server does not wait for 64 MiB."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n[1," % (64 * 2**20)
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
        assert "larger than" in json.loads(response.read())["error"]["message"]
    assert _block_number(served.port) == 0


def test_a_batch_inside_a_batch_is_an_invalid_request(served: Served) -> None:
    inner = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    status, answer = post(served.port, json.dumps([inner, [[inner]]]).encode())
    assert status == 200
    assert answer[0]["result"] == "0x0" and answer[1]["error"]["code"] == -32600


# ---------------------------------------------------------------- the clock


def test_evm_increase_time_is_bounded_and_stays_bounded_across_restarts(tmp_path: Path) -> None:
    """A jump past uint256 once made every later call that reads the time fail, for good."""
    first = Served(tmp_path)
    try:
        for bad in (2**256, hex(2**256), 10**30, -5, True, "soon"):
            _, answer = call(first.port, "evm_increaseTime", [bad])
            assert answer["error"]["code"] == -32602, (bad, answer)
        assert call(first.port, "evm_increaseTime", [])[1]["error"]["code"] == -32602
        assert call(first.port, "evm_increaseTime", [3600])[1]["result"] == 3600
        assert call(first.port, "evm_increaseTime", ["0x10"])[1]["result"] == 3616
        assert _transfer(first.port)[0] == 200
    finally:
        first.stop()
    again = Served(tmp_path)
    try:
        assert "result" in _transfer(again.port)[1]
        _, answer = call(again.port, "eth_getBlockByNumber", ["latest", False])
        assert int(answer["result"]["timestamp"], 16) < 2**64
    finally:
        again.stop()


def test_a_journal_with_a_clock_beyond_the_bound_is_refused_by_line(tmp_path: Path) -> None:
    """A data dir written before the bound existed names its bad record instead of breaking."""
    chain = DevChain(tmp_path)
    chain.handle({"jsonrpc": "2.0", "id": 1, "method": "evm_mine", "params": []})
    chain.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as journal:
        journal.write(json.dumps({"op": "time", "offset": 2**256}).encode() + b"\n")
    with pytest.raises(ChainError, match=r"line 2: clock offset"):
        DevChain(tmp_path)


# ---------------------------------------------------------------- the journal


def _journal_of_transfers(tmp_path: Path, count: int) -> bytes:
    chain = DevChain(tmp_path)
    for _ in range(count):
        tx = {"from": dev_address(1), "to": dev_address(9), "value": "0x1", "gas": "0x5208"}
        answer = chain.handle(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [tx]}
        )
        assert "result" in answer, answer
    chain.close()
    return (tmp_path / JOURNAL_NAME).read_bytes()


@pytest.mark.parametrize("damage", [b'{"op":"send","ts":1', b"", b"\x00" * 40, b"[1, 2]"])
def test_a_damaged_line_before_the_end_is_an_error_naming_it(tmp_path: Path, damage: bytes) -> None:
    """Once, a bad middle line silently dropped every later confirmed transaction."""
    good = _journal_of_transfers(tmp_path, 4)
    lines = good.splitlines(keepends=True)
    damaged = b"".join([*lines[:1], damage + b"\n", *lines[2:]])
    (tmp_path / JOURNAL_NAME).write_bytes(damaged)
    with pytest.raises(ChainError, match=rf"{JOURNAL_NAME} line 2 is damaged"):
        DevChain(tmp_path)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == damaged  # nothing cut off


def test_a_complete_but_damaged_last_line_is_an_error_too(tmp_path: Path) -> None:
    """A line that ends in a newline was written whole and fsync'ed: it was acknowledged."""
    good = _journal_of_transfers(tmp_path, 2)
    (tmp_path / JOURNAL_NAME).write_bytes(good + b"garbage\n")
    with pytest.raises(ChainError, match=rf"{JOURNAL_NAME} line 3 is damaged"):
        DevChain(tmp_path)


def test_only_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    good = _journal_of_transfers(tmp_path, 3)
    (tmp_path / JOURNAL_NAME).write_bytes(good + b'{"op":"send","ts":17')
    chain = DevChain(tmp_path)
    assert chain.replayed == 3 and (tmp_path / JOURNAL_NAME).read_bytes() == good
    chain.close()


def test_a_record_that_cannot_be_replayed_names_its_line(tmp_path: Path) -> None:
    good = _journal_of_transfers(tmp_path, 2)
    lines = good.splitlines(keepends=True)
    record = json.loads(lines[1])
    del record["ts"]
    (tmp_path / JOURNAL_NAME).write_bytes(lines[0] + json.dumps(record).encode() + b"\n")
    with pytest.raises(ChainError, match=r"line 2 cannot be replayed"):
        DevChain(tmp_path)


# ---------------------------------------------------------------- web pages


def test_requests_from_web_pages_are_refused(served: Served) -> None:
    """A page the user visits could post transactions: directly (CSRF) or by DNS rebinding."""
    attacks: list[tuple[dict[str, str], int]] = [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),  # a sandboxed frame or a file:// page
        ({"Origin": "http://127.0.0.1.evil.example"}, 403),
        ({"Host": "evil.example:8545"}, 403),  # rebinding: the name now resolves to 127.0.0.1
        ({"Host": "localhost.evil.example"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a "simple" cross-site request, no preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ]
    for headers, status in attacks:
        got, answer = _transfer(served.port, **headers)
        assert (got, answer["error"]["code"]) == (status, -32600), headers
    assert _block_number(served.port) == 0  # none of them sent anything
    status, answer = post(served.port, b"", {"Content-Type": "text/plain"})
    assert status == 415
    # Local programs, and pages served from this machine, still get answers.
    for headers in (
        {},
        {"Host": f"localhost:{served.port}"},
        {"Host": f"[::1]:{served.port}"},
        {"Origin": "http://localhost:3000"},
        {"Content-Type": "application/json; charset=utf-8"},
    ):
        status, answer = _transfer(served.port, **headers)
        assert status == 200 and "result" in answer, (headers, answer)
    assert _block_number(served.port) == 5


def test_a_post_without_a_length_is_refused(served: Served) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}).encode()
    # One write of the whole chunked request: the server may answer and close as soon as it
    # has read the headers, which must not turn into a broken pipe on this side.
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 411 and json.loads(response.read())["error"]["code"] == -32600
        response.close()


def test_a_server_bound_beyond_loopback_still_refuses_dns_names() -> None:
    headers = {"Content-Type": "application/json", "Content-Length": "2"}
    for host in ("192.168.1.20:8545", "[fe80::1]:8545", "localhost"):
        assert devchain.check_http_request({**headers, "Host": host}, "0.0.0.0") == 2
    with pytest.raises(devchain.Refused):
        devchain.check_http_request({**headers, "Host": "devchain.example:8545"}, "0.0.0.0")
    with pytest.raises(devchain.Refused):  # bound to loopback: only loopback names
        devchain.check_http_request({**headers, "Host": "192.168.1.20:8545"}, "127.0.0.1")


# ---------------------------------------------------------------- raw transactions


def _signed(tx_type: int, nonce: int = 0) -> str:
    account = Account.from_key(dev_private_key(2))
    tx: dict[str, Any] = {
        "chainId": DEV_CHAIN_ID, "nonce": nonce, "to": dev_address(9), "value": 1, "gas": 21000,
        "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1,
    }
    if tx_type == 3:
        tx.update(type=3, maxFeePerBlobGas=10**10, blobVersionedHashes=[b"\x01" + b"\x00" * 31])
    return "0x" + bytes(account.sign_transaction(tx).raw_transaction).hex()


def test_an_unprefixed_blob_transaction_does_not_wedge_the_chain(tmp_path: Path) -> None:
    """Without `0x` a blob transaction once slipped past the check and stuck in the pending
    block: its sender's next transaction was refused and no block could be mined."""
    served = Served(tmp_path)
    try:
        blob = _signed(3)
        for raw in (blob, blob[2:], "0X" + blob[2:], blob[2:].upper()):
            _, answer = call(served.port, "eth_sendRawTransaction", [raw])
            assert answer["error"]["message"] == "blob transactions are not supported", raw[:8]
        for raw in ("", "0x", "zz", "0x123", 7, None):
            _, answer = call(served.port, "eth_sendRawTransaction", [raw])
            assert answer["error"]["code"] == -32602, raw
        _, answer = call(served.port, "eth_sendRawTransaction", [_signed(2)[2:]])
        assert "result" in answer, answer  # the same sender, nonce 0: nothing was stuck
        assert _block_number(served.port) == 1
        assert call(served.port, "evm_mine", [])[1]["result"] == "0x0"
        assert _block_number(served.port) == 2
    finally:
        served.stop()
    record = json.loads((tmp_path / JOURNAL_NAME).read_bytes().splitlines()[0])
    assert record["raw"].startswith("0x")
    again = DevChain(tmp_path)
    assert again.replayed == 2
    again.close()
