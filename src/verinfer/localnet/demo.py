"""`verinfer up --demo`: traffic through the gateway, then what the chain says happened, per node.

Requests are mixed (completions and chats, greedy and sampled, some streamed) and sent a few at
a time, like users would; the demo then waits until the gateway has settled every epoch that
holds one of its receipts, and prints a table from the chain (stakes, balances, slashes) and the
gateway's records (requests served, challenges, mismatches) — before and after.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from verinfer.errors import LocalError
from verinfer.localnet.up import Network, NodeRole, UpOptions

PROMPTS = (
    "The import statement",
    "A class is",
    "The return value is",
    "An exception is raised when",
    "The default argument",
    "A module can be",
)
CONCURRENCY = 4
REQUEST_TIMEOUT_S = 120.0


class DemoError(LocalError):
    """The demo traffic could not be completed."""


@dataclass(frozen=True)
class Snapshot:
    stake: dict[str, int]
    balance: dict[str, int]
    user_balance: int
    treasury: int


def snapshot(network: Network) -> Snapshot:
    client = chain_client(network)
    addresses = list(network.node_addresses.values())
    return Snapshot(
        stake={a: client.stake_of(a) + client.unbonding_of(a).amount for a in addresses},
        balance={a: client.balance_of(a) for a in addresses},
        user_balance=client.balance_of(network.user.address),
        treasury=client.treasury(),
    )


def chain_client(network: Network) -> Any:
    from web3 import Web3

    from verinfer.chain.client import SettlementClient

    w3 = Web3(Web3.HTTPProvider(network.rpc_url, request_kwargs={"timeout": 30}))
    return SettlementClient(w3, network.contract, None, rpc_url=network.rpc_url)


def request_body(i: int, model: str) -> tuple[str, dict[str, Any]]:
    """Request i of the demo: alternating routes, every third one sampled, every fourth streamed."""
    prompt = PROMPTS[i % len(PROMPTS)]
    sampling: dict[str, Any] = {"max_tokens": 24}
    if i % 3 == 2:
        sampling.update(temperature=0.8, top_p=0.95, seed=1000 + i)
    stream = i % 4 == 3
    if i % 2:
        return "/chat/completions", {"model": model, "stream": stream, **sampling,
                                     "messages": [{"role": "user", "content": prompt}]}
    return "/completions", {"model": model, "prompt": prompt, "stream": stream, **sampling}


def send_one(http: httpx.Client, network: Network, i: int, model: str) -> str | None:
    """Send request i; the receipt id of its answer, or None if it failed (kept as an error)."""
    path, body = request_body(i, model)
    url = network.gateway_url + path
    if not body["stream"]:
        response = http.post(url, json=body)
        if response.status_code != 200:
            return None
        return str(response.json().get("verinfer", {}).get("receiptId"))
    receipt_id = None
    with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return None
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "verinfer" in chunk:
                    receipt_id = chunk["verinfer"].get("receiptId")
    return receipt_id


def send_traffic(network: Network, model: str, count: int, console: Console) -> list[str]:
    headers = {"Authorization": f"Bearer {network.api_key}"}
    done: list[str] = []
    failed = 0
    columns = (TextColumn("requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT_S) as http,
          Progress(*columns, console=console) as progress,
          ThreadPoolExecutor(CONCURRENCY) as pool):
        task = progress.add_task("requests", total=count)
        for receipt_id in pool.map(lambda i: send_one(http, network, i, model), range(count)):
            if receipt_id:
                done.append(receipt_id)
            else:
                failed += 1
            progress.advance(task)
    if failed:
        console.print(f"[yellow]{failed} of {count} requests failed (see the gateway's log)")
    return done


def wait_for_settlement(network: Network, receipt_ids: list[str], timeout_s: float,
                        console: Console) -> dict[str, Any]:
    """Per-receipt facts once every epoch holding one is settled (or the timeout passes)."""
    from verinfer.gateway.store import GatewayStore

    wanted = set(receipt_ids)
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the gateway to settle the epochs on chain...") as status:
        while True:
            store = GatewayStore(network.layout.gateway_dir / "gateway.sqlite")
            try:
                facts = gather(store, wanted)
            finally:
                store.close()
            open_left = facts["unsettled"]
            if not open_left or time.monotonic() > deadline:
                return facts
            status.update(f"waiting for the gateway to settle: {open_left} receipts in "
                          "epochs not settled yet")
            time.sleep(2)


def gather(store: Any, wanted: set[str]) -> dict[str, Any]:
    served: dict[str, int] = {}
    challenged: dict[str, int] = {}
    mismatches: dict[str, int] = {}
    unsettled = missed = 0
    for epoch in store.epochs_in(*("open", "closed", "committed", "decided", "settled",
                                   "missed")):
        state = store.epoch(epoch.epoch).state
        receipts = [r for r in store.receipts_of_epoch(epoch.epoch)
                    if "0x" + r.receipt_id.hex() in wanted]
        if state == "missed":
            missed += len(receipts)
        elif state != "settled":
            unsettled += len(receipts)
        outcomes = {o.receipt_id: o for o in store.outcomes_of_epoch(epoch.epoch)}
        for r in receipts:
            node = r.node.lower()
            served[node] = served.get(node, 0) + 1
            outcome = outcomes.get(r.receipt_id)
            if outcome is not None:
                challenged[node] = challenged.get(node, 0) + 1
                if outcome.outcome.upper() != "PASSED":
                    mismatches[node] = mismatches.get(node, 0) + 1
    return {"served": served, "challenged": challenged, "mismatches": mismatches,
            "unsettled": unsettled, "missed": missed}


def eth(wei: int) -> str:
    return f"{wei / 1e18:.4f}"


def short_role(role: NodeRole) -> str:
    return f"cheat: {role.strategy}" if role.strategy else role.description.removeprefix("honest, ")


def change(before: int, after: int) -> str:
    delta = after - before
    return f"{eth(after)} ({'+' if delta >= 0 else '-'}{eth(abs(delta))})"


def report(network: Network, before: Snapshot, after: Snapshot, facts: dict[str, Any],
           slashes: dict[str, int], console: Console) -> Table:
    table = Table(title="verinfer up --demo: per node (ETH; change in brackets)")
    for column in ("node", "serves as", "served", "challenged", "mismatched", "slashed",
                   "stake", "balance"):
        table.add_column(column, justify="left" if column in ("node", "serves as") else "right")
    for role in network.roles:
        address = network.node_addresses[role.index]
        key = address.lower()
        table.add_row(
            f"node-{role.index} {address[:8]}", short_role(role),
            str(facts["served"].get(key, 0)), str(facts["challenged"].get(key, 0)),
            str(facts["mismatches"].get(key, 0)), str(slashes.get(key, 0)),
            change(before.stake[address], after.stake[address]),
            change(before.balance[address], after.balance[address]),
        )
    console.print(table)
    console.print(f"user {network.user.address}: balance {change(before.user_balance, after.user_balance)}"
                  f"; treasury {change(before.treasury, after.treasury)}", soft_wrap=True)
    return table


def run_demo(network: Network, model: str, count: int, options: UpOptions,
             console: Console) -> None:
    client = chain_client(network)
    start_block = int(client.w3.eth.block_number)
    before = snapshot(network)
    receipt_ids = send_traffic(network, model, count, console)
    if not receipt_ids:
        raise DemoError("no request succeeded: see the logs in " + str(network.layout.log_dir))
    # Settlement v2 waits out the challenge window (unanswered challenges lapse after it) and
    # the appeal window (an accusation is executed after it).
    params = client.params()
    timeout = 6 * options.epoch_seconds + 180 + params.challenge_window + params.appeal_window
    facts = wait_for_settlement(network, receipt_ids, timeout, console)
    if facts["unsettled"]:
        console.print(f"[yellow]{facts['unsettled']} receipts are still in unsettled epochs")
    if facts["missed"]:
        console.print(f"[red]{facts['missed']} receipts are in epochs that missed their commit "
                      "window on chain (see the gateway's log)")
    slashes: dict[str, int] = {}
    for record in client.slashes(from_block=start_block):
        key = str(record.node).lower()
        slashes[key] = slashes.get(key, 0) + 1
    report(network, before, snapshot(network), facts, slashes, console)
