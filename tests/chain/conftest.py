"""Fixtures of the chain tests: the contract compiled once per session, fresh per test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boa
import pytest

from verinfer.chain.artifact import SOURCE_PATH
from verinfer.protocol.settlement import SettlementParams

PARAMS = SettlementParams(
    min_stake=1000,
    unbonding_delay=100,
    reward_asserter=10,
    reward_validators=9,
    slash=500,
    protocol_fee_bps=1000,
    discount_bps=5000,
    challenger_share_bps=5000,
)


@pytest.fixture(scope="session")
def settlement_deployer() -> Any:
    return boa.load_partial(str(SOURCE_PATH))


@pytest.fixture
def deploy(settlement_deployer: Any) -> Callable[..., Any]:
    """Deploy a fresh contract (from boa's default account, which gets every role)."""

    def _deploy(params: SettlementParams = PARAMS) -> Any:
        return settlement_deployer.deploy(params_tuple(params))

    return _deploy


def params_tuple(params: SettlementParams) -> tuple[int, ...]:
    return (
        params.min_stake,
        params.unbonding_delay,
        params.reward_asserter,
        params.reward_validators,
        params.slash,
        params.protocol_fee_bps,
        params.discount_bps,
        params.challenger_share_bps,
    )
