"""The gateway and the offline verifier do not load torch: they commit to sampling parameters
(`verinfer.engine.params`) without the engine, so they start fast and stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[2] / "src"


def test_importing_the_gateway_and_the_verifier_leaves_torch_unloaded() -> None:
    code = ("import sys; import verinfer.gateway.server, verinfer.gateway.cli, verinfer.verify, "
            "verinfer.api.commitment; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "== 'torch')[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
