"""One cheater per strategy: caught and slashed on chain, honest nodes never; detection is geometric.

For each strategy (`--strategies`, default all five of `verinfer up --cheaters`), a network of
`--nodes` honest nodes (the flavours `verinfer up` starts) and one cheater runs with the
contract's challenge rate `--p`. Requests (completions and chats, greedy and sampled, some
streamed) go through the gateway until the cheater has served enough of them to expect
`--detections` detections, then the gateway settles every epoch on chain and the slashes
take effect after the appeal window. Read back from the gateway's store (who served what,
outcomes) and from the chain (slashes).

Requests until detection: every receipt is challenged independently with probability p (a hash
of its id and a beacon fixed after its commit), and a cheater cheats on a request with
probability f (1, or the `sometimes` fraction 0.3), so among the cheater's receipts in the order
served, detections are Bernoulli(q = p f) and the number of its requests until the next
detection is geometric with mean 1 / q. Each detection ends one trial. Checked per strategy:
the detection count against Binomial(K, q) (exact two-sided test; 95% Clopper-Pearson interval
of q, hence of the mean 1 / q); and for the strategies that always cheat (same q = p), a
chi-square goodness-of-fit of the pooled trial lengths against the geometric law.

    .venv/bin/python benchmarks/cheaters.py                        # p = 0.2, all five
    .venv/bin/python benchmarks/cheaters.py --strategies sometimes --detections 10
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEMO_MODEL, machine_line, wide_console
from challenges import Traffic, chain_facts, send_traffic, start, wait_settled

STRATEGIES = ("wrong-tokens", "skip-layers", "substitute-model", "sometimes", "late-divergence")


def cheat_fraction(strategy: str) -> float:
    from verinfer.node.cheats import Cheat

    return Cheat(strategy).fraction_ppm / 1e6 if strategy == "sometimes" else 1.0


def trial_lengths(detected: list[bool]) -> tuple[list[int], int]:
    """Lengths of the completed trials (requests up to and including each detection) and the
    length of the unfinished one at the end."""
    lengths, run = [], 0
    for hit in detected:
        run += 1
        if hit:
            lengths.append(run)
            run = 0
    return lengths, run


def binomial_check(k: int, d: int, q: float) -> tuple[float, float, float]:
    """(two-sided exact p-value, low, high of the 95% Clopper-Pearson interval of q)."""
    from scipy.stats import binomtest

    test = binomtest(d, k, q)
    ci = test.proportion_ci(0.95, method="exact")
    return float(test.pvalue), float(ci.low), float(ci.high)


def geometric_chi_square(lengths: list[int], q: float) -> tuple[float, float, list[str]]:
    """Chi-square of trial lengths against Geometric(q), over bins of at least ~5 expected."""
    from scipy.stats import chisquare

    n = len(lengths)
    edges = [1]
    while True:  # bins [a, b): grow each until it expects at least 5 trials
        a, b = edges[-1], edges[-1] + 1
        while n * ((1 - q) ** (a - 1) - (1 - q) ** (b - 1)) < 5 and n * (1 - q) ** (b - 1) >= 5:
            b += 1
        if n * (1 - q) ** (b - 1) < 5:
            break
        edges.append(b)
    observed, expected, labels = [], [], []
    bounds = [*edges, math.inf]
    for a, b in itertools.pairwise(bounds):
        observed.append(sum(1 for x in lengths if a <= x < b))
        tail_b = 0.0 if b == math.inf else (1 - q) ** (b - 1)
        expected.append(n * ((1 - q) ** (a - 1) - tail_b))
        labels.append(f"{a}+" if b == math.inf else (f"{a}" if b == a + 1 else f"{a}-{b - 1}"))
    if len(observed) < 2:
        return math.nan, math.nan, labels
    stat, pvalue = chisquare(observed, expected)
    return float(stat), float(pvalue), [f"{lab}: {o} (exp {e:.1f})" for lab, o, e in
                                        zip(labels, observed, expected)]


def analyse(store: dict[str, Any], order: list[str], cheater: str,
            honest: set[str]) -> dict[str, Any]:
    """Detection facts from the gateway's store. `order`: receipt ids in the order served.

    A cheater's receipt counts towards requests until detection only if its epoch was
    committed (a missed epoch's receipts can never be challenged); a detection is an
    ASSERTER_FAULT outcome on it. VALIDATOR_FAULT on an honest node's receipt is the cheater
    caught as a validator (model-level strategies replay with their corrupted weights)."""
    outcome_of, state_of, node_of = store["outcome_of"], store["state_of"], store["node_of"]
    mine = [rid for rid in order if node_of.get(rid) == cheater]
    eligible = [rid for rid in mine if state_of.get(rid) != "missed"]
    detected = [outcome_of.get(rid) == "ASSERTER_FAULT" for rid in eligible]
    lengths, unfinished = trial_lengths(detected)
    return {
        "served": len(mine), "eligible": len(eligible), "detected": sum(detected),
        "challenged": sum(1 for rid in eligible if rid in outcome_of),
        "lengths": lengths, "unfinished": unfinished,
        "as_validator": sum(1 for rid in order if node_of.get(rid) in honest
                            and outcome_of.get(rid) == "VALIDATOR_FAULT"),
        "honest_mismatch": sum(1 for rid in order if node_of.get(rid) in honest
                               and outcome_of.get(rid) == "ASSERTER_FAULT"),
    }


def run_strategy(strategy: str, args: argparse.Namespace, work: Path,
                 console: Console) -> dict[str, Any]:
    from verinfer.localnet.demo import chain_client
    from verinfer.localnet.up import UpOptions

    q = args.p / 1e6 * cheat_fraction(strategy)
    wanted = math.ceil(args.detections / q)  # cheater-served requests
    options = UpOptions(data_dir=work / strategy, model=DEMO_MODEL, nodes=args.nodes, cheaters=1,
                        strategy=strategy, challenge_ppm=args.p, validators=1, arbitrators=1,
                        epoch_seconds=args.epoch_seconds, force=True)
    console.rule(f"{strategy}: p = {args.p / 1e6:g}, q = {q:.3f}, until the cheater served "
                 f"{wanted}")
    began = time.monotonic()
    network = start(options, console)
    try:
        cheater = network.node_addresses[args.nodes + 1].lower()
        honest = {network.node_addresses[i].lower() for i in range(1, args.nodes + 1)}
        start_block = int(chain_client(network).w3.eth.block_number)

        def enough(receipts: list[dict[str, Any]]) -> bool:
            return sum(1 for r in receipts
                       if str(r["receipt"]["node"]).lower() == cheater) >= wanted

        deadline = began + args.time_limit
        receipts, errors = send_traffic(network, Traffic("demo", args.max_tokens, seed=len(strategy)),
                                        args.max_requests, args.concurrency, deadline, console,
                                        label=strategy, stop=enough)
        order = [str(r["receiptId"]).lower() for r in receipts]
        store = wait_settled(network, set(order), deadline, console)
        facts = analyse(store, order, cheater, honest)
        # A slash is executed after the appeal window: wait for one per detection.
        with console.status("waiting for the slashes to take effect on chain ..."):
            while True:
                chain = chain_facts(network, start_block)
                if chain["slashes"].get(cheater, 0) >= facts["detected"] \
                        or time.monotonic() > deadline:
                    break
                time.sleep(3)
    finally:
        network.stop()
    return {
        "strategy": strategy, "q": q, "requests": len(receipts), "errors": len(errors),
        **facts, "missed": store["missed"],
        "slashed": chain["slashes"].get(cheater, 0),
        "honest_slashed": sum(n for a, n in chain["slashes"].items() if a in honest),
        "unsettled": store["unsettled"], "seconds": time.monotonic() - began,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--p", type=int, default=200_000, help="challenge rate, ppm")
    parser.add_argument("--detections", type=float, default=6.0,
                        help="expected detections per strategy (sets the cheater's requests)")
    parser.add_argument("--nodes", type=int, default=3, help="honest nodes per network")
    parser.add_argument("--max-requests", type=int, default=600, help="per strategy, at most")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--epoch-seconds", type=float, default=10.0)
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="seconds per strategy (start, traffic, settlement, slashes)")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not strategies or any(s not in STRATEGIES for s in strategies):
        parser.error(f"--strategies: some of {', '.join(STRATEGIES)}")
    if not 0 < args.p <= 1_000_000:
        parser.error("--p: 1..1000000 parts per million")
    if args.nodes < 3:
        # the contract's committees: 2 validators, then 3 arbitrators when they disagree with
        # the asserter; with the cheater asserting, that takes 3 honest nodes besides it
        parser.error("--nodes: at least 3 honest")

    console = wide_console()
    console.print(machine_line(), highlight=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="verinfer-cheaters-") as tmp:
        work = args.work_dir or Path(tmp)
        rows = [run_strategy(s, args, work, console) for s in strategies]
    ok = report(rows, args.p, args.nodes, args.max_tokens)
    print("load average at the end " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0 if ok else 1


def report(rows: list[dict[str, Any]], p_ppm: int, nodes: int, max_tokens: int) -> bool:
    """Print the table and the statistical checks; True when every verdict is good."""
    print(f"\none cheater and {nodes} honest nodes per network, p = {p_ppm / 1e6:g}, "
          f"{max_tokens} tokens per request\n")
    print("| strategy | q = p f | requests | served by cheater (in committed epochs) "
          "| challenged | detected | caught as validator | slashed on chain | honest slashed "
          "| honest found at fault | trials: mean length | expected 1/q | 95% CI of 1/q "
          "| exact binomial p | verdict | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    ok = True
    always = [x for row in rows if row["q"] == p_ppm / 1e6 for x in row["lengths"]]
    alpha = 0.05 / (len(rows) + (1 if always else 0))  # Bonferroni: one verdict for all tests
    for row in rows:
        k, d, q = row["eligible"], row["detected"], row["q"]
        pvalue, lo, hi = binomial_check(k, d, q) if k else (math.nan, 0.0, 1.0)
        mean = statistics_mean(row["lengths"])
        consistent = not pvalue < alpha
        caught = d > 0 and row["slashed"] >= 1
        clean = row["honest_slashed"] == 0 and row["honest_mismatch"] == 0
        verdict = ("caught, " if caught else "NOT CAUGHT, ") + \
            ("honest clean, " if clean else "HONEST HURT, ") + \
            ("consistent with geometric" if consistent else "NOT consistent with geometric")
        ok = ok and caught and clean and consistent and not row["errors"]
        ci = f"[{1 / hi:.1f}, {1 / lo:.1f}]" if lo > 0 else f"[{1 / hi:.1f}, inf]"
        print(f"| {row['strategy']} | {q:.2f} | {row['requests']} | {row['served']} ({k}) "
              f"| {row['challenged']} | {d} | {row['as_validator']} | {row['slashed']} "
              f"| {row['honest_slashed']} | {row['honest_mismatch']} "
              f"| {len(row['lengths'])} trials: {mean:.1f} (+{row['unfinished']} unfinished) "
              f"| {1 / q:.1f} | {ci} | {pvalue:.2f} | {verdict} | {row['seconds']:.0f} |")
    if always:
        stat, pvalue, bins = geometric_chi_square(always, p_ppm / 1e6)
        fits = not pvalue < alpha
        print(f"\npooled trial lengths of the strategies that always cheat ({len(always)} trials, "
              f"mean {statistics_mean(always):.2f}, expected {1e6 / p_ppm:.2f}): "
              + "; ".join(bins)
              + (f"; chi-square {stat:.2f}, p = {pvalue:.2f}: "
                 f"{'consistent with' if fits else 'REJECTS'} Geometric({p_ppm / 1e6:g})"
                 if not math.isnan(stat) else "; too few trials for a chi-square"))
        ok = ok and fits
    print(f"\nverdicts at level {alpha:.4f} per test (0.05 over all {len(rows) + bool(always)} "
          "tests, Bonferroni)")
    print("verdict: " + ("every cheater caught and slashed, no honest node hurt, detection "
                         "consistent with the geometric law" if ok else "NOT MET: see above"))
    return ok


def statistics_mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else math.nan


if __name__ == "__main__":
    sys.exit(main())
