#!/usr/bin/env python3
"""Runtime benchmark of the quantization modes: the float model, tflq's weight-only model and
tflq's dynamic-mode model, run in LiteRT on the same inputs.

    scripts/bench_runtime.sh            # builds target/release/tflq and the venv, then this

For an MLP and a CNN (built by scripts/bench_models.py from seeded weights, written to
bench-data/runtime/), it prints per model and mode: file size, median time of one inference
(single thread, XNNPACK off so that the TFLite kernels themselves are compared; then the
default interpreter), the speed-up against float, the peak resident memory of a process that
loads the model, allocates and runs it (VmHWM), and the SQNR of the outputs against float.

Each measurement runs in a fresh child process so that memory figures do not mix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_models  # noqa: E402

MODELS = {
    # 4 FULLY_CONNECTED layers of 2048x2048: 64 MiB of float weights.
    "mlp": lambda: bench_models.mlp([2048] * 5, seed=11),
    # 4 CONV_2D layers 3x3, 256 channels, on a 32x32 input: 9 MiB of float weights.
    "cnn": lambda: bench_models.cnn(32, [256] * 5, 3, seed=12),
}
MODES = {
    "float": None,
    "weight-only": [],
    "dynamic": ["--mode", "dynamic", "--granularity", "per-channel"],
}
RUNS = 30


def child(path: str, xnnpack: bool, runs: int) -> dict:
    """Runs in a fresh process: load, allocate, invoke `runs` times; times and memory."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32)
    interp.set_tensor(inp["index"], x)
    interp.invoke()  # warm-up (hybrid kernels and DEQUANTIZE prepare on first use)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {"median_s": sorted(times)[len(times) // 2], "peak_rss_kib": hwm,
            "output": out.astype(float).ravel().tolist()}


def measure(path: Path, xnnpack: bool) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
            f"import bench_runtime as b; print(json.dumps(b.child({str(path)!r}, {xnnpack}, {RUNS})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sqnr(ref: list[float], got: list[float]) -> float:
    import numpy as np
    r, g = np.asarray(ref), np.asarray(got)
    noise = float(((r - g) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((r ** 2).sum()) / noise)


def main() -> None:
    tflq = os.environ.get("TFLQ_BIN", str(ROOT / "target" / "release" / "tflq"))
    data = ROOT / "bench-data" / "runtime"
    data.mkdir(parents=True, exist_ok=True)
    print(f"{'model':5} {'mode':12} {'size MiB':>9} {'xnnpack':>8} {'ms/run':>8} {'speed-up':>9} "
          f"{'peak RSS MiB':>13} {'SQNR dB':>8}")
    for name, make in MODELS.items():
        float_path = data / f"{name}.tflite"
        if not float_path.exists():
            bench_models.write_model(make(), str(float_path))
        paths = {"float": float_path}
        for mode, flags in MODES.items():
            if flags is None:
                continue
            out = data / f"{name}.{mode}.tflite"
            subprocess.run([tflq, "quantize", str(float_path), "-o", str(out), "-q", *flags], check=True)
            paths[mode] = out
        for xnnpack in (False, True):
            base = None
            for mode, path in paths.items():
                m = measure(path, xnnpack)
                if base is None:
                    base = m
                print(f"{name:5} {mode:12} {path.stat().st_size / 2**20:9.1f} {('on' if xnnpack else 'off'):>8} "
                      f"{m['median_s'] * 1e3:8.2f} {base['median_s'] / m['median_s']:8.2f}x "
                      f"{m['peak_rss_kib'] / 1024:13.1f} {sqnr(base['output'], m['output']):8.1f}")


if __name__ == "__main__":
    main()
