"""`verinfer chain|stake|unstake|deposit|withdraw|balance|ledger` against a real dev chain, and
their one-line errors; plus amount parsing and settings resolution."""

from __future__ import annotations

import io
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from eth_account import Account
from v2kit import sign_typed, typed_digest
from web3 import Web3

from verinfer.chain.cli import BadAmount, format_wei, parse_amount
from verinfer.chain.client import SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.settings import ChainSettings, resolve_account
from verinfer.errors import ChainError
from verinfer.protocol.merkle import merkle_root


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def verinfer(*args: str) -> Result:
    """Run `verinfer ARGS` through `verinfer.cli.main` in this process (as the console script
    does, with its error handling), capturing what it prints."""
    from verinfer import cli

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with redirect_stdout(out), redirect_stderr(err), patch.object(sys, "argv", ["verinfer", *args]):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def advance_past(w3: Web3, moment: int) -> None:
    """Move the dev chain's clock past `moment` (block times may run ahead of the wall clock:
    each block is at least a second after its parent)."""
    w3.provider.make_request("evm_increaseTime", [max(0, moment - int(time.time()) + 2)])
    w3.provider.make_request("evm_mine", [])


@pytest.mark.timeout(300)
def test_cli_round_trip_on_the_dev_chain(devchain_process: Any) -> None:
    chain = devchain_process()
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir)]
    out = verinfer("chain", "deploy", "--challenge-ppm", "1000000", *where)
    assert out.returncode == 0, out.stderr
    contract = out.stdout.split("deployed settlement contract at ")[1].split()[0]

    out = verinfer("deposit", "2.5", *where)
    assert out.returncode == 0, out.stderr
    assert f"balance of {dev_address(0)} is 2.5 ETH" in out.stdout
    assert f"using dev account 0 ({dev_address(0)})" in out.stderr

    out = verinfer("stake", "1.2", "--endpoint", "http://127.0.0.1:9001",
                   "--dev-account", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "registered node" in out.stdout and "is 1.2 ETH (active; min stake 1 ETH)" in out.stdout

    # An epoch committed and settled by the gateway's client; every receipt is challenged.
    w3 = Web3(Web3.HTTPProvider(chain.url))
    gateway = SettlementClient(w3, contract, Account.from_key(dev_private_key(0)))
    user = SettlementClient(w3, contract, Account.from_key(dev_private_key(3)))
    user.deposit(10**16)
    allowance = {"user": dev_address(3), "settler": dev_address(0), "capPerEpoch": 10**16,
                 "expiry": 2**40, "nonce": 1}
    chain_id = w3.eth.chain_id
    gateway.set_allowance(allowance, sign_typed(user.account, chain_id, contract,
                                                "Allowance", allowance))
    epoch = gateway.current_epoch()
    _, end = gateway.epoch_bounds(epoch)
    receipt = {"request": b"\x01" * 32, "job": b"\x02" * 32, "outputHash": b"\x03" * 32,
               "logitsHash": b"\x04" * 32, "outputLength": 3, "node": dev_address(1),
               "gateway": dev_address(0), "user": dev_address(3), "fee": 10**15,
               "nonce": 1, "deadline": end - 1}
    rid = typed_digest(chain_id, contract, "Receipt", receipt)
    gateway.commit_epoch(epoch, merkle_root([rid]), 1)
    user.deposit(1)  # the block whose hash is the beacon
    gateway.settle_epoch(epoch, [receipt])
    assert gateway.case(epoch, rid).state == "open"

    out = verinfer("unstake", "0.2", "--dev-account", "1", *where)
    assert out.returncode == 2 and "open challenge" in out.stderr
    out = verinfer("ledger", *where)
    assert out.returncode == 0, out.stderr
    for expected in ("open challenges and appeals", "0x" + rid.hex()[:16], "open",
                     "evidence (pass or accuse)"):
        assert expected in out.stdout, (expected, out.stdout)
    advance_past(w3, gateway.case(epoch, rid).deadline)
    gateway.finalize(epoch, rid)
    assert gateway.case(epoch, rid).state == "lapsed"

    out = verinfer("unstake", "0.2", "--dev-account", "1", *where)
    if gateway.case(epoch, rid).state == "open":
        assert out.returncode == 2 and "open challenge" in out.stderr
        out = verinfer("ledger", *where)
        assert out.returncode == 0, out.stderr
        for expected in ("open challenges and appeals", "0x" + rid.hex()[:16], "open",
                         "evidence (pass or accuse)"):
            assert expected in out.stdout, (expected, out.stdout)
        w3.provider.make_request("evm_increaseTime", [gateway.params().challenge_window + 1])
        w3.provider.make_request("evm_mine", [])
        gateway.finalize(epoch, rid)
        out = verinfer("unstake", "0.2", "--dev-account", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "unbonding 0.2 ETH (still slashable) until" in out.stdout

    out = verinfer("balance", dev_address(1), *where)
    assert out.returncode == 0, out.stderr
    assert "stake       1 ETH (active)" in out.stdout

    out = verinfer("withdraw", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "withdrawal of 1 ETH requested: run `verinfer withdraw` again after" in out.stdout
    advance_past(w3, gateway.withdrawal_of(dev_address(0))[1])
    out = verinfer("withdraw", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "withdrew 1 ETH: balance left" in out.stdout

    out = verinfer("ledger", *where)
    assert out.returncode == 0, out.stderr
    for expected in (dev_address(1), "http://127.0.0.1:9001", "recent settled epochs",
                     "recent slashes", "open challenges and appeals"):
        assert expected in out.stdout, (expected, out.stdout)


def test_cli_errors_are_one_line(devchain_process: Any) -> None:
    chain = devchain_process()
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir)]
    cases = [
        (("withdraw", "5", *where), "error: request withdrawal reverted: insufficient balance"),
        (("unstake", "1", *where), "error: unstake reverted: insufficient stake"),
        (("deposit", "abc", *where), "error: not an amount: 'abc'"),
        (("deposit", "1", "--rpc-url", "http://127.0.0.1:9"),
         "error: chain at http://127.0.0.1:9 unreachable: start it with `verinfer chain`"),
        (("balance", "--rpc-url", chain.url, "--data-dir", str(chain.data_dir / "elsewhere")),
         f"error: no settlement contract known for chain {DEV_CHAIN_ID}"),
        (("deposit", "1", "--dev-account", "42", *where), "error: dev account index 42"),
    ]
    for args, message in cases:
        out = verinfer(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = [x for x in out.stderr.splitlines() if not x.startswith("using dev account")]
        assert len(lines) == 1 and lines[0].startswith(message), (args, out.stderr)


def test_chain_serve_refuses_a_busy_port(devchain_process: Any) -> None:
    chain = devchain_process()
    port = chain.url.rsplit(":", 1)[1]
    out = verinfer("chain", "serve", "--port", port, "--data-dir", str(chain.data_dir / "other"))
    assert out.returncode == 2 and out.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("text", "wei"),
    [("1", 10**18), ("1.5", 15 * 10**17), ("1.5eth", 15 * 10**17), ("20gwei", 20 * 10**9),
     ("1000wei", 1000), ("0.000000000000000001", 1), (" 2 ETH ", 2 * 10**18)],
)
def test_parse_amount(text: str, wei: int) -> None:
    assert parse_amount(text) == wei


@pytest.mark.parametrize("text", ["", "-1", "0", "1.5wei", "1e3", "abc", "1 btc", "0.0000000000000000001"])
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(BadAmount):
        parse_amount(text)


def test_format_wei() -> None:
    assert [format_wei(x) for x in (0, 1, 15 * 10**17, 10**21)] == [
        "0 ETH", "0.000000000000000001 ETH", "1.5 ETH", "1000 ETH"]


def test_settings_precedence_and_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERINFER_CHAIN_RPC", "http://10.0.0.1:8547")
    monkeypatch.setenv("VERINFER_DATA_DIR", str(tmp_path))
    assert ChainSettings.load().rpc_url == "http://10.0.0.1:8547"
    assert ChainSettings.load(rpc_url="http://127.0.0.1:1").rpc_url == "http://127.0.0.1:1"
    assert ChainSettings.load().devchain_dir == tmp_path / "chain" / "devchain"
    monkeypatch.setenv("VERINFER_CHAIN_DEV_ACCOUNT", "not a number")
    with pytest.raises(ChainError, match="bad chain setting dev_account"):
        ChainSettings.load()
    monkeypatch.delenv("VERINFER_CHAIN_DEV_ACCOUNT")

    key = Account.create()
    key_file = tmp_path / "key"
    key_file.write_text(key.key.hex() + "\n")
    settings = ChainSettings.load(key_file=key_file)
    assert resolve_account(settings, 42161).address == key.address  # any chain, e.g. Arbitrum
    monkeypatch.setenv("VERINFER_CHAIN_KEY", Account.create().key.hex())
    assert resolve_account(settings, 42161).address == key.address  # the file wins
    assert resolve_account(ChainSettings.load(), 42161).address != key.address
    monkeypatch.delenv("VERINFER_CHAIN_KEY")
    assert resolve_account(ChainSettings.load(), 42161) is None
    with pytest.raises(ChainError, match="dev accounts exist only on the dev chain"):
        resolve_account(ChainSettings.load(dev_account=1), 42161)
    assert resolve_account(ChainSettings.load(dev_account=3), DEV_CHAIN_ID).address == dev_address(3)
    key_file.write_text("not a key")
    with pytest.raises(ChainError, match="does not hold a hex private key"):
        resolve_account(ChainSettings.load(key_file=key_file), DEV_CHAIN_ID)
