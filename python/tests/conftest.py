"""Shared helpers of the Python package's tests: the Rust binary to compare with, fixtures,
and models built with the flatbuffers object API."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
MODELS = sorted(FIXTURES.glob("*.tflite"))
BIN = Path(os.environ.get("TFLQ_BIN", ROOT / "target" / "debug" / "tflq"))

# (flags of the Rust command, keyword options of the Python API)
OPTION_SETS = [
    ([], {}),
    (["--min-elements", "0"], {"min_elements": 0}),
    (["--mode", "dynamic"], {"mode": "dynamic"}),
    (["--granularity", "per-channel"], {"granularity": "per-channel"}),
    (["--mode", "dynamic", "--granularity", "per-channel"], {"mode": "dynamic", "granularity": "per_channel"}),
    (["--symmetric"], {"symmetric": True}),
    (["--type", "float16"], {"type": "float16"}),
    (["--include-ops", "FULLY_CONNECTED"], {"include_ops": ["FULLY_CONNECTED"]}),
    (["--exclude-ops", "CONV_2D,DEPTHWISE_CONV_2D"], {"exclude_ops": "CONV_2D,DEPTHWISE_CONV_2D"}),
    (["--exclude-tensors", "dense|fc"], {"exclude_tensors": "dense|fc"}),
    (["--layout", "external", "--min-elements", "16"], {"layout": "external", "min_elements": 16}),
]


def option_id(case) -> str:
    return " ".join(case[0]) or "defaults"


def tflq_bin(*args, check=True) -> subprocess.CompletedProcess:
    if not BIN.is_file():
        pytest.fail(f"{BIN} missing: run `cargo build` (or set TFLQ_BIN)")
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"tflq {args} exited {r.returncode}: {r.stderr}")
    return r


def drop_seconds(d):
    if isinstance(d, dict):
        return {k: drop_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [drop_seconds(v) for v in d]
    return d


def fc_model(path: Path, n_out: int, n_in: int, seed: int = 0, poison: float | None = None) -> Path:
    """A model with one FULLY_CONNECTED op: input [1, n_in], float weights [n_out, n_in]
    (seeded normal values; ``poison`` replaces the first), output [1, n_out]."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    w = np.random.default_rng(seed).standard_normal((n_out, n_in), dtype=np.float32)
    if poison is not None:
        w.flat[0] = poison
    m = s.ModelT()
    m.version = 3
    oc = s.OperatorCodeT()
    oc.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    oc.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    oc.version = 1
    m.operatorCodes = [oc]
    bufs = [s.BufferT() for _ in range(4)]
    bufs[2].data = np.frombuffer(w.tobytes(), dtype=np.uint8)
    m.buffers = bufs

    def tensor(name, shape, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, s.TensorType.FLOAT32, buffer
        return t

    sg = s.SubGraphT()
    sg.tensors = [tensor("x", [1, n_in], 1), tensor("fc/weights", [n_out, n_in], 2), tensor("y", [1, n_out], 3)]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    sg.operators, sg.inputs, sg.outputs, sg.name = [op], [0], [2], "main"
    m.subgraphs = [sg]
    b = flatbuffers.Builder(w.nbytes + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return path


@pytest.fixture(scope="session")
def big_model(tmp_path_factory) -> Path:
    """About 256 MiB of float weights: long enough to interrupt in a debug build."""
    return fc_model(tmp_path_factory.mktemp("big") / "big.tflite", 8192, 8192)
