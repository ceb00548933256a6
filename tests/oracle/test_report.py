"""`tflq report` figures checked with numpy, from the bytes of the models.

For a model quantized by the TFLite converter (dynamic range: int8 symmetric per-channel
weights read directly by the operators) and one quantized by tflq itself, the per-tensor
SQNR, max abs error, RMSE, cosine, levels used and share at the range ends are recomputed
here from the float original and the dequantized int8 data, in float64.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tfl

from test_oracle import FIXTURES, TFLQ, quantize  # noqa: F401 (a fixture)

PAIRS = [
    ("mlp.tflite", "mlp_dynamic_range.tflite"),
    ("cnn.tflite", "cnn_dynamic_range.tflite"),
]


def load(path: Path):
    raw = path.read_bytes()
    return raw, tfl.ModelT.InitFromPackedBuf(raw, 0)


def data(raw, m, t) -> bytes:
    b = m.buffers[t.buffer]
    if b.offset > 1:
        return raw[b.offset:b.offset + b.size]
    return b"" if b.data is None else bytes(b.data)


def report(*args: str) -> dict:
    proc = subprocess.run([str(TFLQ), "report", *args, "--format", "json"],
                          check=True, capture_output=True, text=True, timeout=600)
    return json.loads(proc.stdout)


def check(float_path: Path, quant_path: Path, rep: dict) -> int:
    fr, fm = load(float_path)
    qr, qm = load(quant_path)
    rows = rep["tensors"]
    for r in rows:
        ft = fm.subgraphs[r["subgraph"]].tensors[r["tensor"]]
        q = r["quantized"]
        qt = qm.subgraphs[q["subgraph"]].tensors[q["tensor"]]
        x = np.frombuffer(data(fr, fm, ft), np.float32).astype(np.float64).reshape(list(ft.shape))
        c = np.frombuffer(data(qr, qm, qt), np.int8).reshape(list(qt.shape))
        s = np.asarray(qt.quantization.scale, np.float64)
        z = np.asarray(qt.quantization.zeroPoint, np.float64)
        if s.size > 1:
            shape = [1] * c.ndim
            shape[qt.quantization.quantizedDimension] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        y = (c.astype(np.float64) - z) * s
        e = x - y
        name = r["name"]
        sqnr = 10 * math.log10(float((x ** 2).sum()) / float((e ** 2).sum()))
        assert r["sqnr_db"] == pytest.approx(sqnr, rel=1e-6), name
        assert r["max_abs_error"] == pytest.approx(float(np.abs(e).max()), rel=1e-5), name
        assert r["rmse"] == pytest.approx(float(np.sqrt((e ** 2).mean())), rel=1e-6), name
        cos = float((x * y).sum() / np.sqrt((x ** 2).sum() * (y ** 2).sum()))
        assert r["cosine"] == pytest.approx(cos, rel=1e-9), name
        assert r["levels_used"] == len(np.unique(c)), name
        symmetric = not np.any(z) and not np.any(c == -128)
        lo = -127 if symmetric else -128
        edges = float(np.mean((c == lo) | (c == 127)))
        assert r["clamp_share"] == pytest.approx(edges, rel=1e-12), name
        assert r["bytes_before"] == x.size * 4 and r["bytes_after"] == c.size, name
    return len(rows)


@pytest.mark.parametrize("pair", PAIRS, ids=[p[1] for p in PAIRS])
def test_against_converter_output(pair):
    f, q = FIXTURES / pair[0], FIXTURES / pair[1]
    rep = report(str(f), "--against", str(q))
    assert not rep["unmatched"]
    assert check(f, q, rep) > 0
    assert all(r["quantized"]["matched_by"] == "input_slot" for r in rep["tensors"])


@pytest.mark.parametrize("name", ["mlp.tflite", "cnn.tflite", "control_flow.tflite"])
def test_against_tflq_output(name, quantize):
    f, q = FIXTURES / name, quantize(name, "--no-equalize")  # against the original floats
    rep = report(str(f), "--against", str(q))
    assert not rep["unmatched"]
    assert check(f, q, rep) > 0
    # The planned report (nothing written) gives the same figures.
    planned = {(r["subgraph"], r["tensor"]): r for r in report(str(f), "--no-equalize")["tensors"]}
    for r in rep["tensors"]:
        p = planned[(r["subgraph"], r["tensor"])]
        assert p["sqnr_db"] == r["sqnr_db"] and p["levels_used"] == r["levels_used"]
