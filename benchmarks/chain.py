"""Settlement cost (rules v2): gas per settled request and per challenged request, batched by
epoch, and transactions per second on the dev chain.

Runs the embedded dev chain (py-evm) behind its real JSON-RPC HTTP server on 127.0.0.1 with a
fresh data dir (journal fsync'ed on every transaction, as in use), deploys the contract and
drives it through `SettlementClient`, exactly as the gateway does: users deposit and sign an
EIP-712 allowance for the gateway; per epoch the gateway commits the root over the receipts'
digests, waits one block for the beacon, and settles the full list. A settled request's gas is
(commit + settle) / requests. A challenged request (challenge rate 100% in that mode) costs its
share of the settlement (its fee escrowed, a case opened) plus its pass on two validators'
signed verdicts: alone (`--challenged` of them, their mean), and the rest of the epoch's in one
`pass_challenges` transaction (gas per pass). Settlement v1's figures (the same script before
v2, one `settle_batch` per epoch) are printed as the reference, measured at commit 30b8a02.

    PYTHONPATH=src python benchmarks/chain.py [--requests 200] [--batch-sizes 1,10,100,200]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "chain"))
from v2kit import sign_typed, typed_digest

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, make_server
from verinfer.chain.devkeys import dev_private_key
from verinfer.protocol.merkle import merkle_root
from verinfer.protocol.settlement import SettlementParams

EPOCH = 30
PARAMS = SettlementParams(
    10**18, 600, 10**15, 10**15, 5 * 10**17, 1000, 5000, 5000,
    withdrawal_delay=300, challenge_ppm=0, challenge_window=60, appeal_window=60,
)
FEE = 10**12
ASSERTERS = 8
# Settlement v1 (commit 30b8a02), its `benchmarks/chain.py --batch-sizes 1,200`: gas per request
# by requests per batch, measured 2026-12-02 on the development machine (gas does not depend on
# the machine; 200 fresh users per batch, so every user's balance slot is cold).
V1_GAS = {1: 158_642, 200: 9_986}


class Network:
    """A dev chain with the contract, a gateway (the deployer), asserters and users."""

    def __init__(self, tmp: Path, params: SettlementParams, users: int) -> None:
        self.chain = DevChain(tmp)
        self.server = make_server(self.chain, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.w3 = Web3(Web3.HTTPProvider(self.url))
        self.chain_id = self.w3.eth.chain_id
        self.gateway, _ = SettlementClient.deploy(
            self.w3, Account.from_key(dev_private_key(0)), params, rpc_url=self.url,
            epoch_seconds=EPOCH, committees=(255, 2, 255, 3),
        )
        self.address = self.gateway.address
        self.me = self.gateway.account.address  # type: ignore[union-attr]
        self.asserters = [self._node(dev_private_key(i)) for i in range(1, 1 + ASSERTERS)]
        self.gateway.fund_treasury(10**18)
        self.users = [Account.create() for _ in range(users)]
        for i, user in enumerate(self.users):
            self.gateway.deposit(FEE * 10, user.address)
            allowance = {"user": user.address, "settler": self.me, "capPerEpoch": FEE * 10,
                         "expiry": 2**40, "nonce": 1}
            self.gateway.set_allowance(
                allowance, sign_typed(user, self.chain_id, self.address, "Allowance", allowance)
            )
        self.nonce = 0

    def _node(self, key: str) -> Any:
        account = Account.from_key(key)
        node = SettlementClient(self.w3, self.address, account, rpc_url=self.url)
        node.register("http://127.0.0.1:9000")
        node.stake(PARAMS.min_stake, value=PARAMS.min_stake)
        return account

    def next_epoch(self) -> int:
        """Move the clock to the start of the next epoch (each batch is its own epoch); block
        times can run ahead of the wall clock, so the jump is measured from the last block."""
        epoch = self.gateway.current_epoch()
        _, end = self.gateway.epoch_bounds(epoch)
        # The dev chain's clock is the wall clock plus an offset (what evm_increaseTime returns).
        offset = int(self.w3.provider.make_request("evm_increaseTime", [0])["result"])  # type: ignore[arg-type]
        jump = max(1, end - int(time.time()) - offset + 1)
        self.w3.provider.make_request("evm_increaseTime", [jump])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return self.gateway.current_epoch()

    def receipts(self, epoch: int, users: list[Any]) -> list[dict[str, Any]]:
        _, end = self.gateway.epoch_bounds(epoch)
        out = []
        for i, user in enumerate(users):
            self.nonce += 1
            out.append({
                "request": self.nonce.to_bytes(32, "big"), "job": b"\x02" * 32,
                "outputHash": b"\x03" * 32, "logitsHash": b"\x04" * 32, "outputLength": 20,
                "node": self.asserters[i % ASSERTERS].address, "gateway": self.me,
                "user": user.address, "fee": FEE, "nonce": self.nonce, "deadline": end - 1,
            })
        return sorted(out, key=self.receipt_id)

    def receipt_id(self, receipt: dict[str, Any]) -> bytes:
        return typed_digest(self.chain_id, self.address, "Receipt", receipt)

    def settle(self, epoch: int, receipts: list[dict[str, Any]]) -> int:
        """Commit and settle one epoch; the gas of both transactions."""
        root = merkle_root([self.receipt_id(r) for r in receipts])
        gas = int(self.gateway.commit_epoch(epoch, root, len(receipts))["gasUsed"])
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return gas + int(self.gateway.settle_epoch(epoch, receipts)["gasUsed"])

    def verdicts(self, receipt: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
        """Two other asserters' signed verdicts agreeing with the receipt."""
        rid = self.receipt_id(receipt)
        verdicts = []
        for v in [a for a in self.asserters if a.address != receipt["node"]][:2]:
            verdict = {"receipt": rid, "request": receipt["request"],
                       "outputHash": receipt["outputHash"], "logitsHash": receipt["logitsHash"],
                       "valid": True, "firstInvalidStep": 0, "validator": v.address,
                       "gateway": self.me}
            verdicts.append((verdict, sign_typed(v, self.chain_id, self.address, "Verdict",
                                                 verdict)))
        return verdicts

    def pass_challenge(self, epoch: int, receipt: dict[str, Any]) -> int:
        return int(self.gateway.pass_challenge(epoch, receipt, self.verdicts(receipt))["gasUsed"])

    def pass_challenges(self, epoch: int, receipts: list[dict[str, Any]]) -> int:
        """One `pass_challenges` transaction for all of them; its gas."""
        cases = [(r, self.verdicts(r)) for r in receipts]
        return int(self.gateway.pass_challenges(epoch, cases)["gasUsed"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.chain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests settled per mode")
    parser.add_argument("--batch-sizes", default="1,10,100,200")
    parser.add_argument("--challenged-batch", type=int, default=50,
                        help="requests in the epoch where every request is challenged")
    parser.add_argument("--challenged", type=int, default=20,
                        help="challenged requests passed alone (their mean is reported); the "
                        "rest of the epoch's are passed in one batch")
    args = parser.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        net = Network(Path(tmp) / "plain", PARAMS, args.requests)
        for size in sizes:
            n_batches = max(1, args.requests // size)
            gas = 0
            t0 = time.perf_counter()
            for b in range(n_batches):
                epoch = net.next_epoch()
                gas += net.settle(epoch, net.receipts(epoch, net.users[b * size:(b + 1) * size]))
            elapsed = time.perf_counter() - t0
            rows.append((size, n_batches, n_batches * size / elapsed, gas / (n_batches * size)))
        net.close()

        challenged = Network(Path(tmp) / "challenged", replace(PARAMS, challenge_ppm=1_000_000),
                             args.challenged_batch)
        epoch = challenged.next_epoch()
        receipts = challenged.receipts(epoch, challenged.users)
        settle_gas = challenged.settle(epoch, receipts) / len(receipts)
        passes = [challenged.pass_challenge(epoch, r) for r in receipts[: args.challenged]]
        pass_gas = sum(passes) / len(passes)
        batched = receipts[args.challenged:]
        batch_gas = challenged.pass_challenges(epoch, batched) / len(batched) if batched else 0.0
        challenged.close()

    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}, "
          f"python {platform.python_version()}; dev chain py-evm over JSON-RPC on loopback")
    print()
    print("| requests per epoch | epochs | settled requests/s | v2 gas per request "
          "| v1 gas per request | v2 / v1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, n, rps, gas_per in rows:
        v1 = V1_GAS.get(size)
        ratio = f"{gas_per / v1:.2f}" if v1 else "-"
        print(f"| {size} | {n} | {rps:.0f} | {gas_per:,.0f} | {f'{v1:,}' if v1 else '-'} "
              f"| {ratio} |")
    print()
    print(f"challenged request, {args.challenged_batch} per epoch, all challenged: settlement "
          f"{settle_gas:,.0f} gas + pass on 2 verdicts {pass_gas:,.0f} gas "
          f"= {settle_gas + pass_gas:,.0f} gas")
    if batched:
        print(f"the other {len(batched)} passed in one pass_challenges transaction: "
              f"{batch_gas:,.0f} gas per pass ({batch_gas / pass_gas:.2f}x a pass alone); "
              f"challenged request {settle_gas + batch_gas:,.0f} gas "
              f"({(settle_gas + batch_gas) / (settle_gas + pass_gas):.2f}x)")


if __name__ == "__main__":
    main()
