#!/usr/bin/env python3
"""Build the large float32 .tflite models of the whole-run benchmark (scripts/bench.sh).

    python scripts/bench_models.py build DIR [--huge]  # once: mlp-1g, cnn-200m, mlp-50m, small/ (100),
                                                       # with --huge also mlp-9g
    python scripts/bench_models.py check       # small models from the same code, run by LiteRT

Needs numpy, flatbuffers and ai-edge-litert (the venv of scripts/oracle-env.sh has them).
No TensorFlow: the models are written directly with the flatbuffers object API of the
schema module that ships in the ai-edge-litert wheel (`ai_edge_litert.schema_py_generated`).

Weights are seeded (numpy's PCG64), so a rebuild gives the same bytes. A 1 GiB model is never
held in memory: the flatbuffer skeleton is built with an empty placeholder vector per buffer,
the placeholders are patched to point past the skeleton (a flatbuffers offset may point
anywhere later in the file), and the weights are generated and written chunk by chunk after
it, each 16-byte aligned behind its 4-byte length prefix, as the TFLite converter lays them out.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

ALIGN = 16
# Floats generated and written at a time: 64 MiB of f32.
CHUNK = 1 << 24

# --------------------------------------------------------------------------
# model descriptions: plain dicts, turned into flatbuffers by `write_model`
# --------------------------------------------------------------------------


def mlp(widths: list[int], seed: int) -> dict:
    """FULLY_CONNECTED layers widths[0] -> widths[1] -> ..., RELU between, none at the end."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(
            {
                "op": "fc",
                "weights": [n_out, n_in],
                "bias": n_out,
                "relu": i + 2 < len(widths),
                "seed": seed * 1000 + i,
            }
        )
    return {"input": [1, widths[0]], "layers": layers}


def cnn(hw: int, channels: list[int], kernel: int, seed: int) -> dict:
    """CONV_2D layers (SAME padding, stride 1, RELU) over an [1, hw, hw, channels[0]] input."""
    layers = []
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
        layers.append(
            {
                "op": "conv",
                "weights": [c_out, kernel, kernel, c_in],
                "bias": c_out,
                "relu": True,
                "seed": seed * 1000 + i,
            }
        )
    return {"input": [1, hw, hw, channels[0]], "layers": layers}


# The benchmark set. Sizes are of the float32 weights alone.
LARGE = {
    # 4 x 8192x8192 = 1 GiB of weights.
    "mlp-1g": lambda: mlp([8192] * 5, seed=1),
    # 5 x 3x3x1024x1024 = 180 MiB of weights in 4-D convolution filters.
    "cnn-200m": lambda: cnn(8, [1024] * 6, 3, seed=2),
    # 3 x 2048x2048 = 48 MiB: a medium model, below the size where inputs used to be mapped.
    "mlp-50m": lambda: mlp([2048] * 4, seed=4),
}
SMALL_COUNT = 100
# Built only on request (--huge): its int8 output passes 2 GiB, so tflq writes the
# buffers after the flatbuffer (offset/size layout). 36 x 8192x8192 = 9 GiB of weights.
HUGE = {"mlp-9g": lambda: mlp([8192] * 37, seed=3)}


def small(i: int) -> dict:
    """Model i of the batch set: ~3-4 MiB, shapes varying a little from one to the next."""
    hidden = 768 + 64 * (i % 5)
    return mlp([1024, hidden, 256, 10], seed=100 + i)


def weights(spec: dict) -> tuple[float, int]:
    """Standard deviation and element count of a layer's weights (He-style scaling)."""
    shape = spec["weights"]
    fan_in = int(np.prod(shape[1:]))
    return 1.0 / np.sqrt(fan_in), int(np.prod(shape))


def chunks(spec: dict):
    """The layer's weights then its bias, as float32 arrays of at most CHUNK elements."""
    rng = np.random.default_rng(spec["seed"])
    std, n = weights(spec)
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        w = rng.standard_normal(k, dtype=np.float32)
        w *= np.float32(std)
        yield w
        done += k
    yield (rng.standard_normal(spec["bias"], dtype=np.float32) * np.float32(0.05)).astype(
        "<f4"
    )


def full_weights(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The whole weights and bias of a layer (for checks on small models only)."""
    parts = list(chunks(spec))
    w = np.concatenate(parts[:-1]).reshape(spec["weights"])
    return w, parts[-1]


# --------------------------------------------------------------------------
# flatbuffer writing
# --------------------------------------------------------------------------


def skeleton(desc: dict, external: bool = False) -> tuple[bytes, list[int]]:
    """The model flatbuffer with placeholders for the data (empty `data` vectors, or with
    `external` placeholder `offset`/`size` fields), and the byte length of the data of every
    buffer (0: none)."""
    tensors, ops, buffers, sizes = [], [], [fb.BufferT()], [0]

    def tensor(shape, name, data_len=0):
        t = fb.TensorT()
        t.shape = list(shape)
        t.type = fb.TensorType.FLOAT32
        t.name = name
        if data_len:
            b = fb.BufferT()
            if external:
                b.offset = b.size = 1  # non-default, so that the fields exist to patch
            else:
                b.data = []  # placeholder, patched to point at the data after the skeleton
            buffers.append(b)
            sizes.append(data_len)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    x = tensor(desc["input"], "input")
    first = x
    codes = []

    def opcode(code):
        if code not in codes:
            codes.append(code)
        return codes.index(code)

    shape = list(desc["input"])
    for i, layer in enumerate(desc["layers"]):
        wshape = layer["weights"]
        w = tensor(wshape, f"layer{i}/weights", 4 * int(np.prod(wshape)))
        b = tensor([layer["bias"]], f"layer{i}/bias", 4 * layer["bias"])
        o = fb.OperatorT()
        act = (
            fb.ActivationFunctionType.RELU
            if layer["relu"]
            else fb.ActivationFunctionType.NONE
        )
        if layer["op"] == "fc":
            shape = [shape[0], wshape[0]]
            o.opcodeIndex = opcode(fb.BuiltinOperator.FULLY_CONNECTED)
            o.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
            opts = fb.FullyConnectedOptionsT()
            opts.fusedActivationFunction = act
        else:
            shape = shape[:3] + [wshape[0]]
            o.opcodeIndex = opcode(fb.BuiltinOperator.CONV_2D)
            o.builtinOptionsType = fb.BuiltinOptions.Conv2DOptions
            opts = fb.Conv2DOptionsT()
            opts.padding = fb.Padding.SAME
            opts.strideW = opts.strideH = 1
            opts.dilationWFactor = opts.dilationHFactor = 1
            opts.fusedActivationFunction = act
        o.builtinOptions = opts
        y = tensor(shape, f"layer{i}/out")
        o.inputs = [x, w, b]
        o.outputs = [y]
        ops.append(o)
        x = y

    sg = fb.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = tensors, ops, [first], [x]
    sg.name = "main"
    model = fb.ModelT()
    model.version = 3
    model.description = "tflq benchmark model (scripts/bench_models.py)"
    model.subgraphs = [sg]
    model.buffers = buffers
    model.operatorCodes = []
    for code in codes:
        c = fb.OperatorCodeT()
        c.builtinCode = code
        c.deprecatedBuiltinCode = min(code, 127)
        c.version = 1
        model.operatorCodes.append(c)
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), sizes


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def write_model(desc: dict, path: str, force_external: bool = False) -> int:
    """Writes the model to `path` (atomically) and returns its size in bytes. Models of 2 GiB
    or more keep their data after the flatbuffer (`Buffer.offset`/`size`), as the converter
    does: a flatbuffer's 32-bit offsets cannot reach further."""
    data_len = sum(4 * (weights(l)[1] + l["bias"]) + 2 * ALIGN for l in desc["layers"])
    external = force_external or data_len >= (1 << 31) - (1 << 20)
    skel, sizes = skeleton(desc, external)
    buf = bytearray(skel)
    root = fb.Model.GetRootAs(buf, 0)
    # Where each data block goes: after the skeleton, 16-byte aligned (inline: with its
    # 4-byte length before it).
    prefix = 0 if external else 4
    pos, places = len(buf), []
    for i in range(root.BuffersLength()):
        if not sizes[i]:
            places.append(None)
            continue
        at = align_up(pos + prefix, ALIGN)
        table = root.Buffers(i)._tab
        if external:
            struct.pack_into("<Q", buf, table.Pos + table.Offset(6), at)  # Buffer.offset
            struct.pack_into("<Q", buf, table.Pos + table.Offset(8), sizes[i])  # Buffer.size
        else:
            field = table.Pos + table.Offset(4)  # Buffer.data
            struct.pack_into("<I", buf, field, at - 4 - field)
        places.append(at)
        pos = at + sizes[i]
    total = align_up(pos, 4)

    # Data blocks in buffer order: layer 0 weights, layer 0 bias, layer 1 weights, ...
    data = []
    for layer in desc["layers"]:
        gen = chunks(layer)
        n_w = weights(layer)[1]
        data.append(("w", gen, 4 * n_w))
        data.append(("b", gen, 4 * layer["bias"]))

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".bench-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            f.write(buf)
            written = len(buf)
            blocks = [p for p in places if p is not None]
            for at, (kind, gen, n) in zip(blocks, data):
                f.write(b"\0" * (at - prefix - written))
                if not external:
                    f.write(struct.pack("<I", n))
                written = at
                if kind == "w":
                    left = n
                    while left:
                        c = next(gen)
                        f.write(memoryview(c).cast("B"))
                        left -= c.nbytes
                else:
                    c = next(gen)
                    f.write(memoryview(c).cast("B"))
                written += n
            f.write(b"\0" * (total - written))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return total


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------


def build(out: str, huge: bool) -> None:
    """Builds every benchmark model that is missing (or was built by other parameters)."""
    os.makedirs(os.path.join(out, "small"), exist_ok=True)
    stamp_path = os.path.join(out, "models.json")
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = {}
    wanted = {name: make() for name, make in LARGE.items()}
    if huge:
        wanted.update({name: make() for name, make in HUGE.items()})
    wanted.update(
        {f"small/small-{i:03d}": small(i) for i in range(SMALL_COUNT)}
    )
    for name, desc in wanted.items():
        path = os.path.join(out, name + ".tflite")
        key = json.dumps(desc, sort_keys=True)
        if stamp.get(name) == key and os.path.exists(path):
            continue
        size = write_model(desc, path)
        stamp[name] = key
        if not name.startswith("small/"):
            print(f"bench_models: wrote {path} ({size / 2**20:.1f} MiB)", file=sys.stderr)
    print(f"bench_models: {SMALL_COUNT} small models in {out}/small", file=sys.stderr)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f, indent=1)


def reference(desc: dict, x: np.ndarray) -> np.ndarray:
    """What the model computes, in float64 numpy."""
    y = x.astype(np.float64)
    for layer in desc["layers"]:
        w, b = full_weights(layer)
        if layer["op"] == "fc":
            y = y @ w.astype(np.float64).T + b
        else:
            k = w.shape[1]
            pad = k // 2
            p = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            h, wd = y.shape[1], y.shape[2]
            out = np.zeros((1, h, wd, w.shape[0]))
            for dy in range(k):
                for dx in range(k):
                    patch = p[:, dy : dy + h, dx : dx + wd, :]
                    out += patch @ w[:, dy, dx, :].astype(np.float64).T
            y = out + b
        if layer["relu"]:
            y = np.maximum(y, 0)
    return y


def check() -> None:
    """Builds small models with the same code and checks that LiteRT loads and runs them
    and computes what numpy computes."""
    from ai_edge_litert.interpreter import Interpreter

    cases = {
        "mlp": mlp([64, 96, 96, 10], seed=7),
        "mlp-external": mlp([64, 96, 96, 10], seed=7),
        "cnn": cnn(6, [8, 16, 16], 3, seed=8),
        "small-0": small(0),
    }
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        for name, desc in cases.items():
            path = os.path.join(d, name + ".tflite")
            size = write_model(desc, path, force_external=name.endswith("external"))
            interp = Interpreter(model_path=path)
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]
            x = rng.standard_normal(inp["shape"]).astype(np.float32)
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            got = interp.get_tensor(interp.get_output_details()[0]["index"])
            want = reference(desc, x)
            err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))
            ok = got.shape == want.shape and err < 1e-4
            print(f"check {name}: {size} bytes, relative max error {err:.2e}: "
                  f"{'ok' if ok else 'MISMATCH'}")
            if not ok:
                sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the benchmark models into DIR (once)")
    b.add_argument("dir")
    b.add_argument("--huge", action="store_true", help="also the 9 GiB model (offset/size output)")
    sub.add_parser("check", help="check the builder against LiteRT on small models")
    args = ap.parse_args()
    if args.cmd == "build":
        build(args.dir, args.huge)
    else:
        check()


if __name__ == "__main__":
    main()
