"""Pipeline commands: `verinfer plan` (partition a model over nodes) and `verinfer profile`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from verinfer.pipeline.nodesfile import FORMAT_HELP

if TYPE_CHECKING:
    from verinfer.pipeline.cluster import ModelSpec
    from verinfer.pipeline.planner import Plan

_PLAN_HELP = (
    "Split a model's layers over nodes: which node serves which range, in which order.\n\n"
    "A MILP (HiGHS) picks the route and the contiguous layer ranges that minimize per-token "
    "latency (compute plus every transfer, driver to driver) or maximize throughput (slowest "
    "stage or link, with --sequences generations in flight) within each node's free memory. "
    "It prints the plan with its predicted latency and throughput, and the same figures for the "
    "memory-proportional split other systems use and for the best single node. Only the "
    "model's config.json is read; no weights are needed.\n\n"
    + FORMAT_HELP.replace("[", "\\[")
)


def plan(
    nodes: Annotated[Path, typer.Option("--nodes", help="The cluster: nodes.toml (format above).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (config.json is enough).")],
    objective: Annotated[str, typer.Option(help="latency (per token) or throughput.")] = "latency",
    context: Annotated[int | None, typer.Option(help="Tokens of KV cache per sequence (default: the model's context).")] = None,
    sequences: Annotated[int, typer.Option(help="Generations in flight, each with its own KV cache.")] = 1,
    result: Annotated[str, typer.Option(help="What the last stage returns per token: logits (the driver samples) or token.")] = "logits",
    time_limit: Annotated[float, typer.Option(help="Seconds the solver may take.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    from verinfer.pipeline.cluster import load_model_config, model_spec_from_config
    from verinfer.pipeline.nodesfile import load_nodes
    from verinfer.pipeline.planner import (
        OBJECTIVES,
        Objective,
        PlanError,
        best_single_node,
        memory_proportional,
    )
    from verinfer.pipeline.planner import plan as make_plan

    if objective not in OBJECTIVES:
        raise PlanError(f"--objective must be latency or throughput, got {objective!r}")
    if sequences < 1 or (context is not None and context < 1):
        raise PlanError("--context and --sequences must be >= 1")
    config = load_model_config(model)
    spec = model_spec_from_config(config, model.name or str(model), context, sequences,
                                  result=result)
    cluster = load_nodes(nodes, spec)
    goal = cast(Objective, objective)
    chosen = make_plan(cluster, spec, goal, time_limit)
    proportional = memory_proportional(cluster, spec, goal)
    single = best_single_node(cluster, spec, goal)
    if as_json:
        out = {
            "model": {"name": spec.name, "layers": spec.num_layers, "context": spec.context,
                      "sequences": spec.sequences, "layer_bytes": spec.layer_bytes,
                      "activation_bytes": spec.activation_bytes,
                      "activation_bytes_int64": spec.activation_bytes_int64,
                      "input_bytes": spec.input_bytes, "result_bytes": spec.result_bytes},
            "plan": chosen.to_dict(),
            "memory_proportional": proportional.to_dict(),
            "best_single_node": None if single is None else single.to_dict(),
        }
        typer.echo(json.dumps(out, indent=2))
        return
    _print_tables(spec, chosen, proportional, single)


def _print_tables(spec: ModelSpec, chosen: Plan, proportional: Plan, single: Plan | None) -> None:
    from rich.console import Console
    from rich.table import Table

    gib = 2**30
    name = spec.name
    table = Table(title=f"plan for {name} ({chosen.objective}): route driver -> "
                  + " -> ".join(s.node for s in chosen.stages) + " -> driver")
    for column in ("stage", "node", "layers", "memory used / free (GiB)", "compute ms",
                   "transfer in ms"):
        table.add_column(column, justify="right" if column != "node" else "left")
    for i, s in enumerate(chosen.stages):
        table.add_row(str(i + 1), s.node, f"{s.start}:{s.end} ({s.layers})",
                      f"{s.memory_bytes / gib:.2f} / {s.free_bytes / gib:.2f}",
                      f"{s.compute_s * 1e3:.3f}", f"{s.transfer_in_s * 1e3:.3f}")
    table.add_row("", "-> driver", "", "", "", f"{chosen.transfer_out_s * 1e3:.3f}")
    console = Console()
    console.print(table)
    solve = chosen.solve
    console.print(
        f"predicted: {chosen.latency_s * 1e3:.2f} ms per token, "
        f"{chosen.throughput_tps:.2f} tokens/s with {chosen.sequences} sequence(s) in flight "
        f"(slowest stage or link {chosen.bottleneck_s * 1e3:.2f} ms)")
    console.print(
        f"frames per token: {spec.activation_bytes:,} B between stages (int32 residual; "
        f"{spec.activation_bytes_int64:,} B if a frame falls back to int64), "
        f"{spec.input_bytes:,} B in, {spec.result_bytes:,} B out")
    if solve is not None:
        console.print(f"solver: {solve.status} in {solve.seconds:.2f} s, gap {solve.gap:.3%}"
                      + ("" if chosen.method == "milp" else f"; best plan: {chosen.method}"))
    compare = Table(title="against the baselines")
    for column in ("method", "stages", "latency ms", "tokens/s", "plan's speed-up"):
        compare.add_column(column, justify="left" if column == "method" else "right",
                           no_wrap=column == "method")
    rows: list[tuple[str, Plan | None]] = [
        ("planner (MILP)", chosen), ("memory-proportional", proportional),
            ("best single node", single)]
    for label, p in rows:
        if p is None:
            compare.add_row(label, "-", "no node holds the model", "-", "-")
        elif not p.fits:
            over = [s.node for s in p.stages if s.memory_bytes > s.free_bytes]
            compare.add_row(label, str(len(p.stages)), f"does not fit ({', '.join(over[:3])})",
                            "-", "-")
        else:
            where = p.stages[0].node if len(p.stages) == 1 else ""
            compare.add_row(f"{label} {where}".strip(), str(len(p.stages)),
                            f"{p.latency_s * 1e3:.2f}", f"{p.throughput_tps:.2f}",
                            f"{p.value / chosen.value:.2f}x")
    console.print(compare)


# The help keeps its line breaks on screen: one paragraph per source line.
def profile(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (config.json is enough).")],
    name: Annotated[str, typer.Option(help="This node's name in nodes.toml.")] = "this-node",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    layers: Annotated[int, typer.Option(help="Decoder layers to time (random weights of the model's shapes).")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a nodes.toml entry.")] = False,
) -> None:
    """Measure this machine for a model in seconds: times per layer, head, free memory.

    Times a few decoder layers of the engine (random int8 weights of the model's shapes) at batch 1 decode and on a prefill chunk, and reads the free memory; prints this node's \\[\\[node]] entry for the nodes.toml of `verinfer plan`.
    """
    from dataclasses import asdict

    from verinfer.engine.api import _resolve_device
    from verinfer.pipeline.cluster import load_model_config
    from verinfer.pipeline.profile import ProfileError, profile_config

    if layers < 1:
        raise ProfileError(f"--layers must be >= 1, got {layers}")
    _resolve_device(device)
    measured = profile_config(load_model_config(model), device, layers)
    if as_json:
        typer.echo(json.dumps(asdict(measured), indent=2))
        return
    typer.echo(f"# {measured.device}: {measured.layers_timed} layers of {model} timed in "
               f"{measured.seconds:.1f} s; prefill {measured.prefill_layer_seconds * 1e3:.4f} ms "
               f"per token per layer; {measured.macs_per_second / 1e9:.1f} GMAC/s at decode")
    typer.echo("[[node]]")
    typer.echo(f"name = {json.dumps(name)}")
    typer.echo(f"layer_ms = {measured.layer_seconds * 1e3:.4f}")
    typer.echo(f"head_ms = {measured.head_seconds * 1e3:.4f}")
    typer.echo(f"free_gib = {measured.free_bytes / 2**30:.2f}")


def split(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (config and tokenizer; weights only for --check).")],
    stage: Annotated[list[str], typer.Option("--stage", help="A stage, in route order: HOST:PORT=START:END (repeat).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt text.")],
    spare: Annotated[list[str] | None, typer.Option("--spare", help="A stage that takes over a failed one: HOST:PORT (repeat).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="0: greedy; else seeded sampling.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0: no top-k cut.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    check: Annotated[bool, typer.Option("--check", help="Recompute every stage from its signed input (loads the weights) and name any stage that lied.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with every signed stage commitment).")] = False,
) -> None:
    """Generate through stage nodes (`verinfer node --layers A:B`): the single engine's bytes,
    with every stage's signed commitments."""
    from rich.console import Console
    from rich.table import Table

    from verinfer.engine.params import SamplingParams
    from verinfer.errors import LocalError
    from verinfer.pipeline.cluster import load_model_config
    from verinfer.pipeline.driver import RouteDriver, StageSpec, parse_stage
    from verinfer.pipeline.transport import StageUnavailable

    route = [parse_stage(text) for text in stage]
    spares = []
    for text in spare or []:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise LocalError(f"a spare is HOST:PORT, got {text!r}")
        spares.append(StageSpec(host, int(port), 0, 1))
    config = load_model_config(model)
    from verinfer.engine.api import _load_tokenizer

    tokenizer = _load_tokenizer(model / "tokenizer.json")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
    ids = tokenizer.encode(prompt).ids
    try:
        driver = RouteDriver(route, config, tokenizer, spares=spares)
    except StageUnavailable as exc:
        raise LocalError(f"{exc}: is the stage running (verinfer node --layers ...)?") from exc
    try:
        result = driver.generate([ids], [params])
    finally:
        driver.close()
    faults = []
    if check:
        from verinfer.engine import Engine
        from verinfer.pipeline.checker import check_stages

        faults = check_stages(Engine.load(model), result.stages, result.frames)
    out = result.results[0]
    if as_json:
        typer.echo(json.dumps({
            "text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
            "output_hash": out.output_hash, "logits_hash": out.logits_hash,
            "session": result.session.hex(), "events": result.events,
            "stages": [s.to_json() for s in result.stages],
            "faults": [{"stage": f.stage, "node": f.node, "layers": list(f.layers), "step": f.seq,
                        "reason": f.reason, "evidence": f.evidence.to_json()} for f in faults],
        }, indent=2))
    else:
        console = Console()
        console.print(out.text, markup=False, highlight=False)
        console.print(f"tokens {len(out.token_ids)} ({out.finish_reason}), output hash "
                      f"{out.output_hash}, logits hash {out.logits_hash}", highlight=False)
        table = Table(title="stages")
        for col in ("node", "endpoint", "layers", "weights MiB", "steps signed"):
            table.add_column(col)
        for record in result.stages:
            held = "?" if record.weight_bytes is None else f"{record.weight_bytes / 2**20:.1f}"
            table.add_row(record.node, record.endpoint, f"{record.layer_start}:{record.layer_end}",
                          held, str(len(record.commitments)))
        console.print(table)
        for event in result.events:
            console.print(f"event: {event}", highlight=False)
        if check:
            console.print("check: every stage's signed output equals an honest recomputation"
                          if not faults else "check: FAULT")
            for f in faults:
                console.print(f"  stage {f.stage} {f.node} layers {f.layers[0]}:{f.layers[1]} "
                              f"step {f.seq}: {f.reason}", highlight=False)
    if faults:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("plan", help=_PLAN_HELP)(plan)
    app.command("split")(split)
    app.command("profile")(profile)
