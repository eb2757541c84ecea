"""The settler sends an epoch's passes in `pass_challenges` batches, not one transaction each.

At p = 1 every receipt of an epoch is challenged; one transaction per pass mined one dev-chain
block per receipt, each stamped a second after its parent, and the chain's clock ran minutes
ahead of the wall clock (BENCHMARKS.md, must-show 2). Real dev chain, real contract, the
gateway's own pipeline and settler.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

from gateway_chain import Deployment, deploy
from gateway_fakes import PARAMS, ScriptedValidators, make_bundle, pos

from verinfer.gateway.chain_settler import DEADLINE_MARGIN_S, ChainV2Settler, PassCase
from verinfer.gateway.epochs import EpochPipeline
from verinfer.gateway.store import GatewayStore
from verinfer.protocol import wire

EPOCH = 10**6  # one long epoch: the test never crosses an epoch boundary
CHAIN_PARAMS = replace(PARAMS, withdrawal_delay=4 * EPOCH, unbonding_delay=5 * EPOCH,
                       challenge_ppm=1_000_000, challenge_window=600, appeal_window=50)
RECEIPTS = 7


def honest_epoch(tmp_path: Path, net: Deployment, settler: ChainV2Settler
                 ) -> tuple[EpochPipeline, GatewayStore, int, list[bytes]]:
    """RECEIPTS honest receipts of the current epoch in a gateway store, with its pipeline."""
    genesis, length = settler.epoch_clock()
    epoch = net.owner.current_epoch()
    store = GatewayStore(tmp_path / "gateway.sqlite")
    truth: dict[bytes, bytes] = {}
    ids = []
    for i in range(RECEIPTS):
        output = [5, i]
        truth[wire.output_hash(output)] = hashlib.sha256(bytes(output)).digest()
        bundle = make_bundle(net.nodes[i % len(net.nodes)], output,
                             truth[wire.output_hash(output)], nonce=i, price=3, user=net.user,
                             domain=settler.domain, gateway=net.gateway,
                             deadline=genesis + epoch * length + length // 2)
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        store.add_receipt(bundle.receipt_id, net.user.address, receipt.node, receipt.fee,
                          bundle.to_json(), epoch)
        ids.append(bundle.receipt_id)
    validators = ScriptedValidators(truth, {n.address: n for n in net.nodes},
                                    domain=settler.domain, gateway=net.gateway)
    pipeline = EpochPipeline(store, settler, validators, net.gateway, settler.domain,
                             pos(validators=2), epoch_seconds=3600)
    return pipeline, store, epoch, ids


def passes_by_transaction(net: Deployment, from_block: int = 0) -> Counter[str]:
    logs = net.owner.contract.events.ChallengePassed().get_logs(from_block=from_block)
    return Counter(bytes(log["transactionHash"]).hex() for log in logs)


def test_an_epochs_passes_go_on_chain_in_one_transaction(tmp_path: Path) -> None:
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=4, user=7)
    net.owner.fund_treasury(10**6)
    net.allow_gateway(5000)
    settler = ChainV2Settler(net.owner)
    pipeline, store, epoch, ids = honest_epoch(tmp_path, net, settler)
    before = net.w3.eth.block_number
    asyncio.run(pipeline.step(force_close=True))
    assert [net.owner.case(epoch, rid).state for rid in ids] == ["passed"] * RECEIPTS
    assert store.epoch(epoch).state == "settled"
    assert list(passes_by_transaction(net).values()) == [RECEIPTS]
    # commit, the beacon's block, the settlement, one pass transaction
    assert net.w3.eth.block_number - before == 4
    net.chain.close()
    store.close()


def decided_not_sent(tmp_path: Path) -> tuple[Deployment, ChainV2Settler, GatewayStore, int,
                                               list[bytes], list[tuple[bytes, PassCase]],
                                               dict[bytes, int]]:
    """An honest epoch settled and decided by the pipeline, its passes held back: (network,
    settler, store, epoch, ids, passes, deadlines)."""
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=4, user=7)
    net.allow_gateway(5000)
    settler = ChainV2Settler(net.owner)
    pipeline, store, epoch, ids = honest_epoch(tmp_path, net, settler)
    held: list[tuple[bytes, PassCase]] = []
    deadlines: dict[bytes, int] = {}

    def hold(_epoch: int, passes: list[tuple[bytes, PassCase]],
             due: dict[bytes, int]) -> list[bytes]:
        held[:] = passes  # the pipeline tries again in the same step
        deadlines.update(due)
        return []

    settler._pass_in_batches = hold  # type: ignore[method-assign]
    asyncio.run(pipeline.step(force_close=True))
    del settler._pass_in_batches
    assert sorted(rid for rid, _ in held) == sorted(ids)
    assert all(net.owner.case(epoch, rid).state == "open" for rid in ids)
    return net, settler, store, epoch, ids, held, deadlines


def test_a_refused_case_costs_no_block_and_holds_up_no_other_pass(tmp_path: Path) -> None:
    net, settler, store, epoch, ids, held, deadlines = decided_not_sent(tmp_path)
    # Someone else passes one of them first: a batch carrying it again is refused whole.
    taken, (receipt, verdicts) = held[RECEIPTS // 2]
    net.owner.pass_challenge(epoch, receipt, verdicts)
    first = net.w3.eth.block_number + 1
    settler.pass_batch_size = lambda: RECEIPTS  # type: ignore[method-assign]
    passed = settler._pass_in_batches(epoch, held, deadlines)
    assert sorted(passed) == sorted(rid for rid in ids if rid != taken)
    assert all(net.owner.case(epoch, rid).state == "passed" for rid in ids)
    by_tx = passes_by_transaction(net, first)
    assert sum(by_tx.values()) == RECEIPTS - 1
    # Every block mined since carries passes: the refusals came from gas estimates.
    assert net.w3.eth.block_number - first + 1 == len(by_tx)
    assert len(by_tx) <= 2 * RECEIPTS.bit_length()
    net.chain.close()
    store.close()


def test_a_pass_too_close_to_its_deadline_is_left_out_of_the_batch(tmp_path: Path) -> None:
    net, settler, store, epoch, ids, held, deadlines = decided_not_sent(tmp_path)
    late = held[0][0]
    deadlines[late] = settler._chain_now() + DEADLINE_MARGIN_S - 1
    first = net.w3.eth.block_number + 1
    passed = settler._pass_in_batches(epoch, held, deadlines)
    assert sorted(passed) == sorted(rid for rid in ids if rid != late)
    assert net.owner.case(epoch, late).state == "open"  # it lapses at its deadline
    assert list(passes_by_transaction(net, first).values()) == [RECEIPTS - 1]
    assert net.w3.eth.block_number == first  # one transaction, no refusal on the way
    net.chain.close()
    store.close()


def test_passes_are_split_by_the_batch_size(tmp_path: Path) -> None:
    net = deploy(tmp_path, CHAIN_PARAMS, EPOCH, nodes=4, user=7)
    net.allow_gateway(5000)
    settler = ChainV2Settler(net.owner)
    assert 1 <= settler.pass_batch_size() <= 160
    settler.pass_batch_size = lambda: 3  # type: ignore[method-assign]
    pipeline, store, epoch, ids = honest_epoch(tmp_path, net, settler)
    asyncio.run(pipeline.step(force_close=True))
    assert [net.owner.case(epoch, rid).state for rid in ids] == ["passed"] * RECEIPTS
    assert sorted(passes_by_transaction(net).values()) == [1, 3, 3]
    net.chain.close()
    store.close()
