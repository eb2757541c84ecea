"""The node's standing on chain: it serves only when registered and staked (`is_active`).

`check_registration` reads the contract and raises `NotOnChain` with what to do; on the dev
chain `dev_register` funds the node from a dev account, registers it and bonds the minimum
stake from its own account. Settlement v2 registers the sending account itself (the key that
signs the node's receipts) with an endpoint published in its `NodeRegistered` event, once: the
chain keeps no later endpoint changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from web3 import Web3
from web3.types import Wei

from verinfer.chain.client import SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_address
from verinfer.errors import ChainError
from verinfer.keyfile import Identity

DEV_GAS_FUNDS = 10**18  # wei sent along for the node's own transactions (register, stake)


class NotOnChain(ChainError):
    """The node is not registered, or not staked, on the settlement contract."""


def registered_endpoint(client: SettlementClient, address: str) -> str | None:
    """The endpoint the node registered, None if it never registered."""
    checksummed = Web3.to_checksum_address(address)
    call = client.contract.functions.nodes(checksummed).call
    registered_at, _stake_block = client._read("read node", call)
    if not registered_at:
        return None
    events = client.contract.events.NodeRegistered()
    logs = client._read("read registrations", lambda: events.get_logs(
        from_block=0, argument_filters={"node": checksummed}))
    return str(logs[-1]["args"]["endpoint"]) if logs else ""


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
    the minimum)."""
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
        client.register(endpoint)
        say(f"registered {address} at {endpoint}")
    if missing_stake:
        client.stake(missing_stake, value=missing_stake)
        say(f"staked {missing_stake} wei for {address}")
