"""`verinfer node`: serve models over the OpenAI-compatible API, once registered and staked.

On start: the identity key file is read (or created, mode 0600) under the node's data dir;
the chain is asked whether this node is registered with the minimum stake, and the node
refuses to serve (one error line, exit status 2) if it is not — `--dev-register` does the
registration and staking on the dev chain. Then the models load, the port opens, and one line
says where the node is:

    verinfer node 0xAbC... listening on http://127.0.0.1:9001 models demo=0x1234...
"""

from __future__ import annotations

import functools
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from verinfer.api.listen import listen
from verinfer.chain.cli import ContractOpt, RpcOpt
from verinfer.errors import LocalError

if TYPE_CHECKING:  # the engine imports torch: not for `verinfer --help`
    from verinfer.keyfile import Identity
    from verinfer.node.cheats import Cheat

DEFAULT_PORT = 9001


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _advance(bar: Any, task: Any, _tensor_name: str) -> None:
    bar.advance(task)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


ModelOpt = Annotated[list[Path], typer.Option(
    "--model", help="model directory (repeat to serve several); its name is the directory's name")]
PortOpt = Annotated[int, typer.Option("--port", help="port (0: any free one)")]
HostOpt = Annotated[str, typer.Option("--host", help="address to bind (loopback by default)")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="this node's state (key file, seen nonces); "
    "default: $VERINFER_DATA_DIR/node, else ~/.verinfer/node")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for the engine")]
SlotsOpt = Annotated[int, typer.Option(
    "--slots", help="requests decoded together (KV cache rows per model)")]
QueueOpt = Annotated[int, typer.Option(
    "--max-queue", help="requests that may wait for a slot; more get 429")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda")]
DevRegisterOpt = Annotated[bool, typer.Option(
    "--dev-register",
    help="dev chain only: fund this node from a dev account, register it and stake the minimum")]
DevFunderOpt = Annotated[int, typer.Option(
    "--dev-funder", help="dev account index that funds --dev-register")]
DevStakeOpt = Annotated[str | None, typer.Option(
    "--dev-stake", help="with --dev-register: stake this much (e.g. 5eth) instead of the minimum")]
CheatOpt = Annotated[str | None, typer.Option(
    "--cheat", help="DEMONSTRATIONS ONLY: behave dishonestly (wrong-tokens, skip-layers, "
    "substitute-model, sometimes, late-divergence); such a node is caught and slashed")]
LayersOpt = Annotated[str | None, typer.Option(
    "--layers", help="serve decoder layers START:END of one --model as a pipeline stage "
    "(no chain registration; see docs/pipeline.md)")]
ThrottleOpt = Annotated[float, typer.Option(
    "--throttle-ms", hidden=True, help="TESTS ONLY: a stage sleeps this long per layer per frame")]


def node(
    model: ModelOpt,
    port: PortOpt = DEFAULT_PORT,
    host: HostOpt = "127.0.0.1",
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    slots: SlotsOpt = 4,
    max_queue: QueueOpt = 32,
    device: DeviceOpt = "cpu",
    rpc_url: RpcOpt = None,
    contract: ContractOpt = None,
    dev_register: DevRegisterOpt = False,
    dev_funder: DevFunderOpt = 0,
    dev_stake: DevStakeOpt = None,
    cheat: CheatOpt = None,
    layers: LayersOpt = None,
    throttle_ms: ThrottleOpt = 0.0,
) -> None:
    """Serve models over the OpenAI-compatible API (and /verify as a validator), or with
    --layers A:B one pipeline stage of a split model (docs/pipeline.md)."""
    if layers is not None:
        _stage(model, layers, host, port, data_dir, threads, device, cheat, throttle_ms)
        return

    from eth_account import Account

    from verinfer.chain.settings import ChainSettings, connect
    from verinfer.node.cheats import Cheat
    from verinfer.node.registration import check_registration, registered_endpoint
    from verinfer.node.registration import dev_register as do_dev_register
    from verinfer.protocol import wire

    dishonest = Cheat(cheat) if cheat is not None else None  # a bad name fails before anything
    network_dir, state_dir, identity = _start_up(threads, device, data_dir)
    settings = ChainSettings.load(rpc_url=rpc_url, contract=contract, data_dir=network_dir)
    client = connect(settings, with_key=False)
    client.account = Account.from_key(identity.private_key)
    sock = listen(host, port)
    endpoint = _url(host, sock.getsockname()[1])
    if dev_register:
        from verinfer.chain.cli import parse_amount

        stake = parse_amount(dev_stake) if dev_stake is not None else None
        do_dev_register(client, identity, endpoint, dev_funder, say=_say, stake=stake)
    check_registration(client, identity.address, endpoint)
    if (registered := registered_endpoint(client, identity.address)) != endpoint:
        _say(f"warning: the chain lists this node at {registered}, it listens on {endpoint}")
    domain = wire.Domain(client.w3.eth.chain_id, client.address)
    if dishonest is not None:
        _say(f"warning: this node cheats ({cheat}); it will be caught and slashed")
    _serve(sock, endpoint, identity, domain, model, state_dir, slots, max_queue, device, dishonest)


def _start_up(threads: int | None, device: str, data_dir: Path | None
              ) -> tuple[Path, Path, Identity]:
    """What a full node and a stage do first: threads, the engine's self-test (arithmetic that
    differs from the golden bytes would get an honest operator slashed: refuse to serve), and
    the node key; (network dir, state dir, identity)."""
    import os

    from verinfer.engine import selftest
    from verinfer.keyfile import load_or_create_key

    if threads is not None:
        if threads < 1:
            raise LocalError("--threads must be at least 1")
        import torch

        torch.set_num_threads(threads)
    report = selftest.run_once(device)
    _say(f"self-test passed: {len(report.checks)} checks on {', '.join(report.routes)} "
         f"({report.seconds:.1f} s)")
    network_dir = Path(os.environ.get("VERINFER_DATA_DIR") or "~/.verinfer").expanduser()
    state_dir = (data_dir or network_dir / "node").expanduser()
    identity, created = load_or_create_key(state_dir / "node.key")
    if created:
        _say(f"created node key {state_dir / 'node.key'} (mode 0600) for {identity.address}")
    return network_dir, state_dir, identity


def _stage(model_dirs: list[Path], layers: str, host: str, port: int, data_dir: Path | None,
           threads: int | None, device: str, cheat: str | None, throttle_ms: float) -> None:
    """`verinfer node --layers A:B`: one stage of a split model (verinfer.pipeline.stage)."""
    from verinfer.pipeline import stage

    if len(model_dirs) != 1:
        raise LocalError("--layers serves a range of exactly one --model")
    if cheat is not None and cheat not in stage.CHEATS:
        raise LocalError(f"a stage's --cheat is one of: {', '.join(stage.CHEATS)}")
    if throttle_ms < 0:
        raise LocalError("--throttle-ms must be >= 0")
    try:
        stage.parse_layers(layers)
    except ValueError as exc:
        raise LocalError(str(exc)) from exc
    _, _, identity = _start_up(threads, device, data_dir)
    if cheat is not None:
        _say(f"warning: this stage cheats ({cheat}); its signed output will pin it")
    try:
        stage.run(model_dirs[0], layers, host, port, identity, device, throttle_ms, cheat)
    except ValueError as exc:
        raise LocalError(str(exc)) from exc


def _serve(sock: socket.socket, endpoint: str, identity: object, domain: object,
           model_dirs: list[Path], state_dir: Path, slots: int, max_queue: int, device: str,
           cheat: Cheat | None = None) -> None:
    import uvicorn

    from verinfer.keyfile import Identity
    from verinfer.node.server import create_app
    from verinfer.node.service import NodeService, load_served_model
    from verinfer.protocol import wire

    assert isinstance(identity, Identity) and isinstance(domain, wire.Domain)
    from rich.console import Console
    from rich.progress import Progress

    from verinfer.engine.checkpoint import expected_shapes
    from verinfer.engine.config import load_config
    from verinfer.engine.quantize import is_quantized_dir

    models = []
    for model_dir in model_dirs:
        _say(f"loading {model_dir} ...")
        if is_quantized_dir(model_dir):  # loads without quantizing: nothing to count
            models.append(load_served_model(model_dir, slots, max_queue, device, cheat=cheat))
            continue
        with Progress(console=Console(stderr=True), transient=True) as bar:
            total = len(expected_shapes(load_config(model_dir)))
            task = bar.add_task(f"quantizing {model_dir.name}", total=total)
            advance = functools.partial(_advance, bar, task)
            models.append(load_served_model(model_dir, slots, max_queue, device, progress=advance,
                                            cheat=cheat))
    names = {m.name for m in models}
    if len(names) != len(models):
        raise LocalError("two --model directories have the same name: rename one")
    service = NodeService(identity, domain, models, state_dir)
    served = " ".join(f"{m.name}={m.model_id_hex}" for m in models)

    def announce() -> None:
        print(f"verinfer node {identity.address} listening on {endpoint} models {served}", flush=True)

    app = create_app(service, on_ready=announce)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command("node")(node)
