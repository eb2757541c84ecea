"""Replay protection: the (gateway, nonce) pairs this node has accepted, durable in SQLite.

A pair is recorded (in one committed transaction, WAL mode) before the job is served, so a
restart cannot reopen a replay. A pair whose deadline has passed can no longer be replayed
(the deadline check refuses it first), so it is pruned.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

PRUNE_EVERY = 256  # claims between prunes
SQLITE_MAX_INT = (1 << 63) - 1  # a uint64 deadline beyond it is as good as never


class SeenNonces:
    """The set of accepted (signer, nonce) pairs, one per message kind (`scope`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (scope TEXT NOT NULL, signer TEXT NOT NULL, "
            "nonce TEXT NOT NULL, deadline INTEGER NOT NULL, PRIMARY KEY (scope, signer, nonce))"
        )
        self._lock = threading.Lock()
        self._claims = 0

    def claim(self, scope: str, signer: str, nonce: int, deadline: int, now: int) -> bool:
        """Record the pair; False if it was seen before (a replay)."""
        with self._lock:
            self._claims += 1
            if self._claims % PRUNE_EVERY == 0:
                self._db.execute("DELETE FROM seen WHERE deadline < ?", (now,))
            try:
                self._db.execute(
                    "INSERT INTO seen (scope, signer, nonce, deadline) VALUES (?, ?, ?, ?)",
                    (scope, signer.lower(), str(nonce), min(deadline, SQLITE_MAX_INT)),
                )
            except sqlite3.IntegrityError:
                return False
            return True

    def release(self, scope: str, signer: str, nonce: int) -> None:
        """Forget a pair whose message was refused before any work (a full queue): the
        sender may retry it."""
        with self._lock:
            self._db.execute(
                "DELETE FROM seen WHERE scope = ? AND signer = ? AND nonce = ?",
                (scope, signer.lower(), str(nonce)),
            )

    def prune(self, now: int) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE deadline < ?", (now,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
