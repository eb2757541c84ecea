"""Binary Merkle trees over byte strings: roots and inclusion proofs, shared by every party.

Hash: SHA-256 with domain separation (leaf = H(0x00 || data), node = H(0x01 || left || right)),
so a leaf can never be passed off as an inner node. An odd node at the end of a level is carried
up unchanged. The same rule is implemented on chain (Vyper's `sha256`), so a proof built here
verifies there. The root of an empty list is H(0x00) of nothing, i.e. `leaf_hash(b"")`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    return _levels_over([leaf_hash(x) for x in leaves])


def _levels_over(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    level = leaf_hashes or [leaf_hash(b"")]
    levels = [level]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over `leaves` in order (each leaf is raw bytes, hashed here)."""
    return _levels(leaves)[-1][0]


def merkle_root_of_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """`merkle_root` from the leaves' `leaf_hash`es, for leaves too large to hold together."""
    return _levels_over(list(leaf_hashes))[-1][0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[tuple[bool, bytes]]:
    """Path from leaf `index` to the root: (sibling_is_left, sibling_hash) per level that has one."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside 0..{len(leaves) - 1}")
    path: list[tuple[bool, bytes]] = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append((sibling < index, level[sibling]))
        index //= 2
    return path


def verify_proof(leaf: bytes, path: Sequence[tuple[bool, bytes]], root: bytes) -> bool:
    """True when `leaf` (raw bytes) with `path` hashes up to `root`."""
    h = leaf_hash(leaf)
    for sibling_is_left, sibling in path:
        h = node_hash(sibling, h) if sibling_is_left else node_hash(h, sibling)
    return h == root
