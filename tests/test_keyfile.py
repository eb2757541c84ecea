"""Key files: created once with mode 0600, reloaded, refused when open to others or malformed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from verinfer.keyfile import KeyFileError, load_key, load_or_create_key


def test_created_private_then_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "node" / "key"
    first, created = load_or_create_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_key(path)
    assert not created_again
    assert again.address == first.address and again.private_key == first.private_key
    assert first.private_key.hex() not in repr(first)


def test_open_file_refused(tmp_path: Path) -> None:
    identity, _ = load_or_create_key(tmp_path / "key")
    (tmp_path / "key").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(tmp_path / "key")
    assert identity.address.startswith("0x")


@pytest.mark.parametrize("content", ["", "0x1234", "0x" + "00" * 32, "hello"])
def test_malformed_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_key(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        load_key(tmp_path / "absent")
