"""The NEON product routes (csrc/products_neon.h) on aarch64: exact, and the kernels compile there.

On an x86 machine this needs Debian's cross toolchain and qemu user emulation
(`apt-get install g++-aarch64-linux-gnu qemu-user`); without them the tests skip and say so. On an
aarch64 machine the check runs natively.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "src" / "verinfer" / "engine"
HARNESS = Path(__file__).resolve().parent / "neon" / "check_products.cpp"
NATIVE = platform.machine().lower() in ("aarch64", "arm64")
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"


def _compiler() -> str:
    if NATIVE:
        return "c++"
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"no aarch64 cross compiler ({CROSS_CXX}: apt-get install g++-aarch64-linux-gnu)")
    return CROSS_CXX


def _build(tmp_path: Path, march: str) -> Path:
    binary = tmp_path / f"check-{march.replace('+', '-')}"
    subprocess.run([_compiler(), "-std=c++20", "-O3", "-static", f"-march={march}", "-Wall", "-Wextra", "-Werror",
                    str(HARNESS), "-o", str(binary)], check=True, capture_output=True, text=True, timeout=300)
    return binary


def _run(binary: Path, cpu: str) -> subprocess.CompletedProcess[str]:
    if NATIVE:
        command = [str(binary)]
    else:
        if shutil.which(QEMU) is None:
            pytest.skip(f"no aarch64 emulator ({QEMU}: apt-get install qemu-user)")
        command = [QEMU, "-cpu", cpu, str(binary)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_neon_products_equal_the_reference(tmp_path: Path) -> None:
    """Both routes, built for plain ARMv8-A (the dot product chosen at run time) and for a target
    that has it, against int32 loops on random bytes and on every extreme."""
    baseline = _build(tmp_path, "armv8-a")
    done = _run(baseline, "max")  # qemu's "max" CPU has the dot product
    assert done.returncode == 0, done.stdout + done.stderr
    assert "neon: " in done.stdout and " 0 mismatches" in done.stdout
    if not NATIVE:
        assert "neon-dotprod: " in done.stdout and "neon-dotprod: not run" not in done.stdout
        older = _run(baseline, "cortex-a53")  # ARMv8.0: no dot product, so that route must not run
        assert older.returncode == 0, older.stdout + older.stderr
        assert "neon-dotprod: not run" in older.stdout
    with_dotprod = _run(_build(tmp_path, "armv8.2-a+dotprod"), "max")
    assert with_dotprod.returncode == 0, with_dotprod.stdout + with_dotprod.stderr


@pytest.mark.slow
def test_kernel_source_compiles_for_aarch64() -> None:
    """The whole extension source against torch's headers, for aarch64 (syntax and types)."""
    from torch.utils import cpp_extension

    includes = [f"-isystem{p}" for p in cpp_extension.include_paths("cpu")]
    includes.append(f"-isystem{sysconfig.get_path('include', scheme='posix_prefix')}")
    done = subprocess.run([_compiler(), "-fsyntax-only", "-std=c++20", "-fwrapv", "-DTORCH_EXTENSION_NAME=check",
                           "-DTORCH_API_INCLUDE_EXTENSION_H", *includes, str(ENGINE / "csrc" / "int_kernels.cpp")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
