"""The gateway store: what it acknowledged survives `kill -9`; epochs move only forward."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verinfer.gateway.store import GatewayStore, StoreError, hash_api_key
from verinfer.protocol import wire

SRC = Path(__file__).parents[2] / "src"

WRITER = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path
    from verinfer.gateway.store import GatewayStore
    from verinfer.protocol import wire
    store = GatewayStore(Path(sys.argv[1]))
    i = 0
    while True:
        rid = hashlib.sha256(str(i).encode()).digest()
        store.add_receipt(rid, "0x" + "11" * 20, "0x" + "22" * 20, i, {"n": i})
        print("receipt", rid.hex(), flush=True)
        if i % 7 == 6:
            closed = store.close_epoch(wire.receipts_root)
            print("closed", closed.epoch, closed.root.hex(), flush=True)
        if i % 5 == 4:
            store.add_outcome(rid, store.receipt(rid).epoch, "PASSED", {"i": i})
            print("outcome", rid.hex(), flush=True)
        i += 1
""")


@pytest.mark.parametrize("acknowledged", [3, 40, 150])
def test_kill_9_in_the_middle_of_writes_loses_nothing_acknowledged(
        tmp_path: Path, acknowledged: int) -> None:
    db = tmp_path / "gateway.sqlite"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    lines = []
    try:
        while len(lines) < acknowledged:
            line = proc.stdout.readline()
            assert line, "the writer died"
            lines.append(line.split())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store = GatewayStore(db)
    for kind, *rest in lines:
        if kind == "receipt":
            assert store.receipt(bytes.fromhex(rest[0])) is not None
        elif kind == "closed":
            epoch = store.epoch(int(rest[0]))
            assert epoch.state == "closed" and epoch.root == bytes.fromhex(rest[1])
            ids = [r.receipt_id for r in store.receipts_of_epoch(epoch.epoch)]
            assert wire.receipts_root(ids) == epoch.root
        else:
            assert store.outcome(bytes.fromhex(rest[0])) is not None
    # the store is usable after the crash: exactly one open epoch takes new receipts
    store.add_receipt(b"\xff" * 32, "0x" + "11" * 20, "0x" + "22" * 20, 1, {})
    assert store.receipt(b"\xff" * 32) is not None
    store.close()


def test_epochs_only_move_forward_and_receipts_are_recorded_once(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.sqlite")
    store.add_receipt(b"\x01" * 32, "0xu", "0xn", 5, {})
    with pytest.raises(StoreError, match="already recorded"):
        store.add_receipt(b"\x01" * 32, "0xu", "0xn", 5, {})
    with pytest.raises(StoreError, match="not closed"):
        store.mark_committed(0, "ref")
    closed = store.close_epoch(wire.receipts_root)
    assert closed.root == wire.receipts_root([b"\x01" * 32])
    store.mark_committed(0, "ref")
    with pytest.raises(StoreError):
        store.mark_settled(0, "ref")
    assert store.unsettled_fees("0xu") == 5
    store.mark_decided(0)
    store.mark_settled(0, "tx")
    assert store.unsettled_fees("0xu") == 0


def test_chain_numbered_epochs_take_receipts_until_closed_in_ascending_id_order(
        tmp_path: Path) -> None:
    """With the chain's clock a receipt names its epoch: opened on first use, committed over
    ascending receipt ids (not arrival order), refused once closed."""
    store = GatewayStore(tmp_path / "g.sqlite")
    store.add_receipt(b"\x09" * 32, "0xu", "0xn", 5, {}, epoch=41)
    store.add_receipt(b"\x02" * 32, "0xu", "0xn", 5, {}, epoch=41)
    store.add_receipt(b"\x05" * 32, "0xu", "0xn", 5, {}, epoch=42)
    assert [e.epoch for e in store.epochs_in("open")] == [0, 41, 42]
    assert [r.receipt_id for r in store.receipts_of_epoch(41)] == [b"\x02" * 32, b"\x09" * 32]
    closed = store.close_epoch(wire.receipts_root, 41)
    assert closed.root == wire.receipts_root([b"\x02" * 32, b"\x09" * 32])
    assert store.epoch(42).state == "open"  # already open: kept with its receipt
    assert [r.epoch for r in store.receipts_of_epoch(42)] == [42]
    with pytest.raises(StoreError, match="epoch 41 is already closed"):
        store.add_receipt(b"\x07" * 32, "0xu", "0xn", 5, {}, epoch=41)


def test_api_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.sqlite")
    store.add_api_key("vi-secret-key", "0x" + "33" * 20, "alice")
    assert store.account_of_key("vi-secret-key") == "0x" + "33" * 20
    assert store.account_of_key("vi-other") is None
    store.close()
    raw = (tmp_path / "g.sqlite").read_bytes() + (tmp_path / "g.sqlite-wal").read_bytes() \
        if (tmp_path / "g.sqlite-wal").exists() else (tmp_path / "g.sqlite").read_bytes()
    assert b"vi-secret-key" not in raw
    assert hash_api_key("vi-secret-key").encode() in raw


def test_a_member_drawn_as_validator_and_arbitrator_keeps_both_answers(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    rid, member = b"\x01" * 32, "0x" + "ab" * 20
    store.add_verdict(rid, member, "validator", {"valid": False})
    store.add_verdict(rid, member, "arbitrator", {"valid": True})
    store.add_verdict(rid, member, "validator", {"valid": False, "again": 1})  # a re-ask replaces
    store.close()
    reopened = GatewayStore(tmp_path / "gateway.sqlite")
    assert [(v.role, v.verdict) for v in reopened.verdicts(rid)] == [
        ("arbitrator", {"valid": True}), ("validator", {"valid": False, "again": 1})]


def test_a_schema_1_store_is_migrated_with_its_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    store = GatewayStore(path)
    store.add_verdict(b"\x02" * 32, "0x" + "cd" * 20, "validator", {"valid": True})
    store.close()
    db = sqlite3.connect(path, isolation_level=None)  # make it what schema 1 wrote
    db.executescript("""
        ALTER TABLE verdicts RENAME TO v2;
        CREATE TABLE verdicts (receipt_id TEXT NOT NULL, validator TEXT NOT NULL,
            role TEXT NOT NULL, verdict TEXT NOT NULL, PRIMARY KEY (receipt_id, validator));
        INSERT INTO verdicts SELECT * FROM v2; DROP TABLE v2;
        UPDATE meta SET value = '1' WHERE key = 'schema';
    """)
    db.close()
    migrated = GatewayStore(path)
    migrated.add_verdict(b"\x02" * 32, "0x" + "cd" * 20, "arbitrator", {"valid": False})
    assert [(v.role, v.verdict) for v in migrated.verdicts(b"\x02" * 32)] == [
        ("validator", {"valid": True}), ("arbitrator", {"valid": False})]
    migrated.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema 9"):
        GatewayStore(path)
