"""The public API is what `__all__` says, and importing the packages stays light."""

from __future__ import annotations

import subprocess
import sys

import verinfer
import verinfer.engine


def test_top_level_exports() -> None:
    for name in verinfer.__all__:
        assert hasattr(verinfer, name), name
    assert issubclass(verinfer.ModelError, verinfer.LocalError)
    assert issubclass(verinfer.LocalError, verinfer.VerinferError)
    assert issubclass(verinfer.RemoteError, verinfer.VerinferError)


def test_engine_exports_resolve() -> None:
    assert sorted(verinfer.engine.__all__) == [
        "Engine", "GenerationResult", "SamplingParams", "TokenEvent", "output_hash",
    ]
    for name in verinfer.engine.__all__:
        assert getattr(verinfer.engine, name) is not None


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, verinfer.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_pipeline_exports_resolve_and_import_light() -> None:
    import verinfer.pipeline

    for name in verinfer.pipeline.__all__:
        assert getattr(verinfer.pipeline, name) is not None, name
    code = "import sys, verinfer.pipeline; print('scipy' in sys.modules or 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
