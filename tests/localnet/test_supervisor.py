"""The supervisor: ready by line (and what the line says), named failures, nothing left running."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from verinfer.localnet.layout import Layout, Ports
from verinfer.localnet.supervisor import ServiceFailed, ServiceSpec, Supervisor
from verinfer.localnet.up import UpOptions, gateway_spec

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ready_line_and_stop(tmp_path: Path) -> None:
    script = "import time; print('working...'); print('listening on http://x:1234'); time.sleep(60)"
    with Supervisor(tmp_path) as sup:
        service = sup.start(ServiceSpec("svc", [PY, "-c", script],
                                        ready_line=r"listening on (\S+)", timeout_s=20))
        assert service.match == "http://x:1234"
        pid = service.process.pid
        assert alive(pid)
    time.sleep(0.1)
    assert not alive(pid) or service.process.poll() is not None
    assert "working..." in (tmp_path / "svc.log").read_text()


def test_exit_while_starting_is_named_with_its_log(tmp_path: Path) -> None:
    script = "import sys; print('cannot open the model: no such directory'); sys.exit(3)"
    with Supervisor(tmp_path) as sup, pytest.raises(ServiceFailed) as info:
        sup.start(ServiceSpec("node-1", [PY, "-c", script], ready_line="never", timeout_s=20))
    message = str(info.value)
    assert "node-1 exited with status 3" in message
    assert "cannot open the model" in message


def test_silent_service_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    with Supervisor(tmp_path) as sup, pytest.raises(ServiceFailed, match="within 1 s"):
        sup.start(ServiceSpec("quiet", [PY, "-c", "import time; time.sleep(60)"],
                              ready_line="ready", timeout_s=1))
    assert time.monotonic() - started < 15


def test_sigterm_ignored_then_killed(tmp_path: Path) -> None:
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")
    sup = Supervisor(tmp_path)
    service = sup.start(ServiceSpec("stubborn", [PY, "-c", script], ready_line="ready"))
    started = time.monotonic()
    sup.stop_all(grace_s=1)
    assert service.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_dead_reports_a_crash(tmp_path: Path) -> None:
    script = "import time; print('ready', flush=True); time.sleep(0.5)"
    with Supervisor(tmp_path) as sup:
        service = sup.start(ServiceSpec("short", [PY, "-c", script], ready_line="ready"))
        service.process.wait(timeout=20)
        assert [s.name for s in sup.dead()] == ["short"]


def test_start_all_launches_side_by_side(tmp_path: Path) -> None:
    slow = ("import time; print('born', time.time(), flush=True); time.sleep(1); "
            "print('ready', time.time(), flush=True); time.sleep(60)")
    with Supervisor(tmp_path) as sup:
        services = sup.start_all([ServiceSpec(f"n{i}", [PY, "-c", slow], ready_line="ready")
                                  for i in range(3)])
        assert len(services) == 3 and not sup.dead()

    def stamp(name: str, word: str) -> float:
        [line] = [x for x in (tmp_path / f"{name}.log").read_text().splitlines()
                  if x.startswith(word)]
        return float(line.split()[1])

    # The last one was started before the first one was ready: none waited for another.
    assert stamp("n2", "born") < stamp("n0", "ready")


def test_another_programs_health_is_not_the_childs(tmp_path: Path) -> None:
    # A port chosen as free can be taken by another program before the child binds it: that
    # program's /health answers 200, but the child never prints its line and exits.
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the standard library's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    foreign = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    script = (f"import sys, time; time.sleep(1); print('cannot listen on 127.0.0.1:{port}'); "
              "sys.exit(2)")
    # The localnet's own gateway spec, with a child that fails as the gateway would.
    spec = gateway_spec(Layout(tmp_path), Ports(chain=1, gateway=port, nodes=(2,)),
                        UpOptions(data_dir=tmp_path, model=tmp_path), "http://127.0.0.1:1", "0x0")
    spec = dataclasses.replace(spec, argv=[PY, "-c", script], env={}, timeout_s=20)
    try:
        with Supervisor(tmp_path) as sup, pytest.raises(ServiceFailed, match="exited with status 2"):
            sup.start(spec)
    finally:
        foreign.shutdown()
        foreign.server_close()

