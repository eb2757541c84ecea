"""The chain CLI and client fed bad input: each test is a mistake or an attack that once ended in
lost funds or a traceback, and now ends in one `error: ...` line that says what to do."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from test_chain_cli import verinfer
from web3 import Web3

from verinfer.chain.cli import BadAmount, format_wei, parse_amount
from verinfer.chain.client import BadAddress, SettlementClient, parse_address
from verinfer.chain.devchain import DevChain, DevChainProvider, make_server
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.local import ensure_deployed
from verinfer.chain.settings import DEV_EPOCH_SECONDS, DEV_PARAMS, ChainSettings, record_deployment
from verinfer.errors import ChainError
from verinfer.protocol.settlement import SettlementParams

# A contract that is not the settlement contract: its runtime is STOP.
OTHER_INITCODE = "0x600a600c600039600a6000f3" + "00" * 10


def _mistyped(address: str) -> str:
    """`address` with the case of its first letter flipped: a one-character slip."""
    i = next(i for i, c in enumerate(address) if i >= 2 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1 :]


def _one_error_line(out: Any) -> str:
    lines = [x for x in out.stderr.splitlines() if not x.startswith("using dev account")]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out.stderr
    return str(lines[0])


def _deploy_other(w3: Web3) -> str:
    tx_hash = w3.eth.send_transaction({"from": dev_address(3), "data": OTHER_INITCODE})
    return str(w3.eth.get_transaction_receipt(tx_hash)["contractAddress"])


# ---------------------------------------------------------------- addresses


def test_parse_address() -> None:
    good = dev_address(5)
    assert parse_address(good) == good
    assert parse_address(good.lower()) == good  # no checksum given: taken as written
    for bad in (_mistyped(good), "0x" + good[2:].upper(), good[2:], good + "0", "0x" + "g" * 40):
        with pytest.raises(BadAddress):
            parse_address(bad)


@pytest.mark.timeout(300)
def test_a_mistyped_checksum_is_refused_never_corrected(devchain_process: Any) -> None:
    """A checksum that does not match once was "corrected": funds went to an address nobody
    holds. Now nothing is sent, and the message says why."""
    chain = devchain_process()
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir)]
    intended = dev_address(5)
    typo = _mistyped(intended)
    out = verinfer("deposit", "1", "--for", typo, *where)
    assert "fails its EIP-55 checksum" in _one_error_line(out)
    assert "checksum" in _one_error_line(verinfer("balance", typo, *where))
    out = verinfer("balance", "--contract", _mistyped(chain.contract), *where)
    assert "checksum" in _one_error_line(out)
    assert "not an address" in _one_error_line(verinfer("deposit", "1", "--for", "bob", *where))
    client = SettlementClient(Web3(Web3.HTTPProvider(chain.url)), chain.contract)
    assert client.contract_funds() == 0  # nothing was sent anywhere
    out = verinfer("deposit", "1", "--for", intended.lower(), *where)
    assert out.returncode == 0, out.stderr
    out = verinfer("deposit", "2", "--for", intended, *where)
    assert out.returncode == 0 and f"balance of {intended} is 3 ETH" in out.stdout, out.stderr


def test_the_client_refuses_a_mistyped_beneficiary_or_role_holder(tmp_path: Path) -> None:
    chain = DevChain(tmp_path)
    w3 = Web3(DevChainProvider(chain))
    owner, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), DEV_PARAMS,
                                       epoch_seconds=DEV_EPOCH_SECONDS)
    typo = _mistyped(dev_address(6))
    for attempt in (
        lambda: owner.deposit(10, typo),
        lambda: owner.grant_role(typo, 1),  # type: ignore[arg-type]
        lambda: owner.transfer_ownership(typo),
    ):
        with pytest.raises(BadAddress):
            attempt()
    assert owner.contract_funds() == 0 and owner.owner() == dev_address(0)
    chain.close()


# ---------------------------------------------------------------- amounts


def test_amounts_above_uint256_are_refused() -> None:
    assert parse_amount(f"{2**256 - 1}wei") == 2**256 - 1
    for text in (f"{2**256}wei", "1" + "0" * 60, "1" + "0" * 70 + "gwei"):
        with pytest.raises(BadAmount, match=r"more than the EVM can hold"):
            parse_amount(text)
    out = verinfer("deposit", f"{2**256}wei", "--rpc-url", "http://127.0.0.1:9")
    assert "more than the EVM can hold" in _one_error_line(out)


def test_amounts_are_exact_to_the_wei() -> None:
    """A decimal type with 28 digits once rounded long amounts: 2**256 wei became a smaller,
    valid amount and a contract was deployed with it."""
    assert parse_amount("123456789012.123456789012345678") == 123456789012123456789012345678
    assert parse_amount(f"{2**256 - 1}wei") == 2**256 - 1
    assert parse_amount("0" * 5000 + "1wei") == 1
    assert parse_amount("1." + "0" * 5000) == 10**18
    assert format_wei(2**256 - 1) == f"{(2**256 - 1) // 10**18}.584007913129639935 ETH"
    assert format_wei(123456789012123456789012345678) == "123456789012.123456789012345678 ETH"


# ---------------------------------------------------------------- endpoints that are not a chain


class _Answering(BaseHTTPRequestHandler):
    status = 200
    body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def web_server() -> Iterator[Any]:
    """Start an HTTP server on loopback that answers every POST with `status` and an HTML page."""
    servers: list[ThreadingHTTPServer] = []

    def _start(status: int) -> str:
        handler = type("Handler", (_Answering,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield _start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_an_rpc_url_that_answers_a_web_page_is_one_line(web_server: Any, tmp_path: Path) -> None:
    url = web_server(200)
    for args in (("balance", dev_address(1)), ("deposit", "1"), ("chain", "deploy"), ("ledger",)):
        out = verinfer(*args, "--rpc-url", url, "--data-dir", str(tmp_path))
        line = _one_error_line(out)
        assert "is not JSON-RPC (a web page?): check the RPC URL" in line, (args, line)
    out = verinfer("balance", dev_address(1), "--rpc-url", web_server(404), "--data-dir",
                   str(tmp_path))
    assert "answered HTTP 404: check the RPC URL" in _one_error_line(out)


# ---------------------------------------------------------------- keys


class _OtherChain(DevChain):
    """The dev chain answering as chain 42161, as an L2 would: dev accounts are not offered."""

    def handle(self, request: Any) -> Any:
        if isinstance(request, dict) and request.get("method") == "eth_chainId":
            return {"jsonrpc": "2.0", "id": request.get("id"), "result": hex(42161)}
        return super().handle(request)


@pytest.fixture
def other_chain(tmp_path: Path) -> Iterator[tuple[str, str]]:
    chain = _OtherChain(tmp_path / "chain")
    w3 = Web3(DevChainProvider(chain))
    client, _ = SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), DEV_PARAMS,
                                       epoch_seconds=DEV_EPOCH_SECONDS)
    server = make_server(chain, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", client.address
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    chain.close()


def test_a_missing_key_on_a_non_dev_chain_is_one_line(
    other_chain: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, contract = other_chain
    monkeypatch.delenv("VERINFER_CHAIN_KEY", raising=False)
    monkeypatch.delenv("VERINFER_CHAIN_KEY_FILE", raising=False)
    where = ["--rpc-url", url, "--contract", contract, "--data-dir", str(tmp_path)]
    for args in (("deposit", "1"), ("withdraw", "1"), ("stake", "1"), ("unstake", "1"),
                 ("balance",)):
        line = _one_error_line(verinfer(*args, *where))
        assert "no key is set for chain 42161: pass --key-file FILE" in line, (args, line)
    # Reading someone else's balance needs no key; with a key file, the deposit goes through.
    assert verinfer("balance", dev_address(2), *where).returncode == 0
    key_file = tmp_path / "key"
    key_file.write_text(dev_private_key(2).hex())
    out = verinfer("deposit", "1", "--key-file", str(key_file), *where)
    assert out.returncode == 0 and f"balance of {dev_address(2)} is 1 ETH" in out.stdout, out.stderr


# ---------------------------------------------------------------- the contract itself


def test_a_contract_that_is_not_this_one_is_refused(devchain_process: Any) -> None:
    """Code at the address is not enough: it must be the committed artifact's runtime code."""
    chain = devchain_process()
    w3 = Web3(Web3.HTTPProvider(chain.url))
    other = _deploy_other(w3)
    assert w3.eth.get_code(Web3.to_checksum_address(other))  # there is code there
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir), "--contract", other]
    for args in (("balance", dev_address(1)), ("deposit", "1"), ("ledger",)):
        line = _one_error_line(verinfer(*args, *where))
        assert "is not verinfer's settlement contract" in line, (args, line)
    assert "no contract at" in _one_error_line(
        verinfer("ledger", *where[:-1], dev_address(7)))  # an account, not a contract
    assert SettlementClient(w3, chain.contract).is_this_contract()


def test_a_recorded_deployment_of_other_code_is_replaced(tmp_path: Path) -> None:
    """A dev chain kept from an older contract version gets the current contract deployed."""
    settings = ChainSettings.load(data_dir=tmp_path)
    chain = DevChain(settings.devchain_dir)
    other = _deploy_other(Web3(DevChainProvider(chain)))
    record_deployment(settings, DEV_CHAIN_ID, {"address": other})
    address = ensure_deployed(chain, settings)
    assert address != other
    assert SettlementClient(Web3(DevChainProvider(chain)), address).is_this_contract()
    recorded = json.loads(settings.deployments_path.read_text())[str(DEV_CHAIN_ID)]
    assert recorded["address"] == address
    assert ensure_deployed(chain, settings) == address  # and it is kept from then on
    chain.close()


def test_deploy_parameters_above_uint256_are_one_line(
    other_chain: tuple[str, str], tmp_path: Path
) -> None:
    """`chain deploy --unbonding-delay 2**256` once ended in web3's encoding traceback."""
    where = ["--rpc-url", other_chain[0], "--data-dir", str(tmp_path)]
    for option in ("--unbonding-delay", "--protocol-fee-bps"):
        line = _one_error_line(verinfer("chain", "deploy", option, str(2**256), *where))
        assert f"{option} {2**256} is more than the EVM can hold" in line
    line = _one_error_line(verinfer("chain", "deploy", "--slash", f"{2**256}wei", *where))
    assert "more than the EVM can hold" in line
    w3 = Web3(Web3.HTTPProvider(other_chain[0]))
    too_long = SettlementParams(**{**vars(DEV_PARAMS), "unbonding_delay": 2**256})
    with pytest.raises(ChainError, match="deploy failed"):
        SettlementClient.deploy(w3, Account.from_key(dev_private_key(0)), too_long,
                                epoch_seconds=DEV_EPOCH_SECONDS)
