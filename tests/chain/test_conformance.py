"""The contract against the protocol's conformance vectors (settlement-v1.json), in titanoboa.

Every case's setup and operations run as transactions; each operation that the vector says
reverts must revert with exactly that string, and the full final state (balances, stakes,
unbonding, treasury, reputation, settled epochs and their roots) must equal the expected one,
with the contract holding exactly the ledger's total funds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boa
import pytest
from boa_driver import apply_op, read_state
from conftest import params_tuple

from verinfer.protocol.settlement import SettlementParams
from verinfer.protocol.settlement_codec import params_from_json, state_from_json

VECTORS = Path(__file__).parents[1] / "vectors" / "protocol" / "settlement-v1.json"
SUITE = json.loads(VECTORS.read_text())
ADDRESS_KEYS = ("address", "node", "user", "asserter")


def _addresses_and_epochs(case: dict[str, Any]) -> tuple[set[str], set[int]]:
    addresses: set[str] = set()
    epochs: set[int] = set()
    for section in ("initial_state", "expected_state"):
        for table in ("balance", "stake", "unbonding", "reputation"):
            addresses |= set(case[section][table])
        epochs |= {int(e) for e in case[section]["epoch_roots"]}
    for op in case["setup"] + case["operations"]:
        addresses |= {op[k] for k in ADDRESS_KEYS if k in op}
        if op["op"] == "settle":
            batch = op["batch"]
            epochs.add(batch["epoch"])
            for entry in batch["requests"] + batch["challenges"]:
                addresses |= {entry["user"], entry["asserter"]}
                addresses |= set(entry.get("validators", ())) | set(entry.get("faulty_validators", ()))
    return addresses, epochs


def test_suite_header() -> None:
    assert SUITE["version"] == 1
    assert len(SUITE["cases"]) >= 40


@pytest.mark.parametrize("case", SUITE["cases"], ids=[c["name"] for c in SUITE["cases"]])
def test_contract_matches_vector(case: dict[str, Any], settlement_deployer: Any) -> None:
    params: SettlementParams = params_from_json(case["params"]).validate()
    boa.env.timestamp = 0
    contract = settlement_deployer.deploy(params_tuple(params))
    addresses, epochs = _addresses_and_epochs(case)
    for op in case["setup"]:
        apply_op(contract, op)
    assert read_state(contract, addresses, epochs) == state_from_json(case["initial_state"])
    for i, op in enumerate(case["operations"]):
        if "revert" in op:
            before = read_state(contract, addresses, epochs)
            with boa.reverts(op["revert"]):
                apply_op(contract, op)
            assert read_state(contract, addresses, epochs) == before, f"operation {i} left state"
        else:
            apply_op(contract, op)
    expected = state_from_json(case["expected_state"])
    assert read_state(contract, addresses, epochs) == expected
    assert boa.env.get_balance(contract.address) == expected.total_funds()
