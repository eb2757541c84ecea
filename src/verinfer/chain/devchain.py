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

The HTTP server answers local programs only: a request from a web page (a foreign `Origin`, a
`Host` that is a DNS name other than localhost, a content type a form can send) is refused, so
a page the user visits can neither post to it directly nor through DNS rebinding. A request is
bounded in size and nesting before it is parsed: py-evm raises Python's recursion limit, and a
deeply nested JSON document would otherwise overflow the C stack of the JSON parser.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
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
MAX_REQUEST_BYTES = 4 * 2**20  # a 1024-request settlement batch is about 200 KB of hex
MAX_JSON_DEPTH = 32  # JSON-RPC needs about 6 levels
# The clock offset of `evm_increaseTime`, in all: a timestamp past uint256 breaks every
# contract call that reads the time, and the offset is journaled, so it would outlive restarts.
MAX_CLOCK_OFFSET_S = 100 * 365 * 24 * 3600
BLOB_TX_TYPE = 3
LOOPBACK_NAMES = frozenset({"localhost"})

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


# A JSON string; an unterminated one runs to the end, so every scan is linear.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")


def check_json_shape(body: bytes) -> None:
    """Refuse a request body too large or too deeply nested to parse safely, before parsing it.

    Strings are cut out, the brackets left are paired from the inside out one level per round
    (each round a linear regex pass): what is left after `MAX_JSON_DEPTH` rounds is too deep,
    and brackets that stop pairing up are not JSON.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise RpcError(CODE_INVALID_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes")
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            return
        paired = _INNERMOST_PAIR.sub(b"", brackets)
        if len(paired) == len(brackets):
            raise RpcError(CODE_PARSE, "parse error: unbalanced brackets")
        brackets = paired
    if brackets:
        raise RpcError(CODE_INVALID_REQUEST, f"request nested deeper than {MAX_JSON_DEPTH} levels")


def check_raw_transaction(raw: Any) -> str:
    """A raw transaction as the dev chain accepts it: hex (0x optional), no blob; 0x-prefixed."""
    if not isinstance(raw, str):
        raise RpcError(CODE_INVALID_PARAMS, "eth_sendRawTransaction takes a hex string")
    digits = raw[2:] if raw[:2] in ("0x", "0X") else raw
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        data = b""
    if not data or len(digits) != 2 * len(data):
        raise RpcError(CODE_INVALID_PARAMS, "eth_sendRawTransaction: not a hex-encoded transaction")
    if data[0] == BLOB_TX_TYPE:
        raise RpcError(CODE_INVALID_PARAMS, "blob transactions are not supported")
    return "0x" + data.hex()


def _clock_offset(value: Any) -> int:
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            value = int(value, 16)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a whole number of seconds >= 0")
    return value


class Journal:
    """Append-only JSON-lines log of state changes, each record fsync'ed before it counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def read(self) -> list[dict[str, Any]]:
        """Records in order, record i on line i + 1.

        A torn last line (no newline: a crash mid-write, never acknowledged) is cut off. Any
        other damage is an error naming the line: dropping it and what follows would silently
        lose confirmed transactions.
        """
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        good = 0
        for number, line in enumerate(raw.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("op"), str):
                raise ChainError(
                    f"dev chain journal {self.path} line {number} is damaged; the records after "
                    "it are confirmed transactions: repair or remove that line, or start a fresh "
                    "data dir"
                )
            records.append(record)
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
        for number, record in enumerate(records, start=1):
            where = f"dev chain journal {self.journal.path} line {number}"
            try:
                self._replay_record(record, where)
            except ChainError:
                raise
            except Exception as exc:
                raise ChainError(
                    f"{where} cannot be replayed: {type(exc).__name__}: {exc}"
                ) from exc
            got = self._latest_hash()
            if record["op"] != "time" and got != record.get("block"):
                raise ChainError(
                    f"{where}: replay diverged, block {got} != {record.get('block')}; the data "
                    f"dir {self.data_dir} is inconsistent"
                )
        return len(records)

    def _replay_record(self, record: dict[str, Any], where: str) -> None:
        op = record["op"]
        if op == "time":
            offset = _clock_offset(record["offset"])
            if offset > MAX_CLOCK_OFFSET_S:
                raise ChainError(f"{where}: clock offset {offset} s beyond {MAX_CLOCK_OFFSET_S} s")
            self._offset = offset
            return
        self._stamp_pending(record["ts"])
        if op == "raw":
            self.tester.send_raw_transaction(record["raw"])
        elif op == "send":
            self.tester.send_transaction(record["tx"])
        elif op == "mine":
            self.tester.mine_blocks(1)
        else:
            raise ChainError(f"{where}: unknown record {op!r}")

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
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
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
            return [self._handle_one(r) for r in request] if request else self._error(
                None, RpcError(CODE_INVALID_REQUEST, "empty batch")
            )
        return self._handle_one(request)

    def _handle_one(self, request: Any) -> Any:
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
            if not isinstance(params, list) or len(params) != 1:
                raise RpcError(CODE_INVALID_PARAMS, "evm_increaseTime takes one parameter: seconds")
            seconds = _clock_offset(params[0])
            if seconds > MAX_CLOCK_OFFSET_S - self._offset:
                raise RpcError(
                    CODE_INVALID_PARAMS,
                    f"evm_increaseTime: {seconds} s is too far; the dev chain's clock moves "
                    f"forward by at most {MAX_CLOCK_OFFSET_S - self._offset} s more "
                    f"({MAX_CLOCK_OFFSET_S} s in all)",
                )
            self._offset += seconds
            self._append({"op": "time", "offset": self._offset})
            return self._offset
        if method == "evm_mine":
            ts = self._next_timestamp()
            self._stamp_pending(ts)
            self.tester.mine_blocks(1)
            self._commit({"op": "mine", "ts": ts})
            return "0x0"
        if method == "eth_sendRawTransaction":
            if not isinstance(params, list) or len(params) != 1:
                raise RpcError(CODE_INVALID_PARAMS, "eth_sendRawTransaction takes one parameter")
            raw = check_raw_transaction(params[0])
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


class Refused(Exception):
    """An HTTP request the server will not hand to the chain: its status and JSON-RPC error."""

    def __init__(self, status: int, error: RpcError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


def _host_name(authority: str) -> str:
    """`127.0.0.1:8545` / `[::1]:8545` / `localhost` -> the host part, lowercased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _is_loopback_host(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_http_request(headers: Any, bound_host: str) -> int:
    """The body length of a POST the dev chain answers; `Refused` for anything else.

    A browser sends `Origin` with every cross-origin POST, so a request with one is from a web
    page unless that page is itself on loopback. `Host` names what the client resolved: a DNS
    name other than localhost means a rebinding attack (a server bound beyond loopback also
    accepts IP literals). `application/json` cannot be posted by a plain HTML form.
    """
    bound_loopback = _is_loopback_host(bound_host.lower())
    host = _host_name(headers.get("Host") or "")
    if not (_is_loopback_host(host) or (not bound_loopback and _is_ip_literal(host))):
        raise Refused(403, RpcError(CODE_INVALID_REQUEST, f"Host {host!r} refused: use 127.0.0.1"))
    origin = headers.get("Origin")
    if origin is not None:
        scheme, _, authority = origin.partition("://")
        if scheme not in ("http", "https") or not _is_loopback_host(_host_name(authority)):
            raise Refused(
                403,
                RpcError(
                    CODE_INVALID_REQUEST,
                    f"Origin {origin!r} refused: web pages may not use the dev chain",
                ),
            )
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise Refused(
            415,
            RpcError(
                CODE_INVALID_REQUEST,
                f"Content-Type {content_type or 'missing'!r} refused: send application/json",
            ),
        )
    length = headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
        raise Refused(411, RpcError(CODE_INVALID_REQUEST, "a Content-Length is required"))
    if int(length) > MAX_REQUEST_BYTES:
        raise Refused(
            413, RpcError(CODE_INVALID_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes")
        )
    return int(length)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    chain: DevChain
    bound_host: str

    def do_POST(self) -> None:
        try:
            length = check_http_request(self.headers, self.bound_host)
        except Refused as refused:
            self.close_connection = True  # the body, if any, is left unread
            self._reply(refused.status, DevChain._error(None, refused.error))
            return
        body = self.rfile.read(length)
        try:
            check_json_shape(body)
            request = json.loads(body)
        except RpcError as exc:
            response: Any = DevChain._error(None, exc)
        except ValueError:
            response = DevChain._error(None, RpcError(CODE_PARSE, "parse error"))
        else:
            response = self.chain.handle(request)
        self._reply(200, response)

    def _reply(self, status: int, response: Any) -> None:
        payload = json.dumps(response).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: they may carry signed transactions of users."""


def make_server(chain: DevChain, host: str = "127.0.0.1", port: int = 8545) -> ThreadingHTTPServer:
    """An HTTP JSON-RPC server for `chain` (not yet serving); port 0 picks a free one."""
    handler = type("DevChainHandler", (_Handler,), {"chain": chain, "bound_host": host})
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
