"""Runtime-oracle tests of the quantization modes (`--mode`, `--granularity`, `--symmetric`,
`--type`): every float fixture, quantized each way, must load and run in LiteRT and stay close
to the float model; in dynamic mode the ops with hybrid kernels must read their int8 weights
directly (no DEQUANTIZE before them) with the op versions and options the runtime needs; and
per-channel parameters must equal an independent numpy computation from the float weights.

Bounds: int8 modes use the bounds of test_oracle.py (see there; realistic fixtures state
theirs per mode in the manifest). Dynamic mode also quantizes
activations inside the hybrid kernels (per row, asymmetric), which costs a few dB more, well
above the bounds (measured 32-52 dB). float16 keeps 11 significant bits, about 70 dB per weight
(measured 69-83 dB on the outputs); 50 dB catches any real mistake.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_oracle import (
    DEEP_FIXTURES, FIXTURES, FLOAT_ENTRIES, MIN_SQNR_DB, MIN_SQNR_DB_DEEP, T, Model, aligned_ops,
    ids, image_inputs, quantize, run_model, sqnr_bound, sqnr_db, tfl,  # noqa: F401
)

MODES = {
    "dynamic": ("--mode", "dynamic"),
    "dynamic-per-channel": ("--mode", "dynamic", "--granularity", "per-channel"),
    "per-channel": ("--granularity", "per-channel"),
    "symmetric": ("--symmetric",),
    "float16": ("--type", "float16"),
}
MIN_SQNR_DB_FLOAT16 = 50.0

OP = tfl.BuiltinOperator
LSTM_SLOTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16)
# Builtin code -> (weight input slots, version for per-tensor, version for per-channel).
HYBRID = {
    OP.FULLY_CONNECTED: ((1,), 9, 12),
    OP.CONV_2D: ((1,), 2, 5),
    OP.DEPTHWISE_CONV_2D: ((1,), 6, 6),
    OP.BATCH_MATMUL: ((1,), 4, 4),
    OP.EMBEDDING_LOOKUP: ((1,), 1, 4),
    OP.UNIDIRECTIONAL_SEQUENCE_LSTM: (LSTM_SLOTS, 3, 3),
    OP.LSTM: (LSTM_SLOTS, 4, 4),
    OP.SVDF: ((1, 2), 4, 4),
    OP.RNN: ((1, 2), 3, 3),
    OP.UNIDIRECTIONAL_SEQUENCE_RNN: ((1, 2), 3, 3),
}
MIN_ELEMENTS = 1024

CASES = [(e, m) for e in FLOAT_ENTRIES for m in MODES]


def case_id(case):
    return f"{case[0]['file'].removesuffix('.tflite')}-{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_mode_runs_and_stays_close(case, quantize):
    entry, mode = case
    src, out = FIXTURES / entry["file"], quantize(entry["file"], *MODES[mode])
    int_ranges = entry.get("int_inputs") or {}
    measured = (entry.get("realistic") or {}).get("min_sqnr_db", {})
    if mode == "float16" and mode not in measured:
        bound = MIN_SQNR_DB_FLOAT16
    else:
        bound = sqnr_bound(entry, mode)
    image = image_inputs(entry)
    for seed in (0, 1):
        ref, got = run_model(src, seed, int_ranges, image), run_model(out, seed, int_ranges, image)
        assert ref.keys() == got.keys()
        for k in ref:
            db = sqnr_db(ref[k].astype(np.float64).ravel(), got[k].astype(np.float64).ravel())
            assert db >= bound, f"{mode} {k}: SQNR {db:.1f} dB < {bound} dB"
    assert out.stat().st_size < src.stat().st_size


def is_big_float_const(m: Model, t) -> bool:
    return t.type == T.FLOAT32 and len(m.data(t)) >= 4 * MIN_ELEMENTS


DYNAMIC = [(e, m) for e in FLOAT_ENTRIES for m in ("dynamic", "dynamic-per-channel")]


@pytest.mark.parametrize("case", DYNAMIC, ids=[case_id(c) for c in DYNAMIC])
def test_hybrid_ops_read_int8_weights_directly(case, quantize):
    entry, mode = case
    orig, q = Model(FIXTURES / entry["file"]), Model(quantize(entry["file"], *MODES[mode]))
    hybrid = 0
    for go, gq in zip(orig.m.subgraphs, q.m.subgraphs):
        dq_outputs = q.inserted_dequantizes(gq)
        for oo, oq in aligned_ops(orig, go, q, gq):
            code = orig.opcode(oo)[0]
            if code not in HYBRID:
                continue
            slots, v_tensor, v_channel = HYBRID[code]
            present = [s for s in slots if s < len(oo.inputs) and oo.inputs[s] >= 0]
            if not present or not all(is_big_float_const(orig, go.tensors[oo.inputs[s]]) for s in present):
                continue  # not all weights qualify: the op keeps the float path
            hybrid += 1
            per_channel = False
            for s in present:
                t = gq.tensors[oq.inputs[s]]
                assert oq.inputs[s] not in dq_outputs, f"{code}: weight {s} goes through DEQUANTIZE"
                assert t.type == T.INT8 and q.data(t), f"{code}: weight {s} is not an int8 constant"
                zps = list(t.quantization.zeroPoint)
                assert zps and all(z == 0 for z in zps), f"{code}: hybrid weights must be symmetric"
                codes = np.frombuffer(q.data(t), np.int8)
                assert codes.min(initial=0) >= -127, "symmetric codes stay in [-127, 127]"
                per_channel |= len(t.quantization.scale) > 1
            version = q.m.operatorCodes[oq.opcodeIndex].version
            assert version >= (v_channel if per_channel else v_tensor), (code, version)
            opts = oq.builtinOptions
            if opts is not None and hasattr(opts, "asymmetricQuantizeInputs"):
                assert opts.asymmetricQuantizeInputs, f"{code}: asymmetric_quantize_inputs not set"
            if code == OP.DEPTHWISE_CONV_2D:
                t = gq.tensors[oq.inputs[1]]
                assert t.quantization.quantizedDimension == 3
                assert len(t.quantization.scale) == dims_of(t)[3], "depthwise needs a scale per channel"
    assert hybrid > 0, "no operator runs hybrid"


def dims_of(t) -> list[int]:
    return [int(d) for d in t.shape]


def round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def expected_params(w: np.ndarray, symmetric: bool):
    """Independent per-channel parameters from the documented formulas (float64)."""
    lo, hi = w.min(axis=1), w.max(axis=1)
    scale, zp = np.empty(len(lo)), np.empty(len(lo))
    for c, (a, b) in enumerate(zip(lo, hi)):
        if a == b:  # constant channel: exact with scale |c|
            scale[c] = abs(a) if a != 0 else 1.0
            zp[c] = 0 if symmetric else (127 if a < 0 else -128)
        elif symmetric:
            scale[c], zp[c] = max(abs(a), abs(b)) / 127, 0
        else:
            l, h = min(a, 0.0), max(b, 0.0)
            scale[c] = np.float32((h - l) / 255)
            zp[c] = np.clip(round_half_away(-128 - l / np.float64(scale[c])), -128, 127)
    return scale, zp


PER_CHANNEL = [(e, m) for e in FLOAT_ENTRIES for m in ("per-channel", "dynamic-per-channel")]


@pytest.mark.parametrize("case", PER_CHANNEL, ids=[case_id(c) for c in PER_CHANNEL])
def test_per_channel_parameters_match_numpy(case, quantize):
    entry, mode = case
    orig, q = Model(FIXTURES / entry["file"]), Model(quantize(entry["file"], *MODES[mode]))
    checked = 0
    for go, gq in zip(orig.m.subgraphs, q.m.subgraphs):
        dq = {op.inputs[0]: op.outputs[0] for op in gq.operators or []
              if q.opcode(op)[0] == OP.DEQUANTIZE and q.data(gq.tensors[op.inputs[0]])}
        for i, t in enumerate(gq.tensors):
            if t.type != T.INT8 or not q.data(t) or t.quantization is None:
                continue
            scales = np.asarray(t.quantization.scale, np.float64)
            if len(scales) < 2:
                continue
            src = go.tensors[dq.get(i, i)]  # the DEQUANTIZE output, or the tensor itself
            assert src.type == T.FLOAT32
            axis = t.quantization.quantizedDimension
            w = np.frombuffer(orig.data(src), np.float32).astype(np.float64).reshape(dims_of(src))
            w = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            zps = np.asarray(t.quantization.zeroPoint, np.float64)
            symmetric = bool((zps == 0).all()) and mode.startswith("dynamic")
            scale, zp = expected_params(w, symmetric)
            np.testing.assert_allclose(scales, scale, rtol=2e-7, err_msg=src.name)
            np.testing.assert_array_equal(zps, zp, err_msg=src.name)
            codes = np.frombuffer(q.data(t), np.int8).astype(np.float64).reshape(dims_of(t))
            codes = np.moveaxis(codes, axis, 0).reshape(len(scales), -1)
            err = np.abs((codes - zps[:, None]) * scales[:, None] - w).max(axis=1)
            assert (err <= scales * 0.5 * (1 + 1e-3) + 1e-7).all(), src.name
            checked += 1
    # LSTM kernels have no channel axis: that fixture's weights stay per-tensor.
    assert checked > 0 or entry["file"] == "lstm.tflite", "no per-channel tensor"
