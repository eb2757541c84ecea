"""A party's identity on disk: one secp256k1 key (an Ethereum account) in a file only its owner reads.

The file holds one line, the `0x`-prefixed hex private key, and is created with mode 0600 by an
atomic create (`O_EXCL`), so two processes starting at once cannot both write one. A file that
others can read, or that does not hold a key, is refused with a message saying how to fix it.
The key itself is never printed or logged; only its address is.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from verinfer.errors import LocalError
from verinfer.protocol.wire import SECP256K1_N, address_of

_KEY = re.compile(r"^0x[0-9a-fA-F]{64}$")


class KeyFileError(LocalError):
    """A key file is missing, unreadable, too open, or does not hold a key."""


@dataclass(frozen=True, repr=False)
class Identity:
    """A private key and the address it controls (the repr shows only the address)."""

    private_key: bytes
    address: str

    def __repr__(self) -> str:
        return f"Identity({self.address})"


def new_private_key() -> bytes:
    while True:
        key = secrets.token_bytes(32)
        if 0 < int.from_bytes(key, "big") < SECP256K1_N:
            return key


def load_key(path: Path) -> Identity:
    """Read the key in `path`; refuse a file that group or others can access."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is readable by others: run `chmod 600 {path}`")
    if not _KEY.match(text):
        raise KeyFileError(f"{path} does not hold a 0x-prefixed 32-byte hex private key")
    key = bytes.fromhex(text[2:])
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise KeyFileError(f"{path} holds a value that is not a valid secp256k1 key")
    return Identity(key, address_of(key))


def load_or_create_key(path: Path) -> tuple[Identity, bool]:
    """The identity in `path`, creating it (mode 0600) if there is none; True when created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path), False
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("0x" + key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return Identity(key, address_of(key)), True
