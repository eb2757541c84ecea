"""`verinfer gateway`: run the gateway, and manage its users' API keys (`keys add`, `keys list`).

State lives under `--data-dir` (default `VERINFER_DATA_DIR` or `~/.verinfer`) in `gateway/`:
the SQLite store and the gateway's key (created on first start, mode 0600). The challenge
parameters are checked at start-up by `verinfer.econ`'s parameter check and refused when
cheating would pay, unless `--force`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from verinfer.errors import LocalError

gateway_app = typer.Typer(help="The users' entry point: OpenAI-compatible API, routing, "
                               "challenges and settlement of epochs.",
                          invoke_without_command=True, no_args_is_help=False)
keys_app = typer.Typer(help="API keys: each maps to a chain account that pays its requests.",
                       no_args_is_help=True)
gateway_app.add_typer(keys_app, name="keys")

DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="state directory [env VERINFER_DATA_DIR, default ~/.verinfer]")]


def gateway_dir(data_dir: Path | None) -> Path:
    base = data_dir or Path(os.environ.get("VERINFER_DATA_DIR") or "~/.verinfer")
    return base.expanduser() / "gateway"


def new_api_key() -> str:
    return "vi-" + secrets.token_urlsafe(32)


@keys_app.command("add")
def keys_add(
    user: Annotated[str, typer.Option("--user", help="the chain account (0x address) billed")],
    label: Annotated[str, typer.Option("--label", help="a note to tell keys apart")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Create an API key for USER and print it once (only its hash is kept)."""
    from verinfer.gateway.store import GatewayStore
    from verinfer.protocol import wire

    try:
        account = wire.check_address(user)
    except wire.WireFormatError as exc:
        raise LocalError(f"--user: {exc}") from exc
    key = new_api_key()
    store = GatewayStore(gateway_dir(data_dir) / "gateway.sqlite")
    store.add_api_key(key, account, label)
    store.close()
    typer.echo(key)
    typer.echo(f"(billed to {account}; the key is shown only now)", err=True)


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None) -> None:
    """Accounts with API keys (the keys themselves are not stored)."""
    from verinfer.gateway.store import GatewayStore

    store = GatewayStore(gateway_dir(data_dir) / "gateway.sqlite")
    for account, label, created, revoked in store.api_keys():
        typer.echo(f"{account}  {label or '-'}  created {created}{'  revoked' if revoked else ''}")
    store.close()


@gateway_app.callback()
def gateway(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option("--host", help="address to bind (loopback unless told)")]
    = "127.0.0.1",
    data_dir: DataDirOpt = None,
    model: Annotated[list[Path] | None, typer.Option(
        "--model", help="model directory whose tokenizer commits prompts (repeatable)")] = None,
    p: Annotated[int | None, typer.Option(
        "--p", help="challenge probability in ppm: on settlement v2 the contract's "
        "challenge_ppm; given, it must match it")] = None,
    validators: Annotated[int, typer.Option("--validators", help="validators per challenge")]
    = 3,
    arbitrators: Annotated[int, typer.Option("--arbitrators", help="arbitration committee (odd)")]
    = 5,
    price: Annotated[int, typer.Option("--price", help="wei per prompt or output token")]
    = 10**9,
    epoch_seconds: Annotated[float | None, typer.Option(
        "--epoch-seconds", help="epoch length: on settlement v2 the contract's EPOCH_SECONDS; "
        "given, it must match it")] = None,
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="[env VERINFER_CHAIN_RPC]")]
    = None,
    contract: Annotated[str | None, typer.Option("--contract")] = None,
    cost: Annotated[int | None, typer.Option(
        "--cost", help="what one validation costs a node, in wei (C of the parameter check); "
        "default: the validators' reward share R_V/n, the most at which validating pays")] = None,
    force: Annotated[bool, typer.Option("--force", help="run with unsafe parameters")] = False,
) -> None:
    """Run the gateway (`verinfer gateway --port 8000 --model models/demo`)."""
    if ctx.invoked_subcommand is not None:
        return
    if not model:
        raise LocalError("pass --model DIR for each model the gateway serves (its tokenizer "
                         "and configuration commit the prompts)")
    serve(port, host, gateway_dir(data_dir), model, p, validators, arbitrators, price,
          epoch_seconds, rpc_url, contract, cost, force, data_dir)


def serve(port: int, host: str, state: Path, models: list[Path], p_ppm: int | None,
          validators: int, arbitrators: int, price: int, epoch_seconds: float | None,
          rpc_url: str | None,
          contract: str | None, cost: int | None, force: bool, data_dir: Path | None) -> None:
    import logging

    import uvicorn
    from eth_account import Account

    from verinfer.api.listen import listen
    from verinfer.chain.settings import ChainSettings, connect
    from verinfer.econ.check import econ_params_for, enforce
    from verinfer.gateway.chain_settler import ChainV2Settler
    from verinfer.gateway.epochs import EpochPipeline
    from verinfer.gateway.router import Router
    from verinfer.gateway.server import HttpValidators, SharedTransport, create_app
    from verinfer.gateway.service import GatewayService, ModelSpec
    from verinfer.gateway.store import GatewayStore
    from verinfer.keyfile import load_or_create_key
    from verinfer.node.client import NodeClient
    from verinfer.protocol.params import PosParams

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per node call drowns the log
    identity, created = load_or_create_key(state / "key")
    if created:
        typer.echo(f"created the gateway's key {state / 'key'} (address {identity.address})")
    settings = ChainSettings.load(rpc_url=rpc_url, contract=contract, data_dir=data_dir)
    client = connect(settings, with_key=False)
    client.account = Account.from_key(identity.private_key)
    settler = ChainV2Settler(client)
    params = client.params()
    contract_epoch = client.epoch_seconds()
    # On settlement v2 both are the contract's parameters: a different value is refused, not
    # silently replaced.
    if p_ppm is not None and p_ppm != params.challenge_ppm:
        raise LocalError(f"--p {p_ppm}: on settlement v2 p is a contract parameter; the "
                         f"contract at {client.address} challenges {params.challenge_ppm} ppm "
                         "(drop --p, or propose new parameters as the owner)")
    if epoch_seconds is not None and epoch_seconds != contract_epoch:
        raise LocalError(f"--epoch-seconds {epoch_seconds:g}: on settlement v2 the epoch length "
                         f"is a contract parameter; the contract at {client.address} has "
                         f"{contract_epoch} s epochs (drop --epoch-seconds)")
    p_ppm = params.challenge_ppm
    pos = PosParams(p_ppm, validators, arbitrators, params).validate()
    cost = cost if cost is not None else max(params.reward_validators // validators, 1)
    verdict = enforce(econ_params_for(pos, cost=float(cost)), pos.challenge_probability,
                      force=force, min_stake=params.min_stake)
    typer.echo(f"parameters: p = {p_ppm} ppm, n = {validators}, m = {arbitrators}: "
               f"{verdict.message}")
    specs = {spec.name: spec for spec in (ModelSpec.from_dir(m) for m in models)}
    store = GatewayStore(state / "gateway.sqlite")
    router = Router(params.min_stake)
    transport = SharedTransport()  # one connection pool for requests, challenges and probes
    service = GatewayService(store, settler, router, specs, identity, settler.domain, price,
                             lambda node: NodeClient(node.endpoint, timeout_s=30.0,
                                                     transport=transport))
    pipeline = EpochPipeline(store, settler, HttpValidators(transport=transport), identity,
                             settler.domain, pos, contract_epoch)
    app = create_app(service, pipeline, node_transport=transport)
    sock = listen(host, port)  # bound before the line that says so: a taken port fails here
    typer.echo(f"gateway {identity.address} on http://{host}:{sock.getsockname()[1]}/v1 "
               f"(models: {', '.join(sorted(specs))})")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.add_typer(gateway_app, name="gateway")
