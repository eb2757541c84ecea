"""The engine thread: the one thread that touches the models, their KV caches and schedulers.

It steps every scheduler that has work, one step each in turn, and between steps runs the
tasks handed to it (a validator's replay), so the event loop never blocks on inference and no
two computations share a model at once. `observe` is told every step's statistics (metrics).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from verinfer.node.scheduler import Scheduler, StepStats

T = TypeVar("T")


class EngineWorker:
    """Runs `schedulers` and queued tasks on one daemon thread until `stop()`."""

    def __init__(
        self,
        schedulers: Sequence[Scheduler],
        observe: Callable[[Scheduler, StepStats], None] | None = None,
    ) -> None:
        self.schedulers = list(schedulers)
        self.observe = observe
        self._wake = threading.Condition()
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="verinfer-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def wake(self) -> None:
        """New work was submitted to a scheduler."""
        with self._wake:
            self._wake.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine thread between steps; its result or error in the future."""
        future: Future[T] = Future()
        with self._wake:
            self._tasks.append((fn, future))
            self._wake.notify()
        return future

    def _idle(self) -> bool:
        return not self._tasks and not any(s.has_work() for s in self.schedulers)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and self._idle():
                    self._wake.wait()
                if self._stopping:
                    for _, future in self._tasks:
                        future.cancel()
                    return
                task = self._tasks.popleft() if self._tasks else None
            if task is not None:
                fn, future = task
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except Exception as exc:  # noqa: BLE001 - delivered to the caller, never kills the thread
                        future.set_exception(exc)
            for scheduler in self.schedulers:
                if scheduler.has_work():
                    try:
                        stats = scheduler.step()
                    except Exception as exc:  # noqa: BLE001 - its requests get the error; the others go on
                        scheduler.fail_all(exc)
                        continue
                    if self.observe is not None:
                        self.observe(scheduler, stats)
