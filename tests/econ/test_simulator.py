"""The simulator agrees with the calculator at 99% confidence on a grid, and behaves as stated."""

from __future__ import annotations

import pytest

from verinfer.econ.calculator import analyse, minimal_p
from verinfer.econ.plots import PlotSetup
from verinfer.econ.simulator import (
    SimConfig,
    SimulationError,
    Strategy,
    build_network,
    simulate,
)

Z99 = 2.576
SETUP = PlotSetup(requests=15_000)
STAKE = 10**9

# (S/C, p as a multiple of p_min, network, colluding share r and lazy share l as a cheater sees)
GRID = [
    (4, 0.5, {"honest": 4, "always_cheat": 16}, 0.0, 0.0),
    (4, 2.0, {"honest": 4, "always_cheat": 16}, 0.0, 0.0),
    (20, 0.5, {"honest": 4, "always_cheat": 16}, 0.0, 0.0),
    (20, 2.0, {"honest": 4, "always_cheat": 16}, 0.0, 0.0),
    (10, 1.5, {"honest": 14, "colluding": 6}, 5 / 19, 0.0),
    (10, 0.5, {"honest": 9, "always_cheat": 6, "lazy": 5}, 0.0, 5 / 19),
]


@pytest.mark.parametrize(("ratio", "x", "network", "r", "lazy"), GRID)
def test_simulator_agrees_with_calculator(ratio: int, x: float, network: dict[str, int],
                                          r: float, lazy: float) -> None:
    slash = ratio * SETUP.cost
    econ = SETUP.econ(slash, r)
    econ = type(econ)(**{**vars(econ), "lazy": lazy})
    p = minimal_p(econ) * x
    pos = SETUP.pos(p, slash)
    expected = analyse(econ, pos.challenge_probability)
    result = simulate(SimConfig(build_network(**network, stake=STAKE), pos, SETUP.cost,
                                SETUP.fee, epochs=150, requests_per_epoch=100, seed=ratio))
    cheater = Strategy.COLLUDING if "colluding" in network else Strategy.ALWAYS_CHEAT
    mean, se = result.stats[cheater].mean_asserter_profit()
    assert abs(mean - expected.cheat_profit) <= Z99 * se, (mean, se, expected.cheat_profit)
    honest, honest_se = result.stats[Strategy.HONEST].mean_asserter_profit()
    assert abs(honest - expected.honest_profit) <= Z99 * honest_se + 1e-9
    # Around p_min the cheater's gain changes sign, and the simulation resolves it.
    gain, gain_se = mean - honest, (se**2 + honest_se**2) ** 0.5
    assert (gain > Z99 * gain_se) if x < 1 else (gain < -Z99 * gain_se)


def test_accepted_bad_fraction_and_detection_match_calculator() -> None:
    slash, p = 20 * SETUP.cost, 0.2
    pos = SETUP.pos(p, slash)
    result = simulate(SimConfig(build_network(honest=10, random_cheat=10, cheat_probability=0.5,
                                              stake=STAKE), pos, SETUP.cost, SETUP.fee,
                                epochs=100, requests_per_epoch=100, seed=3))
    d = analyse(SETUP.econ(slash), p).detection_probability
    n = result.bad_results
    assert abs(result.accepted_bad_fraction - (1 - d)) <= Z99 * (d * (1 - d) / n) ** 0.5
    assert len(result.detection_cheats) > 50
    # Overhead: n recomputations per challenge, m more per dispute; challenges at rate p.
    assert result.overhead == pytest.approx(
        (result.challenges * SETUP.validators + result.disputes * SETUP.arbitrators)
        / result.requests)
    assert abs(result.challenges / result.requests - p) <= Z99 * (p * (1 - p)
                                                                   / result.requests) ** 0.5


def test_honest_network_conserves_money_and_never_slashes() -> None:
    pos = SETUP.pos(0.1, 5000)
    result = simulate(SimConfig(build_network(honest=9, stake=STAKE), pos, SETUP.cost,
                                SETUP.fee, epochs=5, requests_per_epoch=100, seed=1))
    assert result.disputes == 0 and result.bad_results == 0
    assert result.stats[Strategy.HONEST].slashed == 0
    # Each request: fee 2000 in, 1800 + 200 out; each challenge pays R_A + R_V from the treasury.
    assert result.stats[Strategy.HONEST].profit == pytest.approx(
        500 * (1800 - SETUP.cost) + result.challenges * (1000 + 3000 - 3 * SETUP.cost))


def test_runs_are_reproducible() -> None:
    config = SimConfig(build_network(honest=6, always_cheat=2, lazy=1, stake=STAKE),
                       SETUP.pos(0.2, 5000), SETUP.cost, SETUP.fee, epochs=3, seed=9)
    a, b = simulate(config), simulate(config)
    assert a.final_state == b.final_state and a.detection_cheats == b.detection_cheats


@pytest.mark.parametrize("changes", [{"epochs": 0}, {"nodes": build_network(honest=8, stake=STAKE)},
                                     {"saved_fraction": 2.0}, {"epochs": 10**6}])
def test_bad_configs_are_refused(changes: dict) -> None:
    base = {"nodes": build_network(honest=6, stake=STAKE), "params": SETUP.pos(0.1, 5000),
            "cost": 1000, "fee": 2000}
    with pytest.raises(SimulationError):
        SimConfig(**{**base, **changes}).validate()
