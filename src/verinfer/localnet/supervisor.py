"""Runs the local network's processes: each with its own log, ready or named with its error, all stopped together.

A service is a command line plus how to tell it is ready: a line in its output (whose first group
may carry what it chose, such as the URL of a port it was given as 0) and/or an HTTP URL that
answers 200. A service that exits or stays silent past its time limit is reported by name with
the last lines of its log, so a failed start never hangs and never sits silent. Children run in
their own session, so a Ctrl-C reaches the supervisor only, which stops them in reverse order
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

import httpx

from verinfer.errors import LocalError

LOG_TAIL_LINES = 15


class ServiceFailed(LocalError):
    """A service exited or did not become ready; the message names it and quotes its log."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_line: str | None = None  # a regular expression matched against each output line
    ready_url: str | None = None  # GET must answer 200; may use {match} from ready_line
    timeout_s: float = 120.0


@dataclass
class Service:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    match: str = ""  # ready_line's first group, if it has one

    @property
    def name(self) -> str:
        return self.spec.name

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


class Supervisor:
    """Starts services in order, waits for each, and stops them all (in reverse) on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, spec: ServiceSpec, status: Callable[[str], object] | None = None
    ) -> Service:
        """Start `spec` and wait until it is ready; raise `ServiceFailed` if it is not."""
        return self.start_all([spec], status)[0]

    def start_all(
        self, specs: Sequence[ServiceSpec], status: Callable[[str], object] | None = None
    ) -> list[Service]:
        """Start every spec at once, then wait for each (they load models side by side)."""
        launched = [self._launch(spec) for spec in specs]
        for service, offset in launched:
            self._wait_ready(service, offset, status)
        return [service for service, _ in launched]

    def _launch(self, spec: ServiceSpec) -> tuple[Service, int]:
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = log_path.open("ab")
        log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: "
                       f"{' '.join(spec.argv)}\n".encode())
        log_file.flush()
        offset = log_file.tell()
        try:
            process = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise ServiceFailed(f"{spec.name} could not be started: {exc}") from exc
        service = Service(spec, process, log_path, log_file)
        self.services.append(service)
        return service, offset

    def _wait_ready(
        self, service: Service, offset: int, status: Callable[[str], object] | None
    ) -> None:
        spec = service.spec
        pattern = re.compile(spec.ready_line) if spec.ready_line else None
        line_seen = pattern is None
        deadline = time.monotonic() + spec.timeout_s
        last_said = ""
        while True:
            if service.process.poll() is not None:
                raise ServiceFailed(
                    f"{spec.name} exited with status {service.process.returncode} while "
                    f"starting; last lines of {service.log_path}:\n{service.log_tail()}"
                )
            new_text = _read_from(service.log_path, offset)
            if not line_seen and pattern is not None:
                for line in new_text.splitlines():
                    m = pattern.search(line)
                    if m:
                        line_seen = True
                        service.match = m.group(1) if m.groups() else ""
                        break
            if status is not None:
                lines = [x for x in new_text.splitlines() if x.strip()]
                if lines and lines[-1] != last_said:
                    last_said = lines[-1]
                    status(f"{spec.name}: {last_said[:100]}")
            if line_seen and (spec.ready_url is None or _answers(
                    spec.ready_url.format(match=service.match))):
                return
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{spec.name} did not become ready within {spec.timeout_s:.0f} s; last lines "
                    f"of {service.log_path}:\n{service.log_tail()}"
                )
            time.sleep(0.2)

    def dead(self) -> list[Service]:
        """Services that have exited since they started."""
        return [s for s in self.services if s.process.poll() is not None]

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every live service in reverse start order, then SIGKILL what remains."""
        for service in reversed(self.services):
            if service.process.poll() is None:
                _signal_group(service.process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in reversed(self.services):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                service.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(service.process, signal.SIGKILL)
                service.process.wait()
            service.log_file.close()
        self.services.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
