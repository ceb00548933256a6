"""tflq.tune and `tflq tune`: the target met on the choosing share (re-measured here with
LiteRT directly), both figures reported, the plan written and re-applied byte for byte, and
the file no larger than float16 (smaller than int8 per-channel where that meets the target)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import tflq
from conftest import FIXTURES

from ai_edge_litert.interpreter import Interpreter


def _signature(model):
    interp = Interpreter(model_path=str(model))
    key = sorted(interp.get_signature_list())[0]
    return interp.get_signature_runner(key)


def _inputs(model, n, seed):
    details = _signature(model).get_input_details()
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(d["shape"]).astype(np.float32) for k, d in sorted(details.items())} for _ in range(n)]


def _run(model, feeds):
    out = _signature(model)(**feeds)
    return [np.array(out[k], np.float64) for k in sorted(out)]


def _worst_sqnr(original, quantized, sets):
    """Worst output SQNR over the outputs and the input sets."""
    worst = math.inf
    for st in sets:
        for r, q in zip(_run(original, st), _run(quantized, st)):
            noise = float(np.sum((r - q) ** 2))
            if noise > 0:
                worst = min(worst, 10 * math.log10(float(np.sum(r**2)) / noise))
    return worst


@pytest.mark.parametrize("name,target", [("cnn.tflite", 30.0), ("cnn.tflite", 20.0), ("mlp.tflite", 30.0), ("dwsep_bn.tflite", 25.0)])
def test_tune_meets_the_target_in_a_file_no_larger_than_float16(tmp_path, name, target):
    model = FIXTURES / name
    sets = _inputs(model, 8, 1)
    out = tmp_path / "tuned.tflite"
    r = tflq.tune(model, out, target_sqnr=target, inputs=sets, holdout=0.25, seed=3)
    d = r.to_dict()
    assert d["met"], d
    choosing = [sets[i] for i in d["choosing_sets"]]
    held = [sets[i] for i in d["holdout_sets"]]
    assert len(choosing) == 6 and len(held) == 2
    measured = _worst_sqnr(model, out, choosing)
    assert measured >= target, (measured, d)
    assert measured == pytest.approx(d["choosing_sqnr_db"], abs=0.05)
    assert _worst_sqnr(model, out, held) == pytest.approx(d["holdout_sqnr_db"], abs=0.05)
    assert d["invocations"] > 0 and d["seconds"] > 0
    size = out.stat().st_size
    assert size == d["bytes"]
    # Uniform schemes, written and measured here.
    f16, i8pc = tmp_path / "f16.tflite", tmp_path / "i8pc.tflite"
    tflq.quantize(model, f16, weight_type="float16", equalize=False)
    tflq.quantize(model, i8pc, granularity="per-channel", equalize=False)
    assert size <= f16.stat().st_size
    if _worst_sqnr(model, i8pc, choosing) >= target:
        assert size < i8pc.stat().st_size, d
    # The plan written beside it makes the same bytes.
    plan = json.loads((tmp_path / "tuned.plan.json").read_text())
    again = tmp_path / "again.tflite"
    tflq.quantize(model, again, plan=plan, equalize=False)
    assert again.read_bytes() == out.read_bytes()
    types = {t["type"] for t in plan["tensors"]}
    assert types <= {"int4", "int8", "float16", "float32"}


def test_a_plan_the_readers_cannot_take_is_an_option_error(tmp_path):
    model = FIXTURES / "mlp.tflite"
    plan = json.loads(tflq.report(model)._native.render("plan", 120, 12))
    plan["tensors"][0].update(type="int4", granularity="block", block_size=32)
    with pytest.raises(tflq.OptionError, match="DEQUANTIZE does not read blockwise"):
        tflq.quantize(model, tmp_path / "x.tflite", plan=plan)


def test_the_tune_command_prints_both_figures(tmp_path):
    model = FIXTURES / "cnn.tflite"
    out = tmp_path / "t.tflite"
    p = subprocess.run(
        [sys.executable, "-m", "tflq", "tune", str(model), "-o", str(out), "--target-sqnr", "25", "--json"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["choosing_sqnr_db"] >= 25.0
    assert d["holdout_sqnr_db"] is not None
    assert (tmp_path / "t.plan.json").is_file()
    assert _worst_sqnr(model, out, [s for s in _random_sets(model, d)]) >= 25.0


def _random_sets(model, d):
    """The choosing sets of a run with random inputs, drawn as tflq.validate draws them."""
    from tflq import _validate as V

    _, graphs = V._load(str(model), "original", True)
    sets = next(iter(V.random_inputs(graphs, 10, 0).values()))
    return [sets[i] for i in d["choosing_sets"]]


def _deep_fc_model(path, layers, width, seed=0, spread=0.3):
    """``layers`` FULLY_CONNECTED layers of [width, width] (fused RELU but the last), weights
    with channel scales spread by exp(+-spread); no signature."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    m = s.ModelT()
    m.version = 3
    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    oc.version = 1
    m.operatorCodes = [oc]
    bufs = [s.BufferT(), s.BufferT()]
    tensors = []

    def tensor(name, shape, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, s.TensorType.FLOAT32, buffer
        tensors.append(t)
        return len(tensors) - 1

    x = tensor("x", [1, width], 0)
    ops = []
    for i in range(layers):
        w = rng.standard_normal((width, width)).astype(np.float32) * np.sqrt(2.0 / width)
        w *= np.exp(rng.uniform(-spread, spread, (width, 1))).astype(np.float32)
        w /= np.sqrt(np.mean(np.exp(rng.uniform(-spread, spread, 4096)) ** 2))
        b = s.BufferT()
        b.data = np.frombuffer(w.astype(np.float32).tobytes(), np.uint8)
        bufs.append(b)
        wt = tensor(f"fc{i}/weights", [width, width], len(bufs) - 1)
        y = tensor(f"fc{i}/out", [1, width], 0)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [x, wt, -1], [y]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = s.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = s.ActivationFunctionType.RELU if i + 1 < layers else 0
        ops.append(op)
        x = y
    m.buffers = bufs
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs, sg.name = tensors, ops, [0], [x], "main"
    m.subgraphs = [sg]
    bld = flatbuffers.Builder(layers * width * width * 4 + 65536)
    bld.Finish(m.Pack(bld), file_identifier=b"TFL3")
    path.write_bytes(bld.Output())
    return path


def test_a_hundred_weight_tensors_take_seconds_and_say_how_many_runs(tmp_path):
    model = _deep_fc_model(tmp_path / "deep.tflite", 100, 48)
    out = tmp_path / "deep_tuned.tflite"
    d = tflq.tune(model, out, target_sqnr=30.0).to_dict()
    assert d["tensors"] == 100
    assert d["met"], d
    # 10 reference runs, at most 4 candidates x 100 tensors x 7 choosing sets, a few checks.
    assert 0 < d["invocations"] <= 10 + 4 * 100 * 7 + 200
    assert d["seconds"] < 120, d["seconds"]
    assert d["bytes"] <= d["uniform"]["float16"]["bytes"]
    if d["uniform"]["int8_per_channel"]["choosing_sqnr_db"] >= 30.0:
        assert d["bytes"] < d["uniform"]["int8_per_channel"]["bytes"], d
    print({k: d[k] for k in ("choosing_sqnr_db", "holdout_sqnr_db", "bytes", "encodings", "seconds", "invocations")}, d["uniform"])
