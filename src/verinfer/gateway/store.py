"""The gateway's durable state in SQLite (WAL): API keys, receipts, epochs, challenges, outcomes.

Every state change is one transaction, committed (`synchronous=FULL`) before the caller
acknowledges anything, so a `kill -9` at any moment loses nothing that was acknowledged: a
receipt is in the store before its response leaves the gateway, an outcome before the epoch
moves on. Epochs advance through explicit states (`open` → `closed` → `committed` →
`decided` → `settled`); a restarted gateway reads where each one stopped and continues.
Amounts are stored as decimal strings (uint256 does not fit SQLite's integers).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verinfer.errors import LocalError

# 2: a verdict is keyed by (receipt, member, role): a node drawn as validator and as arbitrator
# of the same receipt keeps both answers (1 kept the later one only).
SCHEMA_VERSION = 2
EPOCH_STATES = ("open", "closed", "committed", "decided", "settled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY, account TEXT NOT NULL, label TEXT NOT NULL,
    created_at INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, state TEXT NOT NULL, opened_at INTEGER NOT NULL,
    root TEXT, commit_ref TEXT, beacon TEXT, settle_ref TEXT);
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, receipt_id TEXT NOT NULL UNIQUE,
    epoch INTEGER NOT NULL, user TEXT NOT NULL, node TEXT NOT NULL, fee TEXT NOT NULL,
    bundle TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS receipts_by_epoch ON receipts (epoch, seq);
CREATE INDEX IF NOT EXISTS receipts_by_user ON receipts (user, epoch);
CREATE TABLE IF NOT EXISTS verdicts (
    receipt_id TEXT NOT NULL, validator TEXT NOT NULL, role TEXT NOT NULL,
    verdict TEXT NOT NULL, PRIMARY KEY (receipt_id, validator, role));
CREATE TABLE IF NOT EXISTS outcomes (
    receipt_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, outcome TEXT NOT NULL,
    detail TEXT NOT NULL);
"""


class StoreError(LocalError):
    """The state directory cannot be used (unreadable, another version, inconsistent)."""


def hash_api_key(key: str) -> str:
    """Keys are 256-bit random strings, so one SHA-256 is enough: a leaked table reveals none."""
    return hashlib.sha256(b"verinfer/api-key/v1" + key.encode()).hexdigest()


@dataclass(frozen=True)
class Epoch:
    epoch: int
    state: str
    opened_at: int
    root: bytes | None = None
    commit_ref: str | None = None
    beacon: bytes | None = None
    settle_ref: str | None = None


@dataclass(frozen=True)
class StoredReceipt:
    seq: int
    receipt_id: bytes
    epoch: int
    user: str
    node: str
    fee: int
    bundle: dict[str, Any]


@dataclass(frozen=True)
class StoredVerdict:
    validator: str
    role: str  # "validator" or "arbitrator"
    verdict: dict[str, Any]  # Verdict JSON + "signature", or {"error": "..."} when none came


@dataclass(frozen=True)
class StoredOutcome:
    receipt_id: bytes
    epoch: int
    outcome: str
    detail: dict[str, Any]


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _unhex(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s.removeprefix("0x"))


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Schema 1 keyed verdicts by (receipt, member): re-key them by role as well (the rows are
    kept as they are; one that 1 had already overwritten cannot come back)."""
    db.execute("ALTER TABLE verdicts RENAME TO verdicts_v1")
    db.execute("CREATE TABLE verdicts (receipt_id TEXT NOT NULL, validator TEXT NOT NULL, "
               "role TEXT NOT NULL, verdict TEXT NOT NULL, "
               "PRIMARY KEY (receipt_id, validator, role))")
    db.execute("INSERT INTO verdicts SELECT receipt_id, validator, role, verdict FROM verdicts_v1 "
               "ORDER BY rowid")
    db.execute("DROP TABLE verdicts_v1")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))


class GatewayStore:
    """One SQLite database; safe to call from several threads (one lock, short transactions)."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"gateway state {path} cannot be opened: {exc}") from exc
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 1:
                _migrate_from_1(db)
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{path} holds gateway state of schema {row[0]}, "
                                 f"this verinfer reads {SCHEMA_VERSION}")
            if db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 0:
                db.execute("INSERT INTO epochs (epoch, state, opened_at) VALUES (0, 'open', ?)",
                           (self._now(),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE: writers never interleave)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---------------------------------------------------------------- API keys

    def add_api_key(self, key: str, account: str, label: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO api_keys (key_hash, account, label, created_at) "
                       "VALUES (?, ?, ?, ?)", (hash_api_key(key), account, label, self._now()))

    def account_of_key(self, key: str) -> str | None:
        """The chain account an API key bills, None for an unknown or revoked key."""
        with self._lock:
            row = self._db.execute("SELECT account FROM api_keys WHERE key_hash = ? AND revoked = 0",
                                   (hash_api_key(key),)).fetchone()
        return None if row is None else str(row[0])

    def api_keys(self) -> list[tuple[str, str, int, bool]]:
        """(account, label, created_at, revoked) of every key; the keys themselves are not kept."""
        with self._lock:
            rows = self._db.execute(
                "SELECT account, label, created_at, revoked FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [(a, lbl, t, bool(r)) for a, lbl, t, r in rows]

    # ---------------------------------------------------------------- receipts

    def add_receipt(self, receipt_id: bytes, user: str, node: str, fee: int,
                    bundle: dict[str, Any], epoch: int | None = None) -> StoredReceipt:
        """Record a checked receipt in the open epoch, or in `epoch` when the chain numbers
        epochs (opened if new, refused once closed); a receipt is recorded once."""
        with self._tx() as db:
            if epoch is None:
                epoch = self._open_epoch(db)
            else:
                row = db.execute("SELECT state FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO epochs (epoch, state, opened_at) VALUES (?, 'open', ?)",
                               (epoch, self._now()))
                elif row[0] != "open":
                    raise StoreError(f"epoch {epoch} is already closed")
            try:
                cur = db.execute(
                    "INSERT INTO receipts (receipt_id, epoch, user, node, fee, bundle, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_hex(receipt_id), epoch, user, node, str(fee),
                     json.dumps(bundle, sort_keys=True), self._now()))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"receipt {_hex(receipt_id)} is already recorded") from exc
            seq = cur.lastrowid
        assert seq is not None
        return StoredReceipt(seq, receipt_id, epoch, user, node, fee, bundle)

    def receipt(self, receipt_id: bytes) -> StoredReceipt | None:
        with self._lock:
            row = self._db.execute(
                "SELECT seq, receipt_id, epoch, user, node, fee, bundle FROM receipts "
                "WHERE receipt_id = ?", (_hex(receipt_id),)).fetchone()
        return None if row is None else _receipt_row(row)

    def receipts_of_epoch(self, epoch: int) -> list[StoredReceipt]:
        """The epoch's receipts by ascending receipt id (the committed order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, receipt_id, epoch, user, node, fee, bundle FROM receipts "
                "WHERE epoch = ? ORDER BY receipt_id", (epoch,)).fetchall()
        return [_receipt_row(r) for r in rows]

    def count_receipts(self, epoch: int | None = None) -> int:
        """Receipts recorded, in all or in `epoch`."""
        with self._lock:
            if epoch is None:
                return int(self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM receipts WHERE epoch = ?",
                                        (epoch,)).fetchone()[0])

    def unsettled_fees(self, user: str) -> int:
        """What `user` owes for receipts of epochs not yet settled on chain."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.fee FROM receipts r JOIN epochs e ON r.epoch = e.epoch "
                "WHERE r.user = ? AND e.state != 'settled'", (user,)).fetchall()
        return sum(int(f) for (f,) in rows)

    # ---------------------------------------------------------------- epochs

    def _open_epoch(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT MAX(epoch) FROM epochs WHERE state = 'open'").fetchone()
        if row[0] is None:
            raise StoreError("no open epoch (inconsistent gateway state)")
        return int(row[0])

    def open_epoch(self) -> Epoch:
        with self._lock:
            return self.epoch(self._open_epoch(self._db))

    def epoch(self, epoch: int) -> Epoch:
        with self._lock:
            row = self._db.execute(
                "SELECT epoch, state, opened_at, root, commit_ref, beacon, settle_ref "
                "FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        if row is None:
            raise StoreError(f"no epoch {epoch}")
        return Epoch(row[0], row[1], row[2], _unhex(row[3]), row[4], _unhex(row[5]), row[6])

    def count_epochs(self, state: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM epochs WHERE state = ?",
                                   (state,)).fetchone()
        return int(row[0])

    def epochs_in(self, *states: str) -> list[Epoch]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT epoch FROM epochs WHERE state IN ({marks}) ORDER BY epoch", states
            ).fetchall()
        return [self.epoch(r[0]) for r in rows]

    def close_epoch(self, root_of: Any, epoch: int | None = None) -> Epoch:
        """Close the open epoch (or open `epoch`) with the root `root_of(receipt ids,
        ascending)` and open the next if new, in one transaction: a receipt recorded after it
        lands in the next epoch."""
        with self._tx() as db:
            if epoch is None:
                epoch = self._open_epoch(db)
            ids = [bytes.fromhex(r[0][2:]) for r in db.execute(
                "SELECT receipt_id FROM receipts WHERE epoch = ? ORDER BY receipt_id", (epoch,))]
            root: bytes = root_of(ids)
            db.execute("UPDATE epochs SET state = 'closed', root = ? WHERE epoch = ?",
                       (_hex(root), epoch))
            db.execute("INSERT OR IGNORE INTO epochs (epoch, state, opened_at) "
                       "VALUES (?, 'open', ?)", (epoch + 1, self._now()))
        return self.epoch(epoch)

    def mark_committed(self, epoch: int, commit_ref: str) -> None:
        self._advance(epoch, "closed", "committed", commit_ref=commit_ref)

    def mark_missed(self, epoch: int) -> None:
        """The chain refused the epoch's commit for good (its window closed)."""
        self._advance(epoch, "closed", "missed")

    def set_beacon(self, epoch: int, beacon: bytes) -> None:
        with self._tx() as db:
            db.execute("UPDATE epochs SET beacon = ? WHERE epoch = ? AND beacon IS NULL",
                       (_hex(beacon), epoch))

    def mark_decided(self, epoch: int) -> None:
        self._advance(epoch, "committed", "decided")

    def mark_settled(self, epoch: int, settle_ref: str) -> None:
        self._advance(epoch, "decided", "settled", settle_ref=settle_ref)

    def _advance(self, epoch: int, frm: str, to: str, **columns: str) -> None:
        sets = "".join(f", {c} = ?" for c in columns)
        with self._tx() as db:
            cur = db.execute(f"UPDATE epochs SET state = ?{sets} WHERE epoch = ? AND state = ?",
                             (to, *columns.values(), epoch, frm))
            if cur.rowcount != 1:
                raise StoreError(f"epoch {epoch} is not {frm}, cannot become {to}")

    # ---------------------------------------------------------------- challenges

    def add_verdict(self, receipt_id: bytes, validator: str, role: str,
                    verdict: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                       (_hex(receipt_id), validator, role, json.dumps(verdict, sort_keys=True)))

    def verdicts(self, receipt_id: bytes) -> list[StoredVerdict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT validator, role, verdict FROM verdicts WHERE receipt_id = ? "
                "ORDER BY rowid", (_hex(receipt_id),)).fetchall()
        return [StoredVerdict(v, r, json.loads(d)) for v, r, d in rows]

    def add_outcome(self, receipt_id: bytes, epoch: int, outcome: str,
                    detail: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?)",
                       (_hex(receipt_id), epoch, outcome, json.dumps(detail, sort_keys=True)))

    def outcome(self, receipt_id: bytes) -> StoredOutcome | None:
        with self._lock:
            row = self._db.execute("SELECT receipt_id, epoch, outcome, detail FROM outcomes "
                                   "WHERE receipt_id = ?", (_hex(receipt_id),)).fetchone()
        return None if row is None else _outcome_row(row)

    def outcomes_of_epoch(self, epoch: int) -> list[StoredOutcome]:
        with self._lock:
            rows = self._db.execute(
                "SELECT o.receipt_id, o.epoch, o.outcome, o.detail FROM outcomes o "
                "JOIN receipts r ON r.receipt_id = o.receipt_id WHERE o.epoch = ? ORDER BY r.seq",
                (epoch,)).fetchall()
        return [_outcome_row(r) for r in rows]


def _receipt_row(row: tuple[Any, ...]) -> StoredReceipt:
    seq, rid, epoch, user, node, fee, bundle = row
    return StoredReceipt(seq, bytes.fromhex(rid[2:]), epoch, user, node, int(fee),
                         json.loads(bundle))


def _outcome_row(row: tuple[Any, ...]) -> StoredOutcome:
    rid, epoch, outcome, detail = row
    return StoredOutcome(bytes.fromhex(rid[2:]), epoch, outcome, json.loads(detail))
