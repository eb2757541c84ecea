"""Compiling, caching and loading the fused C++ kernels, safe against interrupted builds.

A build lives in a directory named by a hash of everything that shapes it (the bytes of every
file next to the sources, the compiler command and flags, the torch, Python and ABI versions,
the machine architecture), under `TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`)
in `verinfer/<hash>/`. A finished `.so` is published there by an atomic rename after an fsync,
so its presence means it is complete, and it is loaded without any lock. Only building takes a
lock: `fcntl.flock` on `<hash>/lock`, which the OS releases when its holder exits in any way
(`kill -9` included), so a second process waits for a live build instead of repeating it, and
never waits on a dead one. Each build compiles into its own temporary directory; leftovers of
killed builds are removed by the next builder. torch's own `load()` is not used: its lock file
outlives a killed build and makes every later start wait forever.

A compiler that runs and fails is remembered (`failed`), so later starts fall back at once
instead of recompiling on every request; `python -m verinfer.engine.kernel_build` (run by
`scripts/bootstrap.sh`) retries it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from verinfer.errors import LocalError

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "int_kernels.cpp",)
EXTENSION_NAME = "verinfer_int_kernels"
# -fwrapv: int64 overflow wraps, as in torch. No -march=native: a build is keyed by the machine
# architecture, not the CPU model; the kernels pick their vector routes when they load.
CFLAGS = ("-O3", "-fwrapv")
BUILD_MESSAGE = "building the integer kernels for this CPU, about 30 s, once"
COMPILE_TIMEOUT_S = 1200  # a loaded 2-core machine takes a few minutes at worst
_KEY_VERSION = b"verinfer-kernel-build-v1"
_LIBRARY = "kernels.so"
_FAILED = "failed"
_LOG = "build.log"

Notify = Callable[[str], None]


class KernelBuildError(LocalError):
    """The fused kernels cannot be compiled or loaded here (the engine falls back to torch)."""


def _stderr(message: str) -> None:
    print(f"verinfer: {message}", file=sys.stderr, flush=True)


def compiler() -> list[str]:
    """The C++ compiler command: `CXX` (may carry arguments, e.g. "ccache g++") or c++."""
    return shlex.split(os.environ.get("CXX", "c++")) or ["c++"]


def cache_root() -> Path:
    """Where builds are kept: `TORCH_EXTENSIONS_DIR`, else the user's torch_extensions cache."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured) / "verinfer"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "torch_extensions" / "verinfer"


def build_key(
    name: str = EXTENSION_NAME, sources: Sequence[Path] = SOURCES, cflags: Sequence[str] = CFLAGS
) -> str:
    """Hash of everything the built library depends on; cheap (does not import torch)."""
    digest = hashlib.sha256(_KEY_VERSION)

    def add(part: str | bytes) -> None:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)

    add(name)
    for source in sources:
        add(source.name)
    # Every file beside the sources (headers included) is part of the build.
    for path in sorted({p for s in sources for p in s.parent.iterdir() if p.is_file()}):
        add(path.name)
        add(path.read_bytes())
    for part in (*compiler(), "--", *cflags):
        add(part)
    add(importlib.metadata.version("torch"))
    add(sys.implementation.cache_tag or "")
    add(sysconfig.get_config_var("EXT_SUFFIX") or "")
    add(platform.system())
    add(platform.machine())
    return digest.hexdigest()[:24]


def build_dir(
    name: str = EXTENSION_NAME, sources: Sequence[Path] = SOURCES, cflags: Sequence[str] = CFLAGS
) -> Path:
    return cache_root() / build_key(name, sources, cflags)


def built_library(
    name: str = EXTENSION_NAME, sources: Sequence[Path] = SOURCES, cflags: Sequence[str] = CFLAGS
) -> Path | None:
    """The published library for these sources and flags, or None if not built yet."""
    library = build_dir(name, sources, cflags) / _LIBRARY
    return library if library.is_file() else None


def ensure_built(
    name: str = EXTENSION_NAME,
    sources: Sequence[Path] = SOURCES,
    cflags: Sequence[str] = CFLAGS,
    *,
    retry_failed: bool = False,
    notify: Notify = _stderr,
) -> Path:
    """The library's path, compiling it first if no process has yet; raises KernelBuildError."""
    directory = build_dir(name, sources, cflags)
    library = directory / _LIBRARY
    if library.is_file():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with _build_lock(directory, notify):
        if library.is_file():  # another process built it while we waited
            return library
        failed = directory / _FAILED
        if failed.is_file() and not retry_failed:
            raise KernelBuildError(
                f"{failed.read_text().strip()} (an earlier build failed, log: {directory / _LOG};"
                " run scripts/bootstrap.sh to retry)"
            )
        failed.unlink(missing_ok=True)
        for leftover in directory.glob("tmp-*"):  # killed builds; we hold the lock, so no one else builds
            shutil.rmtree(leftover, ignore_errors=True)
        _compile(name, sources, cflags, directory, notify)
    return library


def load(library: Path, name: str = EXTENSION_NAME) -> ModuleType:
    """Import a built library as the Python module `name` (torch first: it links against it)."""
    import torch  # noqa: F401  (loads libtorch, which the library's symbols resolve against)

    loader = importlib.machinery.ExtensionFileLoader(name, str(library))
    spec = importlib.util.spec_from_file_location(name, library, loader=loader)
    if spec is None:
        raise KernelBuildError(f"{library}: not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build(
    name: str = EXTENSION_NAME,
    sources: Sequence[Path] = SOURCES,
    cflags: Sequence[str] = CFLAGS,
    *,
    retry_failed: bool = False,
    notify: Notify = _stderr,
) -> ModuleType:
    """The loaded extension, compiled first if needed; raises KernelBuildError."""
    library = ensure_built(name, sources, cflags, retry_failed=retry_failed, notify=notify)
    try:
        return load(library, name)
    except ImportError as exc:
        raise KernelBuildError(f"{library} does not load: {exc}") from exc


@contextmanager
def _build_lock(directory: Path, notify: Notify) -> Iterator[None]:
    """Exclusive right to build in `directory`, held until the block ends or the process dies."""
    try:
        import fcntl
    except ImportError as exc:  # Windows: the engine runs on the torch path there
        raise KernelBuildError("building the kernels needs a POSIX system (fcntl)") from exc
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            notify(f"waiting for process {holder}, which is building the integer kernels")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _flags(name: str, cflags: Sequence[str]) -> tuple[list[str], list[str]]:
    """Compile and link flags of a torch C++ extension (as torch.utils.cpp_extension sets them)."""
    from torch.utils import cpp_extension  # imports torch and setuptools: only when building

    includes = [*cpp_extension.include_paths("cpu"), sysconfig.get_path("include", scheme="posix_prefix")]
    compile_flags = [f"-DTORCH_EXTENSION_NAME={name}", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    for include in includes:
        compile_flags += ["-isystem", include]
    compile_flags += ["-fPIC", "-std=c++20", *cflags]
    link_flags = ["-shared", *(f"-L{p}" for p in cpp_extension.library_paths("cpu"))]
    link_flags += ["-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python"]
    if sys.platform == "darwin":
        link_flags += ["-undefined", "dynamic_lookup"]  # Python's symbols come from the interpreter
    return compile_flags, link_flags


def _compile(name: str, sources: Sequence[Path], cflags: Sequence[str], directory: Path,
             notify: Notify) -> None:
    """Compile into a private temporary directory, then publish the library by atomic rename."""
    cxx = compiler()
    if shutil.which(cxx[0]) is None:
        raise KernelBuildError(f"no C++ compiler: {cxx[0]!r} not found (install g++ or clang++, or set CXX)")
    compile_flags, link_flags = _flags(name, cflags)
    notify(f"{BUILD_MESSAGE} ({directory})")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"tmp-{os.getpid()}-", dir=directory))
    try:
        output = scratch / _LIBRARY
        command = [*cxx, *compile_flags, *map(str, sources), *link_flags, "-o", str(output)]
        with _spinner("compiling"):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise KernelBuildError(f"the compiler took over {COMPILE_TIMEOUT_S} s; gave up") from exc
            except OSError as exc:
                raise KernelBuildError(f"cannot run the compiler {cxx[0]!r}: {exc}") from exc
        (directory / _LOG).write_text(shlex.join(command) + "\n\n" + done.stdout + done.stderr)
        if done.returncode != 0:
            reason = _first_error(done.stderr) or f"{cxx[0]} exited with status {done.returncode}"
            if done.returncode > 0:  # not killed by a signal: the same build would fail again
                (directory / _FAILED).write_text(f"compile failed: {reason}\n")
            raise KernelBuildError(f"compile failed: {reason} (log: {directory / _LOG})")
        with open(output, "rb") as built:
            os.fsync(built.fileno())  # the bytes are on disk before the name says they are done
        os.replace(output, directory / _LIBRARY)
        _fsync_dir(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    notify(f"integer kernels built in {time.monotonic() - started:.0f} s")


def _first_error(log: str) -> str:
    """The compiler's first diagnostic ("file:line:col: error: ..."), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors[0] if errors else lines[-1] if lines else "")[:300]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _spinner(text: str) -> Iterator[None]:
    """A spinner with the elapsed time on a terminal; nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn(text), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        progress.add_task(text, total=None)
        yield


def main() -> int:
    """Set-up step: build the kernels if this machine has no build of the current source.

    Instant when the build exists; never fails the set-up: without a compiler the engine runs on
    the torch path, which one warning says.
    """
    if os.environ.get("VERINFER_KERNELS", "") == "torch":
        return 0
    if built_library() is not None:
        return 0
    try:
        build(retry_failed=True)
    except KernelBuildError as exc:
        _stderr(f"warning: fused CPU kernels unavailable, the engine will use the slower torch path ({exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
