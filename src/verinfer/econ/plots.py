"""The econ charts (PNG, matplotlib's Agg backend): calculator curves with simulator points.

1. `cheater_profit.png`: a cheater's expected gain over honesty per request against p, for
   several S/C, with simulated points and 99% error bars; the curve crosses zero at p_min.
2. `detection_time.png`: epochs between an always-cheater's detections (simulated) against the
   calculator's geometric law.
3. `accepted_bad.png`: fraction of wrong results accepted against the colluding fraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
import numpy as np

from verinfer.econ.calculator import EconParams, analyse, minimal_p
from verinfer.econ.simulator import (
    NodeSpec,
    SimConfig,
    SimResult,
    Strategy,
    build_network,
    simulate,
)
from verinfer.protocol.params import PosParams, ppm_from_probability
from verinfer.protocol.settlement import SettlementParams

Z99 = 2.576


@dataclass(frozen=True)
class PlotSetup:
    """The network every chart uses; amounts in wei with C = 1000."""

    cost: int = 1000
    fee: int = 2000
    reward_asserter: int = 1000
    reward_validators: int = 3000
    validators: int = 3
    arbitrators: int = 5
    requests: int = 10_000
    seed: int = 7

    def econ(self, slash: float, collusion: float = 0.0) -> EconParams:
        return EconParams(cost=self.cost, reward_asserter=self.reward_asserter,
                          reward_validators=self.reward_validators, slash=slash,
                          validators=self.validators, arbitrators=self.arbitrators,
                          collusion=collusion, challenger_share=0.5, fee_share=self.fee * 0.9)

    def pos(self, p: float, slash: int) -> PosParams:
        return PosParams(ppm_from_probability(p), self.validators, self.arbitrators,
                         SettlementParams(min_stake=slash, unbonding_delay=1,
                                          reward_asserter=self.reward_asserter,
                                          reward_validators=self.reward_validators, slash=slash,
                                          protocol_fee_bps=1000, discount_bps=0,
                                          challenger_share_bps=5000)).validate()

    def run(self, nodes: tuple[NodeSpec, ...], p: float, slash: int, seed: int) -> SimResult:
        return simulate(SimConfig(nodes, self.pos(p, slash), self.cost, self.fee,
                                  epochs=self.requests // 100, requests_per_epoch=100,
                                  seed=seed))


def plot_cheater_profit(setup: PlotSetup, out: Path, tick: Callable[[], None]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ps = np.linspace(0.002, 0.5, 400)
    for k, ratio in enumerate((5, 20, 100)):
        slash = ratio * setup.cost
        econ = setup.econ(slash)
        gain = [analyse(econ, float(p)).cheat_gain / setup.cost for p in ps]
        line, = ax.plot(ps, gain, label=f"S/C = {ratio}  (p_min = {minimal_p(econ):.3f})")
        for x in (0.5, 1.5):
            p = min(0.5, minimal_p(econ) * x)
            result = setup.run(build_network(honest=4, always_cheat=16, stake=10**9), p,
                               slash, setup.seed + k)
            cheat = result.stats[Strategy.ALWAYS_CHEAT].mean_asserter_profit()
            honest = analyse(econ, setup.pos(p, slash).challenge_probability).honest_profit
            ax.errorbar([p], [(cheat[0] - honest) / setup.cost], yerr=[Z99 * cheat[1] / setup.cost],
                        fmt="o", color=line.get_color(), capsize=3)
            tick()
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-3, 1.2)
    ax.set_xlabel("challenge probability p")
    ax.set_ylabel("cheater's gain over honesty per request (units of C)")
    ax.set_title("Cheating stops paying at p_min (lines: calculator; dots: simulator, 99% CI)",
                 fontsize=9)
    ax.legend(fontsize=8)
    path = out / "cheater_profit.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_detection_time(setup: PlotSetup, out: Path, tick: Callable[[], None]) -> Path:
    slash, p = 20 * setup.cost, 0.2
    # A caught cheater's reputation, hence its work, falls fast: run longer to see many catches.
    result = replace(setup, requests=4 * setup.requests).run(
        build_network(honest=10, always_cheat=10, stake=10**9), p, slash, setup.seed)
    tick()
    d = analyse(setup.econ(slash), p).detection_probability
    cheats = np.array(result.detection_cheats)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = int(np.percentile(cheats, 99)) + 1 if len(cheats) else 10
    ax.hist(cheats, bins=list(np.arange(1, top + 2) - 0.5), density=True, alpha=0.6,
            label=f"simulated ({len(cheats)} detections)")
    k = np.arange(1, top + 1)
    ax.plot(k, d * (1 - d) ** (k - 1), "k-", label=f"geometric, d = p(1-v^n)(1-M) = {d:.3f}")
    ax.set_xlabel("cheats until detection (one always-cheater's wrong results)")
    ax.set_ylabel("probability")
    ax.set_title(f"Time to detection (p = {p}, n = {setup.validators}, no collusion)", fontsize=9)
    ax.legend(fontsize=8)
    path = out / "detection_time.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accepted_bad(setup: PlotSetup, out: Path, tick: Callable[[], None]) -> Path:
    slash, p, nodes = 20 * setup.cost, 0.1, 21
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rs = np.linspace(0, 1, 101)
    ax.plot(rs, [1 - analyse(setup.econ(slash, float(r)), p).detection_probability for r in rs],
            "k-", label="calculator: 1 - p(1-r^n)(1-M)")
    for colluding in (1, 3, 5, 7, 9, 11, 13, 15, 17, 19):
        r = (colluding - 1) / (nodes - 1)  # other colluders' share, as a colluding asserter sees
        result = setup.run(build_network(honest=nodes - colluding, colluding=colluding,
                                         collusion_cheat_probability=0.5,
                                         stake=10**9), p, slash, setup.seed + colluding)
        f, n = result.accepted_bad_fraction, result.bad_results
        err = Z99 * math.sqrt(max(f * (1 - f), 1e-12) / max(n, 1))
        ax.errorbar([r], [f], yerr=[err], fmt="o", color="tab:red", capsize=3)
        tick()
    ax.set_xlabel("colluding fraction r of the other nodes' stake")
    ax.set_ylabel("fraction of wrong results accepted")
    ax.set_title(f"Accepted bad results (p = {p}, n = {setup.validators}, "
                 f"m = {setup.arbitrators}; dots: simulator, 99% CI)", fontsize=9)
    ax.legend(fontsize=8)
    path = out / "accepted_bad.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CHARTS = 6 + 1 + 10  # simulations run, for a progress bar


def plot_all(out: Path, setup: PlotSetup | None = None,
             tick: Callable[[], None] = lambda: None) -> list[Path]:
    setup = setup or PlotSetup()
    out.mkdir(parents=True, exist_ok=True)
    return [plot_cheater_profit(setup, out, tick), plot_detection_time(setup, out, tick),
            plot_accepted_bad(setup, out, tick)]

