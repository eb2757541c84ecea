"""Deterministic keys of the dev chain's prefunded accounts; for the local dev chain only.

Anyone can derive these keys from the public seed below, so they must never hold real funds:
the client uses them only when the chain it talks to has the dev chain's chain id.
"""

from __future__ import annotations

from eth_account import Account
from eth_utils import keccak

from verinfer.errors import ChainError

DEV_SEED = b"verinfer dev chain v1"
DEV_ACCOUNT_COUNT = 10
# eth-tester's py-evm chain id; the dev chain keeps it, and it marks a chain as the dev chain.
DEV_CHAIN_ID = 131277322940537


def dev_private_key(index: int) -> bytes:
    if not 0 <= index < DEV_ACCOUNT_COUNT:
        raise ChainError(f"dev account index {index} outside 0..{DEV_ACCOUNT_COUNT - 1}")
    return keccak(DEV_SEED + index.to_bytes(4, "big"))


def dev_address(index: int) -> str:
    return Account.from_key(dev_private_key(index)).address
