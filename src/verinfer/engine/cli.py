"""Engine commands: `verinfer generate`, `verinfer selftest`, `verinfer model inspect|quantize`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from verinfer.engine.selftest import SelfTestReport

model_app = typer.Typer(help="Inspect and quantize models.", no_args_is_help=True)


def _load(model: Path, device: str):
    from verinfer.engine import Engine

    return Engine.load(model, device=device)


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (Hugging Face or quantized).")] = Path("models/demo"),
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy; otherwise sampling temperature (committed in thousandths).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Keep only the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1].")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed, part of the request.")] = 0,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Generate a completion, streaming it, then print the output hash (64 hex digits).

    The same request gives the same tokens and hash on any machine, CPU or GPU.
    """
    from verinfer.engine import GenerationResult, SamplingParams
    from verinfer.engine import selftest as machine_check

    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop=tuple(stop or ()),
    )
    machine_check.run_once(device)  # a machine with wrong arithmetic must not answer
    engine = _load(model, device)
    results: list[GenerationResult] = []
    for event in engine.stream([prompt], params, results=results):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    result = results[0]
    sys.stdout.write("\n")
    typer.echo(f"tokens: {len(result.token_ids)}  finish: {result.finish_reason}", err=True)
    typer.echo(f"model_id: {engine.model_id}", err=True)
    typer.echo(f"output_hash: {result.output_hash}")


def selftest(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check this machine's integer arithmetic against known answers (exit 2 if it differs).

    Every route the engine takes here (the fused C++ kernels and the torch path) computes known
    integer products and a tiny golden generation. A node runs this before serving; `verinfer
    generate` runs it too. A failure names the route and the check.
    """
    from verinfer.engine import selftest as machine_check

    try:
        report = machine_check.run(device)
    except machine_check.SelfTestFailed as exc:
        _show(exc.report, as_json)
        raise
    _show(report, as_json)
    if not as_json:
        typer.echo(f"self-test passed: {len(report.checks)} checks on routes {', '.join(report.routes)} "
                   f"({report.device}) in {report.seconds:.2f} s")


def _show(report: SelfTestReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"self-test on {report.device}")
    for column in ("route", "check", "result", "ms"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        result = "ok" if check.passed else f"[red]FAILED[/red] {check.detail}"
        table.add_row(check.route, check.name, result, f"{check.seconds * 1000:.0f}")
    Console(stderr=True).print(table)


@model_app.command("inspect")
def inspect(
    model: Annotated[Path, typer.Argument(help="Model directory (Hugging Face or quantized).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a model's configuration, parameter count and model_id."""
    from rich.console import Console
    from rich.table import Table

    engine = _load(model, "cpu")
    config = engine.config.to_dict()
    info = {"model_id": engine.model_id, "parameters": engine.config.parameter_count(), **config}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"{model}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in info.items():
        table.add_row(key, f"{value:,}" if key == "parameters" else str(value))
    Console().print(table)


@model_app.command("quantize")
def quantize(
    model: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the quantized model.")],
) -> None:
    """Quantize a checkpoint to int8 once and save it (loads faster; same model_id)."""
    from rich.progress import Progress

    from verinfer.engine.checkpoint import expected_shapes
    from verinfer.engine.config import load_config
    from verinfer.engine.quantize import quantize_checkpoint, save_quantized

    with Progress(transient=True) as progress:
        task = progress.add_task("quantizing", total=len(expected_shapes(load_config(model))))
        qmodel = quantize_checkpoint(model, progress=lambda name: progress.advance(task))
    if not (model / "tokenizer.json").is_file():
        from verinfer.errors import ModelError

        raise ModelError(f"{model}: no tokenizer.json")
    save_quantized(qmodel, out, model / "tokenizer.json")
    typer.echo(f"model_id: {qmodel.model_id}")
    typer.echo(f"saved to {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("selftest")(selftest)
    app.add_typer(model_app, name="model")
