"""Runtime-oracle tests on TensorFlow Lite Micro (PyPI `tflite-micro`, its Python interpreter),
the second runtime: `--target micro` must give models that TFLM computes right.

* Every float fixture that TFLM can run as a float model, quantized with `--target micro`:
  every DEQUANTIZE reads a per-tensor INT8 constant (nothing TFLM computes wrongly or refuses);
  run in TFLM on the seeded inputs of test_oracle.py, its outputs stay within the fixture's
  SQNR bound of the float model run in TFLM (the bounds of test_oracle.py, same reasoning);
  and they equal LiteRT's outputs for the same file and inputs up to float rounding: SQNR of
  TFLM against LiteRT >= 80 dB (the two runtimes sum in different orders; measured 124-140
  dB; one wrong scale or ignored zero point costs far more than 40 dB).
* The rules of /work/shared/litert-facts.md this relies on, measured: per-channel int8 behind
  DEQUANTIZE loads in TFLM and computes wrong values (SQNR far below LiteRT's on the same
  file); float16 DEQUANTIZE and hybrid kernels are refused when TFLM allocates the tensors;
  `--target micro` refuses the options that would produce them, saying why (exit 2).
* RAM: each DEQUANTIZE sits right before the first operator that reads it, so TFLM's arena
  (print_allocations) is never larger than with every DEQUANTIZE at the start, and strictly
  smaller when weights are read by different layers (mlp, cnn, a keyword-spotting DS-CNN).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import micro
from test_oracle import (
    FIXTURES, FLOAT_ENTRIES, SEEDS, TFLQ, T, Model, image_inputs, make_input,  # noqa: F401
    quantize, sqnr_bound, sqnr_db, tfl,
)

MIN_TFLM_VS_LITERT_DB = 80.0
NO_XNNPACK = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def runs_in_tflm(entry: dict) -> bool:
    """Whether TFLM runs the float model, and right (as LiteRT does)."""
    raw = (FIXTURES / entry["file"]).read_bytes()
    try:
        micro.interpreter(raw)
    except Exception:  # noqa: BLE001 - TFLM raises RuntimeError or a pybind error
        return False
    xs = feeds(raw, entry, 0)
    return all(sqnr_db(a.astype(np.float64), b.astype(np.float64)) >= MIN_TFLM_VS_LITERT_DB
               for a, b in zip(litert_run(raw, xs, False), micro.run(raw, xs)))



def feeds(raw: bytes, entry: dict, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    ints = entry.get("int_inputs") or {}
    out = []
    for d in micro.input_details(raw):
        detail = {"shape": d["shape"], "dtype": d["dtype"], "name": f"input{len(out)}"}
        out.append(make_input(detail, detail["name"], ints, rng, image_inputs(entry), seed))
    return out


def litert_run(raw: bytes, xs: list[np.ndarray], xnnpack: bool) -> list[np.ndarray]:
    """Subgraph 0 in LiteRT, as TFLM runs it."""
    kw = {} if xnnpack else {"experimental_op_resolver_type": NO_XNNPACK}
    it = Interpreter(model_content=raw, **kw)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [np.array(it.get_tensor(d["index"])) for d in it.get_output_details()]


def joined_sqnr(refs: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> list[float]:
    """SQNR per output over all seeds (finite values only)."""
    out = []
    for i in range(len(refs[0])):
        r = np.concatenate([x[i].astype(np.float64).ravel() for x in refs])
        g = np.concatenate([x[i].astype(np.float64).ravel() for x in got])
        ok = np.isfinite(r)
        assert np.array_equal(ok, np.isfinite(g)), f"output {i}: non-finite values differ"
        out.append(sqnr_db(r[ok], g[ok]))
    return out


def dequantize_inputs(m: Model):
    for g in m.m.subgraphs:
        for op in g.operators or []:
            if m.opcode(op)[0] == tfl.BuiltinOperator.DEQUANTIZE:
                yield g.tensors[op.inputs[0]]


MICRO_ENTRIES = [e for e in FLOAT_ENTRIES if runs_in_tflm(e)]
NOT_IN_TFLM = [e["file"] for e in FLOAT_ENTRIES if e not in MICRO_ENTRIES]


def test_fixtures_run_in_tflm():
    # TFLM has no DENSIFY (sparse.tflite), and reads buffers stored after the flatbuffer
    # (offset/size) as garbage: external_buffers.tflite gives NaN there as a float model.
    assert NOT_IN_TFLM == ["external_buffers.tflite", "sparse.tflite"], NOT_IN_TFLM
    assert len(MICRO_ENTRIES) >= 10


@pytest.mark.parametrize("entry", MICRO_ENTRIES, ids=[e["file"] for e in MICRO_ENTRIES])
def test_target_micro_computes_right_in_tflm(entry, quantize):
    src = (FIXTURES / entry["file"]).read_bytes()
    path = quantize(entry["file"], "--target", "micro")
    out = path.read_bytes()
    n_deq = 0
    for t in dequantize_inputs(Model(path)):
        n_deq += 1
        qp = t.quantization
        assert t.type == T.INT8, t.name
        assert len(qp.scale) == 1 and len(qp.zeroPoint) == 1, f"{t.name}: not per-tensor"
    assert n_deq > 0
    ref, got, lite = [], [], []
    for seed in SEEDS:
        xs = feeds(src, entry, seed)
        ref.append(micro.run(src, xs))
        got.append(micro.run(out, xs))
        lite.append(litert_run(out, xs, xnnpack=False))
    bound = sqnr_bound(entry)
    for i, db in enumerate(joined_sqnr(ref, got)):
        assert db >= bound, f"output {i}: TFLM quantized vs TFLM float {db:.1f} dB < {bound}"
    for i, db in enumerate(joined_sqnr(lite, got)):
        assert db >= MIN_TFLM_VS_LITERT_DB, f"output {i}: TFLM vs LiteRT {db:.1f} dB"


def test_per_channel_dequantize_is_wrong_in_tflm(quantize):
    """The rule --target micro exists for: TFLM's DEQUANTIZE ignores per-channel scales."""
    src = (FIXTURES / "mlp.tflite").read_bytes()
    entry = next(e for e in FLOAT_ENTRIES if e["file"] == "mlp.tflite")
    pc = quantize("mlp.tflite", "--granularity", "per-channel").read_bytes()
    per_tensor = quantize("mlp.tflite", "--symmetric").read_bytes()
    xs = feeds(src, entry, 0)
    ref_lite, ref_tflm = litert_run(src, xs, False), micro.run(src, xs)
    lite_db = sqnr_db(ref_lite[0].astype(np.float64), litert_run(pc, xs, False)[0].astype(np.float64))
    tflm_db = sqnr_db(ref_tflm[0].astype(np.float64), micro.run(pc, xs)[0].astype(np.float64))
    assert lite_db >= 25.0 and tflm_db < lite_db - 15.0, (lite_db, tflm_db)
    # Per-tensor symmetric: TFLM equals LiteRT up to float rounding.
    a, b = litert_run(per_tensor, xs, False)[0], micro.run(per_tensor, xs)[0]
    assert sqnr_db(a.astype(np.float64), b.astype(np.float64)) >= MIN_TFLM_VS_LITERT_DB


@pytest.mark.parametrize("file", ["float16.tflite", "mlp_dynamic_range.tflite", "cnn_dynamic_range.tflite"])
def test_tflm_refuses_float16_and_hybrid(file):
    with pytest.raises(Exception, match="allocate"):
        micro.interpreter((FIXTURES / file).read_bytes())


@pytest.mark.parametrize("flags,why", [
    (("--mode", "dynamic"), "hybrid kernels"),
    (("--granularity", "per-channel"), "one scale"),
    (("--type", "float16"), "int8, int16 and uint8 only"),
    (("--layout", "external"), "offset/size"),
])
def test_target_micro_refuses_what_tflm_cannot_do(flags, why, tmp_path):
    out = tmp_path / "out.tflite"
    proc = subprocess.run([str(TFLQ), "quantize", str(FIXTURES / "mlp.tflite"), "-o", str(out),
                           "--target", "micro", *flags], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--target micro" in proc.stderr and why in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["mlp.tflite", "cnn.tflite", "kws"])
def test_dequantize_before_reader_shrinks_tflm_arena(name, tmp_path, capsys):
    src = micro.kws_model(tmp_path / "kws.tflite") if name == "kws" else FIXTURES / name
    out = tmp_path / "q.tflite"
    subprocess.run([str(TFLQ), "quantize", str(src), "-o", str(out), "--target", "micro", "--quiet"],
                   check=True)
    raw = out.read_bytes()
    placed = micro.allocations(raw)
    first = micro.allocations(micro.dequantizes_first(raw))
    float_arena = micro.allocations(src.read_bytes())
    with capsys.disabled():
        print(f"\n  TFLM arena {name}: float {float_arena['total']} B, DEQUANTIZE first "
              f"{first['total']} B, before reader {placed['total']} B")
    # Each weight lives from its DEQUANTIZE to its reader: at least one weight fewer is alive
    # at the peak than with all of them alive from the start.
    m = Model(out)
    sizes = sorted(int(np.prod(t.shape)) * 4 for t in dequantize_inputs(m))
    assert placed["total"] <= first["total"] - sizes[0], (placed, first, sizes)
    # And nothing beyond the float activations' arena plus the two largest weights.
    assert placed["head"] <= float_arena["head"] + sizes[-1] + sizes[-2] + 64 * len(sizes), (placed, float_arena)


# ------------------------------------------------- tflq inspect --target micro, judged by TFLM

INSPECT_FLAGS = {
    "as-is": None,
    "default": (),
    "micro": ("--target", "micro"),
    "per-channel": ("--granularity", "per-channel"),
    "dynamic": ("--mode", "dynamic"),
    "float16": ("--type", "float16"),
}
INSPECT_CASES = [(e["file"], k) for e in FLOAT_ENTRIES + [x for x in __import__("test_oracle").OTHER_ENTRIES]
                 for k in INSPECT_FLAGS if k == "as-is" or e["kind"] == "float"]


def loads_in_tflm(raw: bytes) -> bool:
    try:
        micro.interpreter(raw)
        return True
    except Exception:  # noqa: BLE001 - TFLM raises RuntimeError
        return False


def tflm_verdict(raw: bytes, entry: dict) -> str:
    """'ok' when TFLM loads the model and computes subgraph 0 as LiteRT does, 'refused' or
    'wrong' otherwise."""
    if not loads_in_tflm(raw):
        return "refused"
    xs = feeds(raw, entry, 0)
    same = all(sqnr_db(a.astype(np.float64), b.astype(np.float64)) >= MIN_TFLM_VS_LITERT_DB
               for a, b in zip(litert_run(raw, xs, False), micro.run(raw, xs)))
    return "ok" if same else "wrong"


@pytest.mark.parametrize("case", INSPECT_CASES, ids=[f"{f.removesuffix('.tflite')}-{k}" for f, k in INSPECT_CASES])
def test_inspect_target_micro_agrees_with_tflm(case, quantize):
    file, kind = case
    entry = next(e for e in __import__("test_oracle").ENTRIES if e["file"] == file)
    path = FIXTURES / file if INSPECT_FLAGS[kind] is None else quantize(file, *INSPECT_FLAGS[kind])
    if entry["kind"] == "float" and not loads_in_tflm((FIXTURES / file).read_bytes()):
        pytest.skip("TFLM lacks an operator of the float model (sparse.tflite: DENSIFY)")
    verdict = tflm_verdict(path.read_bytes(), entry)
    proc = subprocess.run([str(TFLQ), "inspect", "--target", "micro", "--json", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 3), proc.stderr
    issues = __import__("json").loads(proc.stdout)["target_issues"]
    assert (proc.returncode == 3) == bool(issues)
    if verdict == "ok":
        assert not issues, issues
    else:
        assert issues, f"TFLM: {verdict}, inspect found nothing"
        severities = {i["severity"] for i in issues}
        # A refused model is named refused; a silently wrong one, wrong.
        assert verdict in severities, (verdict, issues)


# ------------------------------------------- the arena tflq computes equals TFLM's own figure

def single_subgraph(path) -> bool:
    return len(Model(path).m.subgraphs) == 1


ARENA_CASES = [e["file"] for e in MICRO_ENTRIES if single_subgraph(FIXTURES / e["file"])] + ["kws"]


@pytest.mark.parametrize("name", ARENA_CASES)
def test_arena_figures_equal_tflm_print_allocations(name, tmp_path):
    src = micro.kws_model(tmp_path / "kws.tflite") if name == "kws" else FIXTURES / name
    out = tmp_path / "q.tflite"
    proc = subprocess.run([str(TFLQ), "quantize", str(src), "-o", str(out), "--target", "micro", "--json"],
                          capture_output=True, text=True, check=True)
    arena = __import__("json").loads(proc.stdout)["arena"]
    if name == "lstm.tflite":
        # Variable tensors and the LSTM kernel's scratch buffers: not computed, rather than wrong.
        assert arena is None
        return
    assert arena["float_bytes"] == micro.allocations(src.read_bytes())["head"]
    assert arena["quantized_bytes"] == micro.allocations(out.read_bytes())["head"]
    for path in (src, out):
        j = subprocess.run([str(TFLQ), "inspect", "--target", "micro", "--json", str(path)],
                           capture_output=True, text=True, check=False)
        assert j.returncode == 0, j.stdout[-2000:]
        assert __import__("json").loads(j.stdout)["arena_bytes"] == micro.allocations(path.read_bytes())["head"]
