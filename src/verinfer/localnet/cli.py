"""`verinfer up`: start a local verified network (and with `--demo`, drive traffic through it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MODEL = Path("models/demo")


def up(
    nodes: Annotated[int, typer.Option("--nodes", help="honest nodes (torch path, 1 thread, "
                                       "scalar ATen, in turn)")] = 3,
    model: Annotated[Path, typer.Option("--model", help="model directory the nodes serve")]
    = DEFAULT_MODEL,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="all state of this network [env VERINFER_DATA_DIR, default "
        "~/.verinfer]; another directory is another network")] = None,
    cheaters: Annotated[int, typer.Option("--cheaters", help="extra dishonest nodes")] = 0,
    strategy: Annotated[str | None, typer.Option(
        "--strategy", help="how cheaters cheat: wrong-tokens (random text), skip-layers (skip "
        "the last layers), substitute-model (a cheaper model under the claimed model_id), "
        "sometimes (cheat on a fraction of requests), late-divergence (honest first tokens, "
        "then diverge)")] = None,
    p: Annotated[int | None, typer.Option(
        "--p", help="challenge probability, parts per million [default 10000; 200000 with "
        "--demo]")] = None,
    validators: Annotated[int, typer.Option("--validators", help="validators per challenge")]
    = 1,
    arbitrators: Annotated[int, typer.Option("--arbitrators", help="arbitration committee")]
    = 1,
    epoch_seconds: Annotated[float, typer.Option("--epoch-seconds", help="epoch length")]
    = 20.0,
    demo: Annotated[bool, typer.Option("--demo", help="send traffic with a progress bar, "
                                       "wait for settlement, print a table, stop")] = False,
    requests: Annotated[int, typer.Option("--requests", help="requests sent by --demo")] = 60,
    force: Annotated[bool, typer.Option("--force", help="start even if the challenge "
                                        "parameters let cheating pay")] = False,
) -> None:
    """Start a verified network on this machine: dev chain, nodes and gateway on 127.0.0.1.

    Prints how to call it (OPENAI_BASE_URL, OPENAI_API_KEY, VERINFER_MODEL lines) and keeps it
    up until Ctrl-C. A second run on the same data directory reuses the chain, keys and
    gateway state.
    """
    from rich.console import Console

    from verinfer.localnet.up import (
        UpOptions,
        instructions,
        model_name_of,
        start_network,
        wait_until_interrupted,
    )

    # Piped into a file or CI log, rich would fold the table into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    base = data_dir or Path(os.environ.get("VERINFER_DATA_DIR") or "~/.verinfer")
    options = UpOptions(
        data_dir=base.expanduser(), model=model, nodes=nodes, cheaters=cheaters,
        strategy=strategy, challenge_ppm=p if p is not None else (200_000 if demo else 10_000),
        validators=validators, arbitrators=arbitrators, epoch_seconds=epoch_seconds,
        force=force,
    ).check()
    def say(line: str) -> None:
        console.print(line, soft_wrap=True, highlight=False)

    with console.status("starting the local network...") as spinner:
        network = start_network(options, say=say, status=lambda line: spinner.update(line))
    try:
        say(f"network up: {len(network.roles)} nodes, gateway {network.gateway_url}")
        say(instructions(network, model_name_of(model)))
        if demo:
            from verinfer.localnet.demo import run_demo

            run_demo(network, model_name_of(model), requests, options, console)
        else:
            wait_until_interrupted(network, say)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        network.stop()
        console.print("every process of the network stopped")


def register(app: typer.Typer) -> None:
    app.command("up")(up)

