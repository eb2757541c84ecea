"""The verified network's costs over real HTTP: the gateway's overhead, a node's batching, replay.

Everything runs as separate processes on 127.0.0.1 (dev chain, nodes, gateway, as `verinfer up`
starts them), and every figure is a ratio against a reference measured in the same run:

- **(a) Gateway against a node called directly**, at each challenge rate p (`--ps`, parts per
  million). p is a contract parameter fixed at deployment (settlement v2: the gateway takes it
  from the contract), so each p is its own network (its own data directory and contract). The
  network has `--gateway-nodes` honest nodes of one kind (fused kernels, default threads), so
  that "direct" and "through the gateway" reach the same arithmetic; direct requests go round
  robin over those nodes, the gateway picks one at random by stake. On the demo model at each
  p of `--ps`, and at the 1B shape at each p of `--ps-1b` (default p = 0 only, with
  `--requests-1b` requests per round: a 1B request takes seconds here). Measured: the latency of
  `--requests` sequential completions and the completion tokens/s of `--requests` completions
  sent `--concurrency` at a time, gateway and direct interleaved in rounds so that a change of
  machine load hits both alike. At p > 0 the challenges (replays by other nodes, chain
  transactions) run in the background on the same 2 cores: that is their cost to users.
- **(b) One node's aggregate decode throughput** at 1, 4 and 8 concurrent streamed requests
  (16-token prompts, `--new-tokens` sampled tokens, end of sequence ignored; node started with
  8 slots), on each model of `--models` (`demo`: models/demo; `1b`: random weights in
  TinyLlama-1.1B's shape, written and quantized once under $VERINFER_BENCH_DIR as
  benchmarks/engine.py does). Tokens/s = completion tokens / wall time from sending the first
  request to the last byte of the last one.
- **(c) Replay against serving** on the same node: for `--replays` requests of 16 prompt and
  `--new-tokens` output tokens, the wall time of serving (`POST /v1/completions`) and of
  checking the receipt as a validator (`POST /verify`: one teacher-forced prefill, a signed
  verdict); the ratio replay / serve (the issue's aim at the 1B shape: at most 0.35).

    .venv/bin/python benchmarks/network.py                 # full: p 0, 5%, 20%; demo and 1b
    .venv/bin/python benchmarks/network.py --quick         # smoke test: small and demo only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEMO_MODEL, machine_line, random_1b_checkpoint, verinfer_quantized, wide_console

PROMPT_LEN = 16
STREAMS = (1, 4, 8)
SLOTS = 8
TIMEOUT_S = 600.0
PROMPT_VOCAB = 4096  # prompt ids are drawn below it: the demo's vocabulary, which 1b shares


@dataclasses.dataclass(frozen=True)
class Target:
    """Where requests go: a base URL ending in /v1 and the headers it needs."""

    url: str
    headers: dict[str, str]


def prompt_ids(i: int, vocab: int = 4096) -> list[int]:
    rng = random.Random(1000 + i)
    return [rng.randrange(3, vocab) for _ in range(PROMPT_LEN)]


def body(i: int, model: str, new_tokens: int, vocab: int = 4096,
         stream: bool = False) -> dict[str, Any]:
    return {"model": model, "prompt": prompt_ids(i, vocab), "max_tokens": new_tokens,
            "temperature": 0.8, "seed": 7 + i, "ignore_eos": True, "stream": stream}


def complete(http: httpx.Client, target: Target, payload: dict[str, Any]) -> tuple[float, int, Any]:
    """(seconds, completion tokens, response JSON) of one non-streamed completion."""
    start = time.perf_counter()
    response = http.post(target.url + "/completions", json=payload, headers=target.headers)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{target.url}: HTTP {response.status_code}: {response.text[:300]}")
    data = response.json()
    return elapsed, int(data["usage"]["completion_tokens"]), data


def streamed(http: httpx.Client, target: Target, payload: dict[str, Any]) -> int:
    """Completion tokens of one streamed completion (counted from its usage chunk)."""
    import json

    tokens = -1
    with http.stream("POST", target.url + "/completions", headers=target.headers,
                     json={**payload, "stream": True,
                           "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{target.url}: HTTP {response.status_code}")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
    if tokens < 0:
        raise RuntimeError(f"{target.url}: the stream carried no usage")
    return tokens


def concurrently(count: int, workers: int, one: Callable[[int], int]) -> float:
    """Completion tokens/s of `count` calls of `one(i)`, `workers` at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        tokens = sum(pool.map(one, range(count)))
    return tokens / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- (a) gateway


def model_path(model: str) -> Path:
    """The demo model, or the 1B shape quantized once (nodes then load int8 directly)."""
    if model == "demo":
        return DEMO_MODEL
    hf_dir = random_1b_checkpoint()
    out = verinfer_quantized("1b", hf_dir)
    # `verinfer up` checks for a config.json; a quantized directory keeps its config in its
    # manifest (which nodes and gateway read), so the copy is only there to pass that check.
    if not (out / "config.json").is_file():
        shutil.copyfile(hf_dir / "config.json", out / "config.json")
    return out


def start_gateway_network(data_dir: Path, model_dir: Path, p_ppm: int, nodes: int,
                          epoch_s: float, console: Console) -> Any:
    from verinfer.localnet import up

    # One kind of honest node: direct calls and the gateway's picks then reach the same
    # arithmetic (`verinfer up`'s mixed flavours differ in speed, not in bytes).
    flavours = up.HONEST_FLAVOURS
    up.HONEST_FLAVOURS = (("fused kernels", {}, ()),)
    try:
        options = up.UpOptions(data_dir=data_dir, model=model_dir, nodes=nodes,
                               challenge_ppm=p_ppm, validators=1, arbitrators=1,
                               epoch_seconds=epoch_s, force=True)
        with console.status(f"starting a network with p = {p_ppm} ppm ...") as spinner:
            return up.start_network(options, say=lambda s: None,
                                    status=lambda line: spinner.update(line))
    finally:
        up.HONEST_FLAVOURS = flavours


def verdict_count(network: Any) -> tuple[int, int]:
    """(challenge verdicts, receipts) recorded by the gateway so far."""
    db = sqlite3.connect(f"file:{network.layout.gateway_dir / 'gateway.sqlite'}?mode=ro",
                         uri=True, timeout=30)
    try:
        verdicts = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        receipts = db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
    finally:
        db.close()
    return int(verdicts), int(receipts)


def measure_gateway(model: str, p_ppm: int, args: argparse.Namespace, work: Path,
                    console: Console) -> dict[str, Any]:
    model_dir = model_path(model)
    name = model_dir.resolve().name
    vocab = PROMPT_VOCAB
    n = args.requests if model == "demo" else args.requests_1b
    network = start_gateway_network(work / f"net-{model}-p{p_ppm}", model_dir, p_ppm,
                                    args.gateway_nodes, args.epoch_seconds, console)
    try:
        gateway = Target(network.gateway_url, {"Authorization": f"Bearer {network.api_key}"})
        nodes = [Target(f"http://127.0.0.1:{port}/v1", {}) for port in network.ports.nodes]
        lat: dict[str, list[float]] = {"gateway": [], "direct": []}
        rate: dict[str, list[float]] = {"gateway": [], "direct": []}
        with httpx.Client(timeout=TIMEOUT_S) as http:
            def ask(target: Target, i: int) -> tuple[float, int, Any]:
                return complete(http, target, body(i, name, args.new_tokens, vocab))

            for i in range(len(nodes)):  # warm-up: kernels, connections, the node list
                ask(gateway, i)
                ask(nodes[i], i)
            with console.status(f"{model}, p = {p_ppm} ppm: {args.rounds} rounds") as spinner:
                for r in range(args.rounds):
                    spinner.update(f"{model}, p = {p_ppm} ppm: round {r + 1} of {args.rounds}")
                    base = 10_000 * (r + 1)
                    for i in range(n):
                        lat["gateway"].append(ask(gateway, base + i)[0])
                        lat["direct"].append(ask(nodes[i % len(nodes)], base + i)[0])
                    rate["gateway"].append(concurrently(
                        n, args.concurrency, lambda i, b=base: ask(gateway, b + 5000 + i)[1]))
                    rate["direct"].append(concurrently(
                        n, args.concurrency,
                        lambda i, b=base: ask(nodes[i % len(nodes)], b + 5000 + i)[1]))
        verdicts, receipts = verdict_count(network)
    finally:
        network.stop()
    return {
        "model": model,
        "requests": n,
        "p": p_ppm,
        "latency_gateway": statistics.median(lat["gateway"]),
        "latency_direct": statistics.median(lat["direct"]),
        "rate_gateway": statistics.median(rate["gateway"]),
        "rate_direct": statistics.median(rate["direct"]),
        "verdicts": verdicts,
        "receipts": receipts,
    }


# ---------------------------------------------------------------------------- (b), (c) node


def start_one_node(data_dir: Path, model_dir: Path, console: Console) -> tuple[Any, Target, Any]:
    """Dev chain and one registered honest node with `SLOTS` slots: (supervisor, target, domain)."""
    from verinfer.localnet import up
    from verinfer.localnet.layout import Layout
    from verinfer.localnet.supervisor import Supervisor
    from verinfer.protocol import wire

    layout = Layout(data_dir)
    ports = layout.load_ports(1)
    supervisor = Supervisor(layout.log_dir)
    try:
        with console.status(f"starting a chain and one node serving {model_dir} ...") as spinner:
            def status(line: str) -> None:
                spinner.update(line)
            chain = supervisor.start(up.chain_spec(layout, ports), status)
            options = up.UpOptions(data_dir=data_dir, model=model_dir, nodes=1, validators=0,
                                   arbitrators=0, challenge_ppm=0, force=True)
            contract = up.deploy_contract(layout, chain.match, options)
            role = up.NodeRole(1, "honest, fused kernels", {}, ())
            spec = up.node_spec(layout, ports, role, options, chain.match, contract)
            spec = dataclasses.replace(spec, argv=[*spec.argv, "--slots", str(SLOTS),
                                                   "--max-queue", str(4 * SLOTS)])
            supervisor.start(spec, status)
        from web3 import Web3

        chain_id = Web3(Web3.HTTPProvider(chain.match)).eth.chain_id
        return (supervisor, Target(f"http://127.0.0.1:{ports.nodes[0]}/v1", {}),
                wire.Domain(chain_id, contract))
    except BaseException:
        supervisor.stop_all()
        raise


def verify_once(http: httpx.Client, node: Target, receipt: dict[str, Any], domain: Any,
                key: bytes, gateway: str) -> float:
    """Seconds of one `/verify` of `receipt` by `node` (a challenge signed by `gateway`)."""
    from verinfer.protocol import wire

    bundle = wire.ReceiptBundle.from_json(receipt)
    message = bundle.receipt.message
    assert isinstance(message, wire.Receipt)
    challenge = wire.Challenge(receipt=bundle.receipt_id, request=message.request,
                               output_hash=message.output_hash, validator=message.node,
                               gateway=gateway, nonce=secrets.randbits(128),
                               deadline=int(time.time()) + 3600)
    signed = wire.Signed(challenge, wire.sign(domain, challenge, key))
    payload = {"challenge": signed.to_json(),
               "request": {**bundle.request.to_json(), "promptTokenIds": list(bundle.prompt_token_ids),
                           "stop": list(bundle.stop)},
               "output_token_ids": list(bundle.output_token_ids)}
    start = time.perf_counter()
    response = http.post(node.url.removesuffix("/v1") + "/verify", json=payload)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"/verify: HTTP {response.status_code}: {response.text[:300]}")
    verdict = response.json()["verdict"]
    if not verdict.get("valid") or verdict.get("logitsHash") != message.to_json()["logitsHash"]:
        raise RuntimeError(f"/verify did not confirm an honest receipt: {response.text[:300]}")
    return elapsed


def measure_node(model: str, args: argparse.Namespace, work: Path,
                 console: Console) -> dict[str, Any]:
    from eth_account import Account

    model_dir = model_path(model)
    vocab = PROMPT_VOCAB
    name = model_dir.resolve().name
    supervisor, node, domain = start_one_node(work / f"node-{model}", model_dir, console)
    try:
        rates: dict[int, list[float]] = {s: [] for s in args.streams}
        serve: list[float] = []
        check: list[float] = []
        gateway = Account.create()
        with httpx.Client(timeout=TIMEOUT_S) as http:
            complete(http, node, body(0, name, 2, vocab))  # warm-up
            with console.status(f"{model}: streams") as spinner:
                for r in range(args.rounds):
                    for streams in args.streams:  # interleaved: load drift hits all alike
                        spinner.update(f"{model}: round {r + 1}, {streams} streams")
                        base = 100 * (r + 1) + streams
                        rates[streams].append(concurrently(streams, streams, lambda i, b=base: streamed(
                            http, node, body(b + i, name, args.new_tokens, vocab))))
                for i in range(args.replays):
                    spinner.update(f"{model}: replay {i + 1} of {args.replays}")
                    seconds, tokens, data = complete(http, node,
                                                     body(50_000 + i, name, args.new_tokens, vocab))
                    assert tokens == args.new_tokens
                    serve.append(seconds)
                    check.append(verify_once(http, node, data["verinfer"], domain, gateway.key,
                                             gateway.address))
    finally:
        supervisor.stop_all()
    return {"model": model, "rates": {s: statistics.median(v) for s, v in rates.items()},
            "serve": statistics.median(serve), "check": statistics.median(check)}


# ---------------------------------------------------------------------------- report


def print_tables(gateway_rows: list[dict[str, Any]], node_rows: list[dict[str, Any]],
                 args: argparse.Namespace) -> None:
    if gateway_rows:
        print(f"\n(a) gateway vs a node called directly, {args.gateway_nodes} nodes, "
              f"{PROMPT_LEN}-token prompts, {args.new_tokens} sampled tokens; latency: median of "
              f"{args.rounds} rounds of N sequential requests; throughput: median of "
              f"{args.rounds} rounds of N requests, {args.concurrency} at a time\n")
        print("| model | p | N | latency direct ms | latency gateway ms | gateway / direct "
              "| tok/s direct | tok/s gateway | gateway / direct | verdicts / receipts at the end |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in gateway_rows:
            print(f"| {row['model']} | {row['p'] / 1e6:g} | {row['requests']} "
                  f"| {1000 * row['latency_direct']:.1f} "
                  f"| {1000 * row['latency_gateway']:.1f} "
                  f"| {row['latency_gateway'] / row['latency_direct']:.2f}x "
                  f"| {row['rate_direct']:.1f} | {row['rate_gateway']:.1f} "
                  f"| {row['rate_gateway'] / row['rate_direct']:.2f}x "
                  f"| {row['verdicts']} / {row['receipts']} |")
    if node_rows:
        print(f"\n(b) one node ({SLOTS} slots), aggregate completion tokens/s of concurrent "
              f"streams ({PROMPT_LEN}-token prompts, {args.new_tokens} sampled tokens each), "
              f"median of {args.rounds}\n")
        print("| model | " + " | ".join(f"{s} streams tok/s" for s in args.streams) + " | "
              + " | ".join(f"{s} vs 1" for s in args.streams if s != args.streams[0]) + " |")
        print("|---|" + "---:|" * (2 * len(args.streams) - 1))
        for row in node_rows:
            rates = row["rates"]
            first = rates[args.streams[0]]
            print(f"| {row['model']} | " + " | ".join(f"{rates[s]:.1f}" for s in args.streams)
                  + " | " + " | ".join(f"{rates[s] / first:.2f}x" for s in args.streams[1:])
                  + " |")
        print(f"\n(c) validator's replay (POST /verify) vs serving (POST /v1/completions), "
              f"{PROMPT_LEN} + {args.new_tokens} tokens, median of {args.replays}\n")
        print("| model | serve s | replay s | replay / serve |")
        print("|---|---:|---:|---:|")
        for row in node_rows:
            print(f"| {row['model']} | {row['serve']:.3f} | {row['check']:.3f} "
                  f"| {row['check'] / row['serve']:.3f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--ps", default="0,50000,200000",
                        help="challenge rates for (a) on the demo model, parts per million, "
                             "comma-separated ('' skips them)")
    parser.add_argument("--ps-1b", default="0",
                        help="challenge rates for (a) at the 1B shape ('' skips them)")
    parser.add_argument("--requests-1b", type=int, default=6,
                        help="(a) requests per round at the 1B shape")
    parser.add_argument("--models", default="demo,1b",
                        help="models for (b) and (c): demo, 1b ('' skips them)")
    parser.add_argument("--requests", type=int, default=24, help="(a) requests per round")
    parser.add_argument("--concurrency", type=int, default=4, help="(a) requests at a time")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of (a) and (b)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per completion")
    parser.add_argument("--replays", type=int, default=4, help="(c) requests served and replayed")
    parser.add_argument("--streams", default="1,4,8", help="(b) concurrent streams")
    parser.add_argument("--gateway-nodes", type=int, default=3, help="(a) nodes of the network")
    parser.add_argument("--epoch-seconds", type=float, default=5.0, help="(a) epoch length")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: p = 0 only, demo only, 3 requests of 4 tokens, "
                             "streams 1 and 2, one round")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the networks keep their state (default: a temporary "
                             "directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.quick:
        args.ps, args.ps_1b, args.models, args.requests, args.new_tokens = "0", "", "demo", 3, 4
        args.streams, args.rounds, args.replays = "1,2", 1, 1
    try:
        args.ps = [int(p) for p in args.ps.split(",") if p.strip()]
        args.ps_1b = [int(p) for p in args.ps_1b.split(",") if p.strip()]
        args.streams = [int(s) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        parser.error("--ps and --streams take comma-separated integers")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if any(not 0 <= p <= 1_000_000 for p in args.ps + args.ps_1b):
        parser.error("--ps: each p is 0..1000000 parts per million")
    if any(m not in ("demo", "1b") for m in args.models):
        parser.error("--models: demo or 1b")
    if not args.streams or any(not 1 <= s <= SLOTS for s in args.streams):
        parser.error(f"--streams: 1..{SLOTS} each, at least one")
    if min(args.requests, args.requests_1b, args.concurrency, args.rounds, args.new_tokens, args.replays) < 1:
        parser.error("--requests, --concurrency, --rounds, --new-tokens and --replays must be "
                     "at least 1")
    if args.gateway_nodes < 3:
        parser.error("--gateway-nodes: at least 3 (asserter, validator, arbitrator)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = wide_console()
    print(machine_line(), flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="verinfer-netbench-") as tmp:
        work = args.work_dir or Path(tmp)
        gateway_rows: list[dict[str, Any]] = []
        node_rows: list[dict[str, Any]] = []
        runs = [("demo", p) for p in args.ps] + [("1b", p) for p in args.ps_1b]
        for model, p in runs:
            gateway_rows.append(measure_gateway(model, p, args, work, console))
            print(f"measured: {gateway_rows[-1]}", flush=True)  # kept if a later part fails
        for model in args.models:
            node_rows.append(measure_node(model, args, work, console))
            print(f"measured: {node_rows[-1]}", flush=True)
    print_tables(gateway_rows, node_rows, args)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end {load}; {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
