"""Runs the embedded dev chain for a local network: open its data, deploy once, serve JSON-RPC.

Used by `verinfer chain` and by anything that starts a whole local network. The server binds
127.0.0.1 unless told otherwise; the contract is deployed on first start (from dev account 0,
with `DEV_PARAMS`) and its address recorded in the data dir's deployments.json. A recorded
contract whose code is not the committed artifact's (an older version) is replaced by a fresh
deployment.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider, make_server
from verinfer.chain.devkeys import DEV_ACCOUNT_COUNT, DEV_CHAIN_ID, dev_address, dev_private_key
from verinfer.chain.settings import (
    DEV_EPOCH_SECONDS,
    DEV_PARAMS,
    ChainSettings,
    read_deployments,
    record_deployment,
)
from verinfer.errors import ChainError


def ensure_deployed(chain: DevChain, settings: ChainSettings) -> str:
    """The settlement contract's address on `chain`, deploying it if there is none yet."""
    from eth_account import Account

    w3 = Web3(DevChainProvider(chain))
    entry = read_deployments(settings).get(str(DEV_CHAIN_ID))
    if entry is not None and SettlementClient(w3, entry["address"]).is_this_contract():
        return str(entry["address"])
    deployer = Account.from_key(dev_private_key(0))
    client, receipt = SettlementClient.deploy(
        w3, deployer, DEV_PARAMS, epoch_seconds=DEV_EPOCH_SECONDS
    )
    record_deployment(
        settings,
        DEV_CHAIN_ID,
        {
            "address": client.address,
            "block": receipt["blockNumber"],
            "deployer": deployer.address,
            "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        },
    )
    return client.address


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    settings: ChainSettings,
    host: str = "127.0.0.1",
    port: int = 8545,
    deploy: bool = True,
    say: Callable[[str], Any] | None = None,
) -> None:
    """Serve the dev chain until SIGINT/SIGTERM; every line said is flushed at once."""
    say = say or (lambda line: print(line, flush=True))
    chain = DevChain(settings.devchain_dir)
    try:
        server = make_server(chain, host, port)
    except OSError as exc:
        chain.close()
        raise ChainError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    url = f"http://{host}:{server.server_address[1]}"
    say(f"dev chain data in {settings.devchain_dir} ({chain.replayed} journal entries replayed)")
    accounts = ", ".join(f"{i}={dev_address(i)}" for i in range(DEV_ACCOUNT_COUNT))
    say(f"dev accounts (public test keys, dev chain only): {accounts}")
    if deploy:
        say(f"settlement contract at {ensure_deployed(chain, settings)}")
    say(f"listening on {url} (chain id {DEV_CHAIN_ID})")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        say("dev chain stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        chain.close()
