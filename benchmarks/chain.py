"""Settlement throughput and cost: transactions per second and gas per settled request, with one
request per transaction versus requests batched per epoch.

Runs the embedded dev chain (py-evm) behind its real JSON-RPC HTTP server on 127.0.0.1 with a
fresh data dir (journal fsync'ed on every transaction, as in use), deploys the contract and
settles fee entries through `SettlementClient`, exactly as the gateway does. Every mode settles
the same `--requests` users once each (users with a prepaid balance for several requests), for
one of 8 asserters; the receipts root is a real Merkle root over the batch's receipts.

    PYTHONPATH=src python benchmarks/chain.py [--requests 200] [--batch-sizes 1,10,100,200]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from pathlib import Path

from eth_account import Account
from web3 import Web3

from verinfer.chain.client import SettlementClient
from verinfer.chain.devchain import DevChain, make_server
from verinfer.chain.devkeys import dev_private_key
from verinfer.protocol.merkle import merkle_root
from verinfer.protocol.settlement import Batch, RequestEntry, SettlementParams

PARAMS = SettlementParams(10**18, 600, 10**15, 10**15, 5 * 10**17, 1000, 5000, 5000)
FEE = 10**12
ASSERTERS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests settled per mode")
    parser.add_argument("--batch-sizes", default="1,10,100,200")
    args = parser.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        chain = DevChain(Path(tmp))
        server = make_server(chain, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        w3 = Web3(Web3.HTTPProvider(url))
        owner, _ = SettlementClient.deploy(
            w3, Account.from_key(dev_private_key(0)), PARAMS, rpc_url=url
        )
        users = [Account.create().address.lower() for _ in range(args.requests)]
        prepaid = FEE * (len(sizes) + 1)  # never drained to zero, so no mode gets a refund
        asserters = [Account.create().address.lower() for _ in range(ASSERTERS)]

        # Plain deposit transactions: the dev chain's raw transaction rate through the client.
        n_deposits = 100
        t0 = time.perf_counter()
        gas_deposit = 0
        for user in users[:n_deposits]:
            gas_deposit = owner.deposit(prepaid, user)["gasUsed"]
        deposit_tps = n_deposits / (time.perf_counter() - t0)
        for user in users[n_deposits:]:
            owner.deposit(prepaid, user)

        rows = []
        epoch = 0
        for size in sizes:
            next_user = 0
            n_tx = max(1, args.requests // size)
            gas = 0
            t0 = time.perf_counter()
            for _ in range(n_tx):
                epoch += 1
                chunk = users[next_user : next_user + size]
                next_user += size
                requests = tuple(
                    RequestEntry(u, asserters[i % ASSERTERS], FEE) for i, u in enumerate(chunk)
                )
                root = merkle_root([f"{epoch}:{i}".encode() for i in range(size)])
                gas += owner.settle_batch(Batch(epoch, root, requests))["gasUsed"]
            elapsed = time.perf_counter() - t0
            rows.append((size, n_tx, n_tx / elapsed, n_tx * size / elapsed, gas / (n_tx * size)))
        server.shutdown()
        server.server_close()
        chain.close()

    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}, "
          f"python {platform.python_version()}; dev chain py-evm over JSON-RPC on loopback")
    print(f"plain deposit transactions: {deposit_tps:.1f} tx/s, {gas_deposit} gas each")
    print()
    print("| requests per batch | batches | tx/s | settled requests/s | gas per request |")
    print("|---:|---:|---:|---:|---:|")
    for size, n_tx, tps, rps, gas_per in rows:
        print(f"| {size} | {n_tx} | {tps:.1f} | {rps:.0f} | {gas_per:,.0f} |")
    base = rows[0]
    best = rows[-1]
    print()
    print(f"batched ({best[0]}/batch) vs per-request ({base[0]}/batch): "
          f"{base[4] / best[4]:.1f}x less gas per request, "
          f"{best[3] / base[3]:.1f}x more requests settled per second")


if __name__ == "__main__":
    main()
