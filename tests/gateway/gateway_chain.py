"""A settlement v2 deployment on an in-process dev chain for the gateway's chain tests: the
gateway (dev key 0) deploys it and holds the settler role, nodes register and stake, a user
deposits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, DevChainProvider
from verinfer.chain.devkeys import dev_private_key
from verinfer.gateway.chain_settler import message_fields
from verinfer.keyfile import Identity
from verinfer.protocol import wire
from verinfer.protocol.settlement import SettlementParams

EVERY_NODE_DRAWN = (255, 2, 255, 3)  # expected committee sizes far above the node count


def dev_identity(i: int) -> Identity:
    key = bytes(dev_private_key(i))
    return Identity(key, wire.address_of(key))


@dataclass
class Deployment:
    chain: DevChain
    w3: Web3
    owner: SettlementClient  # the gateway's client: owner and settler
    gateway: Identity
    nodes: list[Identity]
    user: Identity

    def allow_gateway(self, cap: int = 5000) -> None:
        """The user's signed allowance: the gateway may debit up to `cap` per epoch."""
        domain = wire.Domain(self.w3.eth.chain_id, self.owner.address)
        allowance = wire.Allowance(self.user.address, self.gateway.address, cap, 2**40, 1)
        self.owner.set_allowance(message_fields(allowance),
                                 wire.sign(domain, allowance, self.user.private_key))


def deploy(tmp_path: Path, params: SettlementParams, epoch_seconds: int, nodes: int,
           committees: tuple[int, int, int, int] = EVERY_NODE_DRAWN, user: int = 7,
           stake: int = 2000, deposit: int = 10**6) -> Deployment:
    """Dev keys 1..nodes register (at http://127.0.0.1:9100+i) and stake; dev key `user`
    deposits."""
    chain = DevChain(tmp_path / "chain")
    w3 = Web3(DevChainProvider(chain))
    gateway = dev_identity(0)
    owner, _ = SettlementClient.deploy(w3, Account.from_key(gateway.private_key), params,
                                       epoch_seconds=epoch_seconds, committees=committees)
    staked = [dev_identity(i) for i in range(1, nodes + 1)]
    for i, node in enumerate(staked):
        client = SettlementClient(w3, owner.address, Account.from_key(node.private_key))
        client.register(f"http://127.0.0.1:{9100 + i}")
        client.stake(stake, value=stake)
    payer = dev_identity(user)
    SettlementClient(w3, owner.address, Account.from_key(payer.private_key)).deposit(deposit)
    return Deployment(chain, w3, owner, gateway, staked, payer)
