"""Econ commands: `verinfer econ calc | simulate | check | plot`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from verinfer.econ.calculator import Analysis, EconParams, EconParamsError, analyse

econ_app = typer.Typer(
    help="Proof-of-Sampling economics: minimal challenge probability, simulation, checks, charts.",
    no_args_is_help=True,
)

Cost = Annotated[float, typer.Option("--cost", help="C: a node's compute cost per request.")]
RewardA = Annotated[float, typer.Option("--reward-asserter",
                                        help="R_A: reward of an asserter whose result passed.")]
RewardV = Annotated[float, typer.Option("--reward-validators",
                                        help="R_V: validators' reward, shared by n.")]
Slash = Annotated[float, typer.Option("--slash", help="S: slash of a party found faulty.")]
Validators = Annotated[int, typer.Option("--validators", "-n", help="n: validators per challenge.")]
Arbitrators = Annotated[int, typer.Option("--arbitrators", "-m",
                                          help="m: arbitration committee size (odd).")]
Collusion = Annotated[float, typer.Option(
    "--collusion", "-r", help="r: colluding share of the other nodes' stake, in [0, 1].")]
Lazy = Annotated[float, typer.Option(
    "--lazy", help="l: share of validators that copy the asserter's hash, in [0, 1].")]
Saved = Annotated[float, typer.Option(
    "--saved-fraction", help="s: part of C a cheat saves, in [0, 1].")]
Share = Annotated[float, typer.Option(
    "--challenger-share", help="sigma: share of a slash paid to challengers, in [0, 1].")]
Prob = Annotated[float, typer.Option("--p", help="Challenge probability p, in [0, 1].")]


def _params(cost: float, reward_asserter: float, reward_validators: float, slash: float,
            validators: int, arbitrators: int, collusion: float, lazy: float,
            saved_fraction: float, challenger_share: float, fee_share: float = 0.0) -> EconParams:
    return EconParams(cost, reward_asserter, reward_validators, slash, validators, arbitrators,
                      collusion, lazy, saved_fraction, challenger_share, fee_share).validate()


def _fmt(x: float) -> str:
    return "none (cheating always pays)" if math.isinf(x) else f"{x:.6g}"


def _analysis_table(a: Analysis) -> Table:
    table = Table(title=f"Proof of Sampling at p = {a.p:g}", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("minimal p (p_min = sC / L)", _fmt(a.p_min)),
        ("L: expected loss of a cheat per unit of p", f"{a.deterrence:.6g}"),
        ("P(all n validators vouch) = v^n", f"{a.all_vouch_probability:.6g}"),
        ("P(colluders capture arbitration) = M", f"{a.arbitration_capture:.6g}"),
        ("cheater's gain over honesty per request", f"{a.cheat_gain:.6g}"),
        ("expected loss per cheat (p L)", f"{a.expected_loss_per_cheat:.6g}"),
        ("detection probability per cheat", f"{a.detection_probability:.6g}"),
        ("mean cheats until detection", _fmt(a.mean_requests_to_detection)),
        ("verification overhead (p n)", f"{a.overhead:.4%}"),
        ("honest validator's margin (R_V/n - C)", f"{a.validator_margin:.6g}"),
        ("blind lazy validator deterred (C < R_V/n + S)", "yes" if a.validator_deterred_blind
         else "NO"),
        ("verdict", "honest is the best response" if a.safe else "CHEATING PAYS"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


@econ_app.command()
def calc(
    cost: Cost = 1.0, reward_asserter: RewardA = 1.0, reward_validators: RewardV = 4.0,
    slash: Slash = 1000.0, validators: Validators = 3, arbitrators: Arbitrators = 5,
    collusion: Collusion = 0.0, lazy: Lazy = 0.0, saved_fraction: Saved = 1.0,
    challenger_share: Share = 0.5, p: Prob = 0.01,
) -> None:
    """Minimal p for which honesty is each asserter's best response, and what p costs.

    Amounts in any one unit (wei, or multiples of C). See verinfer.econ.calculator for the
    derivation and its named assumptions.
    """
    params = _params(cost, reward_asserter, reward_validators, slash, validators, arbitrators,
                     collusion, lazy, saved_fraction, challenger_share)
    if not 0.0 <= p <= 1.0:
        raise EconParamsError(f"--p must be in [0, 1], got {p}")
    Console().print(_analysis_table(analyse(params, p)))


@econ_app.command()
def check(
    p: Prob, slash: Slash, cost: Cost = 1.0, reward_asserter: RewardA = 1.0,
    reward_validators: RewardV = 4.0, validators: Validators = 3,
    arbitrators: Arbitrators = 5, collusion: Collusion = 0.0, lazy: Lazy = 0.0,
    saved_fraction: Saved = 1.0, challenger_share: Share = 0.5,
    min_stake: Annotated[float | None, typer.Option(help="Stake needed to be active.")] = None,
    margin: Annotated[float, typer.Option(help="Require p > margin * p_min (>= 1).")] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Accept unsafe parameters.")] = False,
) -> None:
    """The gateway's start-up check: refuse parameters under which cheating pays.

    Exit 0 and print 'safe: ...' when honest behaviour is the best response; otherwise one
    line naming which parameter to raise and by how much (exit 2), unless --force.
    """
    from verinfer.econ.check import enforce

    if not 0.0 <= p <= 1.0:
        raise EconParamsError(f"--p must be in [0, 1], got {p}")
    params = _params(cost, reward_asserter, reward_validators, slash, validators, arbitrators,
                     collusion, lazy, saved_fraction, challenger_share)
    verdict = enforce(params, p, force=force, margin=margin, min_stake=min_stake)
    prefix = "" if verdict.ok else "warning (forced): "
    typer.echo(prefix + verdict.message)


@econ_app.command()
def simulate(
    p: Prob = 0.05, slash: Annotated[int, typer.Option(help="S in wei.")] = 20_000,
    cost: Annotated[int, typer.Option(help="C in wei.")] = 1000,
    fee: Annotated[int, typer.Option(help="User fee per request in wei.")] = 2000,
    reward_asserter: Annotated[int, typer.Option(help="R_A in wei.")] = 1000,
    reward_validators: Annotated[int, typer.Option(help="R_V in wei.")] = 3000,
    validators: Validators = 3, arbitrators: Arbitrators = 5,
    honest: Annotated[int, typer.Option(help="Honest nodes.")] = 14,
    always_cheat: Annotated[int, typer.Option(help="Nodes that always cheat.")] = 2,
    random_cheat: Annotated[int, typer.Option(help="Nodes that cheat with probability q.")] = 2,
    q: Annotated[float, typer.Option(help="q for random cheaters.")] = 0.3,
    lazy: Annotated[int, typer.Option(help="Lazy validators (copy the asserter).")] = 1,
    colluding: Annotated[int, typer.Option(help="Members of one colluding group.")] = 1,
    epochs: Annotated[int, typer.Option(help="Epochs to run.")] = 100,
    requests_per_epoch: Annotated[int, typer.Option(help="Requests per epoch.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
) -> None:
    """Monte Carlo over a network of strategies, driving the protocol's own functions.

    Prints profit per strategy, detection times, accepted bad results and the overhead.
    Equal stakes: a group's share of stake is its share of nodes.
    """
    from rich.progress import Progress

    from verinfer.econ.plots import PlotSetup
    from verinfer.econ.simulator import SimConfig, Strategy, build_network
    from verinfer.econ.simulator import simulate as run

    if not 0.0 <= p <= 1.0:
        raise EconParamsError(f"--p must be in [0, 1], got {p}")
    setup = PlotSetup(cost=cost, fee=fee, reward_asserter=reward_asserter,
                      reward_validators=reward_validators, validators=validators,
                      arbitrators=arbitrators)
    nodes = build_network(honest, always_cheat, random_cheat, q, lazy, colluding,
                          stake=max(slash, 1) * 1000)
    config = SimConfig(nodes, setup.pos(p, slash), cost, fee, epochs=epochs,
                       requests_per_epoch=requests_per_epoch, seed=seed)
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating", total=epochs)
        result = run(config, lambda e: progress.update(task, completed=e))
    table = Table(title=f"{result.requests} requests, p = {config.params.challenge_probability}")
    for col in ("strategy", "nodes", "served", "cheats", "caught",
                "asserter profit / request (±SE)", "profit / node / epoch"):
        table.add_column(col, justify="right")
    for strategy in Strategy:
        s = result.stats[strategy]
        if s.nodes:
            mean, se = s.mean_asserter_profit()
            table.add_row(strategy.value, str(s.nodes), str(s.served), str(s.cheats),
                          str(s.caught), f"{mean:.1f} ± {se:.1f}",
                          f"{result.profit_per_node_epoch(strategy):.1f}")
    console = Console()
    console.print(table)
    detect = result.detection_cheats
    console.print(
        f"wrong results: {result.bad_results}, accepted: {result.accepted_bad_fraction:.2%}; "
        f"mean cheats until detection: {sum(detect) / len(detect) if detect else math.nan:.2f}; "
        f"challenges: {result.challenges}, disputes: {result.disputes}; "
        f"overhead: {result.overhead:.2%} recomputation per request")


@econ_app.command()
def plot(
    out: Annotated[Path, typer.Option(help="Directory for the PNG files.")] = Path("docs/econ"),
    requests: Annotated[int, typer.Option(help="Requests per simulated point.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the simulations.")] = 7,
) -> None:
    """Write cheater_profit.png, detection_time.png and accepted_bad.png (calculator + simulator)."""
    from rich.progress import Progress

    from verinfer.econ.plots import CHARTS, PlotSetup, plot_all

    if requests < 100:
        raise EconParamsError(f"--requests must be at least 100, got {requests}")
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating", total=CHARTS)
        paths = plot_all(out, PlotSetup(requests=requests, seed=seed),
                         lambda: progress.advance(task))
    for path in paths:
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(econ_app, name="econ")
