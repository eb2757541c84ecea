"""Heterogeneous honest nodes at p = 1: every request challenged, zero mismatches, zero slashes.

`verinfer up`'s honest nodes are deliberately different (the torch reference path, the fused
kernels on 1 thread, ATen's scalar kernels with `ATEN_CPU_CAPABILITY=default`); the engine
promises them the same bytes. This benchmark starts such a network on loopback with the
contract's challenge rate at 1 (every receipt is replayed by a validator drawn from the other
nodes), sends `--requests` mixed requests through the gateway (completions and chats, greedy
and sampled, some streamed, prompts cut from models/demo/heldout.txt), waits until the gateway
has settled every epoch that holds one of them on chain, and reads back what happened twice:
from the gateway's store (receipts, verdicts, outcomes) and from the chain (settled epochs
with their request and challenge counts, challenge cases, slashes). The reference is the
count of requests sent: challenges and passes must equal it, mismatches and slashes be zero.
Exit status 0 when that holds, 1 when not; everything stops by `--time-limit`.

    .venv/bin/python benchmarks/challenges.py --requests 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEMO_MODEL, machine_line, wide_console

REQUEST_TIMEOUT_S = 300.0


class Traffic:
    """Request i of a run: its route and body (a pure function of i and the run's seed)."""

    def __init__(self, model: str, max_tokens: int, seed: int = 0) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.seed = seed
        self.words = (DEMO_MODEL / "heldout.txt").read_text(encoding="utf-8").split()

    def request(self, i: int) -> tuple[str, dict[str, Any]]:
        """Alternating routes; sampled on every other pair; every fourth streamed."""
        rng = random.Random(self.seed * 1_000_003 + i)
        start = rng.randrange(len(self.words) - 12)
        prompt = " ".join(self.words[start:start + rng.randrange(4, 12)])
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "stream": i % 4 == 3}
        if (i // 2) % 2:
            body.update(temperature=0.8, top_p=0.95, seed=rng.randrange(1 << 32))
        else:
            body.update(temperature=0.0)
        if i % 2:
            return "/chat/completions", {**body, "messages": [{"role": "user",
                                                                "content": prompt}]}
        return "/completions", {**body, "prompt": prompt}

    def sampled(self, i: int) -> bool:
        return bool((i // 2) % 2)


class RetryAfter(Exception):
    """The gateway answered 503 with Retry-After (its current epoch is full)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds} s")
        self.seconds = seconds


def _check_full(response: httpx.Response) -> None:
    if response.status_code == 503 and "retry-after" in response.headers:
        raise RetryAfter(float(response.headers["retry-after"]))


def send_one(http: httpx.Client, base_url: str, path: str, body: dict[str, Any],
             waits: int = 20) -> dict[str, Any]:
    """The receipt (the `verinfer` field) of one answered request, waiting as told when the
    gateway's epoch is full (as a well-behaved client does); raises if none came."""
    for _ in range(waits):
        try:
            return _send_once(http, base_url, path, body)
        except RetryAfter as full:
            time.sleep(min(full.seconds, 30.0))
    raise RuntimeError(f"still refused (epoch full) after {waits} waits")


def _send_once(http: httpx.Client, base_url: str, path: str, body: dict[str, Any]
               ) -> dict[str, Any]:
    if not body["stream"]:
        response = http.post(base_url + path, json=body)
        _check_full(response)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return dict(response.json()["verinfer"])
    receipt: dict[str, Any] | None = None
    with http.stream("POST", base_url + path, json=body) as response:
        _check_full(response)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                receipt = chunk.get("verinfer") or receipt
    if receipt is None:
        raise RuntimeError("the stream ended without a receipt")
    return receipt


def send_traffic(network: Any, traffic: Traffic, count: int, concurrency: int, deadline: float,
                 console: Console, label: str = "requests",
                 stop: Callable[[list[dict[str, Any]]], bool] | None = None,
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Send requests 0..count-1, `concurrency` at a time, until done, `deadline` (monotonic)
    or `stop(receipts so far)` says so; (receipts in the order they arrived, errors)."""
    headers = {"Authorization": f"Bearer {network.api_key}"}
    receipts: list[dict[str, Any]] = []
    errors: list[str] = []
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}"))
    with (httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT_S) as http,
          Progress(*columns, console=console) as progress,
          ThreadPoolExecutor(concurrency) as pool):
        task = progress.add_task(label, total=count, note="")
        pending: set[Future[dict[str, Any]]] = set()
        sent = 0
        while sent < count or pending:
            halted = time.monotonic() > deadline or (stop is not None and stop(receipts))
            while not halted and sent < count and len(pending) < concurrency:
                path, body = traffic.request(sent)
                pending.add(pool.submit(send_one, http, network.gateway_url, path, body))
                sent += 1
            if not pending:
                break
            done, pending = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    receipts.append(future.result())
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    # an unanswered request is a finding, not a crash
                    errors.append(str(exc))
                progress.advance(task)
            progress.update(task, note=f"{len(errors)} failed" if errors else "")
            if halted and sent < count:
                progress.update(task, total=sent)
    return receipts, errors


def store_facts(network: Any, receipt_ids: set[str]) -> dict[str, Any]:
    """What the gateway's store says about these receipts: epochs, outcomes and verdicts."""
    db = sqlite3.connect(f"file:{network.layout.gateway_dir / 'gateway.sqlite'}?mode=ro",
                         uri=True, timeout=30)
    try:
        rows = db.execute("SELECT r.receipt_id, r.node, r.epoch, e.state FROM receipts r "
                          "LEFT JOIN epochs e ON e.epoch = r.epoch ORDER BY r.seq").fetchall()
        outcomes = dict(db.execute("SELECT receipt_id, outcome FROM outcomes").fetchall())
        verdicts = Counter(rid for (rid,) in db.execute("SELECT receipt_id FROM verdicts"))
    finally:
        db.close()
    mine = [r for r in rows if _hex_id(r[0]) in receipt_ids]
    return {
        "stored": len(mine),
        "by_node": Counter(str(r[1]).lower() for r in mine),
        "epochs": sorted({int(r[2]) for r in mine if r[2] is not None}),
        "unsettled": sum(1 for r in mine if r[3] != "settled"),
        "missed": sum(1 for r in mine if r[3] == "missed"),
        "outcomes": Counter(str(outcomes[r[0]]).upper() for r in mine if r[0] in outcomes),
        "outcome_of": {_hex_id(r[0]): str(outcomes[r[0]]).upper() for r in mine
                       if r[0] in outcomes},
        "state_of": {_hex_id(r[0]): str(r[3]) for r in mine},
        "node_of": {_hex_id(r[0]): str(r[1]).lower() for r in mine},  # in the order recorded
        "verdicts": sum(verdicts[r[0]] for r in mine),
    }


def _hex_id(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    return "0x" + str(value).lower().removeprefix("0x")


def wait_settled(network: Any, receipt_ids: set[str], deadline: float,
                 console: Console) -> dict[str, Any]:
    """Poll the store until every epoch holding one of the receipts is settled (or deadline,
    or Ctrl-C: what is known by then is returned)."""
    columns = (TextColumn("receipts settled on chain"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("settled", total=len(receipt_ids), note="")
        facts = store_facts(network, receipt_ids)
        try:
            while True:
                facts = store_facts(network, receipt_ids)
                progress.update(task, completed=facts["stored"] - facts["unsettled"],
                                note=f"challenge outcomes {dict(facts['outcomes'])}")
                if (facts["stored"] == len(receipt_ids) and not facts["unsettled"]) \
                        or time.monotonic() > deadline:
                    return facts
                time.sleep(3)
        except KeyboardInterrupt:
            console.print("interrupted: the figures below are those known now")
            return facts


def chain_facts(network: Any, start_block: int) -> dict[str, Any]:
    """What the chain says since `start_block`: epochs settled by this gateway, cases, slashes."""
    from verinfer.keyfile import load_key
    from verinfer.localnet.demo import chain_client

    client = chain_client(network)
    gateway = load_key(network.layout.gateway_dir / "key").address.lower()
    epochs = [e for e in client.epochs(from_block=start_block) if e.settler.lower() == gateway]
    cases = client.cases(from_block=start_block, unresolved_only=False)
    slashes = client.slashes(from_block=start_block)
    return {
        "epochs": len(epochs),
        "requests": sum(e.requests for e in epochs),
        "challenged": sum(e.challenged for e in epochs),
        "cases": Counter(c.state for c in cases),
        "slashes": Counter(str(s.node).lower() for s in slashes),
        "slash_receipts": {"0x" + s.receipt.hex() for s in slashes},
    }


def start(options: Any, console: Console) -> Any:
    from verinfer.localnet.up import start_network

    with console.status("starting the network ...") as spinner:
        return start_network(options, say=lambda line: console.print(line, highlight=False),
                             status=lambda line: spinner.update(line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3,
                        help="honest nodes (torch path, 1 thread, scalar ATen, in turn)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per completion")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--epoch-seconds", type=float, default=15.0)
    parser.add_argument("--time-limit", type=float, default=3600.0,
                        help="seconds for traffic and settlement together; then it stops")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="the network's data directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.max_tokens < 1 or args.concurrency < 1:
        parser.error("--requests, --max-tokens and --concurrency must be at least 1")
    if args.nodes < 3:
        parser.error("--nodes: at least 3 (asserter, validator, arbitrator)")

    from verinfer.localnet.up import UpOptions

    console = wide_console()
    console.print(machine_line(), highlight=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    began = time.monotonic()
    deadline = began + args.time_limit
    with tempfile.TemporaryDirectory(prefix="verinfer-challenges-") as tmp:
        options = UpOptions(data_dir=args.work_dir or Path(tmp) / "net", model=DEMO_MODEL,
                            nodes=args.nodes, challenge_ppm=1_000_000, validators=1,
                            arbitrators=1, epoch_seconds=args.epoch_seconds)
        network = start(options, console)
        try:
            from verinfer.localnet.demo import chain_client

            start_block = int(chain_client(network).w3.eth.block_number)
            traffic = Traffic("demo", args.max_tokens)
            sent_at = time.monotonic()
            receipts, errors = send_traffic(network, traffic, args.requests, args.concurrency,
                                            deadline, console)
            traffic_s = time.monotonic() - sent_at
            ids = {str(r["receiptId"]).lower() for r in receipts}
            store = wait_settled(network, ids, deadline, console)
            chain = chain_facts(network, start_block)
            roles = {network.node_addresses[r.index].lower(): r.description for r in network.roles}
        finally:
            network.stop()
    total_s = time.monotonic() - began
    passed = store["outcomes"].get("PASSED", 0)
    mismatches = sum(n for o, n in store["outcomes"].items() if o != "PASSED")
    slashes = sum(chain["slashes"].values())
    print(f"\nheterogeneous honest nodes at p = 1, demo model, {args.max_tokens} tokens per "
          f"request, {args.concurrency} in flight, {args.epoch_seconds:g} s epochs\n")
    print("| node | flavour | receipts served |")
    print("|---|---|---:|")
    for address, description in roles.items():
        print(f"| {address[:10]} | {description} | {store['by_node'].get(address, 0)} |")
    print("\n| measure | gateway store | chain |")
    print("|---|---:|---:|")
    print(f"| requests sent / answered | {len(receipts) + len(errors)} / {len(receipts)} | |")
    print(f"| receipts recorded / in settled epochs | {store['stored']} / "
          f"{store['stored'] - store['unsettled']} | {chain['requests']} in "
          f"{chain['epochs']} settled epochs |")
    print(f"| challenged | {sum(store['outcomes'].values())} | {chain['challenged']} |")
    print(f"| verdicts (validators + arbitrators) | {store['verdicts']} | |")
    print(f"| outcomes | {dict(store['outcomes'])} | cases {dict(chain['cases'])} |")
    print(f"| mismatches | {mismatches} | |")
    print(f"| slashes | | {slashes} {dict(chain['slashes']) if slashes else ''} |")
    sampled = sum(1 for i in range(len(receipts) + len(errors)) if traffic.sampled(i))
    print(f"\n{sampled} sampled and {len(receipts) + len(errors) - sampled} greedy requests "
          f"sent; traffic {traffic_s:.0f} s ({len(receipts) / traffic_s:.2f} answered/s); "
          f"{total_s:.0f} s in all with start-up and settlement; load average at the end "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    if errors:
        print(f"{len(errors)} requests failed; first: {errors[0]}")
    ok = (not errors and store["stored"] == len(receipts) and not store["unsettled"]
          and passed == len(receipts) and mismatches == 0 and slashes == 0
          and chain["challenged"] >= len(receipts))
    print("verdict: " + ("every request challenged and passed, nothing slashed" if ok else
                         "NOT MET: see the table"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
