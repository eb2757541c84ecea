"""Commands of the economic layer: `chain` (dev chain, deploy), `stake`, `unstake`, `deposit`,
`withdraw`, `balance` and `ledger`.

Amounts are in ETH unless suffixed (`1.5`, `1.5eth`, `20gwei`, `1000wei`). Reverts and an
unreachable chain come out as one `error: ...` line (a `ChainError`), never a traceback.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from verinfer.errors import ChainError, LocalError

if TYPE_CHECKING:
    from verinfer.chain.client import SettlementClient
    from verinfer.chain.settings import ChainSettings

UNITS = {"wei": 0, "gwei": 9, "eth": 18, "ether": 18}
MAX_WEI = 2**256 - 1  # the EVM's largest amount
_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$")


class BadAmount(LocalError):
    """An amount on the command line is not a positive number of ETH, gwei or wei."""


def parse_amount(text: str) -> int:
    """`1.5` / `1.5eth` / `20gwei` / `1000wei` to wei; fractions of a wei are refused.

    Integer arithmetic throughout: a decimal type would round past its precision (28 digits by
    default) and move a different amount than the one typed.
    """
    m = _AMOUNT.match(text.lower())
    if not m or m.group(2) not in ("", *UNITS):
        raise BadAmount(f"not an amount: {text!r} (examples: 1.5, 1.5eth, 20gwei, 1000wei)")
    whole, _, fraction = m.group(1).partition(".")
    decimals = UNITS[m.group(2) or "eth"]
    if fraction.rstrip("0")[decimals:]:
        raise BadAmount(f"{text!r} is not a whole number of wei")
    if len(whole.lstrip("0")) > len(str(MAX_WEI)):
        raise BadAmount(f"{text!r} is more than the EVM can hold (2**256 - 1 wei): check the unit")
    wei = int(whole.lstrip("0") or "0") * 10**decimals
    wei += int(fraction[:decimals].ljust(decimals, "0") or "0")
    if wei <= 0:
        raise BadAmount(f"amount must be positive, got {text!r}")
    if wei > MAX_WEI:
        raise BadAmount(f"{text!r} is more than the EVM can hold (2**256 - 1 wei): check the unit")
    return wei


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def format_wei(wei: int) -> str:
    """Wei as ETH, exact to the last wei however large."""
    whole, fraction = divmod(wei, 10**18)
    return f"{whole}{'.' + f'{fraction:018d}'.rstrip('0') if fraction else ''} ETH"


RpcOpt = Annotated[
    str | None, typer.Option("--rpc-url", help="JSON-RPC URL [env VERINFER_CHAIN_RPC]")
]
ContractOpt = Annotated[
    str | None, typer.Option("--contract", help="contract address [env VERINFER_CHAIN_CONTRACT]")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="state directory [env VERINFER_DATA_DIR]")
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option("--key-file", help="file with a hex private key [env VERINFER_CHAIN_KEY_FILE]"),
]
DevAccountOpt = Annotated[
    int | None, typer.Option("--dev-account", help="dev chain account index (dev chain only)")
]


def _settings(
    rpc_url: str | None,
    contract: str | None,
    data_dir: Path | None,
    key_file: Path | None = None,
    dev_account: int | None = None,
) -> ChainSettings:
    from verinfer.chain.settings import ChainSettings

    return ChainSettings.load(
        rpc_url=rpc_url,
        contract=contract,
        data_dir=data_dir,
        key_file=key_file,
        dev_account=dev_account,
    )


def _client(settings: ChainSettings, with_key: bool = True) -> SettlementClient:
    from verinfer.chain.settings import connect

    return connect(settings, with_key=with_key)


def _serve(host: str, port: int, data_dir: Path | None, deploy: bool) -> None:
    from verinfer.chain.local import serve

    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: the dev chain listens on {host}, beyond this machine", err=True)
    serve(_settings(None, None, data_dir), host=host, port=port, deploy=deploy)


HostOpt = Annotated[str, typer.Option("--host", help="address to bind (loopback by default)")]
PortOpt = Annotated[int, typer.Option("--port", help="port (0: any free one)")]
NoDeployOpt = Annotated[
    bool, typer.Option("--no-deploy", help="do not deploy the contract on a fresh chain")
]

chain_app = typer.Typer(
    help="The embedded dev chain (run without a subcommand to serve it) and contract deployment.",
    no_args_is_help=False,
)


@chain_app.callback(invoke_without_command=True)
def chain_main(
    ctx: typer.Context,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8545,
    data_dir: DataDirOpt = None,
    no_deploy: NoDeployOpt = False,
) -> None:
    """Serve the dev chain (same as `verinfer chain serve`)."""
    if ctx.invoked_subcommand is None:
        _serve(host, port, data_dir, not no_deploy)


@chain_app.command("serve")
def chain_serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8545,
    data_dir: DataDirOpt = None,
    no_deploy: NoDeployOpt = False,
) -> None:
    """Run the durable py-evm dev chain on JSON-RPC; deploys the contract on first start."""
    _serve(host, port, data_dir, not no_deploy)


@chain_app.command("deploy")
def chain_deploy(
    rpc_url: RpcOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
    min_stake: Annotated[str | None, typer.Option(help="minimum stake (e.g. 1eth)")] = None,
    unbonding_delay: Annotated[int | None, typer.Option(help="unbonding delay, seconds")] = None,
    reward_asserter: Annotated[str | None, typer.Option(help="R_A")] = None,
    reward_validators: Annotated[str | None, typer.Option(help="R_V, shared by n")] = None,
    slash: Annotated[str | None, typer.Option(help="slash S (<= min stake)")] = None,
    protocol_fee_bps: Annotated[int | None, typer.Option(help="treasury's fee cut")] = None,
    discount_bps: Annotated[int | None, typer.Option(help="user discount on a pass")] = None,
    challenger_share_bps: Annotated[int | None, typer.Option(help="challengers' slash share")] = None,
    withdrawal_delay: Annotated[int | None, typer.Option(help="deposit withdrawal delay, s")] = None,
    challenge_ppm: Annotated[int | None, typer.Option(help="challenge rate, ppm")] = None,
    challenge_window: Annotated[int | None, typer.Option(help="time for evidence, s")] = None,
    appeal_window: Annotated[int | None, typer.Option(help="appeal window, s")] = None,
) -> None:
    """Deploy a new settlement contract and record it as this chain's contract."""
    from verinfer.chain.client import EPOCH_SECONDS, SettlementClient
    from verinfer.chain.devkeys import DEV_CHAIN_ID
    from verinfer.chain.settings import (
        DEFAULT_PARAMS,
        DEV_EPOCH_SECONDS,
        DEV_PARAMS,
        record_deployment,
        resolve_account,
        web3_for,
    )
    from verinfer.protocol.settlement import InvalidParams, SettlementParams

    settings = _settings(rpc_url, None, data_dir, key_file, dev_account)
    w3, chain_id = web3_for(settings)
    dev = chain_id == DEV_CHAIN_ID
    base = DEV_PARAMS if dev else DEFAULT_PARAMS
    given = {
        "min_stake": min_stake and parse_amount(min_stake),
        "unbonding_delay": unbonding_delay,
        "reward_asserter": reward_asserter and parse_amount(reward_asserter),
        "reward_validators": reward_validators and parse_amount(reward_validators),
        "slash": slash and parse_amount(slash),
        "protocol_fee_bps": protocol_fee_bps,
        "discount_bps": discount_bps,
        "challenger_share_bps": challenger_share_bps,
        "withdrawal_delay": withdrawal_delay,
        "challenge_ppm": challenge_ppm,
        "challenge_window": challenge_window,
        "appeal_window": appeal_window,
    }
    for name, value in given.items():
        if isinstance(value, int) and value > MAX_WEI:
            option = "--" + name.replace("_", "-")
            raise ChainError(f"{option} {value} is more than the EVM can hold (2**256 - 1)")
    try:
        params = SettlementParams(
            **{**vars(base), **{k: v for k, v in given.items() if v is not None}}
        ).validate()
    except InvalidParams as exc:
        raise ChainError(f"bad parameters: {exc}") from exc
    account = resolve_account(settings, chain_id)
    if account is None:
        raise ChainError("deploying needs a key: pass --key-file or set VERINFER_CHAIN_KEY_FILE")
    client, receipt = SettlementClient.deploy(
        w3, account, params, rpc_url=settings.rpc_url,
        epoch_seconds=DEV_EPOCH_SECONDS if dev else EPOCH_SECONDS,
    )
    record_deployment(
        settings,
        chain_id,
        {
            "address": client.address,
            "block": receipt["blockNumber"],
            "deployer": account.address,
            "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        },
    )
    typer.echo(f"deployed settlement contract at {client.address} on chain {chain_id}")


def stake(
    amount: Annotated[str, typer.Argument(help="amount to bond, e.g. 1.5 (ETH) or 20gwei")],
    endpoint: Annotated[
        str | None,
        typer.Option(help="node endpoint URL: registers this account as a node first (once)"),
    ] = None,
    from_balance: Annotated[
        bool, typer.Option("--from-balance", help="bond from the contract balance, send nothing")
    ] = False,
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
) -> None:
    """Bond stake (sending the amount, or from the balance); with --endpoint, register first.

    The node's key is this account's key: it signs the node's receipts and its transactions.
    """
    wei = parse_amount(amount)
    client = _client(_settings(rpc_url, contract, data_dir, key_file, dev_account))
    me = client.signer.address
    if endpoint is not None:
        client.register(endpoint)
        typer.echo(f"registered node {me} (endpoint {endpoint or '-'})")
    client.stake(wei, value=0 if from_balance else wei)
    total, params = client.stake_of(me), client.params()
    active = "active" if client.is_active(me) else "inactive"
    typer.echo(
        f"staked {format_wei(wei)}: stake of {me} is {format_wei(total)} ({active}; "
        f"min stake {format_wei(params.min_stake)})"
    )


def unstake(
    amount: Annotated[str, typer.Argument(help="amount to unbond, e.g. 0.5")],
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
) -> None:
    """Start unbonding stake; `verinfer withdraw` pays it out after the unbonding delay."""
    wei = parse_amount(amount)
    client = _client(_settings(rpc_url, contract, data_dir, key_file, dev_account))
    client.unstake(wei)
    u = client.unbonding_of(client.signer.address)
    release = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.release_time))
    typer.echo(f"unbonding {format_wei(u.amount)} (still slashable) until {release}")


def deposit(
    amount: Annotated[str, typer.Argument(help="amount to deposit, e.g. 0.1")],
    beneficiary: Annotated[
        str | None, typer.Option("--for", help="credit this address instead of the sender")
    ] = None,
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
) -> None:
    """Prepay request fees: deposit into the contract balance."""
    from verinfer.chain.client import parse_address

    wei = parse_amount(amount)
    target = parse_address(beneficiary, "--for") if beneficiary is not None else None
    client = _client(_settings(rpc_url, contract, data_dir, key_file, dev_account))
    client.deposit(wei, target)
    who = target or client.signer.address
    typer.echo(f"deposited {format_wei(wei)}: balance of {who} is {format_wei(client.balance_of(who))}")


def withdraw(
    amount: Annotated[str, typer.Argument(help="amount to withdraw, e.g. 0.1")],
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
) -> None:
    """Withdraw: pays at once what matured unbonding and a due withdrawal request cover;
    otherwise asks for the withdrawal, payable after the withdrawal delay (run it again then)."""
    from verinfer.chain.client import ChainRevert

    wei = parse_amount(amount)
    client = _client(_settings(rpc_url, contract, data_dir, key_file, dev_account))
    me = client.signer.address
    try:
        client.withdraw(wei)
    except ChainRevert as exc:
        if exc.reason != "withdrawal not due":
            raise
        client.request_withdrawal(wei)
        release = client.withdrawal_of(me)[1]
        typer.echo(f"withdrawal of {format_wei(wei)} requested: run `verinfer withdraw` again "
                   f"after {_utc(release)} (paused time added)")
        return
    left = client.balance_of(me)
    typer.echo(f"withdrew {format_wei(wei)}: balance left {format_wei(left)}")


def balance(
    address: Annotated[str | None, typer.Argument(help="address (default: your own)")] = None,
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
    key_file: KeyFileOpt = None,
    dev_account: DevAccountOpt = None,
) -> None:
    """Balance, stake, unbonding and reputation of an address."""
    from verinfer.chain.client import parse_address

    settings = _settings(rpc_url, contract, data_dir, key_file, dev_account)
    if address is not None:
        address = parse_address(address)
    client = _client(settings, with_key=address is None)
    address = address or client.signer.address
    u = client.unbonding_of(address)
    r = client.reputation_of(address)
    typer.echo(f"address     {address}")
    typer.echo(f"balance     {format_wei(client.balance_of(address))}")
    active = "active" if client.is_active(address) else "inactive"
    typer.echo(f"stake       {format_wei(client.stake_of(address))} ({active})")
    if u.amount:
        release = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(u.release_time))
        typer.echo(f"unbonding   {format_wei(u.amount)} until {release}")
    typer.echo(
        f"reputation  served {r.served}, challenged {r.challenged}, passed {r.passed}, "
        f"failed {r.failed} (score {r.rep_ppm / 1e4:.1f}%)"
    )


def ledger(
    limit: Annotated[int, typer.Option(help="how many recent epochs and slashes")] = 10,
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Nodes, stakes, reputation, settled epochs, open challenges and appeals with their
    deadlines, and slashes of the settlement contract."""
    from rich.console import Console
    from rich.table import Table

    from verinfer.chain.settings import read_deployments

    settings = _settings(rpc_url, contract, data_dir)
    client = _client(settings, with_key=False)
    entry = read_deployments(settings).get(str(client.w3.eth.chain_id), {})
    from_block = int(entry.get("block", 0)) if entry.get("address") == client.address else 0
    p = client.params()
    console = Console()
    if not console.is_terminal:
        console.width = 160  # piped output: wide enough that addresses are never cut
    console.print(
        f"[bold]settlement contract[/] {client.address} at {settings.rpc_url}\n"
        f"funds held {format_wei(client.contract_funds())}, treasury {format_wei(client.treasury())}"
        f"{', PAUSED' if client.paused() else ''}, epoch {client.current_epoch()}\n"
        f"min stake {format_wei(p.min_stake)}, slash {format_wei(p.slash)}, "
        f"R_A {format_wei(p.reward_asserter)}, R_V {format_wei(p.reward_validators)}, "
        f"unbonding {p.unbonding_delay} s, fee cut {p.protocol_fee_bps} bps, "
        f"discount {p.discount_bps} bps, challenger share {p.challenger_share_bps} bps, "
        f"challenge rate {p.challenge_ppm} ppm, challenge window {p.challenge_window} s, "
        f"appeal window {p.appeal_window} s, withdrawal delay {p.withdrawal_delay} s"
    )
    nodes = Table(title="nodes")
    for col in ("address", "endpoint", "stake", "unbonding", "active",
                "served/chal/pass/fail", "score"):
        nodes.add_column(col, no_wrap=col == "address")
    for n in client.nodes(from_block):
        r = n.reputation
        nodes.add_row(
            n.address, n.endpoint or "-", format_wei(n.stake),
            format_wei(n.unbonding.amount), "yes" if n.active else "no",
            f"{r.served}/{r.challenged}/{r.passed}/{r.failed}", f"{r.rep_ppm / 1e4:.1f}%",
        )
    console.print(nodes)
    epochs = Table(title=f"recent settled epochs (last {limit})")
    for col in ("epoch", "settler", "receipts root", "requests", "challenged", "fees", "block"):
        epochs.add_column(col)
    for b in client.epochs(from_block)[-limit:]:
        epochs.add_row(str(b.epoch), b.settler, "0x" + b.receipts_root.hex()[:16] + "…",
                       str(b.requests), str(b.challenged), format_wei(b.fees), str(b.block))
    console.print(epochs)
    cases = Table(title="open challenges and appeals (deadlines on the contract's clock, "
                        "which stops while paused)")
    for col in ("epoch", "receipt", "node", "state", "fee escrowed", "next step", "deadline"):
        cases.add_column(col, no_wrap=col == "node")
    for c in client.cases(from_block):
        if c.state == "open":
            step, due = "evidence (pass or accuse), else it lapses", c.deadline
        else:
            step, due = "appeal, else the slash is executed", c.appeal_deadline
        cases.add_row(str(c.epoch), "0x" + c.receipt.hex()[:16] + "…", c.node, c.state,
                      format_wei(c.escrow), step, _utc(due))
    console.print(cases)
    slashes = Table(title=f"recent slashes (last {limit})")
    for col in ("node", "receipt", "amount", "shortfall", "to challengers", "to user",
                "to treasury", "block"):
        slashes.add_column(col)
    for s in client.slashes(from_block)[-limit:]:
        slashes.add_row(s.node, "0x" + s.receipt.hex()[:16] + "…", format_wei(s.amount),
                        format_wei(s.shortfall), format_wei(s.to_challengers),
                        format_wei(s.to_user), format_wei(s.to_treasury), str(s.block))
    console.print(slashes)


def register(app: typer.Typer) -> None:
    """Add the chain commands to the top-level `verinfer` app."""
    app.add_typer(chain_app, name="chain")
    for fn in (stake, unstake, deposit, withdraw, balance, ledger):
        app.command(fn.__name__)(fn)
