"""The epoch pipeline: close → commit the receipts root → beacon → challenge → decide → settle.

Plain code over the store and a `Settler`, driven by the server's loop (`step` once per tick;
chain calls run in a worker thread so the loop keeps serving);
each transition is recorded before the next begins, so a gateway killed anywhere resumes where
it stopped. Which receipts are challenged is `verinfer.protocol.challenge.is_challenged(receipt
id, beacon, p)` with the beacon fixed after the commit, so nobody can choose them. Validators
(then, on a disagreement, arbitrators) are drawn by `verinfer.protocol.selection` from a seed
derived from the beacon and the receipt, among the other nodes; each gets a gateway-signed
`Challenge` (never the asserter's logits hash) and returns a signed `Verdict`. A validator that
gives no signed answer is never found faulty (there is no evidence); the draw is repeated with
it excluded. Outcomes follow `verinfer.protocol.challenge.decide_challenge`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from verinfer.chain.client import ChainRevert
from verinfer.errors import ChainError, VerinferError
from verinfer.gateway.router import RegisteredNode
from verinfer.gateway.settler import ChallengeEvidence, EpochSettlement, Settler
from verinfer.gateway.store import GatewayStore, StoredReceipt
from verinfer.keyfile import Identity
from verinfer.protocol import wire
from verinfer.protocol.challenge import NoMajority, decide_challenge, is_challenged
from verinfer.protocol.params import PosParams
from verinfer.protocol.selection import Candidate, NotEnoughNodes, select_committee
from verinfer.protocol.settlement import ChallengeEntry, Outcome, RequestEntry

log = logging.getLogger("verinfer.gateway.epochs")

CHALLENGE_TTL_S = 600  # a validator has this long to answer a challenge
MAX_DRAWS = 3  # redraws when drawn validators do not answer, before retrying next tick
CONCURRENT_CHALLENGES = 8  # challenges in flight at once (each asks its whole committee at once)
SKIPPED = "SKIPPED"  # challenged, but too few other nodes to draw a committee from
CLOSE_GRACE = 0.25  # of an epoch: how long after its end a chain-clocked epoch stays open
_SEED_DOMAIN = b"verinfer/committee/v1"
_INVALID_DOMAIN = b"verinfer/invalid-claim/v1"


class ValidatorTransport(ABC):
    """How a challenge reaches a validator (HTTP in the server, a function in tests)."""

    @abstractmethod
    async def verify(self, node: RegisteredNode, challenge: wire.Signed,
                     bundle: wire.ReceiptBundle) -> dict[str, Any]:
        """The validator's answer: its signed Verdict as JSON transport (fields + signature)."""


def committee_seed(beacon: bytes, receipt_id: bytes, role: str) -> bytes:
    """The randomness of a receipt's committee draw: fixed after the commit, one per role."""
    return hashlib.sha256(_SEED_DOMAIN + role.encode() + beacon + receipt_id).digest()


def verdict_claim(verdict: wire.Verdict, receipt: wire.Receipt, receipt_id: bytes) -> bytes:
    """A verdict as a 32-byte vote: the receipt's logits hash when it agrees, otherwise a
    value that names what the validator found (no two different findings vote together)."""
    if wire.verdict_agrees(verdict, receipt, receipt_id):
        return receipt.logits_hash
    body = (verdict.logits_hash + bytes([verdict.valid])
            + verdict.first_invalid_step.to_bytes(4, "big"))
    return hashlib.sha256(_INVALID_DOMAIN + body).digest()


@dataclass(frozen=True)
class Committee:
    members: tuple[str, ...]
    verdicts: tuple[dict[str, Any], ...]  # signed, in member order
    claims: tuple[bytes, ...]


class EpochPipeline:
    """Moves every epoch of the store one state further per `step`, as far as it can."""

    def __init__(
        self,
        store: GatewayStore,
        settler: Settler,
        transport: ValidatorTransport,
        identity: Identity,
        domain: wire.Domain,
        pos: PosParams,
        epoch_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.settler, self.transport = store, settler, transport
        self.identity, self.domain, self.pos = identity, domain, pos.validate()
        self.epoch_seconds = epoch_seconds
        self.clock = clock

    async def step(self, force_close: bool = False) -> None:
        """Close and commit the epochs that are due, then advance every unsettled one."""
        await self.close_and_commit(force_close)
        for epoch in self.store.epochs_in("committed"):
            if await self.decide(epoch.epoch):
                self.store.mark_decided(epoch.epoch)
                await self.settle(epoch.epoch)  # evidence has a deadline: send it at once
        for epoch in self.store.epochs_in("decided"):
            await self.settle(epoch.epoch)

    async def settle(self, epoch: int) -> None:
        try:
            settled = await asyncio.to_thread(self.settler.settle, self.settlement(epoch))
        except ChainError as exc:  # one epoch's failure does not hold up the others
            log.warning("epoch %d not settled: %s", epoch, exc)
            return
        if settled is not None:
            self.store.mark_settled(epoch, settled)
            log.info("epoch %d settled (%s)", epoch, settled)

    async def close_and_commit(self, force_close: bool = False) -> None:
        """Close the epochs that are due and commit their roots. Also run between challenges:
        a chain-clocked epoch must be committed before the end of the next one."""
        clock = self.settler.epoch_clock()
        if clock is None:
            open_epoch = self.store.open_epoch()
            due = self.clock() - open_epoch.opened_at >= self.epoch_seconds
            if (due or force_close) and self.store.receipts_of_epoch(open_epoch.epoch):
                closed = self.store.close_epoch(wire.receipts_root)
                log.info("epoch %d closed", closed.epoch)
        else:
            genesis, length = clock
            await asyncio.to_thread(self.settler.sync_clock)
            now = self.clock() + self.settler.clock_skew()
            for epoch in self.store.epochs_in("open"):
                # Receipts of jobs accepted just before the epoch's end still arrive for a
                # while; the contract takes the commit for an epoch or a minute after its end
                # (`settlement.commit_grace`), whichever is longer: a tick that comes late
                # under load still commits, and a failed commit is retried on the next tick.
                end = genesis + (epoch.epoch + 1) * length
                due = now >= end + length * CLOSE_GRACE
                if (due or force_close) and self.store.receipts_of_epoch(epoch.epoch):
                    self.store.close_epoch(wire.receipts_root, epoch.epoch)
                    log.info("epoch %d closed", epoch.epoch)
        for epoch in self.store.epochs_in("closed"):
            assert epoch.root is not None
            count = len(self.store.receipts_of_epoch(epoch.epoch))
            try:
                ref = await asyncio.to_thread(self.settler.commit, epoch.epoch, epoch.root,
                                              count)
            except ChainRevert as exc:
                if exc.reason != "commit window closed":
                    raise
                # Its receipts can never be settled: recorded as such, not retried forever.
                log.error("epoch %d missed its commit window: its %d receipts stay unpaid",
                          epoch.epoch, count)
                self.store.mark_missed(epoch.epoch)
                continue
            except ChainError as exc:
                log.warning("epoch %d not committed: %s", epoch.epoch, exc)
                continue
            self.store.mark_committed(epoch.epoch, ref)
        for epoch in self.store.epochs_in("committed"):
            if epoch.beacon is None:
                await self.fix_beacon(epoch.epoch)

    async def fix_beacon(self, epoch: int) -> bytes | None:
        """The epoch's beacon, recorded once it exists; then the chain settles the fees and
        opens the challenges (at once: its settlement window is two epochs)."""
        record = self.store.epoch(epoch)
        if record.beacon is not None:
            return record.beacon
        assert record.commit_ref is not None
        beacon = await asyncio.to_thread(self.settler.beacon, epoch, record.commit_ref)
        if beacon is None:
            return None
        self.store.set_beacon(epoch, beacon)
        await self.open_challenges(epoch)
        return beacon

    async def open_challenges(self, epoch: int) -> bool:
        bundles = tuple((r.receipt_id, r.bundle) for r in self.store.receipts_of_epoch(epoch))
        try:
            await asyncio.to_thread(self.settler.open_challenges, epoch, bundles)
        except ChainError as exc:
            log.warning("epoch %d: challenges not opened on chain: %s", epoch, exc)
            return False
        return True

    # ---------------------------------------------------------------- challenges

    def challenged(self, epoch: int) -> list[StoredReceipt]:
        """The epoch's receipts the beacon selects (empty until the beacon is known)."""
        beacon = self.store.epoch(epoch).beacon
        if beacon is None:
            return []
        ppm = self.settler.challenge_ppm()
        ppm = self.pos.challenge_ppm if ppm is None else ppm
        return [r for r in self.store.receipts_of_epoch(epoch)
                if is_challenged(r.receipt_id, beacon, ppm)]

    async def decide(self, epoch: int) -> bool:
        """Challenge the selected receipts; True once every one has an outcome."""
        if await self.fix_beacon(epoch) is None or not await self.open_challenges(epoch):
            return False
        pending = [r for r in self.challenged(epoch) if self.store.outcome(r.receipt_id) is None]
        done = True
        # A few challenges at once: each waits mostly on validators' replays and chain reads,
        # and nodes batch replays like any other request.
        for start in range(0, len(pending), CONCURRENT_CHALLENGES):
            await self.close_and_commit()
            batch = pending[start:start + CONCURRENT_CHALLENGES]
            results = await asyncio.gather(*(self.challenge(r) for r in batch))
            done = all(results) and done
        return done

    def _candidates(self) -> tuple[list[Candidate], dict[str, RegisteredNode]]:
        nodes = self.settler.registry()
        by_lower = {n.address.lower(): n for n in nodes}
        return [Candidate(n.address.lower(), n.stake, n.reputation) for n in nodes], by_lower

    async def challenge(self, stored: StoredReceipt) -> bool:
        """Run one receipt's challenge to an outcome (recorded); False to retry later."""
        bundle = wire.ReceiptBundle.from_json(stored.bundle)
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        beacon = self.store.epoch(stored.epoch).beacon
        assert beacon is not None
        asserter = receipt.node.lower()
        candidates, nodes = await asyncio.to_thread(self._candidates)
        chain_validators = await asyncio.to_thread(
            self.settler.committee, stored.epoch, stored.receipt_id, asserter, "validator")
        try:
            if chain_validators is not None:
                validators = await self._chain_committee(stored, bundle, nodes, "validator",
                                                         *chain_validators)
            else:
                validators = await self._committee(
                    stored, bundle, candidates, nodes, "validator",
                    committee_seed(beacon, stored.receipt_id, "validators"),
                    self.pos.validators, {asserter})
        except NotEnoughNodes as exc:
            self.store.add_outcome(stored.receipt_id, stored.epoch, SKIPPED, {"reason": str(exc)})
            return True
        if validators is None:
            return False
        arbitrators: Committee | None = None
        if any(c != receipt.logits_hash for c in validators.claims):
            try:
                chain_arbitrators = await asyncio.to_thread(
                    self.settler.committee, stored.epoch, stored.receipt_id, asserter,
                    "arbitrator")
                if chain_arbitrators is not None:
                    arbitrators = await self._chain_committee(stored, bundle, nodes,
                                                              "arbitrator", *chain_arbitrators)
                else:
                    arbitrators = await self._committee(
                        stored, bundle, candidates, nodes, "arbitrator",
                        committee_seed(beacon, stored.receipt_id, "arbitrators"),
                        self.pos.arbitrators, {asserter, *validators.members})
            except NotEnoughNodes as exc:
                log.warning("receipt %s: validators disagree but no arbitration committee can "
                            "be drawn (%s); retrying later", stored.receipt_id.hex(), exc)
                return False
            if arbitrators is None:
                return False
        try:
            verdict = decide_challenge(
                receipt.logits_hash, validators.members, validators.claims,
                None if arbitrators is None else arbitrators.claims)
        except NoMajority:
            log.warning("receipt %s: arbitration has no majority; retrying later",
                        stored.receipt_id.hex())
            return False
        evidence = ChallengeEvidence(
            receipt_id=stored.receipt_id, bundle=stored.bundle, outcome=verdict.outcome.value,
            validators=tuple(_checksum(v) for v in validators.members),
            verdicts=validators.verdicts,
            arbitrators=() if arbitrators is None else tuple(_checksum(a)
                                                                for a in arbitrators.members),
            arbitration=() if arbitrators is None else arbitrators.verdicts,
            faulty=tuple(_checksum(v) for v in verdict.faulty_validators))
        self.store.add_outcome(stored.receipt_id, stored.epoch, verdict.outcome.value,
                               _evidence_json(evidence))
        log.info("receipt %s: %s", stored.receipt_id.hex(), verdict.outcome.value)
        return True

    async def _committee(
        self, stored: StoredReceipt, bundle: wire.ReceiptBundle, candidates: list[Candidate],
        nodes: dict[str, RegisteredNode], role: str, seed: bytes, count: int,
        exclude: set[str],
    ) -> Committee | None:
        """Draw `count` members and collect their signed verdicts; members that already
        answered (before a restart) are not asked again; silent ones are replaced."""
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        answered = {v.validator.lower(): v.verdict for v in self.store.verdicts(stored.receipt_id)
                    if v.role == role}
        silent = {a for a, v in answered.items() if "error" in v}
        for _ in range(MAX_DRAWS):
            members = select_committee(candidates, self.pos.settlement.min_stake, seed, count,
                                       exclude=exclude | silent)
            for member in members:
                if member not in answered:
                    answered[member] = await self._ask(stored, bundle, nodes[member], role)
            newly_silent = {m for m in members if "error" in answered[m]}
            if not newly_silent:
                verdicts = tuple(answered[m] for m in members)
                claims = tuple(
                    verdict_claim(_verdict(v), receipt, stored.receipt_id) for v in verdicts)
                return Committee(members, verdicts, claims)
            silent |= newly_silent
        return None

    async def _chain_committee(
        self, stored: StoredReceipt, bundle: wire.ReceiptBundle,
        nodes: dict[str, RegisteredNode], role: str, members: tuple[str, ...], quorum: int,
    ) -> Committee | None:
        """The chain's drawn members for `role`: every one is asked (once, across restarts);
        the committee is those that answered, if they are at least the chain's quorum."""
        if len(members) < quorum:
            raise NotEnoughNodes(f"{len(members)} {role}s drawn, the chain needs {quorum}")
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        answered = {v.validator.lower(): v.verdict for v in self.store.verdicts(stored.receipt_id)
                    if v.role == role}
        # Drawn members are asked at once; one whose last answer was an error (down, busy, a
        # timeout) is asked again: the chain's committee is fixed, it cannot be replaced.
        ask = [m for m in members if m in nodes and (m not in answered or "error" in answered[m])]
        answers = await asyncio.gather(*(self._ask(stored, bundle, nodes[m], role) for m in ask))
        answered.update(zip(ask, answers))
        present = tuple(m for m in members if m in answered and "error" not in answered[m])
        if len(present) < quorum:
            return None
        verdicts = tuple(answered[m] for m in present)
        claims = tuple(verdict_claim(_verdict(v), receipt, stored.receipt_id) for v in verdicts)
        return Committee(present, verdicts, claims)

    async def _ask(self, stored: StoredReceipt, bundle: wire.ReceiptBundle,
                   node: RegisteredNode, role: str) -> dict[str, Any]:
        """Send one challenge; the answer (or why none came) is recorded before it is used."""
        receipt = bundle.receipt.message
        assert isinstance(receipt, wire.Receipt)
        challenge = wire.Challenge(
            receipt=stored.receipt_id, request=receipt.request, output_hash=receipt.output_hash,
            validator=node.address, gateway=self.identity.address,
            nonce=secrets.randbits(128), deadline=int(self.clock()) + CHALLENGE_TTL_S)
        signed = wire.Signed(challenge, wire.sign(self.domain, challenge,
                                                  self.identity.private_key))
        answer: dict[str, Any]
        try:
            answer = await self.transport.verify(node, signed, bundle)
            verdict = wire.Signed.from_json(wire.Verdict, answer)
            message = verdict.message
            assert isinstance(message, wire.Verdict)
            wire.check_signed_by(self.domain, message, verdict.signature, node.address)
            if (message.receipt != stored.receipt_id or message.validator != node.address
                    or message.gateway != self.identity.address):
                raise wire.MessageMismatch("the verdict is not about this challenge")
            answer = verdict.to_json()
        except VerinferError as exc:
            log.warning("%s %s gave no valid verdict: %s", role, node.address, exc)
            answer = {"error": str(exc)}
        self.store.add_verdict(stored.receipt_id, node.address.lower(), role, answer)
        return answer

    # ---------------------------------------------------------------- settlement

    def settlement(self, epoch: int) -> EpochSettlement:
        """The epoch's entries: a fee entry per receipt, a challenge entry per outcome."""
        record = self.store.epoch(epoch)
        assert record.root is not None
        receipts = self.store.receipts_of_epoch(epoch)
        by_id = {r.receipt_id: r for r in receipts}
        requests = tuple(RequestEntry(r.user.lower(), r.node.lower(), r.fee) for r in receipts)
        challenges: list[ChallengeEntry] = []
        evidence: list[ChallengeEvidence] = []
        for outcome in self.store.outcomes_of_epoch(epoch):
            if outcome.outcome == SKIPPED:
                continue
            r = by_id[outcome.receipt_id]
            e = _evidence_from_json(outcome.receipt_id, r.bundle, outcome.outcome, outcome.detail)
            challenges.append(ChallengeEntry(
                r.user.lower(), r.node.lower(), r.fee, tuple(v.lower() for v in e.validators),
                Outcome(outcome.outcome), tuple(f.lower() for f in e.faulty)))
            evidence.append(e)
        return EpochSettlement(epoch, record.root, tuple(r.receipt_id for r in receipts),
                               requests, tuple(challenges), tuple(evidence),
                               tuple((r.receipt_id, r.bundle) for r in receipts))


def _verdict(data: dict[str, Any]) -> wire.Verdict:
    return wire.Verdict.from_json(data)


def _checksum(address: str) -> str:
    return wire.check_address(address)


def _evidence_json(e: ChallengeEvidence) -> dict[str, Any]:
    return {"validators": list(e.validators), "verdicts": list(e.verdicts),
            "arbitrators": list(e.arbitrators), "arbitration": list(e.arbitration),
            "faulty": list(e.faulty)}


def _evidence_from_json(receipt_id: bytes, bundle: dict[str, Any], outcome: str,
                        d: dict[str, Any]) -> ChallengeEvidence:
    return ChallengeEvidence(receipt_id, bundle, outcome, tuple(d["validators"]),
                             tuple(d["verdicts"]), tuple(d["arbitrators"]),
                             tuple(d["arbitration"]), tuple(d["faulty"]))

