"""`verinfer verify`: check a receipt offline, on chain when reachable, and by local replay.

Offline: the receipt bundle's JSON parses strictly; the prompt and stop roots, the request
commitment, the output hash, the job's and the receipt's digests are recomputed and both
signers recovered (`verinfer.protocol.wire.ReceiptBundle.check`). When the bundle carries the
gateway's settlement record (`"settlement": {"epoch", "receiptsRoot", "proof"}`), the Merkle
proof must lead from the receipt id to the root, and when a chain is reachable the root must be
the one the epoch settled with. `--replay --model DIR` runs the request on the local engine and
compares model_id, output tokens and logits hash. Any failure is one line saying why.

A node called directly (no gateway) issues its own job: gateway and user are the zero address,
the price is 0 and the job's signature is 65 zero bytes, since nobody signed it. Such a
*direct* receipt is checked for everything the node signed (its signature, the model_id and the
request commitment, the output hash) and is reported as not settled through a gateway: no
fee, no epoch, nothing on chain. A receipt whose job is half direct (zero gateway with a
signature, or a signed job without one) or that claims an epoch is rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from verinfer.errors import VerinferError
from verinfer.protocol import wire
from verinfer.protocol.merkle import verify_proof


class ReceiptRejected(VerinferError):
    """A receipt failed a check; the message says which one."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"receipt rejected: {reason}")


@dataclass(frozen=True)
class Inclusion:
    """Where the gateway says a receipt was committed: epoch, root and Merkle proof."""

    epoch: int
    receipts_root: bytes
    proof: tuple[tuple[bool, bytes], ...]


UNSIGNED_JOB = bytes(65)  # the signature field of a job a node issued itself


def is_direct(bundle: wire.ReceiptBundle) -> bool:
    """The job was issued by the node itself (no gateway): the rule in the module docstring."""
    job = bundle.job.message
    return isinstance(job, wire.Job) and job.gateway == wire.ZERO_ADDRESS \
        and bundle.job.signature == UNSIGNED_JOB


def check_direct(bundle: wire.ReceiptBundle) -> wire.Receipt:
    """`ReceiptBundle.check` without the gateway's signature, which a direct job has not."""
    job = bundle.job.message
    assert isinstance(job, wire.Job)
    if wire.prompt_root(bundle.prompt_token_ids) != bundle.request.prompt_root:
        raise wire.MessageMismatch("the prompt token ids do not match the request's promptRoot")
    if len(bundle.prompt_token_ids) != bundle.request.prompt_length:
        raise wire.MessageMismatch("the prompt length does not match the request")
    if wire.stop_root(bundle.stop) != bundle.request.stop_root:
        raise wire.MessageMismatch("the stop sequences do not match the request's stopRoot")
    if job.user != wire.ZERO_ADDRESS or job.price_per_token != 0:
        raise wire.MessageMismatch("a job without a gateway bills nobody: its user must be the "
                                   "zero address and its price 0")
    return wire.check_receipt(bundle.domain, bundle.receipt, job, bundle.request,
                              bundle.output_token_ids)


def load_bundle(data: Any, allow_direct: bool = False) -> tuple[wire.ReceiptBundle, wire.Receipt]:
    """Parse and check a receipt bundle offline (a direct one too with `allow_direct`);
    raises `ReceiptRejected` with the reason."""
    try:
        bundle = wire.ReceiptBundle.from_json(data)
        if allow_direct and is_direct(bundle):
            return bundle, check_direct(bundle)
        return bundle, bundle.check()
    except VerinferError as exc:
        raise ReceiptRejected(str(exc)) from exc


def inclusion_of(data: Any) -> Inclusion | None:
    record = data.get("settlement") if isinstance(data, dict) else None
    if record is None:
        return None
    try:
        proof = tuple((bool(left), bytes.fromhex(str(h).removeprefix("0x")))
                      for left, h in record["proof"])
        return Inclusion(int(record["epoch"]),
                         bytes.fromhex(str(record["receiptsRoot"]).removeprefix("0x")), proof)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptRejected(f"malformed settlement record: {exc}") from exc


def check_inclusion(receipt_id: bytes, inclusion: Inclusion) -> None:
    if not verify_proof(receipt_id, inclusion.proof, inclusion.receipts_root):
        raise ReceiptRejected(
            f"the Merkle proof does not lead to epoch {inclusion.epoch}'s receipts root")


def replay(bundle: wire.ReceiptBundle, receipt: wire.Receipt, model_dir: Path) -> str:
    """Run the request on the local engine; compare model_id, tokens and logits hash."""
    from verinfer.engine import Engine, SamplingParams
    from verinfer.engine.params import TEMPERATURE_UNIT, TOP_P_UNIT

    engine = Engine.load(model_dir)
    local_id = bytes.fromhex(engine.model_id.removeprefix("0x"))
    if local_id != bundle.request.model_id:
        raise ReceiptRejected(f"model_id {bundle.request.model_id.hex()} is not the local model's "
                              f"({local_id.hex()}): replay with the model the receipt names")
    req = bundle.request
    params = SamplingParams(
        max_tokens=req.max_tokens, temperature=req.temperature_milli / TEMPERATURE_UNIT,
        top_k=req.top_k, top_p=req.top_p_micro / TOP_P_UNIT, seed=req.seed,
        stop=bundle.stop, ignore_eos=req.ignore_eos)
    [result] = engine.generate([list(bundle.prompt_token_ids)], params)
    if tuple(result.token_ids) != bundle.output_token_ids:
        first = next((i for i, (a, b) in enumerate(zip(result.token_ids, bundle.output_token_ids,
                                                        strict=False)) if a != b),
                     min(len(result.token_ids), len(bundle.output_token_ids)))
        raise ReceiptRejected(f"replay gives other tokens from step {first} on")
    if bytes.fromhex(result.logits_hash) != receipt.logits_hash:
        raise ReceiptRejected("replay gives the same tokens but another logits hash")
    return f"replay: {len(result.token_ids)} tokens and the logits hash match"


def verify_command(
    path: Annotated[Path, typer.Argument(help="receipt JSON (a response's `verinfer` field or "
                                              "GET /v1/receipts/{id})")],
    replay_: Annotated[bool, typer.Option("--replay", help="replay it on the local engine")] = False,
    model: Annotated[Path | None, typer.Option("--model", help="model directory for --replay")]
    = None,
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="check on-chain inclusion "
                                                "here [env VERINFER_CHAIN_RPC]")] = None,
    contract: Annotated[str | None, typer.Option("--contract")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="skip the on-chain check")] = False,
) -> None:
    """Check a receipt: signatures, request commitment, output hash, batch inclusion, replay."""
    if replay_ and model is None:
        raise ReceiptRejected("--replay needs --model DIR (the model the receipt names)")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ReceiptRejected(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ReceiptRejected(f"{path} is not JSON: {exc}") from exc
    bundle, receipt = load_bundle(data, allow_direct=True)
    rid = bundle.receipt_id
    job = bundle.job.message
    assert isinstance(job, wire.Job)
    direct = is_direct(bundle)
    inclusion = inclusion_of(data)
    if direct and inclusion is not None:
        raise ReceiptRejected("a direct receipt (no gateway) cannot be in a gateway's epoch")
    if direct:
        typer.echo(f"receipt 0x{rid.hex()}: node signature and commitments OK (DIRECT: the node "
                   "was called without a gateway)")
        typer.echo(f"  node {receipt.node}; no gateway, no user, no fee")
    else:
        typer.echo(f"receipt 0x{rid.hex()}: signatures and commitments OK")
        typer.echo(f"  node {receipt.node}, gateway {job.gateway}, user {receipt.user}")
    typer.echo(f"  model_id 0x{bundle.request.model_id.hex()}, {bundle.request.prompt_length} "
               f"prompt + {receipt.output_length} output tokens, fee {receipt.fee} wei")
    if direct:
        typer.echo("  not settled through a gateway: this receipt is never committed or "
                   "settled on chain")
    elif inclusion is None:
        typer.echo("  batch inclusion: not yet committed (fetch it later from the gateway)")
    else:
        check_inclusion(rid, inclusion)
        typer.echo(f"  batch inclusion: in epoch {inclusion.epoch}'s receipts root")
        if not offline:
            typer.echo("  on chain: " + _on_chain(inclusion, job.gateway, rpc_url, contract))
    if replay_:
        assert model is not None
        typer.echo("  " + replay(bundle, receipt, model))


def _on_chain(inclusion: Inclusion, gateway: str, rpc_url: str | None,
              contract: str | None) -> str:
    """What the gateway (the settler) committed for the epoch on chain."""
    from verinfer.chain.settings import ChainSettings, connect

    try:
        client = connect(ChainSettings.load(rpc_url=rpc_url, contract=contract), with_key=False)
        commitment = client.commitment(gateway, inclusion.epoch)
    except VerinferError as exc:
        return f"not checked ({exc})"
    if commitment is None:
        return f"epoch {inclusion.epoch} not committed yet"
    if commitment["root"] != inclusion.receipts_root:
        raise ReceiptRejected(f"epoch {inclusion.epoch} committed on chain with another root")
    state = "settled" if commitment["settled"] else "committed, not settled yet,"
    return f"epoch {inclusion.epoch} {state} with this root"


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
