"""tflq.validate against an independent run of LiteRT on the same inputs and numpy's sums."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import tflq
from conftest import fc_model

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CASES = ["mlp.tflite", "cnn.tflite", "two_signatures.tflite", "lstm.tflite", "control_flow.tflite", "embedding.tflite"]


def outputs(path, feeds_by_sig, xnnpack=True):
    """Every output of every signature (or the default graph), run directly in LiteRT."""
    kw = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interp = Interpreter(model_path=str(path), **kw)
    out = {}
    sigs = sorted(interp.get_signature_list())
    for key in sigs or [""]:
        for i, feeds in enumerate(feeds_by_sig[key]):
            if key:
                res = interp.get_signature_runner(key)(**feeds)
            else:
                det = interp.get_input_details()
                for d in det:
                    interp.resize_tensor_input(d["index"], feeds[d["name"]].shape)
                interp.allocate_tensors()
                for d in det:
                    interp.set_tensor(d["index"], feeds[d["name"]])
                interp.invoke()
                res = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
            for name, v in res.items():
                out.setdefault((key, name), []).append(np.array(v, dtype=np.float64))
    return out


def seeded_feeds(path, trials, seed):
    """The documented inputs: trial t of signature n uses default_rng([seed, t, n])."""
    interp = Interpreter(model_path=str(path))
    sigs = sorted(interp.get_signature_list())
    feeds = {}
    for n, key in enumerate(sigs or [""]):
        det = interp.get_signature_runner(key).get_input_details() if key else {d["name"]: d for d in interp.get_input_details()}
        sets = []
        for t in range(trials):
            rng = np.random.default_rng([seed, t, n])
            s = {}
            for name, d in sorted(det.items()):
                shape = [1 if x < 0 else int(x) for x in d.get("shape_signature", d["shape"])]
                dt = np.dtype(d["dtype"])
                if np.issubdtype(dt, np.integer):
                    s[name] = rng.integers(0, 9, size=shape, endpoint=True).astype(dt)
                else:
                    s[name] = rng.standard_normal(shape).astype(dt)
            sets.append(s)
        feeds[key] = sets
    return feeds


def numpy_sqnr(ref, got):
    noise = np.sum((ref - got) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(ref**2) / noise)


@pytest.mark.parametrize("name", CASES)
def test_validate_matches_an_independent_comparison(name, tmp_path):
    q = tmp_path / "q.tflite"
    tflq.quantize(FIXTURES / name, q, mode="dynamic", min_elements=0)
    res = tflq.validate(FIXTURES / name, q, trials=2, seed=7, xnnpack=False)
    feeds = seeded_feeds(FIXTURES / name, 2, 7)
    ref, got = outputs(FIXTURES / name, feeds, False), outputs(q, feeds, False)
    assert sorted((o["signature"], o["output"]) for o in res.outputs) == sorted(ref)
    for o in res.outputs:
        k = (o["signature"], o["output"])
        want = min(numpy_sqnr(r, g) for r, g in zip(ref[k], got[k]))
        assert o["sqnr_db"] == pytest.approx(want, rel=1e-9, abs=1e-9), k
        assert o["max_abs_error"] == pytest.approx(max(np.max(np.abs(r - g)) for r, g in zip(ref[k], got[k])), rel=1e-9)
        cos = min(float(np.dot(r.ravel(), g.ravel()) / (np.linalg.norm(r) * np.linalg.norm(g))) for r, g in zip(ref[k], got[k]))
        assert o["cosine"] == pytest.approx(cos, rel=1e-9)
    assert res.to_dict()["worst_sqnr_db"] == min(o["sqnr_db"] for o in res.outputs)
    # An unchanged model is exact.
    same = tflq.validate(FIXTURES / name, FIXTURES / name, trials=1)
    assert same.worst_sqnr_db == math.inf and all(o["max_abs_error"] == 0 for o in same.outputs)


def test_user_inputs_dict_list_and_npz(tmp_path):
    q = tmp_path / "q.tflite"
    tflq.quantize(FIXTURES / "mlp.tflite", q)
    rng = np.random.default_rng(3)
    x1, x2 = (rng.uniform(-2, 2, size=(1, 64)).astype(np.float32) for _ in range(2))
    name = Interpreter(model_path=str(FIXTURES / "mlp.tflite")).get_signature_runner("serving_default").get_input_details()
    (inp,) = list(name)
    feeds = {"serving_default": [{inp: x1}, {inp: x2}]}
    ref, got = outputs(FIXTURES / "mlp.tflite", feeds), outputs(q, feeds)
    (k,) = list(ref)
    want = min(numpy_sqnr(r, g) for r, g in zip(ref[k], got[k]))
    assert tflq.validate(FIXTURES / "mlp.tflite", q, [{inp: x1}, {inp: x2}]).worst_sqnr_db == pytest.approx(want)
    one = min(numpy_sqnr(ref[k][0], got[k][0]), math.inf)
    assert tflq.validate(FIXTURES / "mlp.tflite", q, {inp: x1}).worst_sqnr_db == pytest.approx(one)
    npz = tmp_path / "in.npz"
    np.savez(npz, **{inp: x1})
    assert tflq.validate(FIXTURES / "mlp.tflite", q, npz).worst_sqnr_db == pytest.approx(one)
    with pytest.raises(tflq.OptionError, match="no value"):
        tflq.validate(FIXTURES / "mlp.tflite", q, {"nope": x1})
    with pytest.raises(tflq.OptionError, match="shape"):
        tflq.validate(FIXTURES / "mlp.tflite", q, {inp: x1[:, :10]})


def test_load_failure_and_new_nan_are_named(tmp_path):
    good = fc_model(tmp_path / "good.tflite", 16, 8)
    nan = fc_model(tmp_path / "nan.tflite", 16, 8, poison=float("nan"))
    with pytest.raises(tflq.ValidationError, match=r"quantized model .*nan\.tflite.*NaN/Inf"):
        tflq.validate(good, nan)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model" * 10)
    with pytest.raises(tflq.ValidationError, match=r"original model .*junk\.tflite"):
        tflq.validate(junk, good)
    with pytest.raises(tflq.ValidationError, match=r"quantized model .*junk\.tflite"):
        tflq.validate(good, junk)


def test_validate_command(tmp_path):
    q = tmp_path / "q.tflite"
    tflq.quantize(FIXTURES / "cnn.tflite", q)
    cmd = [sys.executable, "-m", "tflq", "validate", str(FIXTURES / "cnn.tflite"), str(q), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    api = tflq.validate(FIXTURES / "cnn.tflite", q).to_json_dict()
    assert j == api
    worst = j["worst_sqnr_db"]
    assert subprocess.run(cmd + ["--min-sqnr", str(worst - 1)], capture_output=True).returncode == 0
    r = subprocess.run(cmd + ["--min-sqnr", str(worst + 1)], capture_output=True, text=True)
    assert r.returncode == 3 and "below" in r.stderr
    r = subprocess.run(cmd[:4] + [str(tmp_path / "missing.tflite"), str(q)], capture_output=True, text=True)
    assert r.returncode == 1 and "missing.tflite" in r.stderr
