"""`verinfer chain|stake|unstake|deposit|withdraw|balance|ledger` against a real dev chain, and
their one-line errors; plus amount parsing and settings resolution."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from eth_account import Account
from web3 import Web3

from verinfer.chain.cli import BadAmount, format_wei, parse_amount
from verinfer.chain.client import SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.settings import ChainSettings, resolve_account
from verinfer.errors import ChainError
from verinfer.protocol.settlement import Batch, ChallengeEntry, Outcome, RequestEntry


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


@pytest.mark.timeout(300)
def test_cli_round_trip_on_the_dev_chain(devchain_process: Any) -> None:
    chain = devchain_process()
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir)]
    out = verinfer("deposit", "2.5", *where)
    assert out.returncode == 0, out.stderr
    assert f"balance of {dev_address(0)} is 2.5 ETH" in out.stdout
    assert f"using dev account 0 ({dev_address(0)})" in out.stderr

    out = verinfer("stake", "1.2", "--pubkey", "ab" * 32, "--endpoint", "http://127.0.0.1:9001",
                   "--dev-account", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "registered node" in out.stdout and "is 1.2 ETH (active; min stake 1 ETH)" in out.stdout

    # A settled epoch with a slash of node 1, posted by the gateway's client.
    w3 = Web3(Web3.HTTPProvider(chain.url))
    gateway = SettlementClient(w3, chain.contract, Account.from_key(dev_private_key(0)))
    gateway.fund_treasury(10**17)
    user, node = dev_address(0).lower(), dev_address(1).lower()
    gateway.settle_batch(Batch(1, b"\x55" * 32, (RequestEntry(user, node, 10**15),), (
        ChallengeEntry(user, node, 10**15, (dev_address(2).lower(),), Outcome.ASSERTER_FAULT),)))

    out = verinfer("unstake", "0.2", "--dev-account", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "unbonding 0.2 ETH (still slashable) until" in out.stdout

    out = verinfer("balance", dev_address(1), *where)
    assert out.returncode == 0, out.stderr
    assert "stake       0.5 ETH (inactive)" in out.stdout  # 1.2 - 0.5 slashed - 0.2 unbonding
    assert "served 1, challenged 1, passed 0, failed 1" in out.stdout

    out = verinfer("withdraw", "1", *where)
    assert out.returncode == 0, out.stderr
    assert "withdrew 1 ETH: balance left" in out.stdout

    out = verinfer("ledger", *where)
    assert out.returncode == 0, out.stderr
    for expected in (dev_address(1), "http://127.0.0.1:9001", "recent batches", "0x5555",
                     "recent slashes", "0.5 ETH", "1/1/0/1"):
        assert expected in out.stdout, (expected, out.stdout)


def test_cli_errors_are_one_line(devchain_process: Any) -> None:
    chain = devchain_process()
    where = ["--rpc-url", chain.url, "--data-dir", str(chain.data_dir)]
    cases = [
        (("withdraw", "5", *where), "error: withdraw reverted: insufficient balance"),
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
