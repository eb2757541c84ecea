"""Challenges: whether a committed result is challenged, and what its comparison decides.

The decision is a pure function of the receipt commitment and a beacon value revealed after it,
so the asserter cannot know in advance and anyone can audit it afterwards. The outcome follows
from output hashes: all validators equal to the asserter means PASSED; otherwise the arbitration
committee's strict majority says which hash is right.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from verinfer.errors import ProtocolError
from verinfer.protocol.settlement import PPM, Outcome

_DOMAIN = b"verinfer/challenge/v1"


class ChallengeError(ProtocolError):
    """A challenge's inputs are inconsistent (lengths, missing arbitration, bad sizes)."""


class NoMajority(ChallengeError):
    """The arbitration votes have no strict majority; the dispute must be escalated."""


def challenge_draw(commitment: bytes, beacon: bytes) -> int:
    """The 256-bit integer SHA-256(domain || commitment || beacon) that decides a challenge."""
    if len(commitment) != 32 or len(beacon) != 32:
        raise ChallengeError("commitment and beacon must be 32 bytes each")
    return int.from_bytes(hashlib.sha256(_DOMAIN + commitment + beacon).digest(), "big")


def is_challenged(commitment: bytes, beacon: bytes, challenge_ppm: int) -> bool:
    """Challenge iff draw / 2^256 < challenge_ppm / 10^6 (exact integer comparison)."""
    if not 0 <= challenge_ppm <= PPM:
        raise ChallengeError(f"challenge_ppm must be in 0..{PPM}, got {challenge_ppm}")
    return challenge_draw(commitment, beacon) * PPM < challenge_ppm << 256


def hashes_match(asserter_hash: bytes, validator_hashes: Sequence[bytes]) -> bool:
    """True when every validator reported the asserter's output hash."""
    if not validator_hashes:
        raise ChallengeError("a challenge needs at least one validator hash")
    return all(h == asserter_hash for h in validator_hashes)


def arbitrate(votes: Sequence[bytes]) -> bytes:
    """The hash a strict majority of the arbitration committee computed."""
    if not votes:
        raise ChallengeError("arbitration needs at least one vote")
    winner, count = Counter(votes).most_common(1)[0]
    if 2 * count <= len(votes):
        raise NoMajority(f"no strict majority among {len(votes)} arbitration votes")
    return winner


@dataclass(frozen=True)
class Verdict:
    """What a challenge settles as: the outcome and the validators found faulty."""

    outcome: Outcome
    faulty_validators: tuple[str, ...] = ()
    arbitrated: bool = False


def decide_challenge(
    asserter_hash: bytes,
    validators: Sequence[str],
    validator_hashes: Sequence[bytes],
    arbitration_votes: Sequence[bytes] | None = None,
) -> Verdict:
    """PASSED on a full match; otherwise the arbitration majority names the faulty side.

    If the majority agrees with the asserter, the validators that disagreed are faulty
    (VALIDATOR_FAULT). Otherwise the asserter is (ASSERTER_FAULT; settlement v1 slashes no
    validator in that case).
    """
    if len(validators) != len(validator_hashes):
        raise ChallengeError("one hash per validator is needed")
    if hashes_match(asserter_hash, validator_hashes):
        return Verdict(Outcome.PASSED)
    if arbitration_votes is None:
        raise ChallengeError("hashes differ: arbitration votes are needed")
    if arbitrate(arbitration_votes) == asserter_hash:
        faulty = tuple(v for v, h in zip(validators, validator_hashes, strict=True)
                       if h != asserter_hash)
        return Verdict(Outcome.VALIDATOR_FAULT, faulty, arbitrated=True)
    return Verdict(Outcome.ASSERTER_FAULT, (), arbitrated=True)
