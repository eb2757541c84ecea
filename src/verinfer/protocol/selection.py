"""Who works: the asserter by stake x reputation, validators and arbitrators by stake.

All draws come from explicit random bytes (the request's randomness) through `uniform_int`,
SHA-256 in counter mode with rejection, so any implementation draws the same nodes. Candidates
are sorted by address so that every party walks the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from verinfer.errors import ProtocolError
from verinfer.protocol.settlement import Reputation, check_address

_DOMAIN = b"verinfer/uniform/v1"
_SPAN = 1 << 256


class NotEnoughNodes(ProtocolError):
    """Fewer eligible nodes than the draw needs."""


def uniform_int(seed: bytes, bound: int, index: int = 0) -> int:
    """A uniform integer in [0, bound) from `seed`; `index` names independent draws.

    x = SHA-256(domain || seed || index (4 bytes BE) || attempt (4 bytes BE)) as a big-endian
    integer; the first attempt with x < 2^256 - 2^256 mod bound gives x mod bound (no bias).
    """
    if bound <= 0:
        raise ProtocolError(f"uniform_int needs a positive bound, got {bound}")
    limit = _SPAN - _SPAN % bound
    attempt = 0
    while True:
        block = _DOMAIN + seed + index.to_bytes(4, "big") + attempt.to_bytes(4, "big")
        x = int.from_bytes(hashlib.sha256(block).digest(), "big")
        if x < limit:
            return x % bound
        attempt += 1


@dataclass(frozen=True)
class Candidate:
    """A node as selection sees it: its address, bonded stake and reputation counters."""

    address: str
    stake: int
    reputation: Reputation = field(default_factory=Reputation)


def _pick(weighted: Sequence[tuple[str, int]], u: int) -> int:
    """Index of the entry whose cumulative-weight interval holds `u`."""
    acc = 0
    for i, (_, weight) in enumerate(weighted):
        acc += weight
        if u < acc:
            return i
    raise AssertionError("u is below the total weight by construction")


def _eligible(candidates: Sequence[Candidate], min_stake: int) -> list[Candidate]:
    seen: set[str] = set()
    for c in candidates:
        check_address(c.address)
        if c.address in seen:
            raise ProtocolError(f"candidate {c.address} listed twice")
        seen.add(c.address)
    return sorted((c for c in candidates if c.stake >= min_stake and c.stake > 0),
                  key=lambda c: c.address)


def asserter_weight(candidate: Candidate) -> int:
    """stake * rep_ppm: a node that failed challenges gets proportionally less work."""
    return candidate.stake * candidate.reputation.rep_ppm


def select_asserter(candidates: Sequence[Candidate], min_stake: int, randomness: bytes) -> str:
    """Draw the asserter among active nodes (stake >= min_stake) with weight stake * rep_ppm."""
    weighted = [(c.address, asserter_weight(c)) for c in _eligible(candidates, min_stake)]
    weighted = [(a, w) for a, w in weighted if w > 0]
    if not weighted:
        raise NotEnoughNodes("no active node can serve this request")
    u = uniform_int(randomness, sum(w for _, w in weighted), 0)
    return weighted[_pick(weighted, u)][0]


def select_committee(
    candidates: Sequence[Candidate],
    min_stake: int,
    randomness: bytes,
    count: int,
    exclude: Collection[str] = (),
) -> tuple[str, ...]:
    """Draw `count` distinct active nodes not in `exclude`, by stake, without replacement.

    Validators and arbitrators are weighted by stake alone, so a colluding group's chance to sit
    on a committee is its share of stake, whatever reputation it has built. Draw k uses
    `uniform_int(randomness, remaining weight, k)`; the chosen node leaves the pool.
    """
    pool = [(c.address, c.stake) for c in _eligible(candidates, min_stake)
            if c.address not in exclude]
    if count < 1:
        raise ProtocolError(f"a committee needs at least one member, got {count}")
    if len(pool) < count:
        raise NotEnoughNodes(f"{count} nodes needed, {len(pool)} eligible")
    chosen: list[str] = []
    for k in range(count):
        u = uniform_int(randomness, sum(w for _, w in pool), k)
        chosen.append(pool.pop(_pick(pool, u))[0])
    return tuple(chosen)


def select_validators(
    candidates: Sequence[Candidate], min_stake: int, randomness: bytes, count: int, asserter: str
) -> tuple[str, ...]:
    """The `count` validators of a challenge: a committee that excludes the asserter."""
    return select_committee(candidates, min_stake, randomness, count, exclude=(asserter,))


SORTITION_BITS = 64
VALIDATOR_TAG = b"verinfer/sortition/v2/validator"
ARBITRATOR_TAG = b"verinfer/sortition/v2/arbitrator"


def sortition_ticket(tag: bytes, beacon: bytes, receipt_id: bytes, member: str) -> int:
    """A member's 64-bit ticket for one receipt's committee: the top bits of
    SHA-256(tag || beacon || receipt id || member's 20 address bytes)."""
    check_address(member)
    if len(beacon) != 32 or len(receipt_id) != 32:
        raise ProtocolError("beacon and receipt id must be 32 bytes each")
    block = tag + beacon + receipt_id + bytes.fromhex(member[2:])
    return int.from_bytes(hashlib.sha256(block).digest(), "big") >> (256 - SORTITION_BITS)


def is_drawn(
    tag: bytes, beacon: bytes, receipt_id: bytes, member: str, stake: int, total_stake: int,
    expected: int,
) -> bool:
    """Stake-weighted sortition checkable one member at a time (as in Algorand): drawn iff
    ticket / 2^64 < expected * stake / total_stake, so a committee has `expected` members on
    average and a member's chance grows with its stake. Settlement v2 counts only stake bonded
    before the epoch's commit and `total_stake` as it was at the commit."""
    if total_stake <= 0:
        return False
    ticket = sortition_ticket(tag, beacon, receipt_id, member)
    return ticket * total_stake < (stake * expected) << SORTITION_BITS
