"""What the gateway needs from the settlement chain, as one small interface.

The gateway's decisions (routing, funds, the epoch pipeline) call a `Settler`, never a chain
client: the registry of nodes, what a user may still be debited, committing an epoch's receipts
root, the beacon fixed after that commit, and settling the epoch with its evidence. Settlement
v2's contract (commit-then-challenge, allowances, evidence) is one implementation; unit tests
use an in-memory one. Every method that writes is idempotent, because a gateway killed between
sending a transaction and recording it sends it again after its restart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from verinfer.gateway.router import RegisteredNode
from verinfer.protocol.settlement import Batch, ChallengeEntry, RequestEntry


@dataclass(frozen=True)
class ChallengeEvidence:
    """Why a challenged receipt settles as it does: the asserter's own signed receipt bundle,
    the validators' and arbitrators' signed verdicts, and who was found faulty."""

    receipt_id: bytes
    bundle: dict[str, Any]
    outcome: str
    validators: tuple[str, ...]
    verdicts: tuple[dict[str, Any], ...]
    arbitrators: tuple[str, ...] = ()
    arbitration: tuple[dict[str, Any], ...] = ()
    faulty: tuple[str, ...] = ()


@dataclass(frozen=True)
class EpochSettlement:
    """One epoch as it goes to the chain: its committed root and order, the entries (the
    protocol's settlement types) and the evidence behind every challenge entry."""

    epoch: int
    receipts_root: bytes
    receipt_ids: tuple[bytes, ...]
    requests: tuple[RequestEntry, ...]
    challenges: tuple[ChallengeEntry, ...]
    evidence: tuple[ChallengeEvidence, ...]
    # Every receipt of the epoch as (receipt id, receipt bundle JSON): settlement v2 takes them all.
    bundles: tuple[tuple[bytes, dict[str, Any]], ...] = ()

    def batch(self) -> Batch:
        return Batch(self.epoch, self.receipts_root, self.requests, self.challenges)


class Settler(ABC):
    """The chain as the gateway uses it."""

    @abstractmethod
    def registry(self) -> list[RegisteredNode]:
        """Registered nodes with their endpoint, bonded stake and reputation."""

    @abstractmethod
    def min_stake(self) -> int:
        """Stake a node needs to get work."""

    @abstractmethod
    def spendable(self, user: str) -> int:
        """What `user` may still be debited by this gateway (deposit within its allowance)."""

    def receipts_per_epoch(self) -> int | None:
        """The most receipts one epoch can settle (one settlement transaction carries them
        all); None: no limit."""
        return None

    def epoch_clock(self) -> tuple[int, int] | None:
        """(genesis, epoch length) in unix seconds when the chain numbers the epochs (a
        receipt then belongs to the epoch its deadline falls in); None: the gateway's own."""
        return None

    def clock_skew(self) -> float:
        """Seconds the chain's clock runs ahead of this machine's (as last seen by
        `sync_clock`): epochs are the chain's, so deadlines and closing follow its time."""
        return 0.0

    def sync_clock(self) -> None:
        """Read the chain's time again (a chain that mines in bursts runs ahead)."""

    def committee(self, epoch: int, receipt_id: bytes, asserter: str,
                  role: str) -> tuple[tuple[str, ...], int] | None:
        """The members the chain accepts in `role` ("validator" or "arbitrator") for a
        receipt, and how many verdicts it needs; None: the gateway draws its own committee."""
        return None

    def challenge_ppm(self) -> int | None:
        """The chain's challenge probability, when the chain fixes it."""
        return None

    @abstractmethod
    def commit(self, epoch: int, receipts_root: bytes, count: int) -> str:
        """Commit an epoch's receipts root over `count` receipts; returns a reference."""

    @abstractmethod
    def beacon(self, epoch: int, commit_ref: str) -> bytes | None:
        """The 32-byte value fixed after the commitment (None until it exists)."""

    def open_challenges(self, epoch: int, bundles: tuple[tuple[bytes, dict[str, Any]], ...]
                        ) -> None:
        """Once the beacon is known, before any challenge is decided: a chain whose challenges
        run against a deadline (settlement v2) settles the fees and opens them here."""

    @abstractmethod
    def settle(self, settlement: EpochSettlement) -> str | None:
        """Settle a committed epoch with its entries and evidence; returns a reference once
        the epoch is final, None while something is still to wait for (call it again)."""

    @abstractmethod
    def settled_root(self, epoch: int) -> bytes | None:
        """The receipts root an epoch settled with on chain, None if it has not."""
