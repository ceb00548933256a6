"""Measure the output SQNR of tflq's modes on the realistic fixtures (not a test: a table).

    TFLQ_BIN=target/debug/tflq "$(scripts/oracle-env.sh)" tests/oracle/measure_realistic.py

For each fixture whose manifest entry has `realistic`, quantizes it with each mode below,
runs the float and the quantized model in LiteRT with XNNPACK on and off on the inputs the
oracle uses for it (`image`: synthetic scenes of natural_inputs.py; `normal`: seeded standard
normal), seeds 0-2, and prints the SQNR (dB) of the output over all seeds. Same metric as
test_oracle.sqnr_db: 10 log10(sum ref^2 / sum (ref - q)^2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_oracle import ENTRIES, FIXTURES, FLOAT_ENTRIES, TFLQ, realistic_inputs, sqnr_db  # noqa: E402

MODES = {
    "default": (),
    "per-channel --symmetric": ("--granularity", "per-channel", "--symmetric"),
    "per-channel": ("--granularity", "per-channel"),
    "--min-elements 4096": ("--min-elements", "4096"),
    "float16": ("--type", "float16"),
    # the other modes of test_modes.py, for its bounds
    "symmetric": ("--symmetric",),
    "dynamic": ("--mode", "dynamic"),
    "dynamic-per-channel": ("--mode", "dynamic", "--granularity", "per-channel"),
    # issue 13: range search and equalization, each alone and together
    "--no-equalize": ("--no-equalize",),
    "--quantize-biases": ("--quantize-biases",),
    "--range mse": ("--range", "mse"),
    "--range mse --no-equalize": ("--range", "mse", "--no-equalize"),
    "per-channel --symmetric mse": ("--granularity", "per-channel", "--symmetric", "--range", "mse"),
    "per-channel mse": ("--granularity", "per-channel", "--range", "mse"),
    "symmetric mse": ("--symmetric", "--range", "mse"),
    "dynamic mse": ("--mode", "dynamic", "--range", "mse"),
    "dynamic-per-channel mse": ("--mode", "dynamic", "--granularity", "per-channel", "--range", "mse"),
    # issue 14: int4 and int2 with each range method (the default is the one without --range)
    "int4": ("--type", "int4"),
    "int4 minmax": ("--type", "int4", "--range", "minmax"),
    "int4 mse": ("--type", "int4", "--range", "mse"),
    "int4 per-channel minmax": ("--type", "int4", "--granularity", "per-channel", "--range", "minmax"),
    "int4 per-channel mse": ("--type", "int4", "--granularity", "per-channel", "--range", "mse"),
    "int4 per-channel symmetric minmax": ("--type", "int4", "--granularity", "per-channel", "--symmetric",
                                          "--range", "minmax"),
    "int4 per-channel symmetric mse": ("--type", "int4", "--granularity", "per-channel", "--symmetric",
                                       "--range", "mse"),
    "int4 block minmax": ("--type", "int4", "--granularity", "block", "--range", "minmax"),
    "int4 block mse": ("--type", "int4", "--granularity", "block", "--range", "mse"),
    "int4 dynamic per-channel minmax": ("--type", "int4", "--mode", "dynamic", "--granularity", "per-channel",
                                        "--range", "minmax"),
    "int4 dynamic per-channel mse": ("--type", "int4", "--mode", "dynamic", "--granularity", "per-channel",
                                     "--range", "mse"),
    "int2 minmax": ("--type", "int2", "--range", "minmax"),
    "int2 mse": ("--type", "int2", "--range", "mse"),
    "int2 per-channel minmax": ("--type", "int2", "--granularity", "per-channel", "--range", "minmax"),
    "int2 per-channel mse": ("--type", "int2", "--granularity", "per-channel", "--range", "mse"),
}
ONLY = [m for m in os.environ.get("MODES", "").split(",") if m]
#: ALL=1: every float fixture of the manifest, not only the realistic ones.
ALL = os.environ.get("ALL") == "1"
SEEDS = (0, 1, 2)


def outputs(path: Path, feeds: list[dict], xnnpack: bool) -> np.ndarray:
    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    runner = Interpreter(model_path=str(path), experimental_op_resolver_type=kind).get_signature_runner()
    return np.concatenate([np.concatenate([np.asarray(v, np.float64).ravel()
                                           for _, v in sorted(runner(**f).items())]) for f in feeds])


def main():
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for e in (e for e in (FLOAT_ENTRIES if ALL else ENTRIES) if ALL or e.get("realistic")):
        src = FIXTURES / e["file"]
        try:
            runner = Interpreter(model_path=str(src)).get_signature_runner()
        except ValueError:  # several signatures (two_signatures.tflite): not measured here
            continue
        feeds = [realistic_inputs(e, runner.get_input_details(), s) for s in SEEDS]
        for mode, flags in MODES.items():
            if ONLY and mode not in ONLY:
                continue
            out = tmp / f"{src.stem}.{len(rows)}.tflite"
            subprocess.run([str(TFLQ), "quantize", str(src), "-o", str(out), "-q", *flags], check=True)
            dbs = [sqnr_db(outputs(src, feeds, x), outputs(out, feeds, x)) for x in (True, False)]
            worst = min(sqnr_db(outputs(src, [f], x), outputs(out, [f], x))
                        for f in feeds for x in (True, False))
            rows.append((e["file"], mode, *dbs, worst))
    print(f"{'fixture':18} {'mode':34} {'XNNPACK on':>10} {'off':>8} {'worst seed':>10}")
    for f, m, on, off, worst in rows:
        print(f"{f:18} {m:34} {on:10.1f} {off:8.1f} {worst:10.1f}")


if __name__ == "__main__":
    main()
