"""Weight bytes a pipeline stage holds, against the whole model loaded in the same run.

The model is `benchmarks/pipeline.py`'s (hidden 1024, 8 layers, 8192-token vocabulary, random
weights). It is quantized once into a directory (`verinfer quantize`'s format, which lists each
tensor's leaf of model_id); then each stage of an even 2- and 4-stage split is loaded from it
and from the float checkpoint (`verinfer.pipeline.weights.StageWeights`). Resident bytes are the
engine's own count of the weight tensors it holds on the device (`IntModel.resident_bytes`),
not process RSS. Every stage must claim the whole model's model_id.

    PYTHONPATH=src python benchmarks/stage_memory.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.table import Table

from _common import machine, wide_console
from pipeline import BENCH_CONFIG
from verinfer.engine import Engine
from verinfer.engine.quantize import quantize_checkpoint, save_quantized
from verinfer.engine.testing import write_random_checkpoint
from verinfer.pipeline.weights import StageWeights

SPLITS = ([(0, 4), (4, 8)], [(0, 2), (2, 4), (4, 6), (6, 8)])


def main() -> None:
    console = wide_console()
    console.print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    with tempfile.TemporaryDirectory(prefix="verinfer-stage-memory-") as tmp:
        root = Path(tmp)
        float_dir = write_random_checkpoint(root / "float", BENCH_CONFIG, seed=1)
        quantized = save_quantized(quantize_checkpoint(float_dir), root / "q",
                                   float_dir / "tokenizer.json")
        began = time.perf_counter()
        whole = Engine.load(quantized)
        whole_s = time.perf_counter() - began
        reference = whole.model.resident_bytes()
        table = Table(title="stage weights against the whole model (same run)")
        for column in ("split", "layers", "resident bytes", "/ whole model",
                       "load s (quantized dir)", "load s (float checkpoint)"):
            table.add_column(column, justify="right")
        table.add_row("whole", f"0:{BENCH_CONFIG['num_hidden_layers']}", f"{reference:,}", "1.000",
                      f"{whole_s:.2f}", "")
        for split in SPLITS:
            for start, end in split:
                began = time.perf_counter()
                stage = StageWeights(quantized, start, end)
                quantized_s = time.perf_counter() - began
                began = time.perf_counter()
                from_float = StageWeights(float_dir, start, end)
                float_s = time.perf_counter() - began
                if {stage.model_id, from_float.model_id} != {whole.model_id}:
                    raise SystemExit(f"stage {start}:{end} claims another model_id")
                if stage.resident_bytes() != from_float.resident_bytes():
                    raise SystemExit(f"stage {start}:{end}: the two loads hold different bytes")
                held = stage.resident_bytes()
                table.add_row(f"{len(split)} stages", f"{start}:{end}", f"{held:,}",
                              f"{held / reference:.3f}", f"{quantized_s:.2f}", f"{float_s:.2f}")
        console.print(table)


if __name__ == "__main__":
    main()
