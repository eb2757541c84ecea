"""The `verinfer` command line: one typer app; each role registers its own commands.

Heavy imports (torch, web3) happen inside commands, so `verinfer --help` stays fast.
Every `VerinferError` reaching here becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

from verinfer.errors import VerinferError

app = typer.Typer(
    name="verinfer",
    help="Verifiable, decentralized LLM inference: deterministic integer engine, "
    "Proof of Sampling, settlement on an EVM contract.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from verinfer import verify
    from verinfer.chain import cli as chain_cli
    from verinfer.econ import cli as econ_cli
    from verinfer.engine import cli as engine_cli
    from verinfer.gateway import cli as gateway_cli
    from verinfer.localnet import cli as localnet_cli
    from verinfer.node import cli as node_cli
    from verinfer.pipeline import cli as pipeline_cli

    for role in (engine_cli, econ_cli, chain_cli, node_cli, gateway_cli, localnet_cli,
                 pipeline_cli, verify):
        role.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except VerinferError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
