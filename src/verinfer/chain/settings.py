"""Where the chain is and who we are on it: one settings object, and the connection it makes.

Defaults point at the local dev chain (`http://127.0.0.1:8545`, state under `~/.verinfer`);
environment variables override the defaults and command-line flags override both:
`VERINFER_CHAIN_RPC`, `VERINFER_DATA_DIR`, `VERINFER_CHAIN_CONTRACT`,
`VERINFER_CHAIN_KEY_FILE` (a file holding a hex private key), `VERINFER_CHAIN_KEY` (the hex key
itself) and `VERINFER_CHAIN_DEV_ACCOUNT` (index of a dev-chain account; dev chain only).
Keys are never printed or logged; only the address they control is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict, ValidationError
from web3 import Web3

from verinfer.chain.client import SettlementClient, parse_address, translated_errors
from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_private_key
from verinfer.errors import ChainError
from verinfer.protocol.settlement import SettlementParams

ENV = {
    "rpc_url": "VERINFER_CHAIN_RPC",
    "data_dir": "VERINFER_DATA_DIR",
    "contract": "VERINFER_CHAIN_CONTRACT",
    "key_file": "VERINFER_CHAIN_KEY_FILE",
    "dev_account": "VERINFER_CHAIN_DEV_ACCOUNT",
}
KEY_ENV = "VERINFER_CHAIN_KEY"
RPC_TIMEOUT_S = 30

# Parameters of a fresh deployment (wei and seconds); `verinfer chain deploy` can override each.
DEFAULT_PARAMS = SettlementParams(
    min_stake=10**18,
    unbonding_delay=7 * 24 * 3600,
    reward_asserter=10**15,
    reward_validators=10**15,
    slash=5 * 10**17,
    protocol_fee_bps=1000,
    discount_bps=5000,
    challenger_share_bps=5000,
    withdrawal_delay=24 * 3600,
    challenge_ppm=10_000,
    challenge_window=3600,
    appeal_window=24 * 3600,
)
# The dev chain deploys with one-minute epochs and short delays so that the whole cycle
# (serve, commit, settle, challenge, withdraw) can be tried by hand.
DEV_EPOCH_SECONDS = 60
DEV_PARAMS = SettlementParams(**{
    **vars(DEFAULT_PARAMS), "unbonding_delay": 600, "withdrawal_delay": 420,
    "challenge_window": 120, "appeal_window": 120,
})


class ChainSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rpc_url: str = "http://127.0.0.1:8545"
    data_dir: Path = Path("~/.verinfer")
    contract: str | None = None
    key_file: Path | None = None
    dev_account: int | None = None

    @classmethod
    def load(cls, **overrides: Any) -> ChainSettings:
        """Defaults, then environment variables, then the non-None `overrides` (flags)."""
        values: dict[str, Any] = {k: os.environ[v] for k, v in ENV.items() if os.environ.get(v)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ChainError(f"bad chain setting {where}: {first['msg']}") from exc

    @property
    def chain_dir(self) -> Path:
        return self.data_dir.expanduser() / "chain"

    @property
    def devchain_dir(self) -> Path:
        return self.chain_dir / "devchain"

    @property
    def deployments_path(self) -> Path:
        return self.chain_dir / "deployments.json"


def read_deployments(settings: ChainSettings) -> dict[str, Any]:
    path = settings.deployments_path
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ChainError(f"{path} is not valid JSON: {exc}") from exc


def record_deployment(settings: ChainSettings, chain_id: int, entry: dict[str, Any]) -> None:
    """Remember the contract deployed on `chain_id` (written atomically)."""
    deployments = read_deployments(settings)
    deployments[str(chain_id)] = entry
    path = settings.deployments_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(deployments, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def resolve_account(settings: ChainSettings, chain_id: int) -> LocalAccount | None:
    """The signing key: key file, else VERINFER_CHAIN_KEY, else a dev account on the dev chain."""
    if settings.key_file is not None:
        path = settings.key_file.expanduser()
        try:
            return Account.from_key(path.read_text().strip())
        except OSError as exc:
            raise ChainError(f"key file {path} unreadable: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise ChainError(f"key file {path} does not hold a hex private key") from exc
    if os.environ.get(KEY_ENV):
        try:
            return Account.from_key(os.environ[KEY_ENV].strip())
        except (ValueError, TypeError) as exc:
            raise ChainError(f"{KEY_ENV} is not a hex private key") from exc
    if chain_id != DEV_CHAIN_ID:
        if settings.dev_account is not None:
            raise ChainError(
                f"dev accounts exist only on the dev chain (chain id {DEV_CHAIN_ID}), "
                f"not on chain {chain_id}: use --key-file"
            )
        return None
    index = settings.dev_account if settings.dev_account is not None else 0
    account = Account.from_key(dev_private_key(index))
    print(f"using dev account {index} ({account.address})", file=sys.stderr)
    return account


def web3_for(settings: ChainSettings) -> tuple[Web3, int]:
    """A web3 over HTTP JSON-RPC to `settings.rpc_url`, and the chain id it answered with."""
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": RPC_TIMEOUT_S}))
    with translated_errors("read chain id", settings.rpc_url):
        chain_id = w3.eth.chain_id
    return w3, chain_id


def connect(settings: ChainSettings, with_key: bool = True) -> SettlementClient:
    """A client of the deployed settlement contract, signing with the configured key.

    With `with_key`, a missing key is an error here, before anything is sent; the contract at
    the address must be the committed artifact's, not merely some code.
    """
    w3, chain_id = web3_for(settings)
    address = settings.contract
    if address is None:
        entry = read_deployments(settings).get(str(chain_id))
        if entry is None:
            raise ChainError(
                f"no settlement contract known for chain {chain_id}: pass --contract, set "
                f"{ENV['contract']}, or deploy one with `verinfer chain deploy`"
            )
        address = entry["address"]
    address = parse_address(address, "contract address")
    account = resolve_account(settings, chain_id) if with_key else None
    if with_key and account is None:
        raise ChainError(
            f"this command signs a transaction and no key is set for chain {chain_id}: pass "
            f"--key-file FILE (a file holding the hex private key) or set {ENV['key_file']}"
        )
    client = SettlementClient(w3, address, account, rpc_url=settings.rpc_url)
    client.check_contract(f"chain {chain_id}")
    return client
