"""`verinfer gateway keys add/list` and the gateway's start-up refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from verinfer.gateway.store import GatewayStore

ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verinfer.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_keys_add_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    done = cli("gateway", "keys", "add", "--user", ADDRESS, "--label", "alice",
               "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("vi-") and len(key) > 40
    store = GatewayStore(tmp_path / "gateway" / "gateway.sqlite")
    assert store.account_of_key(key) == ADDRESS
    store.close()
    listed = cli("gateway", "keys", "list", "--data-dir", str(tmp_path))
    assert ADDRESS in listed.stdout and "alice" in listed.stdout and key not in listed.stdout


def test_a_bad_address_and_a_missing_model_are_one_line_errors(tmp_path: Path) -> None:
    bad = cli("gateway", "keys", "add", "--user", ADDRESS.lower().replace("5a", "5A", 1),
              "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "checksum" in bad.stderr and "Traceback" not in bad.stderr
    no_model = cli("gateway", "--data-dir", str(tmp_path))
    assert no_model.returncode == 2 and "--model" in no_model.stderr
