"""A `Settler` over today's settlement contract (v1), until settlement v2's client lands.

What v1 gives: the registry (endpoint, stake, reputation), deposits, and `settle_batch` with a
receipts root. What it lacks, and this adapter stands in for off chain: v1 has no commit step,
so "commit" records the block the epoch was closed at, and the beacon is the hash of the next
block (on the dev chain, which mines only on demand, the adapter mines it). The root is still
published with the batch and the challenged set can be recomputed from the beacon by anyone;
but a v1 settler could wait for a favourable block before settling, which settlement v2's
on-chain commit removes. v1 keeps no allowances: what a user may spend is its deposit.
"""

from __future__ import annotations

from verinfer.chain.client import SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID
from verinfer.gateway.router import RegisteredNode
from verinfer.gateway.settler import EpochSettlement, Settler
from verinfer.protocol import wire


class ChainV1Settler(Settler):
    def __init__(self, client: SettlementClient) -> None:
        self.client = client
        self.chain_id = client._read("read chain id", lambda: client.w3.eth.chain_id)

    @property
    def domain(self) -> wire.Domain:
        return wire.Domain(self.chain_id, self.client.address)

    def registry(self) -> list[RegisteredNode]:
        return [RegisteredNode(wire.check_address(n.address), n.endpoint, n.stake, n.reputation)
                for n in self.client.nodes() if n.endpoint]

    def min_stake(self) -> int:
        return self.client.params().min_stake

    def spendable(self, user: str) -> int:
        return self.client.balance_of(user)

    def _block(self) -> int:
        return int(self.client._read("read block number", lambda: self.client.w3.eth.block_number))

    def commit(self, epoch: int, receipts_root: bytes) -> str:
        return f"block:{self._block()}"

    def beacon(self, epoch: int, commit_ref: str) -> bytes | None:
        after = int(commit_ref.removeprefix("block:")) + 1
        if self._block() < after and self.chain_id == DEV_CHAIN_ID:
            self.client._read("mine a block", lambda: self.client.w3.provider.make_request(
                "evm_mine", []))  # type: ignore[arg-type]
        if self._block() < after:
            return None
        block = self.client._read("read block", lambda: self.client.w3.eth.get_block(after))
        return bytes(block["hash"])

    def settle(self, settlement: EpochSettlement) -> str:
        if self.client.epoch_root(settlement.epoch) is not None:
            return f"epoch {settlement.epoch} already settled"
        receipt = self.client.settle_batch(settlement.batch())
        return "0x" + bytes(receipt["transactionHash"]).hex()

    def settled_root(self, epoch: int) -> bytes | None:
        return self.client.epoch_root(epoch)
