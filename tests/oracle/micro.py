"""TensorFlow Lite Micro's Python interpreter (PyPI `tflite-micro`) as a second runtime: run a
model's main subgraph, read the arena it needs, and build models for the arena tests."""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from tflite_micro.python.tflite_micro import runtime

_LIBC = ctypes.CDLL(None)


def n_inputs(raw: bytes) -> int:
    """Inputs of subgraph 0, the one TFLM runs (it ignores signatures)."""
    return len(tfl.ModelT.InitFromPackedBuf(raw, 0).subgraphs[0].inputs)


def interpreter(raw: bytes):
    """A TFLM interpreter with its tensors allocated (raises if TFLM refuses the model)."""
    return runtime.Interpreter.from_bytes(raw)


def run(raw: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of subgraph 0 for `feeds` (one array per input, in input order)."""
    it = interpreter(raw)
    for i, x in enumerate(feeds):
        it.set_input(x, i)
    it.invoke()
    n_out = len(tfl.ModelT.InitFromPackedBuf(raw, 0).subgraphs[0].outputs)
    return [np.array(it.get_output(i)) for i in range(n_out)]


def input_details(raw: bytes) -> list[dict]:
    it = interpreter(raw)
    return [it.get_input_details(i) for i in range(n_inputs(raw))]


def allocations(raw: bytes) -> dict[str, int]:
    """TFLM's own arena figures (print_allocations, which writes to the C stderr):
    `total`, `head` (the planned, non-persistent tensors) and `tail` (persistent), in bytes."""
    it = interpreter(raw)
    sys.stdout.flush()
    sys.stderr.flush()
    _LIBC.fflush(None)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            it.print_allocations()
            _LIBC.fflush(None)
        finally:
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", text)}
    assert set(out) == {"total", "head", "tail"}, text
    return out


def dequantizes_first(raw: bytes) -> bytes:
    """The same model with every DEQUANTIZE op of a constant moved to the start of its
    subgraph (in their order): how tflq placed them before it placed each before its reader."""
    m = tfl.ModelT.InitFromPackedBuf(raw, 0)
    for g in m.subgraphs:
        def is_dq(op):
            code = m.operatorCodes[op.opcodeIndex]
            return (max(code.builtinCode, code.deprecatedBuiltinCode) == tfl.BuiltinOperator.DEQUANTIZE
                    and g.tensors[op.inputs[0]].buffer != 0)
        ops = g.operators or []
        g.operators = [o for o in ops if is_dq(o)] + [o for o in ops if not is_dq(o)]
    b = flatbuffers.Builder(len(raw) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


# ------------------------------------------------------------- a keyword-spotting network

def kws_model(path: Path, channels: int = 96, blocks: int = 4, labels: int = 12, seed: int = 0) -> Path:
    """A DS-CNN keyword-spotting network like the ones run on microcontrollers (input: 49
    frames x 10 MFCC features): CONV_2D 10x4 stride 2 -> `blocks` x (DEPTHWISE_CONV_2D 3x3 +
    CONV_2D 1x1, relu) -> AVERAGE_POOL_2D -> RESHAPE -> FULLY_CONNECTED -> SOFTMAX, with
    He-initialised float weights (about 180 KB of them with the defaults)."""
    rng = np.random.default_rng(seed)
    m = tfl.ModelT()
    m.version = 3
    m.buffers = [tfl.BufferT()]
    m.operatorCodes = []
    g = tfl.SubGraphT()
    g.tensors, g.operators = [], []
    codes = {}

    def code(op):
        if op not in codes:
            c = tfl.OperatorCodeT()
            c.builtinCode = op
            c.deprecatedBuiltinCode = min(op, 127)
            c.version = 1
            codes[op] = len(m.operatorCodes)
            m.operatorCodes.append(c)
        return codes[op]

    def tensor(shape, name, data=None, dtype=tfl.TensorType.FLOAT32):
        t = tfl.TensorT()
        t.shape, t.type, t.name = list(shape), dtype, name.encode()
        t.buffer = 0
        if data is not None:
            buf = tfl.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            t.buffer = len(m.buffers)
            m.buffers.append(buf)
        g.tensors.append(t)
        return len(g.tensors) - 1

    def weight(shape, fan_in, name):
        return tensor(shape, name, (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32))

    def op(kind, inputs, outputs, opts_type=None, opts=None):
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code(kind), inputs, outputs
        if opts is not None:
            o.builtinOptionsType, o.builtinOptions = opts_type, opts
        g.operators.append(o)

    O, BO = tfl.BuiltinOperator, tfl.BuiltinOptions
    relu = tfl.ActivationFunctionType.RELU

    def conv_opts(stride, padding):
        c = tfl.Conv2DOptionsT()
        c.padding, c.strideW, c.strideH, c.fusedActivationFunction = padding, stride, stride, relu
        c.dilationWFactor = c.dilationHFactor = 1
        return c

    x = tensor([1, 49, 10, 1], "mfcc")
    h, w = 25, 5
    y = tensor([1, h, w, channels], "conv0")
    op(O.CONV_2D, [x, weight([channels, 10, 4, 1], 40, "conv0/w"),
                   tensor([channels], "conv0/b", np.zeros(channels, np.float32)), ], [y],
       BO.Conv2DOptions, conv_opts(2, tfl.Padding.SAME))
    for i in range(blocks):
        d = tfl.DepthwiseConv2DOptionsT()
        d.padding, d.strideW, d.strideH, d.depthMultiplier = tfl.Padding.SAME, 1, 1, 1
        d.fusedActivationFunction, d.dilationWFactor, d.dilationHFactor = relu, 1, 1
        z = tensor([1, h, w, channels], f"dw{i}")
        op(O.DEPTHWISE_CONV_2D, [y, weight([1, 3, 3, channels], 9, f"dw{i}/w"),
                                 tensor([channels], f"dw{i}/b", np.zeros(channels, np.float32))], [z],
           BO.DepthwiseConv2DOptions, d)
        y = tensor([1, h, w, channels], f"pw{i}")
        op(O.CONV_2D, [z, weight([channels, 1, 1, channels], channels, f"pw{i}/w"),
                       tensor([channels], f"pw{i}/b", np.zeros(channels, np.float32))], [y],
           BO.Conv2DOptions, conv_opts(1, tfl.Padding.VALID))
    p = tfl.Pool2DOptionsT()
    p.padding, p.strideW, p.strideH, p.filterWidth, p.filterHeight = tfl.Padding.VALID, 1, 1, w, h
    pooled = tensor([1, 1, 1, channels], "pool")
    op(O.AVERAGE_POOL_2D, [y], [pooled], BO.Pool2DOptions, p)
    flat = tensor([1, channels], "flat")
    r = tfl.ReshapeOptionsT()
    r.newShape = [1, channels]
    op(O.RESHAPE, [pooled, tensor([2], "shape", np.array([1, channels], np.int32), tfl.TensorType.INT32)],
       [flat], BO.ReshapeOptions, r)
    logits = tensor([1, labels], "logits")
    f = tfl.FullyConnectedOptionsT()
    op(O.FULLY_CONNECTED, [flat, weight([labels, channels], channels, "fc/w"),
                           tensor([labels], "fc/b", np.zeros(labels, np.float32))], [logits],
       BO.FullyConnectedOptions, f)
    probs = tensor([1, labels], "probs")
    s = tfl.SoftmaxOptionsT()
    s.beta = 1.0
    op(O.SOFTMAX, [logits], [probs], BO.SoftmaxOptions, s)
    g.inputs, g.outputs = [x], [probs]
    m.subgraphs = [g]
    b = flatbuffers.Builder(1 << 20)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path
