"""The embedded dev chain: py-evm (eth-tester) behind Ethereum JSON-RPC on loopback, durable.

Durability: every state change (a transaction, an empty block, a clock jump) is appended to a
journal together with the timestamp of the block it was mined in and the resulting block hash,
and the journal is fsync'ed BEFORE the caller gets its answer. A restart replays the journal
deterministically into a fresh py-evm chain from the same genesis and checks that every block
hash comes out the same, so a `kill -9` at any moment loses no confirmed transaction and the
state comes back identical. Blocks are mined one per transaction, with a deterministic
`prevrandao` (derived from the parent hash) so that replay reproduces the same hashes.

Calls and gas estimates run against the pending block stamped with the current time, so a
call made after an unbonding delay has passed sees that time even if no block was mined since.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from verinfer.chain.devkeys import DEV_ACCOUNT_COUNT, DEV_CHAIN_ID, dev_private_key
from verinfer.errors import ChainError

JOURNAL_NAME = "journal.jsonl"
GENESIS_NAME = "genesis.json"
DEV_BALANCE_WEI = 1_000_000 * 10**18
FORMAT_VERSION = 1
ERROR_SELECTOR = keccak(b"Error(string)")[:4]
ZERO_ADDRESS = "0x" + "00" * 20

# JSON-RPC error codes (EIP-1474 and the geth convention for reverts).
CODE_PARSE = -32700
CODE_INVALID_REQUEST = -32600
CODE_METHOD_NOT_FOUND = -32601
CODE_INVALID_PARAMS = -32602
CODE_SERVER = -32000
CODE_REVERT = 3

STATE_CHANGING = frozenset(
    {"eth_sendRawTransaction", "eth_sendTransaction", "evm_mine", "evm_increaseTime"}
)


class RpcError(Exception):
    """A JSON-RPC error object: returned to the caller, never a crash of the server."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def _to_rpc(value: Any) -> Any:
    """eth-tester values to JSON-RPC wire values: quantities and bytes as 0x-hex."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _to_rpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_rpc(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON-RPC")


def _revert_error(exc: BaseException) -> RpcError:
    """eth-tester's TransactionFailed (a reason string or raw revert bytes) as a revert error."""
    arg: Any = exc.args[0] if exc.args else b""
    while isinstance(arg, BaseException):
        arg = arg.args[0] if arg.args else b""
    if isinstance(arg, (bytes, bytearray)):
        data = bytes(arg)
        reason = data.hex()
        if data[:4] == ERROR_SELECTOR:
            from eth_abi import decode as abi_decode

            reason = abi_decode(["string"], data[4:])[0]
    else:
        reason = str(arg)
        data = ERROR_SELECTOR + abi_encode(["string"], [reason])
    return RpcError(CODE_REVERT, f"execution reverted: {reason}", "0x" + data.hex())


class Journal:
    """Append-only JSON-lines log of state changes, each record fsync'ed before it counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def read(self) -> list[dict[str, Any]]:
        """Records in order; a torn last line (a crash mid-write, never acknowledged) is cut off."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except ValueError:
                break
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            new = not self.path.exists()
            self._file = open(self.path, "ab")  # noqa: SIM115 - open for the chain's lifetime
            if new:
                _fsync_dir(self.path.parent)
        self._file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_backend(genesis_timestamp: int) -> Any:
    """A py-evm backend with the dev accounts, a fixed genesis and reproducible blocks."""
    from eth_keys import keys
    from eth_tester import PyEVMBackend
    from eth_tester.backends.pyevm.main import (
        generate_genesis_state_for_keys,
        get_default_account_state,
    )
    from eth_tester.exceptions import TransactionFailed
    from eth_utils import ValidationError as EthUtilsValidationError
    from eth_utils.toolz import assoc

    class DevBackend(PyEVMBackend):
        def mine_blocks(self, num_blocks: int = 1, coinbase: bytes = b"\x00" * 20) -> tuple:
            hashes = []
            for _ in range(num_blocks):
                mix_hash = keccak(b"prevrandao" + self.chain.header.parent_hash)
                block = self.chain.mine_block(coinbase=coinbase, mix_hash=mix_hash)
                hashes.append(block.hash)
            return tuple(hashes)

        def call(self, transaction: dict[str, Any], block_number: Any = "latest") -> bytes:
            if block_number == "latest":
                block_number = "pending"
            return super().call(transaction, block_number)

        def estimate_gas(self, transaction: dict[str, Any], block_number: Any = "latest") -> int:
            if block_number != "latest":
                return super().estimate_gas(transaction, block_number)
            from eth.exceptions import InvalidInstruction, Revert
            from eth.vm.spoof import SpoofTransaction

            unsigned = self._get_normalized_and_unsigned_evm_transaction(
                assoc(transaction, "gas", 21000), "pending"
            )
            spoofed = SpoofTransaction(unsigned, from_=transaction["from"])
            try:
                return self.chain.estimate_gas(spoofed, self.chain.header)
            except (Revert, InvalidInstruction) as exc:
                raise TransactionFailed(exc) from exc
            except EthUtilsValidationError:
                raise

    account_keys = tuple(keys.PrivateKey(dev_private_key(i)) for i in range(DEV_ACCOUNT_COUNT))
    genesis_state = generate_genesis_state_for_keys(
        account_keys, overrides={"balance": DEV_BALANCE_WEI}
    )
    # Sender-less eth_call / eth_estimateGas run as the zero address (as geth does); it must be
    # able to afford the gas that eth-tester charges even to a simulated call.
    genesis_state[b"\x00" * 20] = get_default_account_state({"balance": DEV_BALANCE_WEI})
    genesis_params = PyEVMBackend.generate_genesis_params(
        overrides={"timestamp": genesis_timestamp}
    )
    backend = DevBackend(genesis_parameters=genesis_params, genesis_state=genesis_state)
    backend.account_keys = account_keys
    return backend


@dataclass
class DevChain:
    """One py-evm chain with its journal; `handle` answers one JSON-RPC request, thread-safe."""

    data_dir: Path
    clock: Callable[[], float] = time.time
    log: Callable[[str], None] = lambda _msg: None
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _offset: int = field(default=0, init=False)
    _failed: str = field(default="", init=False)

    def __post_init__(self) -> None:
        from eth_tester import EthereumTester
        from eth_tester.exceptions import TransactionFailed
        from eth_utils import ValidationError as EthUtilsValidationError
        from web3.providers.eth_tester.defaults import API_ENDPOINTS
        from web3.providers.eth_tester.middleware import request_formatters, result_formatters

        self._endpoints: dict[str, Any] = dict(API_ENDPOINTS)
        self._request_formatters: dict[str, Any] = {str(k): v for k, v in request_formatters.items()}
        self._result_formatters: dict[str, Any] = {
            str(k): v for k, v in (result_formatters or {}).items()
        }
        self._transaction_failed = TransactionFailed
        self._validation_errors = (EthUtilsValidationError, ValueError, TypeError, KeyError)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        genesis = self._load_or_create_genesis()
        self.tester = EthereumTester(_make_backend(genesis["timestamp"]))
        self.journal = Journal(self.data_dir / JOURNAL_NAME)
        self.replayed = self._replay()

    # ------------------------------------------------------------------ persistence

    def _load_or_create_genesis(self) -> dict[str, Any]:
        path = self.data_dir / GENESIS_NAME
        if path.exists():
            genesis = json.loads(path.read_text())
            if genesis.get("format") != FORMAT_VERSION:
                raise ChainError(f"{path}: unsupported dev chain format {genesis.get('format')}")
            return genesis
        genesis = {"format": FORMAT_VERSION, "timestamp": int(self.clock())}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(genesis))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(self.data_dir)
        return genesis

    def _replay(self) -> int:
        records = self.journal.read()
        for i, record in enumerate(records):
            op = record["op"]
            if op == "time":
                self._offset = record["offset"]
                continue
            self._stamp_pending(record["ts"])
            if op == "raw":
                self.tester.send_raw_transaction(record["raw"])
            elif op == "send":
                self.tester.send_transaction(record["tx"])
            elif op == "mine":
                self.tester.mine_blocks(1)
            else:
                raise ChainError(f"dev chain journal: unknown record {op!r} at entry {i}")
            got = self._latest_hash()
            if got != record["block"]:
                raise ChainError(
                    f"dev chain journal replay diverged at entry {i}: block {got} != "
                    f"{record['block']}; the data dir {self.data_dir} is inconsistent"
                )
        return len(records)

    # ------------------------------------------------------------------ time and blocks

    def _now(self) -> int:
        return int(self.clock()) + self._offset

    def _stamp_pending(self, timestamp: int) -> None:
        self.tester.backend.chain.set_header_timestamp(timestamp)

    def _next_timestamp(self) -> int:
        parent = self.tester.backend.chain.get_canonical_head()
        return max(parent.timestamp + 1, self._now())

    def _latest_hash(self) -> str:
        return "0x" + self.tester.backend.chain.get_canonical_head().hash.hex()

    def _commit(self, record: dict[str, Any]) -> None:
        record["block"] = self._latest_hash()
        try:
            self.journal.append(record)
        except OSError as exc:
            # The block is in memory but not on disk: accepting more would build on a state
            # that a restart cannot reproduce, so the chain stops taking changes.
            self._failed = f"journal write failed ({exc.strerror}); restart the dev chain"
            raise RpcError(CODE_SERVER, self._failed) from exc

    # ------------------------------------------------------------------ JSON-RPC

    def handle(self, request: Any) -> Any:
        """One JSON-RPC request object (or a batch list) in, its response out."""
        if isinstance(request, list):
            return [self.handle(r) for r in request] if request else self._error(
                None, RpcError(CODE_INVALID_REQUEST, "empty batch")
            )
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return self._error(None, RpcError(CODE_INVALID_REQUEST, "invalid request"))
        rid = request.get("id")
        params = request.get("params") or []
        try:
            result = self.rpc(request["method"], params)
        except RpcError as exc:
            return self._error(rid, exc)
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    @staticmethod
    def _error(rid: Any, exc: RpcError) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "error": exc.to_json()}

    def rpc(self, method: str, params: list[Any]) -> Any:
        with self._lock:
            try:
                return self._rpc_locked(method, params)
            except RpcError:
                raise
            except self._transaction_failed as exc:
                raise _revert_error(exc) from exc
            except self._validation_errors as exc:
                raise RpcError(CODE_INVALID_PARAMS, f"{method}: {exc}") from exc
            except Exception as exc:
                raise RpcError(CODE_SERVER, f"{method}: {type(exc).__name__}: {exc}") from exc

    def _rpc_locked(self, method: str, params: list[Any]) -> Any:
        if self._failed and method in STATE_CHANGING:
            raise RpcError(CODE_SERVER, self._failed)
        if method == "net_version":
            return str(DEV_CHAIN_ID)
        if method == "web3_clientVersion":
            return "verinfer-devchain/1 (py-evm via eth-tester)"
        if method == "eth_accounts":
            return [k.public_key.to_checksum_address() for k in self.tester.backend.account_keys]
        if method in ("evm_snapshot", "evm_revert", "testing_timeTravel"):
            raise RpcError(CODE_METHOD_NOT_FOUND, f"{method} is not supported by the dev chain")
        if method == "evm_increaseTime":
            self._offset += int(params[0], 16) if isinstance(params[0], str) else int(params[0])
            self.journal.append({"op": "time", "offset": self._offset})
            return self._offset
        if method == "evm_mine":
            ts = self._next_timestamp()
            self._stamp_pending(ts)
            self.tester.mine_blocks(1)
            self._commit({"op": "mine", "ts": ts})
            return "0x0"
        if method == "eth_sendRawTransaction":
            raw = params[0]
            if isinstance(raw, str) and raw[:4] == "0x03":
                raise RpcError(CODE_INVALID_PARAMS, "blob transactions are not supported")
            ts = self._next_timestamp()
            self._stamp_pending(ts)
            tx_hash = self.tester.send_raw_transaction(raw)
            self._commit({"op": "raw", "ts": ts, "raw": raw})
            return tx_hash
        if method == "eth_sendTransaction":
            tx = self._request_formatters[method](params)[0]
            ts = self._next_timestamp()
            self._stamp_pending(ts)
            tx_hash = self.tester.send_transaction(tx)
            self._commit({"op": "send", "ts": ts, "tx": tx})
            return tx_hash
        if method in ("eth_call", "eth_estimateGas"):
            if params and isinstance(params[0], dict) and not params[0].get("from"):
                # Read-only calls need no sender; eth-tester insists on one.
                params = [{**params[0], "from": ZERO_ADDRESS}, *params[1:]]
            self._stamp_pending(self._next_timestamp())
        return self._passthrough(method, params)

    def _passthrough(self, method: str, params: list[Any]) -> Any:
        namespace, _, endpoint = method.partition("_")
        delegator = self._endpoints.get(namespace, {}).get(endpoint)
        if delegator is None:
            raise RpcError(CODE_METHOD_NOT_FOUND, f"method {method} not found")
        formatter = self._request_formatters.get(method)
        if formatter is not None:
            params = formatter(params)
        try:
            result = delegator(self.tester, params)
        except NotImplementedError as exc:
            raise RpcError(CODE_METHOD_NOT_FOUND, f"method {method} not implemented") from exc
        result_formatter = self._result_formatters.get(method)
        if result_formatter is not None:
            result = result_formatter(result)
        return _to_rpc(result)

    def close(self) -> None:
        with self._lock:
            self.journal.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    chain: DevChain

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            request = json.loads(body)
        except ValueError:
            response: Any = DevChain._error(None, RpcError(CODE_PARSE, "parse error"))
        else:
            response = self.chain.handle(request)
        payload = json.dumps(response).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: they may carry signed transactions of users."""


def make_server(chain: DevChain, host: str = "127.0.0.1", port: int = 8545) -> ThreadingHTTPServer:
    """An HTTP JSON-RPC server for `chain` (not yet serving); port 0 picks a free one."""
    handler = type("DevChainHandler", (_Handler,), {"chain": chain})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class DevChainProvider(JSONBaseProvider):
    """A web3 provider that hands requests to a `DevChain` in this process, encoded exactly as
    they would travel over HTTP, so in-process use exercises the same wire format."""

    def __init__(self, chain: DevChain) -> None:
        super().__init__()
        self.chain = chain

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        request = json.loads(self.encode_rpc_request(method, params))
        return cast(RPCResponse, json.loads(json.dumps(self.chain.handle(request))))

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True
