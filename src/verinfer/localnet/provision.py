"""Gives a local network's parties what they need on the dev chain: gas money, and nothing twice.

Every party of a local network has its own key (nodes, gateway, demo user); the dev chain's
prefunded accounts pay for them. Funding tops an account up to a target instead of sending a
fixed amount, so running `verinfer up` again on the same data directory changes nothing that is
already in place.
"""

from __future__ import annotations

from eth_account import Account
from web3 import Web3

from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_private_key
from verinfer.errors import ChainError

FUNDER_DEV_ACCOUNT = 9  # dev account 0 deploys and owns the contract; 9 pays for the others


def top_up(w3: Web3, address: str, target_wei: int, funder_key: bytes | None = None) -> int:
    """Send `address` what it lacks to hold `target_wei` (dev chain only); returns wei sent."""
    if w3.eth.chain_id != DEV_CHAIN_ID:
        raise ChainError("local networks fund their parties from dev accounts: dev chain only")
    have = w3.eth.get_balance(Web3.to_checksum_address(address))
    if have >= target_wei:
        return 0
    funder = Account.from_key(funder_key or dev_private_key(FUNDER_DEV_ACCOUNT))
    tx = {
        "to": Web3.to_checksum_address(address),
        "value": target_wei - have,
        "gas": 21_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(funder.address),
        "chainId": DEV_CHAIN_ID,
    }
    signed = funder.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    if receipt["status"] != 1:
        raise ChainError(f"funding {address} failed on the dev chain")
    return target_wei - have
