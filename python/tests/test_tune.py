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
    """Worst output SQNR over outputs, noise and signal summed over the sets (as tune sums)."""
    signal, noise = None, None
    for s in sets:
        r, q = _run(original, s), _run(quantized, s)
        sig = [float(np.sum(a**2)) for a in r]
        noi = [float(np.sum((a - b) ** 2)) for a, b in zip(r, q)]
        signal = sig if signal is None else [x + y for x, y in zip(signal, sig)]
        noise = noi if noise is None else [x + y for x, y in zip(noise, noi)]
    return min(math.inf if n == 0 else 10 * math.log10(s / n) for s, n in zip(signal, noise))


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
