"""Building the fused kernels: cached per source, one build at a time, never blocked by a build
that was killed, a clear fallback without a compiler.

Most tests build a tiny extension (seconds) through the same code as the kernels, with a
compiler wrapper that can stall, so a build can be caught and killed mid-compile on purpose.
The slow ones do the same to the real kernels and run the set-up script on a fresh cache.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from verinfer.engine import kernel_build as kb

ROOT = Path(__file__).resolve().parents[2]

TINY_SOURCE = """\
#include <Python.h>
#define INIT_NAME(name) INIT_NAME2(name)
#define INIT_NAME2(name) PyInit_##name
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(ANSWER); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, "tiny", nullptr, -1, methods};
PyMODINIT_FUNC INIT_NAME(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module); }
"""

# Records each compile (its pid) and signals that it started; stalls for $STALL seconds.
WRAPPER = """\
#!/bin/sh
echo $$ >> "$COMPILES"
touch "$COMPILING"
sleep "${STALL:-0}"
exec c++ "$@"
"""

# Ctrl-C raises KeyboardInterrupt as in a terminal, even when the tests run in the background
# (where SIGINT is inherited ignored).
DRIVER = """\
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
from verinfer.engine import kernel_build
module = kernel_build.build("tiny_ext", [Path(sys.argv[1])], ("-DANSWER=42",))
print(module.answer())
"""


class Sandbox:
    """A tiny source, a compiler wrapper and an empty extensions directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.source = tmp / "src" / "tiny.cpp"
        self.source.parent.mkdir()
        self.source.write_text(TINY_SOURCE)
        self.wrapper = tmp / "cxx"
        self.wrapper.write_text(WRAPPER)
        self.wrapper.chmod(0o755)
        self.compiles = tmp / "compiles"
        self.compiling = tmp / "compiling"
        self.env = {
            **os.environ,
            "TORCH_EXTENSIONS_DIR": str(tmp / "ext"),
            "CXX": str(self.wrapper),
            "COMPILES": str(self.compiles),
            "COMPILING": str(self.compiling),
        }
        self.started = 0
        self.stderr_files: dict[int, str] = {}

    def compile_pids(self) -> list[int]:
        return [int(line) for line in self.compiles.read_text().split()] if self.compiles.exists() else []

    def start(self, stall: float = 0) -> subprocess.Popen[str]:
        """A process that builds and loads the tiny extension; its stderr goes to `stderr(p)`."""
        self.started += 1
        with open(self.tmp / f"stderr-{self.started}", "w") as err:
            process = subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(self.source)], env={**self.env, "STALL": str(stall)},
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self.stderr_files[process.pid] = err.name
        return process

    def stderr(self, process: subprocess.Popen[str]) -> str:
        return Path(self.stderr_files[process.pid]).read_text()

    def finish(self, process: subprocess.Popen[str], timeout: float = 300) -> tuple[str, str]:
        """(stdout, stderr) of a process that must exit cleanly within `timeout` seconds."""
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"the build did not finish in {timeout} s (blocked?): {self.stderr(process)}")
        assert process.returncode == 0, self.stderr(process)
        return out, self.stderr(process)

    def wait_compiling(self, process: subprocess.Popen[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.compiling.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the build never started compiling"
            time.sleep(0.05)
        self.compiling.unlink()

    def build_dir(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        with monkeypatch.context() as patch:
            for name in ("TORCH_EXTENSIONS_DIR", "CXX"):
                patch.setenv(name, self.env[name])
            return kb.build_dir("tiny_ext", [self.source], ("-DANSWER=42",))

    def stop_compilers(self) -> None:
        """End the compiles this test started (a killed build's compiler outlives it)."""
        for pid in self.compile_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    yield box
    box.stop_compilers()


def test_builds_once_with_a_message_then_loads_quietly(sandbox: Sandbox) -> None:
    out, err = sandbox.finish(sandbox.start())
    assert out.strip() == "42"
    assert err.count(kb.BUILD_MESSAGE) == 1 and "built in" in err
    out, err = sandbox.finish(sandbox.start())
    assert (out.strip(), err) == ("42", "")
    assert len(sandbox.compile_pids()) == 1


def test_build_key_follows_the_source_flags_and_compiler(sandbox: Sandbox, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    key = kb.build_key("tiny_ext", [sandbox.source], ("-O2",))
    assert kb.build_key("tiny_ext", [sandbox.source], ("-O2",)) == key
    assert kb.build_key("tiny_ext", [sandbox.source], ("-O3",)) != key
    (sandbox.source.parent / "tiny.h").write_text("// a header beside the source\n")
    with_header = kb.build_key("tiny_ext", [sandbox.source], ("-O2",))
    assert with_header != key
    monkeypatch.setenv("CXX", "clang++")
    assert kb.build_key("tiny_ext", [sandbox.source], ("-O2",)) != with_header
    assert kb.build_dir("tiny_ext", [sandbox.source], ("-O2",)).parent == tmp_path / "ext" / "verinfer"


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "Ctrl-C"])
def test_interrupted_compile_does_not_block_the_next_build(stop: signal.Signals, sandbox: Sandbox,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = sandbox.start(stall=60)
    sandbox.wait_compiling(first)
    first.send_signal(stop)
    first.communicate()
    assert first.returncode != 0
    leftovers = list(sandbox.build_dir(monkeypatch).glob("tmp-*"))
    if stop == signal.SIGINT:  # a clean interrupt removes its scratch directory itself
        assert leftovers == [] and "KeyboardInterrupt" in sandbox.stderr(first)
    started = time.monotonic()
    out, err = sandbox.finish(sandbox.start(), timeout=120)
    assert out.strip() == "42" and "waiting" not in err
    assert time.monotonic() - started < 100
    directory = sandbox.build_dir(monkeypatch)
    assert sorted(p.name for p in directory.iterdir()) == ["build.log", "kernels.so", "lock"]


def test_concurrent_processes_share_one_build(sandbox: Sandbox) -> None:
    first = sandbox.start(stall=4)
    sandbox.wait_compiling(first)
    second = sandbox.start()
    (out1, err1), (out2, err2) = sandbox.finish(first), sandbox.finish(second)
    assert out1.strip() == out2.strip() == "42"
    assert len(sandbox.compile_pids()) == 1, "the second process must wait, not build again"
    assert kb.BUILD_MESSAGE in err1
    assert f"waiting for process {first.pid}" in err2 and kb.BUILD_MESSAGE not in err2


def test_waiting_process_takes_over_from_a_killed_builder(sandbox: Sandbox) -> None:
    first = sandbox.start(stall=60)
    sandbox.wait_compiling(first)
    second = sandbox.start()
    deadline = time.monotonic() + 120
    while "waiting for process" not in sandbox.stderr(second):
        assert second.poll() is None, sandbox.stderr(second)
        assert time.monotonic() < deadline, "the second process never waited for the first"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    out, err = sandbox.finish(second, timeout=120)
    assert out.strip() == "42"
    assert kb.BUILD_MESSAGE in err and len(sandbox.compile_pids()) == 2


def test_missing_compiler_is_a_clear_error_and_not_remembered(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src" / "tiny.cpp"
    source.parent.mkdir()
    source.write_text(TINY_SOURCE)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    messages: list[str] = []
    with pytest.raises(kb.KernelBuildError, match="no C.. compiler: '/nonexistent/c..'"):
        kb.build("tiny_ext", [source], notify=messages.append)
    assert messages == []
    assert not (kb.build_dir("tiny_ext", [source]) / "failed").exists()


def test_compile_error_is_remembered_until_a_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src" / "broken.cpp"
    source.parent.mkdir()
    source.write_text("int main() { return undeclared_name; }\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("CXX", raising=False)
    messages: list[str] = []
    with pytest.raises(kb.KernelBuildError, match="undeclared_name"):
        kb.build("broken_ext", [source], notify=messages.append)
    assert sum(kb.BUILD_MESSAGE in m for m in messages) == 1
    log = kb.build_dir("broken_ext", [source]) / "build.log"
    assert "undeclared_name" in log.read_text()
    log.unlink()
    with pytest.raises(kb.KernelBuildError, match="an earlier build failed.*bootstrap"):
        kb.build("broken_ext", [source], notify=messages.append)
    assert not log.exists(), "a remembered failure must not compile again"
    with pytest.raises(kb.KernelBuildError, match="undeclared_name"):
        kb.build("broken_ext", [source], retry_failed=True, notify=messages.append)
    assert log.exists()


GENERATE = [sys.executable, "-m", "verinfer.cli", "generate", "--max-tokens", "4", "no compiler"]


def test_generate_without_a_compiler_falls_back_with_one_warning(tiny_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": "/nonexistent/c++"}
    env.pop("VERINFER_KERNELS", None)
    done = subprocess.run([*GENERATE, "--model", str(tiny_dir)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "fused CPU kernels unavailable" in line]
    assert len(warnings) == 1 and "RuntimeWarning" in warnings[0], done.stderr
    assert "no C++ compiler" in warnings[0]
    reference = subprocess.run([*GENERATE, "--model", str(tiny_dir)], env={**env, "VERINFER_KERNELS": "torch"},
                               capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout == reference.stdout


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the compiler through /proc")
def test_kill_during_the_real_first_use_build_then_the_next_run_completes(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    env.pop("VERINFER_KERNELS", None)
    use = [sys.executable, "-c", "from verinfer.engine import kernels; assert kernels.extension() is not None"]
    first = subprocess.Popen(use, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _descendants(first.pid):  # the compiler has started
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2)
    compilers = _descendants(first.pid)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    for pid in compilers:  # orphans of the killed build: they only burn CPU now
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    second = subprocess.run(use, env=env, capture_output=True, text=True, timeout=kb.COMPILE_TIMEOUT_S,
                            check=False)
    assert second.returncode == 0, second.stderr
    assert kb.BUILD_MESSAGE in second.stderr


@pytest.mark.slow
def test_set_up_of_a_fresh_cache_builds_the_kernels_once_with_a_message(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    env.pop("VERINFER_KERNELS", None)
    bootstrap = ["bash", str(ROOT / "scripts" / "bootstrap.sh"), "dev"]
    first = subprocess.run(bootstrap, env=env, capture_output=True, text=True, timeout=kb.COMPILE_TIMEOUT_S,
                           check=False)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(kb.BUILD_MESSAGE) == 1, first.stderr
    started = time.monotonic()
    again = subprocess.run(bootstrap, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert time.monotonic() - started < 20
    check = "from verinfer.engine import kernels; assert kernels.extension() is not None"
    used = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert used.returncode == 0 and used.stderr == "", used.stderr
