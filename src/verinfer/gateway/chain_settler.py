"""A `Settler` over the settlement v2 contract: commit, beacon, settle, evidence, finalize.

The contract keeps the clock: epoch `e` is [GENESIS + e·L, GENESIS + (e+1)·L) and a receipt
belongs to the epoch its deadline falls in, so the gateway numbers its epochs the same way
(`epoch_clock`). The cycle of one epoch: `commit_epoch` its root over the receipt ids sorted
ascending; the beacon is the hash of the block after the commit; the challenged receipts are
`verinfer.protocol.challenge.is_challenged(id, beacon, the contract's challenge_ppm)`; committees
are drawn as the contract checks them (`verinfer.protocol.selection.is_drawn`: stake bonded
before the commit, total stake at the commit); `settle` sends `settle_epoch` with every receipt,
then the validators' agreeing verdicts of every passed receipt in as few `pass_challenges`
transactions as the block gas allows, per accused receipt the node's signed receipt with the
arbitrators' conflicting verdicts (`accuse`), and finally `finalize`s
what is due (an accusation after its appeal window, an unanswered challenge after its
deadline). It appeals, within the window, an accusation (by anyone) that its own arbitration
refutes, and sends the verdicts of validators that an arbitration outcome contradicts. Every
step reads the chain first, so calling `settle` again after a crash or before a window closed
does only what is left; it returns None until the epoch is final.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from verinfer.chain.client import MAX_PASS_BATCH, ChainRevert, SettlementClient
from verinfer.chain.devkeys import DEV_CHAIN_ID
from verinfer.errors import ChainError
from verinfer.gateway.router import RegisteredNode
from verinfer.gateway.settler import ChallengeEvidence, EpochSettlement, Settler
from verinfer.protocol import wire
from verinfer.protocol.challenge import is_challenged
from verinfer.protocol.selection import ARBITRATOR_TAG, VALIDATOR_TAG, is_drawn
from verinfer.protocol.settlement import Outcome

log = logging.getLogger("verinfer.gateway.chain_settler")

DEADLINE_MARGIN_S = 5  # evidence is sent only this long before the contract's deadline at least
ROLE_TAGS = {"validator": (VALIDATOR_TAG, 0), "arbitrator": (ARBITRATOR_TAG, 2)}
# `settle_epoch` takes every receipt of an epoch in one transaction: at most MAX_RECEIPTS (the
# contract's constant) and what fits the block's gas. Its gas per receipt, measured on the dev
# chain (benchmarks/chain.py and a p = 1 network): about 17,000 for a receipt that is paid, and
# about 155,000 more for one that is challenged (its case and escrow are stored); with a margin.
MAX_RECEIPTS = 512
SETTLE_GAS_PER_RECEIPT = 25_000
SETTLE_GAS_PER_CHALLENGE = 170_000
SETTLE_GAS_SHARE = 0.8  # of the block gas limit, for one settlement transaction
# A pass costs about 76,000 gas in a `pass_challenges` batch of 123 and 213,000 alone, measured
# (benchmarks/chain.py: 8 asserters, 2 validators per pass); more where validators and users
# differ from case to case (their balance slots are then cold each time). Batches are sized with
# a margin, as their gas estimate is raised by GAS_MARGIN when sent.
PASS_GAS_PER_CASE = 120_000
PASS_GAS_SHARE = 0.6
# A pass on chain: the receipt and its agreeing validators' (verdict, signature)s.
PassCase = tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]


def message_fields(message: wire.Message) -> dict[str, Any]:
    """An EIP-712 message as the client takes it: the doc's field names, raw values."""
    return {f.name: getattr(message, f.attr) for f in message.FIELDS}


@dataclass(frozen=True)
class _Member:
    """A registered node as the registry and the sortition need it, read at one block."""

    node: RegisteredNode
    stake_block: int  # the block of its last bonding: stake bonded at or after a commit is not drawn


class ChainV2Settler(Settler):
    def __init__(self, client: SettlementClient) -> None:
        self.client = client
        # Chain reads are the cost of a challenge (tens of milliseconds each on a busy dev
        # chain): what cannot change is read once, what can is read once per block.
        self._lock = threading.Lock()
        self._directory: list[tuple[str, str]] = []  # (address, endpoint) in registration order
        self._members: tuple[int, tuple[_Member, ...]] = (-1, ())
        self._commits: dict[int, dict[str, Any]] = {}  # committed epochs with their beacon
        self.me = client.signer.address
        self.chain_id = client._read("read chain id", lambda: client.w3.eth.chain_id)
        # Expected sizes and quorums of the two sortitions: the deployment's, as the contract
        # checks them.
        self.committees = client.committees()
        self._reported: set[tuple[int, bytes]] = set()  # cases whose wrong verdicts were sent
        fns = client.contract.functions
        self._clock = (int(client._read("read genesis", fns.GENESIS().call)),
                       int(client._read("read epoch length", fns.EPOCH_SECONDS().call)))
        self._skew = 0.0
        self.sync_clock()

    @property
    def domain(self) -> wire.Domain:
        return wire.Domain(self.chain_id, self.client.address)

    def epoch_clock(self) -> tuple[int, int]:
        return self._clock

    def clock_skew(self) -> float:
        return self._skew

    def sync_clock(self) -> None:
        # The dev chain stamps each block at least a second after its parent: a burst of
        # transactions moves its clock ahead of the wall clock for a while.
        latest = self.client._read("read block", lambda: self.client.w3.eth.get_block("latest"))
        self._skew = max(0.0, float(latest["timestamp"]) - time.time())

    def registry(self) -> list[RegisteredNode]:
        return [m.node for m in self._members_now()]

    def _members_now(self) -> tuple[_Member, ...]:
        """Every registered node with an endpoint, as of the latest block (cached per block:
        a key registers once, so addresses and endpoints are read only when the count grows)."""
        client, fns = self.client, self.client.contract.functions
        block = int(client._read("read block number", lambda: client.w3.eth.block_number))
        with self._lock:
            if self._members[0] == block:
                return self._members[1]
            count = int(client._read("read node count", fns.node_count().call))
            if count != len(self._directory):
                self._directory = [(wire.check_address(info.address), info.endpoint)
                                   for info in client.nodes()]
            members = []
            for address, endpoint in self._directory:
                if not endpoint:
                    continue
                _, stake_block = client._read("read node", fns.nodes(address).call)
                node = RegisteredNode(address, endpoint, client.stake_of(address),
                                      client.reputation_of(address))
                members.append(_Member(node, int(stake_block)))
            self._members = (block, tuple(members))
            return self._members[1]

    def _commitment(self, epoch: int) -> dict[str, Any] | None:
        """The epoch's commitment once its beacon exists (the fields the sortition reads,
        block, beacon and total stake, never change after that), else None."""
        with self._lock:
            known = self._commits.get(epoch)
        if known is not None:
            return known
        commitment = self.client.commitment(self.me, epoch)
        if commitment is None:
            return None
        beacon = self.client.beacon(self.me, epoch)
        if beacon is None:
            return None
        known = dict(commitment, beacon=beacon)
        with self._lock:
            self._commits[epoch] = known
        return known

    def min_stake(self) -> int:
        return self.client.params().min_stake

    def receipts_per_epoch(self) -> int:
        block = self.client._read("read block", lambda: self.client.w3.eth.get_block("latest"))
        p = self.client.params().challenge_ppm / 1_000_000
        per_receipt = SETTLE_GAS_PER_RECEIPT + p * SETTLE_GAS_PER_CHALLENGE
        return max(1, min(MAX_RECEIPTS, int(SETTLE_GAS_SHARE * int(block["gasLimit"]) / per_receipt)))

    def spendable(self, user: str) -> int:
        """The deposit, within this gateway's allowance for the current epoch (what the
        gateway has served in it and not yet settled is the caller's to count)."""
        fns = self.client.contract.functions
        address = wire.check_address(user)
        settler, cap, expiry = self.client._read("read allowance",
                                                 fns.allowance_of(address).call)
        epoch = self.client.current_epoch()
        start = self._clock[0] + epoch * self._clock[1]
        if settler.lower() != self.me.lower() or start >= expiry:
            return 0
        return max(0, min(cap, self.client.balance_of(address)))

    def commit(self, epoch: int, receipts_root: bytes, count: int) -> str:
        if self.client.commitment(self.me, epoch) is not None:
            return f"epoch {epoch} committed"
        receipt = self.client.commit_epoch(epoch, receipts_root, count)
        return "0x" + bytes(receipt["transactionHash"]).hex()

    def beacon(self, epoch: int, commit_ref: str) -> bytes | None:
        beacon = self.client.beacon(self.me, epoch)
        if beacon is None and self.chain_id == DEV_CHAIN_ID:
            # The dev chain mines only on demand: the block after the commit is mined here.
            self.client._read("mine a block", lambda: self.client.w3.provider.make_request(
                "evm_mine", []))  # type: ignore[arg-type]
            beacon = self.client.beacon(self.me, epoch)
        return beacon

    def open_challenges(self, epoch: int, bundles: tuple[tuple[bytes, dict[str, Any]], ...]
                        ) -> None:
        """`settle_epoch` with every receipt in digest order (once): fees of unchallenged
        receipts are paid, challenged ones escrowed until their evidence or deadline."""
        commitment = self.client.commitment(self.me, epoch)
        if commitment is None:
            raise ChainError(f"epoch {epoch} is not committed")
        if not commitment["settled"]:
            receipts = [message_fields(_receipt(b)) for _, b in sorted(bundles)]
            self.client.settle_epoch(epoch, receipts)

    def committee(self, epoch: int, receipt_id: bytes, asserter: str,
                  role: str) -> tuple[tuple[str, ...], int] | None:
        """The members the contract would accept for `role` (sorted), and the quorum."""
        commitment = self._commitment(epoch)
        if commitment is None:
            return None
        beacon = commitment["beacon"]
        tag, at = ROLE_TAGS[role]
        expected, quorum = self.committees[at], self.committees[at + 1]
        members = []
        for member in self._members_now():
            node = member.node
            if node.address.lower() == asserter.lower() or member.stake_block >= commitment["block"]:
                continue
            if is_drawn(tag, beacon, receipt_id, node.address.lower(), node.stake,
                        commitment["total_stake"], expected):
                members.append(node.address.lower())
        return tuple(sorted(members, key=lambda a: int(a, 16))), quorum

    def challenge_ppm(self) -> int:
        return self.client.params().challenge_ppm

    def settle(self, settlement: EpochSettlement) -> str | None:
        self.open_challenges(settlement.epoch, settlement.bundles)
        bundles = dict(settlement.bundles)
        beacon = self.client.beacon(self.me, settlement.epoch)
        assert beacon is not None
        ppm = self.challenge_ppm()
        evidence = {e.receipt_id: e for e in settlement.evidence}
        final = True
        now = self._chain_now()
        cases = {rid: self.client.case(settlement.epoch, rid)
                 for rid in sorted(bundles) if is_challenged(rid, beacon, ppm)}
        # Evidence first: the passes of the epoch in as few transactions as the block gas
        # allows (one block each on the dev chain, not one per receipt), accusations one by one.
        passes: list[tuple[bytes, PassCase]] = []
        for rid, case in cases.items():
            if case.state == "open" and rid in evidence and now + DEADLINE_MARGIN_S <= case.deadline:
                if evidence[rid].outcome == Outcome.ASSERTER_FAULT.value:
                    self._accuse(settlement.epoch, evidence[rid], bundles[rid])
                    cases[rid] = self.client.case(settlement.epoch, rid)
                elif (chosen := self._pass_evidence(evidence[rid], bundles[rid])) is not None:
                    passes.append((rid, chosen))
        # A pass transaction that went through passed every case it carried.
        deadlines = {rid: case.deadline for rid, case in cases.items()}
        for rid in self._pass_in_batches(settlement.epoch, passes, deadlines):
            cases[rid] = replace(cases[rid], state="passed")
        for rid, case in cases.items():
            if (case.state == "accused" and rid in evidence
                    and evidence[rid].outcome != Outcome.ASSERTER_FAULT.value
                    and now + DEADLINE_MARGIN_S <= case.appeal_deadline):
                self._appeal(settlement.epoch, evidence[rid], bundles[rid])
                case = self.client.case(settlement.epoch, rid)
            lapsed = case.state == "open" and now > case.deadline
            if lapsed or (case.state == "accused" and now > case.appeal_deadline):
                self.client.finalize(settlement.epoch, rid)
                case = self.client.case(settlement.epoch, rid)
            if case.state in ("slashed", "cleared") and rid in evidence:
                self._report_wrong_verdicts(settlement.epoch, evidence[rid], bundles[rid],
                                            case.state)
            elif case.state in ("open", "accused"):
                final = False
        return f"epoch {settlement.epoch} final" if final else None

    def _appeal(self, epoch: int, e: ChallengeEvidence, bundle: dict[str, Any]) -> None:
        """Someone accused a receipt that this gateway's arbitration found honest: appeal with
        the drawn arbitrators' verdicts that agree with it (the contract wants more of them
        than there were accusers)."""
        receipt = _receipt(bundle)
        chosen = [(message_fields(_verdict(v)), sig) for v, sig in _signed_verdicts(e.arbitration)
                  if wire.verdict_agrees(_verdict(v), receipt, e.receipt_id)]
        if not chosen:
            log.warning("receipt %s is accused; this gateway found it %s but holds no "
                        "arbitrators' verdicts to appeal with", e.receipt_id.hex(), e.outcome)
            return
        try:
            self.client.appeal(epoch, message_fields(receipt), chosen)
            log.info("receipt %s: accusation appealed with %d arbitrators' verdicts",
                     e.receipt_id.hex(), len(chosen))
        except ChainRevert as exc:
            log.warning("receipt %s: appeal refused (%s)", e.receipt_id.hex(), exc)

    def _report_wrong_verdicts(self, epoch: int, e: ChallengeEvidence, bundle: dict[str, Any],
                               state: str) -> None:
        """Once arbitration decided a case, the validators' signed verdicts it contradicts:
        "valid" on a receipt whose node was slashed, "invalid" on one cleared on appeal. Each
        is sent on its own, so one already slashed (by anyone) does not hold up the others."""
        if (epoch, e.receipt_id) in self._reported:
            return
        receipt = _receipt(bundle)
        for verdict, signature in _signed_verdicts(e.verdicts):
            agrees = wire.verdict_agrees(_verdict(verdict), receipt, e.receipt_id)
            if agrees != (state == "slashed"):
                continue
            try:
                self.client.slash_wrong_verdicts(
                    epoch, message_fields(receipt), [(message_fields(_verdict(verdict)),
                                                      signature)])
                log.info("receipt %s: validator %s slashed for its verdict",
                         e.receipt_id.hex(), _verdict(verdict).validator)
            except ChainRevert as exc:
                log.info("receipt %s: verdict of %s not slashed (%s)", e.receipt_id.hex(),
                         _verdict(verdict).validator, exc)
        self._reported.add((epoch, e.receipt_id))

    def _chosen_verdicts(self, e: ChallengeEvidence, receipt: wire.Receipt, accuse: bool
                         ) -> list[tuple[dict[str, Any], bytes]] | None:
        """The drawn validators' verdicts that agree with the receipt (a pass), or the drawn
        arbitrators' against it (an accusation); None when too few for the contract's quorum
        (nothing is sent: the case lapses)."""
        verdicts = _signed_verdicts(e.arbitration if accuse else e.verdicts)
        chosen = [(message_fields(_verdict(v)), s) for v, s in verdicts
                  if wire.verdict_agrees(_verdict(v), receipt, e.receipt_id) != accuse]
        quorum = self.committees[3 if accuse else 1]
        if len(chosen) < quorum:
            log.warning("receipt %s: %d verdicts for %s, the contract needs %d; it will lapse",
                        e.receipt_id.hex(), len(chosen), e.outcome, quorum)
            return None
        return chosen

    def _pass_evidence(self, e: ChallengeEvidence, bundle: dict[str, Any]) -> PassCase | None:
        """PASSED and VALIDATOR_FAULT: the receipt with its agreeing validators' verdicts."""
        receipt = _receipt(bundle)
        chosen = self._chosen_verdicts(e, receipt, accuse=False)
        return None if chosen is None else (message_fields(receipt), chosen)

    def _accuse(self, epoch: int, e: ChallengeEvidence, bundle: dict[str, Any]) -> None:
        """ASSERTER_FAULT: the node's signed receipt and the arbitrators' verdicts against it."""
        signed = wire.ReceiptBundle.from_json(bundle).receipt
        receipt = signed.message
        assert isinstance(receipt, wire.Receipt)
        chosen = self._chosen_verdicts(e, receipt, accuse=True)
        if chosen is None:
            return
        try:
            self.client.accuse(epoch, message_fields(receipt), signed.signature, chosen)
        except ChainRevert as exc:  # the case lapses at its deadline: the node is paid
            log.warning("receipt %s: accusation refused (%s)", e.receipt_id.hex(), exc)

    def pass_batch_size(self) -> int:
        """Passes per `pass_challenges`: the contract's bound, and what fits the block gas."""
        block = self.client._read("read block", lambda: self.client.w3.eth.get_block("latest"))
        fits = int(PASS_GAS_SHARE * int(block["gasLimit"]) / PASS_GAS_PER_CASE)
        return max(1, min(MAX_PASS_BATCH, fits))

    def _chain_now(self) -> int:
        """The contract's clock as the next block will read it (the dev chain's runs ahead of
        the wall clock after a burst of blocks)."""
        latest = self.client._read("read block", lambda: self.client.w3.eth.get_block("latest"))
        return max(int(time.time()), int(latest["timestamp"]) + 1)

    def _pass_in_batches(self, epoch: int, passes: list[tuple[bytes, PassCase]],
                         deadlines: dict[bytes, int]) -> list[bytes]:
        """Send the passes in batches of `pass_batch_size`; the ids now passed on chain."""
        if not passes:
            return []
        size = self.pass_batch_size()
        done: list[bytes] = []
        for start in range(0, len(passes), size):
            done += self._pass_batch(epoch, passes[start:start + size], deadlines)
        return done

    def _pass_batch(self, epoch: int, batch: list[tuple[bytes, PassCase]],
                    deadlines: dict[bytes, int]) -> list[bytes]:
        """One transaction of passes. A case too close to its deadline by the chain's clock
        now is left out (it would refuse the batch; it lapses, the node is paid). The contract
        refuses a batch whole when one case would be refused alone (e.g. one that someone else
        passed meanwhile), and the refusal comes from the gas estimate, before anything is
        mined: the halves are tried in turn, so a bad case costs a few estimates and the
        others still go through."""
        now = self._chain_now()
        due = [item for item in batch if now + DEADLINE_MARGIN_S <= deadlines[item[0]]]
        if len(due) < len(batch):
            log.warning("%d passes too close to their deadline: they lapse",
                        len(batch) - len(due))
            batch = due
        if not batch:
            return []
        try:
            if len(batch) == 1:
                self.client.pass_challenge(epoch, *batch[0][1])
            else:
                self.client.pass_challenges(epoch, [case for _, case in batch])
            return [rid for rid, _ in batch]
        except ChainRevert as exc:
            if len(batch) == 1:  # the case lapses at its deadline: the node is paid
                log.warning("receipt %s: evidence refused (%s)", batch[0][0].hex(), exc)
                return []
            log.info("a batch of %d passes refused (%s): halving it", len(batch), exc)
        half = len(batch) // 2
        return (self._pass_batch(epoch, batch[:half], deadlines)
                + self._pass_batch(epoch, batch[half:], deadlines))

    def settled_root(self, epoch: int) -> bytes | None:
        c = self.client.commitment(self.me, epoch)
        return None if c is None or not c["settled"] else bytes(c["root"])


def _receipt(bundle: dict[str, Any]) -> wire.Receipt:
    message = wire.ReceiptBundle.from_json(bundle).receipt.message
    assert isinstance(message, wire.Receipt)
    return message


def _verdict(data: dict[str, Any]) -> wire.Verdict:
    return wire.Verdict.from_json(data)


def _signed_verdicts(answers: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], bytes]]:
    return [(a, wire.signature_from_json(a["signature"])) for a in answers if "error" not in a]
