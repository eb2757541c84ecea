"""`verinfer up`: a whole verified network on loopback — dev chain, nodes, gateway — one process each.

The network lives in one data directory (`VERINFER_DATA_DIR`, default `~/.verinfer`): the dev
chain's journal, each node's key and nonce book, the gateway's key and database, the logs and the
ports. Running it again reuses all of it. Honest nodes are deliberately heterogeneous — one on
the torch reference path, one with a single thread, one with ATen's scalar kernels — since the
engine promises the same bytes on all of them; `--cheaters K --strategy S` makes K more nodes
dishonest the way a real cheater would be.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verinfer.errors import LocalError
from verinfer.gateway.cli import new_api_key
from verinfer.keyfile import Identity, load_key, load_or_create_key
from verinfer.localnet.layout import Layout, Ports
from verinfer.localnet.provision import top_up
from verinfer.localnet.supervisor import ServiceSpec, Supervisor

STRATEGIES = ("wrong-tokens", "skip-layers", "substitute-model", "sometimes", "late-divergence")
# Honest nodes cycle through these: different arithmetic routes that must give the same bytes.
HONEST_FLAVOURS: tuple[tuple[str, dict[str, str], tuple[str, ...]], ...] = (
    ("torch reference path", {"VERINFER_KERNELS": "torch"}, ()),
    ("fused kernels, 1 thread", {}, ("--threads", "1")),
    ("ATen scalar kernels", {"ATEN_CPU_CAPABILITY": "default"}, ()),
)
CHAIN_START_S = 120.0
NODE_START_S = 300.0  # quantizing the model and building kernels on a cold machine
GATEWAY_START_S = 120.0
PARTY_GAS_WEI = 10**18
USER_DEPOSIT_WEI = 10 * 10**18
TREASURY_WEI = 10 * 10**18
NODE_STAKE_WEI = 5 * 10**18
ALLOWANCE_S = 365 * 24 * 3600


class UpError(LocalError):
    """`verinfer up` was asked for something it cannot start."""


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    model: Path
    nodes: int = 3
    cheaters: int = 0
    strategy: str | None = None
    challenge_ppm: int = 10_000
    validators: int = 1
    arbitrators: int = 1
    epoch_seconds: float = 20.0
    force: bool = False

    def check(self) -> UpOptions:
        if self.nodes < 1:
            raise UpError("--nodes must be at least 1")
        if self.cheaters < 0:
            raise UpError("--cheaters cannot be negative")
        if self.cheaters and self.strategy not in STRATEGIES:
            raise UpError(f"--cheaters needs --strategy, one of: {', '.join(STRATEGIES)}")
        if not (self.model / "config.json").is_file():
            raise UpError(f"{self.model} is not a model directory (no config.json)")
        if not 0 <= self.challenge_ppm <= 1_000_000:
            raise UpError("--p must be in 0..1000000 (parts per million)")
        needed = 1 + self.validators + self.arbitrators
        if needed > self.nodes + self.cheaters:
            raise UpError(
                f"{self.validators} validators and {self.arbitrators} arbitrators need at least "
                f"{needed} nodes (asserter, validators and arbitrators are distinct)"
            )
        return self


@dataclass(frozen=True)
class NodeRole:
    index: int
    description: str
    env: dict[str, str]
    args: tuple[str, ...]
    strategy: str | None = None


def node_roles(options: UpOptions) -> list[NodeRole]:
    """Honest nodes first (cycling through the flavours), then the cheaters."""
    roles = []
    for i in range(options.nodes):
        description, env, args = HONEST_FLAVOURS[i % len(HONEST_FLAVOURS)]
        roles.append(NodeRole(i + 1, f"honest, {description}", env, args))
    for j in range(options.cheaters):
        index = options.nodes + j + 1
        roles.append(NodeRole(index, f"cheater ({options.strategy})", {}, (),
                              options.strategy))
    return roles


def verinfer_command(*args: str) -> list[str]:
    """The command line of a verinfer subcommand, in this very Python environment."""
    return [sys.executable, "-m", "verinfer.cli", *args]


def chain_spec(layout: Layout, ports: Ports) -> ServiceSpec:
    return ServiceSpec(
        "chain",
        verinfer_command("chain", "serve", "--port", str(ports.chain),
                         "--data-dir", str(layout.data_dir), "--no-deploy"),
        ready_line=r"listening on (http://\S+)",
        timeout_s=CHAIN_START_S,
    )


def node_spec(layout: Layout, ports: Ports, role: NodeRole, options: UpOptions,
              rpc_url: str, contract: str) -> ServiceSpec:
    port = ports.nodes[role.index - 1]
    args = ["node", "--model", str(options.model), "--port", str(port),
            "--data-dir", str(layout.node_dir(role.index)), "--dev-register",
            # a funder per node: their registrations are independent transactions
            "--dev-funder", str(1 + (role.index - 1) % 8),
            # several slashes' worth, so one epoch's slashes of a cheater are all covered
            "--dev-stake", f"{NODE_STAKE_WEI}wei", *role.args]
    if role.strategy is not None:
        args += ["--cheat", role.strategy]
    return ServiceSpec(
        f"node-{role.index}",
        verinfer_command(*args),
        env={**role.env, "VERINFER_DATA_DIR": str(layout.data_dir),
             "VERINFER_CHAIN_RPC": rpc_url, "VERINFER_CHAIN_CONTRACT": contract},
        # Its own "listening on" line first: the port could have been taken by another program
        # since it was chosen, and that program's /health must not pass for this node's.
        ready_line=r"listening on (http://\S+)",
        ready_url="{match}/health",
        timeout_s=NODE_START_S,
    )


def gateway_spec(layout: Layout, ports: Ports, options: UpOptions, rpc_url: str,
                 contract: str) -> ServiceSpec:
    args = ["gateway", "--port", str(ports.gateway), "--data-dir", str(layout.data_dir),
            "--model", str(options.model), "--p", str(options.challenge_ppm),
            "--validators", str(options.validators), "--arbitrators", str(options.arbitrators),
            "--epoch-seconds", str(max(int(options.epoch_seconds), 1))]  # as deployed
    if options.force:
        args.append("--force")
    return ServiceSpec(
        "gateway",
        verinfer_command(*args),
        env={"VERINFER_DATA_DIR": str(layout.data_dir), "VERINFER_CHAIN_RPC": rpc_url,
             "VERINFER_CHAIN_CONTRACT": contract},
        ready_line=r"gateway 0x[0-9a-fA-F]{40} on (http://\S+)/v1",  # printed once bound
        ready_url="{match}/health",
        timeout_s=GATEWAY_START_S,
    )


@dataclass
class Network:
    """What `start_network` brought up: the supervisor and the addresses a user needs."""

    supervisor: Supervisor
    layout: Layout
    ports: Ports
    roles: list[NodeRole]
    rpc_url: str
    contract: str
    user: Identity
    api_key: str
    node_addresses: dict[int, str]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}/v1"

    def stop(self) -> None:
        self.supervisor.stop_all()


def start_network(
    options: UpOptions,
    say: Callable[[str], object],
    status: Callable[[str], object] | None = None,
) -> Network:
    """Start chain, nodes and gateway in order; on any failure stop what started and raise."""
    options.check()
    layout = Layout(options.data_dir.expanduser())
    roles = node_roles(options)
    ports = layout.load_ports(len(roles))
    supervisor = Supervisor(layout.log_dir)
    try:
        chain = supervisor.start(chain_spec(layout, ports), status)
        rpc_url = chain.match
        contract = deploy_contract(layout, rpc_url, options)
        say(f"dev chain at {rpc_url}, settlement contract {contract}")
        user, api_key = provision_parties(layout, rpc_url, contract, options, say)
        specs = [node_spec(layout, ports, r, options, rpc_url, contract) for r in roles]
        say(f"starting {len(specs)} nodes: " + "; ".join(
            f"node-{r.index} {r.description}" for r in roles))
        supervisor.start_all(specs, status)
        supervisor.start(gateway_spec(layout, ports, options, rpc_url, contract), status)
        addresses = {r.index: load_key(layout.node_dir(r.index) / "node.key").address for r in roles}
        return Network(supervisor, layout, ports, roles, rpc_url, contract, user, api_key,
                       addresses)
    except BaseException:
        supervisor.stop_all()
        raise


def network_params(options: UpOptions) -> tuple[Any, int]:
    """The dev parameters with this network's p and epoch length, and windows short enough for
    a demo: validators answer within a few epochs, an accusation can be appealed for two."""
    from dataclasses import replace

    from verinfer.chain.settings import DEV_PARAMS
    from verinfer.protocol.settlement import settle_span

    epoch = max(int(options.epoch_seconds), 1)
    challenge_window = max(DEV_PARAMS.challenge_window, 6 * epoch)
    appeal_window = 2 * epoch
    span = settle_span(epoch, challenge_window)
    params = replace(
        DEV_PARAMS, challenge_ppm=options.challenge_ppm, challenge_window=challenge_window,
        appeal_window=appeal_window,
        withdrawal_delay=max(DEV_PARAMS.withdrawal_delay, span + epoch),
        unbonding_delay=max(DEV_PARAMS.unbonding_delay, span + appeal_window + epoch))
    return params, epoch


def deploy_contract(layout: Layout, rpc_url: str, options: UpOptions) -> str:
    """The network's settlement contract: the recorded one if the chain has it, otherwise a new
    one with `network_params` (a reused data directory keeps its first parameters)."""
    from eth_account import Account
    from web3 import Web3

    from verinfer.chain.client import SettlementClient
    from verinfer.chain.devkeys import DEV_CHAIN_ID, dev_private_key
    from verinfer.chain.settings import ChainSettings, read_deployments, record_deployment

    settings = ChainSettings(data_dir=layout.data_dir)
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    entry = read_deployments(settings).get(str(DEV_CHAIN_ID))
    if entry is not None and SettlementClient(w3, entry["address"]).is_this_contract():
        return str(entry["address"])
    params, epoch = network_params(options)
    deployer = Account.from_key(dev_private_key(0))
    client, receipt = SettlementClient.deploy(w3, deployer, params, rpc_url=rpc_url,
                                              epoch_seconds=epoch)
    record_deployment(settings, DEV_CHAIN_ID, {
        "address": client.address, "block": receipt["blockNumber"],
        "deployer": deployer.address, "tx": "0x" + bytes(receipt["transactionHash"]).hex()})
    return client.address


def provision_parties(layout: Layout, rpc_url: str, contract: str, options: UpOptions,
                      say: Callable[[str], object]) -> tuple[Identity, str]:
    """The gateway's key with gas and the settler role; the demo user's key, deposit, signed
    allowance for the gateway (any party may submit it: the gateway's owner does) and API key."""
    from eth_account import Account
    from web3 import Web3

    from verinfer.chain.client import Role, SettlementClient
    from verinfer.chain.devkeys import dev_private_key
    from verinfer.gateway.store import GatewayStore

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    gateway, _ = load_or_create_key(layout.gateway_dir / "key")
    top_up(w3, gateway.address, PARTY_GAS_WEI)
    owner = SettlementClient(w3, contract, Account.from_key(dev_private_key(0)), rpc_url=rpc_url)
    if owner.treasury() < TREASURY_WEI:
        # rewards of passed challenges come from the treasury; a new dev chain's is empty
        owner.fund_treasury(TREASURY_WEI - owner.treasury())
        say(f"treasury funded to {TREASURY_WEI / 1e18:g} ETH from dev account 0")
    if not owner.roles_of(gateway.address) & Role.SETTLER:
        owner.grant_role(gateway.address, Role.SETTLER)
        say(f"gateway {gateway.address} may settle epochs")
    user, _ = load_or_create_key(layout.data_dir / "user" / "key")
    top_up(w3, user.address, PARTY_GAS_WEI + USER_DEPOSIT_WEI)
    client = SettlementClient(w3, contract, Account.from_key(user.private_key), rpc_url=rpc_url)
    missing = USER_DEPOSIT_WEI - client.balance_of(user.address)
    if missing > 0:
        client.deposit(missing)
        say(f"demo user {user.address} deposited {missing / 1e18:g} ETH for fees")
    if allow_gateway(owner, user, gateway.address):
        say(f"demo user allows the gateway up to {USER_DEPOSIT_WEI / 1e18:g} ETH per epoch")
    key_file = layout.data_dir / "user" / "api_key"
    store = GatewayStore(layout.gateway_dir / "gateway.sqlite")
    try:
        api_key = key_file.read_text().strip() if key_file.exists() else ""
        if not api_key or store.account_of_key(api_key) is None:
            api_key = new_api_key()
            store.add_api_key(api_key, user.address, "verinfer up demo user")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(api_key + "\n")
    finally:
        store.close()
    return user, api_key


def allow_gateway(submitter: Any, user: Identity, gateway: str) -> bool:
    """The user's signed `Allowance` for `gateway` (the settler), unless one is in force;
    True when a new one was submitted."""
    from verinfer.protocol import wire

    fns = submitter.contract.functions
    settler, cap, expiry = submitter._read("read allowance",
                                           fns.allowance_of(user.address).call)
    now = int(time.time())
    if settler.lower() == gateway.lower() and cap >= USER_DEPOSIT_WEI \
            and expiry > now + ALLOWANCE_S // 2:
        return False
    nonce = submitter._read("read allowance nonce", fns.allowance_nonce(user.address).call) + 1
    allowance = wire.Allowance(user=user.address, settler=wire.check_address(gateway),
                               cap_per_epoch=USER_DEPOSIT_WEI, expiry=now + ALLOWANCE_S,
                               nonce=nonce)
    domain = wire.Domain(submitter.w3.eth.chain_id, submitter.address)
    submitter.set_allowance({f.name: getattr(allowance, f.attr) for f in allowance.FIELDS},
                            wire.sign(domain, allowance, user.private_key))
    return True


def instructions(network: Network, model_name: str) -> str:
    """How to call the network: shell-ready lines first, then curl and the openai client."""
    curl_body = ('{"model": "\'"$VERINFER_MODEL"\'", "messages": '
                 '[{"role": "user", "content": "What is a class?"}]}')
    curl = ('  curl -s "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer '
            f"$OPENAI_API_KEY\" -H 'Content-Type: application/json' -d '{curl_body}'")
    python = ("  python -c \"import os, openai; print(openai.OpenAI().completions.create("
              "model=os.environ['VERINFER_MODEL'], prompt='The import statement', "
              "max_tokens=32).choices[0].text)\"")
    return "\n".join([
        f"OPENAI_BASE_URL={network.gateway_url}",
        f"OPENAI_API_KEY={network.api_key}",
        f"VERINFER_MODEL={model_name}",
        "",
        ("Paste the three lines above into a shell, then "
         "`export OPENAI_BASE_URL OPENAI_API_KEY VERINFER_MODEL`, and:"),
        curl,
        python,
        ("Every response carries a signed receipt (field `verinfer`); check one with "
         f"`verinfer verify RECEIPT.json`. Logs: {network.layout.log_dir}. Stop: Ctrl-C."),
    ])


def wait_until_interrupted(network: Network, say: Callable[[str], object],
                           poll_s: float = 1.0) -> None:
    """Keep the network up until Ctrl-C; report a process that dies, once."""
    reported: set[str] = set()
    while True:
        for service in network.supervisor.dead():
            if service.name not in reported:
                reported.add(service.name)
                say(f"{service.name} exited with status {service.process.returncode}; last "
                    f"lines of {service.log_path}:\n{service.log_tail()}")
        time.sleep(poll_s)


def model_name_of(model: Path) -> str:
    """The name nodes and gateway serve a model under: its directory's name."""
    return model.resolve().name
