"""The pause clock of `verinfer.protocol.ledger`: delays stand still while paused, at most
`max_pause` of a pause counts, pauses are spaced, and paused operations are refused."""

from __future__ import annotations

import pytest

from verinfer.protocol import ledger as rules
from verinfer.protocol.settlement import SettlementParams

PARAMS = SettlementParams(1000, 500, 10, 9, 500, 1000, 5000, 5000, withdrawal_delay=400,
                          challenge_window=50, appeal_window=50)
MAX_PAUSE = 1000
N, U, G = "0x" + "0b" * 20, "0x" + "0a" * 20, "0x" + "0c" * 20


def staked(wall: int) -> rules.Ledger:
    s = rules.Ledger(pauses=rules.PauseClock(max_pause=MAX_PAUSE))
    s = rules.stake(rules.deposit(s, N, 2000), N, 2000)
    return rules.unstake(s, PARAMS, N, 2000, rules.clock(s, wall))


def test_unbonding_stops_while_paused() -> None:
    s = rules.pause(staked(wall=100), wall=200)
    # 100 s of unbonding ran before the pause; 500 s of pause later none more has.
    assert rules.clock(s, 700) == 200
    with pytest.raises(rules.Refused, match="withdrawal not due"):
        rules.withdraw(s, N, 2000, rules.clock(s, 700))
    s = rules.unpause(s, wall=700)
    assert rules.clock(s, 1100) == 600  # the clock runs again, less the 500 s paused
    assert rules.withdraw(s, N, 2000, rules.clock(s, 1100)).balance[N] == 0


def test_a_pause_cannot_lock_stakes_forever() -> None:
    s = rules.pause(staked(wall=100), wall=200)
    # Nobody unpauses: the pause ends by itself after max_pause, and the clock runs on.
    assert rules.paused(s, 200 + MAX_PAUSE - 1)
    assert not rules.paused(s, 200 + MAX_PAUSE)
    wall = 200 + MAX_PAUSE + 400
    assert rules.clock(s, wall) == wall - MAX_PAUSE
    assert rules.withdraw(s, N, 2000, rules.clock(s, wall)).balance[N] == 0


def test_pauses_are_spaced_and_a_lapsed_pause_counts_whole() -> None:
    s = rules.pause(staked(wall=100), wall=200)
    with pytest.raises(rules.Refused, match="^paused$"):
        rules.pause(s, 300)
    s = rules.unpause(s, 300)
    with pytest.raises(rules.Refused, match="not paused"):
        rules.unpause(s, 301)
    with pytest.raises(rules.Refused, match="pause cooldown"):
        rules.pause(s, 200 + 2 * MAX_PAUSE - 1)
    s = rules.pause(s, 200 + 2 * MAX_PAUSE)
    t = rules.pause(s, 200 + 4 * MAX_PAUSE)  # the second pause ran out on its own
    assert t.pauses.paused_total == 100 + MAX_PAUSE
    assert rules.clock(t, 200 + 4 * MAX_PAUSE) == 200 + 4 * MAX_PAUSE - 100 - MAX_PAUSE


def test_inflows_and_settlement_are_refused_while_paused() -> None:
    s = rules.pause(rules.Ledger(pauses=rules.PauseClock(max_pause=MAX_PAUSE)), wall=10)
    with pytest.raises(rules.Refused, match="^paused$"):
        rules.running(s, 11)
    assert rules.running(s, 10 + MAX_PAUSE) is s


def test_fees_near_and_above_uint256() -> None:
    s = rules.Ledger()
    s = rules.set_allowance(rules.deposit(s, U, 100), U, G, 50, 10**9, 1, 0)
    huge = rules.SettledReceipt(b"\x01" * 32, N, U, rules.UINT256_MAX, False)
    again = rules.SettledReceipt(b"\x02" * 32, N, U, rules.UINT256_MAX, False)
    s = rules.settle_epoch(s, PARAMS, G, 0, 0, [huge, again], now=0)
    assert s.unpaid[U] == rules.UINT256_MAX  # saturates, no overflow
    assert s.balance[U] == 50
    above = rules.SettledReceipt(b"\x03" * 32, N, U, rules.UINT256_MAX + 1, False)
    with pytest.raises(rules.Refused, match="fee above uint256"):
        rules.settle_epoch(s, PARAMS, G, 1, 0, [above], now=0)
