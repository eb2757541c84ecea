"""The node's standing on chain: it serves only when registered and staked (`is_active`).

`check_registration` reads the contract and raises `NotOnChain` with what to do; on the dev
chain `dev_register` funds the node from a dev account, registers it and bonds the minimum
stake from its own account (the account that signs its receipts). The contract's `register`
takes a 32-byte public-key field: the node puts keccak256 of its 64-byte secp256k1 public key
there (its identity is the sending account itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_keys import keys
from eth_utils import keccak
from web3 import Web3
from web3.types import Wei

from verinfer.chain.client import SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address
from verinfer.errors import ChainError
from verinfer.keyfile import Identity

DEV_GAS_FUNDS = 10**18  # wei sent along for the node's own transactions (register, stake)


class NotOnChain(ChainError):
    """The node is not registered, or not staked, on the settlement contract."""


def public_key_commitment(identity: Identity) -> bytes:
    return keccak(keys.PrivateKey(identity.private_key).public_key.to_bytes())


def registered_endpoint(client: SettlementClient, address: str) -> str | None:
    """The endpoint the node registered, None if it never registered."""
    call = client.contract.functions.nodes(Web3.to_checksum_address(address)).call
    _pubkey, endpoint, registered_at = client._read("read node", call)
    return str(endpoint) if registered_at else None


def check_registration(client: SettlementClient, address: str, endpoint: str) -> None:
    """Raise `NotOnChain` unless `address` is registered with at least the minimum stake."""
    where = f"chain {client.w3.eth.chain_id}, contract {client.address}"
    if registered_endpoint(client, address) is None:
        raise NotOnChain(
            f"node {address} is not registered on {where}: register it and stake from that "
            f"account (endpoint {endpoint}), or on the dev chain start with --dev-register"
        )
    if not client.is_active(address):
        stake, minimum = client.stake_of(address), client.params().min_stake
        raise NotOnChain(
            f"node {address} has {stake} wei staked on {where}, below the minimum {minimum}: "
            "stake more (`verinfer stake`), or on the dev chain start with --dev-register"
        )


def dev_register(
    client: SettlementClient,
    identity: Identity,
    endpoint: str,
    funder: int = 0,
    say: Callable[[str], Any] = print,
    stake: int | None = None,
) -> None:
    """On the dev chain: fund, register and stake the node as needed (up to `stake`, at least
    the minimum); update its endpoint."""
    w3 = client.w3
    if w3.eth.chain_id != DEV_CHAIN_ID:
        raise ChainError("--dev-register works on the dev chain only: register and stake by hand")
    address = Web3.to_checksum_address(identity.address)
    target = max(client.params().min_stake, stake or 0)
    missing_stake = max(target - client.stake_of(address), 0)
    needed = missing_stake + DEV_GAS_FUNDS
    if w3.eth.get_balance(address) < needed:
        tx = w3.eth.send_transaction({"from": dev_address(funder), "to": address, "value": Wei(needed)})
        w3.eth.wait_for_transaction_receipt(tx, poll_latency=0.05)
        say(f"funded {address} with {needed} wei from dev account {funder}")
    current = registered_endpoint(client, address)
    if current is None:
        client.register(public_key_commitment(identity), endpoint)
        say(f"registered {address} at {endpoint}")
    elif current != endpoint:
        client.set_endpoint(endpoint)
        say(f"endpoint of {address} updated to {endpoint}")
    if missing_stake:
        client.stake(missing_stake, value=missing_stake)
        say(f"staked {missing_stake} wei for {address}")
