"""The listening socket of an HTTP server, bound before the server says it is ready.

Binding first means a taken port fails at once with a one-line error, and a "listening on" line
is only ever printed by the process that owns the port (a supervisor waiting for that line can
never mistake another program on the same port for its child).
"""

from __future__ import annotations

import socket

from verinfer.errors import LocalError


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket on host:port (port 0: one the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalError(f"cannot listen on {host}:{port}: {exc.strerror} (try another --port)") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
