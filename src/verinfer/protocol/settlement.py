"""Settlement rules (docs/settlement-rules.md, version 1) as pure functions over an immutable ledger.

Every transition takes a `LedgerState` and returns a new one; the input is never changed. A rule
that does not hold raises a `SettlementRevert` subclass whose message is the contract's revert
string, so the Vyper contract and this module can be checked against the same vectors
(`tests/vectors/protocol/settlement-v1.json`). A revert leaves no partial state behind: the
working copy is discarded.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from verinfer.errors import ProtocolError

PROTOCOL_VERSION = 1
BPS = 10_000
MAX_VALIDATORS = 16
PPM = 1_000_000

_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


class SettlementRevert(ProtocolError):
    """A settlement rule rejected an operation; the message is the contract's revert string."""

    revert: str = ""

    def __init__(self) -> None:
        super().__init__(self.revert)


class ZeroAmount(SettlementRevert):
    revert = "zero amount"


class InsufficientBalance(SettlementRevert):
    revert = "insufficient balance"


class InsufficientStake(SettlementRevert):
    revert = "insufficient stake"


class InsufficientTreasury(SettlementRevert):
    revert = "insufficient treasury"


class SlashExceedsStake(SettlementRevert):
    revert = "slash exceeds stake"


class EpochAlreadySettled(SettlementRevert):
    revert = "epoch already settled"


class BadValidatorCount(SettlementRevert):
    revert = "bad validator count"


class DuplicateValidator(SettlementRevert):
    revert = "duplicate validator"


class AsserterIsValidator(SettlementRevert):
    revert = "asserter is validator"


class FaultyNotAValidator(SettlementRevert):
    revert = "faulty not a validator"


class BadFaultyValidators(SettlementRevert):
    revert = "bad faulty validators"


class InvalidParams(ProtocolError):
    """Settlement parameters break a constraint of the spec's parameter table."""


class InvalidInput(ProtocolError):
    """An operation's inputs are malformed (not an address, a negative amount, ...)."""


def check_address(address: str) -> str:
    """Return `address` if it is a lowercase 0x-prefixed 20-byte hex string, else raise."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise InvalidInput(f"not a lowercase 0x-prefixed 20-byte hex address: {address!r}")
    return address


def _check_amount(amount: int) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise InvalidInput(f"amount must be a non-negative integer (wei), got {amount!r}")
    if amount == 0:
        raise ZeroAmount()
    return amount


@dataclass(frozen=True)
class SettlementParams:
    """The contract's parameters; `validate()` enforces the constraints of the spec's table."""

    min_stake: int
    unbonding_delay: int
    reward_asserter: int
    reward_validators: int
    slash: int
    protocol_fee_bps: int
    discount_bps: int
    challenger_share_bps: int
    # Version 2 (the contract's commit-then-challenge settlement); defaults suit the dev chain.
    withdrawal_delay: int = 3600
    challenge_ppm: int = 10_000
    challenge_window: int = 600
    appeal_window: int = 600

    def validate(self) -> SettlementParams:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidParams(f"{name} must be a non-negative integer, got {value!r}")
        if self.slash > self.min_stake:
            raise InvalidParams(
                f"slash ({self.slash}) must not exceed min_stake ({self.min_stake})"
            )
        if self.unbonding_delay <= 0:
            raise InvalidParams("unbonding_delay must be > 0 seconds")
        for name in ("protocol_fee_bps", "discount_bps", "challenger_share_bps"):
            if getattr(self, name) > BPS:
                raise InvalidParams(f"{name} must be <= {BPS}, got {getattr(self, name)}")
        if self.challenge_ppm > PPM:
            raise InvalidParams(f"challenge_ppm must be <= {PPM}, got {self.challenge_ppm}")
        return self

    def check_delays(self, epoch_seconds: int) -> SettlementParams:
        """Version 2: no deposit or stake leaves before every epoch that could touch it settled."""
        span = settle_span(epoch_seconds, self.challenge_window)
        if self.withdrawal_delay <= span:
            raise InvalidParams(
                "withdrawal_delay must exceed an epoch + 2 commit graces + challenge_window "
                f"({span} s)"
            )
        if self.unbonding_delay <= span + self.appeal_window:
            raise InvalidParams(
                "unbonding_delay must exceed an epoch + 2 commit graces + challenge_window + "
                f"appeal_window ({span + self.appeal_window} s)"
            )
        return self


@dataclass(frozen=True)
class Unbonding:
    amount: int = 0
    release_time: int = 0


@dataclass(frozen=True)
class Reputation:
    served: int = 0
    challenged: int = 0
    passed: int = 0
    failed: int = 0

    @property
    def rep_ppm(self) -> int:
        """Score in parts per million: 1e6 * (1 + passed) // (1 + passed + 4 * failed)."""
        return PPM * (1 + self.passed) // (1 + self.passed + 4 * self.failed)


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class LedgerState:
    """Everything the contract holds. Absent keys mean zero; zero entries are dropped."""

    balance: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    stake: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    unbonding: Mapping[str, Unbonding] = field(default_factory=lambda: MappingProxyType({}))
    treasury: int = 0
    reputation: Mapping[str, Reputation] = field(default_factory=lambda: MappingProxyType({}))
    epoch_roots: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Copy and wrap plain mappings, so no caller can change a state in place; read-only
        # proxies (what transitions build over dicts nobody else holds) are kept as they are.
        for name in ("balance", "stake", "unbonding", "reputation", "epoch_roots"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, _frozen(value))

    def balance_of(self, address: str) -> int:
        return self.balance.get(address, 0)

    def stake_of(self, address: str) -> int:
        return self.stake.get(address, 0)

    def unbonding_of(self, address: str) -> Unbonding:
        return self.unbonding.get(address, Unbonding())

    def reputation_of(self, address: str) -> Reputation:
        return self.reputation.get(address, Reputation())

    def total_funds(self) -> int:
        """What the contract must hold: Σ balance + Σ stake + Σ unbonding + treasury."""
        return (
            sum(self.balance.values())
            + sum(self.stake.values())
            + sum(u.amount for u in self.unbonding.values())
            + self.treasury
        )

    def is_active(self, node: str, params: SettlementParams) -> bool:
        """Eligible for work: stake at least `min_stake` (unbonding stake does not count)."""
        return self.stake_of(node) >= params.min_stake


class Outcome(enum.Enum):
    PASSED = "PASSED"
    ASSERTER_FAULT = "ASSERTER_FAULT"
    VALIDATOR_FAULT = "VALIDATOR_FAULT"


@dataclass(frozen=True)
class RequestEntry:
    user: str
    asserter: str
    fee: int


@dataclass(frozen=True)
class ChallengeEntry:
    user: str
    asserter: str
    fee: int
    validators: tuple[str, ...]
    outcome: Outcome
    faulty_validators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Batch:
    epoch: int
    receipts_root: bytes
    requests: tuple[RequestEntry, ...] = ()
    challenges: tuple[ChallengeEntry, ...] = ()


class _Draft:
    """Mutable working copy of a state; only ever turned back into a `LedgerState` on success."""

    def __init__(self, state: LedgerState) -> None:
        self.balance = dict(state.balance)
        self.stake = dict(state.stake)
        self.unbonding = dict(state.unbonding)
        self.treasury = state.treasury
        self.reputation = dict(state.reputation)
        self.epoch_roots = dict(state.epoch_roots)

    def credit(self, address: str, amount: int) -> None:
        self.balance[address] = self.balance.get(address, 0) + amount

    def debit(self, address: str, amount: int) -> None:
        have = self.balance.get(address, 0)
        if have < amount:
            raise InsufficientBalance()
        self.balance[address] = have - amount

    def pay_from_treasury(self, amount: int) -> None:
        if self.treasury < amount:
            raise InsufficientTreasury()
        self.treasury -= amount

    def bump(self, node: str, **increments: int) -> None:
        rep = self.reputation.get(node, Reputation())
        self.reputation[node] = replace(
            rep, **{k: getattr(rep, k) + v for k, v in increments.items()}
        )

    def take_slash(self, node: str, amount: int) -> None:
        """Take `amount` from stake first, then from unbonding: unstaking does not escape a slash."""
        bonded = self.stake.get(node, 0)
        unbonding = self.unbonding.get(node, Unbonding())
        if bonded + unbonding.amount < amount:
            raise SlashExceedsStake()
        from_stake = min(bonded, amount)
        self.stake[node] = bonded - from_stake
        self.unbonding[node] = replace(unbonding, amount=unbonding.amount - (amount - from_stake))

    def freeze(self) -> LedgerState:
        return LedgerState(
            balance=_frozen({a: v for a, v in self.balance.items() if v}),
            stake=_frozen({a: v for a, v in self.stake.items() if v}),
            unbonding=_frozen({a: u for a, u in self.unbonding.items() if u != Unbonding()}),
            treasury=self.treasury,
            reputation=_frozen({a: r for a, r in self.reputation.items() if r != Reputation()}),
            epoch_roots=_frozen(self.epoch_roots),
        )


def deposit(state: LedgerState, user: str, amount: int) -> LedgerState:
    """Funds in: `balance[user] += amount`."""
    check_address(user)
    _check_amount(amount)
    draft = _Draft(state)
    draft.credit(user, amount)
    return draft.freeze()


def fund_treasury(state: LedgerState, amount: int) -> LedgerState:
    """Funds in to the treasury, which pays rewards and discounts."""
    _check_amount(amount)
    draft = _Draft(state)
    draft.treasury += amount
    return draft.freeze()


def stake_funds(state: LedgerState, node: str, amount: int) -> LedgerState:
    """Bond `amount` of the node's own balance as stake."""
    check_address(node)
    _check_amount(amount)
    draft = _Draft(state)
    draft.debit(node, amount)
    draft.stake[node] = draft.stake.get(node, 0) + amount
    return draft.freeze()


def unstake(
    state: LedgerState, params: SettlementParams, node: str, amount: int, now: int
) -> LedgerState:
    """Move stake to unbonding; the whole unbonding amount is released `unbonding_delay` from now."""
    check_address(node)
    _check_amount(amount)
    draft = _Draft(state)
    bonded = draft.stake.get(node, 0)
    if bonded < amount:
        raise InsufficientStake()
    draft.stake[node] = bonded - amount
    pending = draft.unbonding.get(node, Unbonding())
    draft.unbonding[node] = Unbonding(pending.amount + amount, now + params.unbonding_delay)
    return draft.freeze()


def withdraw(state: LedgerState, address: str, amount: int, now: int) -> LedgerState:
    """Funds out: release matured unbonding into the balance, then pay `amount` from it."""
    check_address(address)
    _check_amount(amount)
    draft = _Draft(state)
    pending = draft.unbonding.get(address, Unbonding())
    if pending.amount > 0 and now >= pending.release_time:
        draft.credit(address, pending.amount)
        draft.unbonding[address] = Unbonding()
    draft.debit(address, amount)
    return draft.freeze()


def _check_challenge(entry: ChallengeEntry) -> None:
    if not 1 <= len(entry.validators) <= MAX_VALIDATORS:
        raise BadValidatorCount()
    if len(set(entry.validators)) != len(entry.validators):
        raise DuplicateValidator()
    if len(set(entry.faulty_validators)) != len(entry.faulty_validators):
        raise DuplicateValidator()
    if entry.asserter in entry.validators:
        raise AsserterIsValidator()
    if not set(entry.faulty_validators) <= set(entry.validators):
        raise FaultyNotAValidator()
    wants_faulty = entry.outcome is Outcome.VALIDATOR_FAULT
    if bool(entry.faulty_validators) != wants_faulty:
        raise BadFaultyValidators()


def _apply_request(draft: _Draft, params: SettlementParams, entry: RequestEntry) -> None:
    cut = entry.fee * params.protocol_fee_bps // BPS
    draft.debit(entry.user, entry.fee)
    draft.credit(entry.asserter, entry.fee - cut)
    draft.treasury += cut
    draft.bump(entry.asserter, served=1)


def _apply_challenge(draft: _Draft, params: SettlementParams, entry: ChallengeEntry) -> None:
    _check_challenge(entry)
    n = len(entry.validators)
    per_validator = params.reward_validators // n
    discount = entry.fee * params.discount_bps // BPS
    if entry.outcome is Outcome.ASSERTER_FAULT:
        draft.take_slash(entry.asserter, params.slash)
        refund = min(entry.fee, params.slash)
        rest = params.slash - refund
        share = rest * params.challenger_share_bps // BPS // n
        draft.credit(entry.user, refund)
        for validator in entry.validators:
            draft.credit(validator, share)
        draft.treasury += rest - share * n
        draft.bump(entry.asserter, challenged=1, failed=1)
        return
    # PASSED and VALIDATOR_FAULT: the asserter was right; honest validators and the user are paid.
    honest = [v for v in entry.validators if v not in entry.faulty_validators]
    draft.pay_from_treasury(params.reward_asserter + per_validator * len(honest) + discount)
    draft.credit(entry.asserter, params.reward_asserter)
    for validator in honest:
        draft.credit(validator, per_validator)
    draft.credit(entry.user, discount)
    draft.bump(entry.asserter, challenged=1, passed=1)
    to_asserter = params.slash * params.challenger_share_bps // BPS
    for validator in entry.faulty_validators:
        draft.take_slash(validator, params.slash)
        draft.credit(entry.asserter, to_asserter)
        draft.treasury += params.slash - to_asserter
        draft.bump(validator, failed=1)


def _check_entry_inputs(entry: RequestEntry | ChallengeEntry) -> None:
    check_address(entry.user)
    check_address(entry.asserter)
    if not isinstance(entry.fee, int) or isinstance(entry.fee, bool) or entry.fee < 0:
        raise InvalidInput(f"fee must be a non-negative integer (wei), got {entry.fee!r}")
    if isinstance(entry, ChallengeEntry):
        for address in (*entry.validators, *entry.faulty_validators):
            check_address(address)


def apply_batch(state: LedgerState, params: SettlementParams, batch: Batch) -> LedgerState:
    """Settle one epoch: all requests, then all challenges, in order; any failure reverts all."""
    if not isinstance(batch.epoch, int) or batch.epoch < 0:
        raise InvalidInput(f"epoch must be a non-negative integer, got {batch.epoch!r}")
    if len(batch.receipts_root) != 32:
        raise InvalidInput("receipts_root must be 32 bytes")
    entries: tuple[RequestEntry | ChallengeEntry, ...] = (*batch.requests, *batch.challenges)
    for entry in entries:
        _check_entry_inputs(entry)
    if batch.epoch in state.epoch_roots:
        raise EpochAlreadySettled()
    draft = _Draft(state)
    draft.epoch_roots[batch.epoch] = batch.receipts_root
    for request in batch.requests:
        _apply_request(draft, params, request)
    for challenge in batch.challenges:
        _apply_challenge(draft, params, challenge)
    return draft.freeze()



MIN_COMMIT_GRACE = 60  # seconds; the contract's constant


def commit_grace(epoch_seconds: int) -> int:
    """Version 2: how long after an epoch's end its commit is accepted (its settlement: twice
    that). At least a minute, so that short epochs under load keep their receipts."""
    return max(epoch_seconds, MIN_COMMIT_GRACE)


def settle_span(epoch_seconds: int, challenge_window: int) -> int:
    """Version 2: from an epoch's start to the last moment its challenges can be answered."""
    return epoch_seconds + 2 * commit_grace(epoch_seconds) + challenge_window
