"""Settlement rules version 2 (docs/settlement-rules.md) as pure functions over the contract's ledger.

The state is what the contract holds once signatures, Merkle roots and committee draws have
been checked: each transition takes a `Ledger` and returns a new one, or raises a
`SettlementRevert` (rules shared with version 1) or `Refused` whose message is the contract's
revert string. Evidence enters as its
result (who the drawn validators or arbitrators are), so the money rules can be checked
against the contract step by step (`tests/chain/test_money_property.py`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from verinfer.errors import ProtocolError
from verinfer.protocol.settlement import (
    BPS,
    InsufficientBalance,
    InsufficientStake,
    Reputation,
    SettlementParams,
    Unbonding,
    ZeroAmount,
)

CAP_LIMIT = (1 << 96) - 1
UINT256_MAX = (1 << 256) - 1
OPEN, PASSED, ACCUSED, SLASHED, CLEARED, LAPSED = 1, 2, 3, 4, 5, 6


class Refused(ProtocolError):
    """A version 2 rule refused an operation; the message is the contract's revert string."""


@dataclass
class Allowance:
    """A user's current allowance (the last one it signed)."""

    settler: str = ""
    cap: int = 0
    expiry: int = 0
    nonce: int = 0


@dataclass(frozen=True)
class Grant:
    """What an allowance grants one settler: a cap per epoch, for epochs that begin before the
    expiry. A grant to a previous settler stays (it only covers epochs before its expiry)."""

    cap: int = 0
    expiry: int = 0


@dataclass
class Case:
    node: str
    user: str
    fee: int
    escrow: int
    deadline: int
    status: int = OPEN
    appeal_deadline: int = 0
    accusers: tuple[str, ...] = ()
    wrong_verdicts: tuple[str, ...] = ()  # validators slashed for a verdict the outcome refutes


@dataclass
class PauseClock:
    """The pauses: a pause lasts `max_pause` at most (fixed at deployment) and may start only
    `2 * max_pause` after the previous one started; delays and deadlines stand still meanwhile."""

    max_pause: int = 1
    paused_since: int = 0
    paused_total: int = 0
    started_at: int = 0


@dataclass
class Ledger:
    """The contract's money state; `now` is its clock (`clock`: wall time less paused time)."""

    balance: dict[str, int] = field(default_factory=dict)
    withdrawal: dict[str, Unbonding] = field(default_factory=dict)
    stake: dict[str, int] = field(default_factory=dict)
    unbonding: dict[str, Unbonding] = field(default_factory=dict)
    treasury: int = 0
    reputation: dict[str, Reputation] = field(default_factory=dict)
    unpaid: dict[str, int] = field(default_factory=dict)
    allowance: dict[str, Allowance] = field(default_factory=dict)
    grants: dict[tuple[str, str], Grant] = field(default_factory=dict)
    cases: dict[bytes, Case] = field(default_factory=dict)
    open_cases: dict[str, int] = field(default_factory=dict)
    pauses: PauseClock = field(default_factory=PauseClock)

    def total_funds(self) -> int:
        """What the contract must hold."""
        return (sum(self.balance.values()) + sum(self.stake.values())
                + sum(u.amount for u in self.unbonding.values()) + self.treasury
                + self.escrow())

    def escrow(self) -> int:
        return sum(c.escrow for c in self.cases.values() if c.status in (OPEN, ACCUSED))


# ---------------------------------------------------------------- the pause clock


def _pause_elapsed(p: PauseClock, wall: int) -> int:
    if p.paused_since == 0:
        return 0
    return min(wall, p.paused_since + p.max_pause) - p.paused_since


def paused(state: Ledger, wall: int) -> bool:
    """Whether a pause is in force at `wall` (block time): it ends by itself after max_pause."""
    p = state.pauses
    return p.paused_since != 0 and wall < p.paused_since + p.max_pause


def clock(state: Ledger, wall: int) -> int:
    """The clock of every delay and deadline: wall time less the time spent paused, so a
    pause neither lets a delay run out nor makes a deadline pass, and at most `max_pause` of
    each pause counts (a pause cannot stop unbonding forever)."""
    p = state.pauses
    return wall - p.paused_total - _pause_elapsed(p, wall)


def running(state: Ledger, wall: int) -> Ledger:
    """`state`, unless paused: inflows, commits, settlement and evidence stop during a pause."""
    if paused(state, wall):
        raise Refused("paused")
    return state


def pause(state: Ledger, wall: int) -> Ledger:
    if paused(state, wall):
        raise Refused("paused")
    p = state.pauses
    if p.started_at != 0 and wall < p.started_at + 2 * p.max_pause:
        raise Refused("pause cooldown")
    s = copy.deepcopy(state)
    if p.paused_since != 0:
        s.pauses.paused_total += p.max_pause  # the previous pause ran out on its own
    s.pauses.paused_since = s.pauses.started_at = wall
    return s


def unpause(state: Ledger, wall: int) -> Ledger:
    if not paused(state, wall):
        raise Refused("not paused")
    s = copy.deepcopy(state)
    s.pauses.paused_total += wall - state.pauses.paused_since
    s.pauses.paused_since = 0
    return s


# ---------------------------------------------------------------- funds, stake, allowances


def _add(table: dict[str, int], key: str, amount: int) -> None:
    table[key] = table.get(key, 0) + amount


def _bump(state: Ledger, node: str, **counts: int) -> None:
    rep = state.reputation.get(node, Reputation())
    state.reputation[node] = Reputation(**{k: getattr(rep, k) + counts.get(k, 0)
                                           for k in ("served", "challenged", "passed", "failed")})


def _is_zero(address: str) -> bool:
    return int(address, 16) == 0


def deposit(state: Ledger, who: str, amount: int) -> Ledger:
    if amount == 0:
        raise ZeroAmount()
    if _is_zero(who):
        raise Refused("zero beneficiary")
    s = copy.deepcopy(state)
    _add(s.balance, who, amount)
    return s


def fund_treasury(state: Ledger, amount: int) -> Ledger:
    if amount == 0:
        raise ZeroAmount()
    s = copy.deepcopy(state)
    s.treasury += amount
    return s


def stake(state: Ledger, node: str, amount: int) -> Ledger:
    if amount == 0:
        raise ZeroAmount()
    if state.balance.get(node, 0) < amount:
        raise InsufficientBalance()
    s = copy.deepcopy(state)
    s.balance[node] -= amount
    _add(s.stake, node, amount)
    return s


def unstake(state: Ledger, params: SettlementParams, node: str, amount: int, now: int) -> Ledger:
    if amount == 0:
        raise ZeroAmount()
    if state.open_cases.get(node, 0):
        raise Refused("open challenge")
    if state.stake.get(node, 0) < amount:
        raise InsufficientStake()
    s = copy.deepcopy(state)
    s.stake[node] -= amount
    pending = s.unbonding.get(node, Unbonding())
    s.unbonding[node] = Unbonding(pending.amount + amount, now + params.unbonding_delay)
    return s


def request_withdrawal(
    state: Ledger, params: SettlementParams, who: str, amount: int, now: int
) -> Ledger:
    if amount == 0:
        raise ZeroAmount()
    if state.balance.get(who, 0) < amount:
        raise InsufficientBalance()
    s = copy.deepcopy(state)
    s.withdrawal[who] = Unbonding(amount, now + params.withdrawal_delay)
    return s


def withdraw(state: Ledger, who: str, amount: int, now: int) -> Ledger:
    """Pay from matured unbonding (no open case) and a matured withdrawal request."""
    if amount == 0:
        raise ZeroAmount()
    s = copy.deepcopy(state)
    released = 0
    u = s.unbonding.get(who, Unbonding())
    if u.amount > 0 and now >= u.release_time and not s.open_cases.get(who, 0):
        released = u.amount
        _add(s.balance, who, released)
        s.unbonding[who] = Unbonding()
    w = s.withdrawal.get(who, Unbonding())
    requested = w.amount if w.amount > 0 and now >= w.release_time else 0
    if amount > released + requested:
        raise Refused("withdrawal not due")
    if s.balance.get(who, 0) < amount:
        raise InsufficientBalance()
    s.balance[who] -= amount
    from_request = amount - min(amount, released)
    if from_request:
        s.withdrawal[who] = Unbonding(w.amount - from_request, w.release_time)
    return s


def set_allowance(
    state: Ledger, user: str, settler: str, cap: int, expiry: int, nonce: int, wall_time: int
) -> Ledger:
    """Record a user's allowance (its signature already checked)."""
    old = state.allowance.get(user, Allowance())
    if nonce <= old.nonce:
        raise Refused("allowance nonce too low")
    cap = min(cap, CAP_LIMIT)
    if old.settler and wall_time < old.expiry and (
        settler != old.settler or cap < old.cap or expiry < old.expiry
    ):
        raise Refused("allowance can only grow until it expires")
    s = copy.deepcopy(state)
    s.allowance[user] = Allowance(settler, cap, expiry, nonce)
    s.grants[(user, settler)] = Grant(cap, expiry)
    return s


@dataclass(frozen=True)
class SettledReceipt:
    """A receipt of a settled epoch as the rules see it: id, parties, fee, challenged or not."""

    receipt_id: bytes
    node: str
    user: str
    fee: int
    challenged: bool


def settle_epoch(
    state: Ledger,
    params: SettlementParams,
    settler: str,
    epoch: int,
    epoch_start: int,
    receipts: list[SettledReceipt],
    now: int,
) -> Ledger:
    """Pay unchallenged receipts within each user's allowance and balance; escrow the others."""
    for r in receipts:
        if not 0 <= r.fee <= UINT256_MAX:
            raise Refused("fee above uint256")
    for r in receipts:
        if _is_zero(r.node) or _is_zero(r.user):
            raise Refused("zero address in receipt")  # no entry may credit the zero address
    s = copy.deepcopy(state)
    # A settler settles each of its epochs once: the cap bounds what this call takes per user.
    spent: dict[str, int] = {}
    for r in receipts:
        take = _charge(s, spent, r.user, settler, epoch_start, r.fee)
        if take < r.fee:
            # Saturates: fees near 2^256 never make the batch revert on an overflow.
            s.unpaid[r.user] = min(s.unpaid.get(r.user, 0) + r.fee - take, UINT256_MAX)
        if r.challenged:
            s.cases[r.receipt_id] = Case(r.node, r.user, r.fee, take, now + params.challenge_window)
            _add(s.open_cases, r.node, 1)
        else:
            _pay_fee(s, params, r.node, take)
    return s


def _charge(s: Ledger, spent: dict[str, int], user: str, settler: str, start: int,
            fee: int) -> int:
    grant = s.grants.get((user, settler), Grant())
    if start >= grant.expiry:
        return 0
    so_far = spent.get(user, 0)
    take = min(fee, grant.cap - min(grant.cap, so_far), s.balance.get(user, 0))
    if take:
        s.balance[user] -= take
        spent[user] = so_far + take
    return take


def _pay_fee(s: Ledger, params: SettlementParams, node: str, take: int) -> None:
    cut = take * params.protocol_fee_bps // BPS
    _add(s.balance, node, take - cut)
    s.treasury += cut
    _bump(s, node, served=1)


def _from_treasury(s: Ledger, to: str, amount: int) -> int:
    paid = min(amount, s.treasury)
    s.treasury -= paid
    _add(s.balance, to, paid)
    return amount - paid


def _case(state: Ledger, receipt_id: bytes, status: int) -> Case:
    case = state.cases.get(receipt_id)
    if case is None:
        raise Refused("no challenge")
    if case.status != status:
        raise Refused("wrong challenge state")
    return case


def _close(s: Ledger, case: Case, params: SettlementParams) -> None:
    _pay_fee(s, params, case.node, case.escrow)
    s.open_cases[case.node] -= 1


def pass_challenge(
    state: Ledger, params: SettlementParams, receipt_id: bytes, validators: list[str], now: int
) -> Ledger:
    """Drawn validators agreed (their verdicts checked): fee, R_A, R_V / k, the discount."""
    case = _case(state, receipt_id, OPEN)
    if now > case.deadline:
        raise Refused("deadline passed")
    s = copy.deepcopy(state)
    case = s.cases[receipt_id]
    case.status = PASSED
    _close(s, case, params)
    _from_treasury(s, case.node, params.reward_asserter)
    for v in validators:
        _from_treasury(s, v, params.reward_validators // len(validators))
    _from_treasury(s, case.user, case.escrow * params.discount_bps // BPS)
    _bump(s, case.node, challenged=1, passed=1)
    return s


def pass_challenges(state: Ledger, params: SettlementParams,
                    cases: list[tuple[bytes, list[str]]], now: int) -> Ledger:
    """Many passes in one transaction, in list order, all or nothing: the first case that
    `pass_challenge` refuses (a case listed twice is no longer open) refuses the batch."""
    if not cases:
        raise Refused("no evidence")
    for receipt_id, validators in cases:
        state = pass_challenge(state, params, receipt_id, validators, now)
    return state


def accuse(state: Ledger, params: SettlementParams, receipt_id: bytes, accusers: list[str],
           now: int) -> Ledger:
    case = _case(state, receipt_id, OPEN)
    if now > case.deadline:
        raise Refused("deadline passed")
    s = copy.deepcopy(state)
    case = s.cases[receipt_id]
    case.status, case.appeal_deadline = ACCUSED, now + params.appeal_window
    case.accusers = tuple(accusers)
    return s


def _slash(s: Ledger, node: str, amount: int) -> int:
    bonded = s.stake.get(node, 0)
    from_stake = min(amount, bonded)
    u = s.unbonding.get(node, Unbonding())
    from_unbonding = min(amount - from_stake, u.amount)
    s.stake[node] = bonded - from_stake
    s.unbonding[node] = Unbonding(u.amount - from_unbonding, u.release_time)
    return from_stake + from_unbonding


def appeal(state: Ledger, params: SettlementParams, receipt_id: bytes, supporters: list[str],
           now: int) -> Ledger:
    case = _case(state, receipt_id, ACCUSED)
    if now > case.appeal_deadline:
        raise Refused("appeal window closed")
    if len(supporters) <= len(case.accusers):
        raise Refused("appeal needs more arbitrators")
    s = copy.deepcopy(state)
    case = s.cases[receipt_id]
    case.status = CLEARED
    _close(s, case, params)
    to_node = params.slash * params.challenger_share_bps // BPS
    for accuser in case.accusers:
        taken = _slash(s, accuser, params.slash)
        share = min(taken, to_node)
        _add(s.balance, case.node, share)
        s.treasury += taken - share
        _bump(s, accuser, failed=1)
    return s


def finalize(state: Ledger, params: SettlementParams, receipt_id: bytes, now: int) -> Ledger:
    """Lapse an open case past its deadline, or execute an accusation past its appeal window."""
    case = state.cases.get(receipt_id)
    if case is not None and case.status == OPEN:
        if now <= case.deadline:
            raise Refused("deadline not passed")
        s = copy.deepcopy(state)
        s.cases[receipt_id].status = LAPSED
        _close(s, s.cases[receipt_id], params)
        return s
    if case is None or case.status != ACCUSED:
        raise Refused("nothing to finalize")
    if now <= case.appeal_deadline:
        raise Refused("appeal window open")
    s = copy.deepcopy(state)
    case = s.cases[receipt_id]
    case.status = SLASHED
    _add(s.balance, case.user, case.escrow)
    s.open_cases[case.node] -= 1
    taken = _slash(s, case.node, params.slash)
    to_user = min(case.fee, taken)
    rest = taken - to_user
    share = rest * params.challenger_share_bps // BPS // len(case.accusers)
    _add(s.balance, case.user, to_user)
    for a in case.accusers:
        _add(s.balance, a, share)
    s.treasury += rest - share * len(case.accusers)
    _bump(s, case.node, challenged=1, failed=1)
    return s


def slash_wrong_verdicts(state: Ledger, params: SettlementParams, receipt_id: bytes,
                         validators: list[str]) -> Ledger:
    """Drawn validators whose signed verdicts the arbitration outcome contradicts (checked:
    agreeing with a receipt whose node was slashed, or conflicting with one cleared on
    appeal): each is slashed `slash` once per receipt, to the treasury. A pass is not an
    arbitration outcome: a pass quorum cannot slash the validators who disagreed."""
    case = state.cases.get(receipt_id)
    if case is None:
        raise Refused("no challenge")
    if case.status not in (SLASHED, CLEARED):
        raise Refused("no arbitration outcome")
    if not validators:
        raise Refused("too few verdicts")
    s = copy.deepcopy(state)
    case = s.cases[receipt_id]
    for v in validators:
        if v in case.wrong_verdicts:
            raise Refused("verdict already slashed")
        case.wrong_verdicts += (v,)
        s.treasury += _slash(s, v, params.slash)
        _bump(s, v, failed=1)
    return s
