"""Single-operator .tflite models, built without TensorFlow (flatbuffers object API of the
schema shipped in the `ai_edge_litert` wheel), one per operator of tflq's weight table.

Every builder takes a seed and returns the model's bytes. Weights are seeded random float32
constants with at least 1024 elements (tflq's default --min-elements), so that each one
qualifies; small tensors (biases) stay float; activations are float32 graph inputs, and
recurrent state is a variable tensor. Each builder's docstring names the weight inputs
(slot: layout). `BUILDERS` maps an op name to its builder, `WEIGHT_SLOTS` the op to its
weight input slots.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

OP = tfl.BuiltinOperator
T = tfl.TensorType
OPT = tfl.BuiltinOptions
ACT = tfl.ActivationFunctionType
ALIGN = 16  # buffer data alignment, as the converter writes it


def _pack_buffer_aligned(self, builder):
    """BufferT.Pack with the data vector aligned to 16 bytes (the generated Pack uses 1)."""
    data = None
    if self.data is not None:
        payload = bytes(self.data)
        builder.StartVector(1, len(payload), ALIGN)
        builder.head -= len(payload)
        builder.Bytes[builder.head:builder.head + len(payload)] = payload
        builder.vectorNumElems = len(payload)
        data = builder.EndVector()
    tfl.BufferStart(builder)
    if data is not None:
        tfl.BufferAddData(builder, data)
    return tfl.BufferEnd(builder)


class Graph:
    """One subgraph with one operator under construction."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: list = []
        self.buffers: list = [tfl.BufferT()]  # buffer 0: the empty sentinel
        self.inputs: list[int] = []

    def _tensor(self, name: str, shape, ttype=T.FLOAT32, buffer: int = 0, variable=False) -> int:
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer, t.isVariable = name.encode(), list(shape), ttype, buffer, variable
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray) -> int:
        b = tfl.BufferT()
        b.data = array.tobytes()
        self.buffers.append(b)
        ttype = {np.float32: T.FLOAT32, np.int32: T.INT32}[array.dtype.type]
        return self._tensor(name, array.shape, ttype, len(self.buffers) - 1)

    def weight(self, name: str, shape, scale: float | None = None) -> int:
        """Gaussian float32 weights, scaled by 1/sqrt(fan-in) (the last axis) by default."""
        scale = 1.0 / np.sqrt(shape[-1]) if scale is None else scale
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def bias(self, name: str, n: int) -> int:
        return self.const(name, (0.1 * self.rng.standard_normal(n)).astype(np.float32))

    def input(self, name: str, shape, ttype=T.FLOAT32) -> int:
        i = self._tensor(name, shape, ttype)
        self.inputs.append(i)
        return i

    def state(self, name: str, shape) -> int:
        """A variable tensor (recurrent state, zero at allocation)."""
        b = tfl.BufferT()
        self.buffers.append(b)
        return self._tensor(name, shape, T.FLOAT32, len(self.buffers) - 1, variable=True)

    def finish(self, code: int, inputs: list[int], out_shapes: list, opt_type=0, opts=None) -> bytes:
        outputs = [self._tensor(f"out{k}", s) for k, s in enumerate(out_shapes)]
        oc = tfl.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        op = tfl.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, inputs, outputs
        op.builtinOptionsType, op.builtinOptions = opt_type, opts
        g = tfl.SubGraphT()
        g.tensors, g.inputs, g.outputs, g.operators, g.name = self.tensors, self.inputs, outputs, [op], b"main"
        m = tfl.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [oc], [g], self.buffers
        m.description = b"tflq single-op test model"
        return pack(m)


def pack(m) -> bytes:
    """The .tflite bytes of a ModelT, buffer data aligned to 16 bytes."""
    builder = flatbuffers.Builder(1 << 16)
    saved, tfl.BufferT.Pack = tfl.BufferT.Pack, _pack_buffer_aligned
    try:
        root = m.Pack(builder)
    finally:
        tfl.BufferT.Pack = saved
    builder.Finish(root, file_identifier=b"TFL3")
    return bytes(builder.Output())


def without_options(data: bytes) -> bytes:
    """The same model with the operator's builtin options table left out (the runtime then
    uses the defaults: no fused activation, symmetric activation quantization)."""
    m = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for op in m.subgraphs[0].operators:
        op.builtinOptionsType, op.builtinOptions = 0, None
    return pack(m)


def _opts(cls, **fields):
    o = cls()
    for k, v in fields.items():
        assert hasattr(o, k), (cls.__name__, k)
        setattr(o, k, v)
    return o


def fully_connected(seed: int) -> bytes:
    """x [2, 64] -> [2, 32]. Weights: 1 = [32, 64] (output channels on axis 0); 2 = bias [32]."""
    g = Graph(seed)
    ins = [g.input("x", [2, 64]), g.weight("w", [32, 64]), g.bias("b", 32)]
    return g.finish(OP.FULLY_CONNECTED, ins, [[2, 32]], OPT.FullyConnectedOptions,
                    _opts(tfl.FullyConnectedOptionsT))


def conv_2d(seed: int) -> bytes:
    """x [1, 8, 8, 16] NHWC -> [1, 8, 8, 32], SAME, stride 1. Weights: 1 = [32, 3, 3, 16]
    (OHWI, output channels on axis 0); 2 = bias [32]."""
    g = Graph(seed)
    ins = [g.input("x", [1, 8, 8, 16]), g.weight("w", [32, 3, 3, 16], 1 / 12), g.bias("b", 32)]
    return g.finish(OP.CONV_2D, ins, [[1, 8, 8, 32]], OPT.Conv2DOptions,
                    _opts(tfl.Conv2DOptionsT, padding=tfl.Padding.SAME, strideW=1, strideH=1))


def depthwise_conv_2d(seed: int) -> bytes:
    """x [1, 8, 8, 64] -> [1, 8, 8, 64], SAME, multiplier 1. Weights: 1 = [1, 5, 5, 64]
    (1HWC, channels on axis 3); 2 = bias [64]."""
    g = Graph(seed)
    ins = [g.input("x", [1, 8, 8, 64]), g.weight("w", [1, 5, 5, 64], 0.2), g.bias("b", 64)]
    return g.finish(OP.DEPTHWISE_CONV_2D, ins, [[1, 8, 8, 64]], OPT.DepthwiseConv2DOptions,
                    _opts(tfl.DepthwiseConv2DOptionsT, padding=tfl.Padding.SAME, strideW=1,
                          strideH=1, depthMultiplier=1))


def transpose_conv(seed: int) -> bytes:
    """x [1, 4, 4, 16] -> [1, 8, 8, 16], SAME, stride 2. Inputs: 0 = output shape (int32
    constant), 1 = weights [16, 3, 3, 16] (OHWI, output channels on axis 0), 2 = x."""
    g = Graph(seed)
    shape = g.const("output_shape", np.array([1, 8, 8, 16], np.int32))
    w = g.weight("w", [16, 3, 3, 16], 1 / 8)
    ins = [shape, w, g.input("x", [1, 4, 4, 16])]
    return g.finish(OP.TRANSPOSE_CONV, ins, [[1, 8, 8, 16]], OPT.TransposeConvOptions,
                    _opts(tfl.TransposeConvOptionsT, padding=tfl.Padding.SAME, strideW=2, strideH=2))


def batch_matmul(seed: int) -> bytes:
    """x [1, 4, 64] @ y -> [1, 4, 32]. Weights: 1 = y [1, 64, 32] ([..., K, N], the right-hand
    side, output columns on the last axis)."""
    g = Graph(seed)
    ins = [g.input("x", [1, 4, 64]), g.weight("y", [1, 64, 32], 1 / 8)]
    return g.finish(OP.BATCH_MATMUL, ins, [[1, 4, 32]], OPT.BatchMatMulOptions,
                    _opts(tfl.BatchMatMulOptionsT))


def embedding_lookup(seed: int) -> bytes:
    """ids int32 [6] (values in [0, 99]) -> [6, 16]. Weights: 1 = table [100, 16] (rows on
    axis 0)."""
    g = Graph(seed)
    ins = [g.input("ids", [6], T.INT32), g.weight("table", [100, 16], 1.0)]
    return g.finish(OP.EMBEDDING_LOOKUP, ins, [[6, 16]])


def gather(seed: int) -> bytes:
    """GATHER(table, ids) along axis 0 -> [6, 16]. Weights: 0 = table [100, 16] (no hybrid
    kernel: the table goes through DEQUANTIZE in every mode); 1 = ids int32 [6]."""
    g = Graph(seed)
    table = g.weight("table", [100, 16], 1.0)
    ins = [table, g.input("ids", [6], T.INT32)]
    return g.finish(OP.GATHER, ins, [[6, 16]], OPT.GatherOptions, _opts(tfl.GatherOptionsT, axis=0))


def conv_3d(seed: int) -> bytes:
    """x [1, 4, 6, 6, 8] NDHWC -> [1, 4, 6, 6, 16], SAME, stride 1. Weights: 1 = [3, 3, 3, 8, 16]
    (DHWIO, output channels on axis 4; no hybrid kernel); 2 = bias [16]."""
    g = Graph(seed)
    ins = [g.input("x", [1, 4, 6, 6, 8]), g.weight("w", [3, 3, 3, 8, 16], 1 / 15), g.bias("b", 16)]
    return g.finish(OP.CONV_3D, ins, [[1, 4, 6, 6, 16]], OPT.Conv3DOptions,
                    _opts(tfl.Conv3DOptionsT, padding=tfl.Padding.SAME, strideD=1, strideW=1, strideH=1))


N_IN, N_CELL, BATCH, TIME = 32, 32, 2, 5


def _lstm_weights(g: Graph, prefix: str) -> list[int]:
    """Slots 1-17 of an LSTM direction: 1-4 input-to-{input, forget, cell, output} gate
    weights [N_CELL, N_IN]; 5-8 recurrent-to-gate weights [N_CELL, N_CELL]; 9-11 peepholes
    (absent); 12-15 gate biases [N_CELL]; 16-17 projection (absent)."""
    w = [g.weight(f"{prefix}in_{k}", [N_CELL, N_IN]) for k in "ifco"]
    r = [g.weight(f"{prefix}rec_{k}", [N_CELL, N_CELL]) for k in "ifco"]
    b = [g.bias(f"{prefix}bias_{k}", N_CELL) for k in "ifco"]
    return w + r + [-1, -1, -1] + b + [-1, -1]


def lstm(seed: int) -> bytes:
    """x [BATCH, N_IN] -> [BATCH, N_CELL], one step, full kernel. Weights: slots 1-8 (see
    `_lstm_weights`); 18-19 = output and cell state (variables); 20-23 layer norm (absent)."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, N_IN])] + _lstm_weights(g, "")
    ins += [g.state("h", [BATCH, N_CELL]), g.state("c", [BATCH, N_CELL]), -1, -1, -1, -1]
    return g.finish(OP.LSTM, ins, [[BATCH, N_CELL]], OPT.LSTMOptions,
                    _opts(tfl.LSTMOptionsT, fusedActivationFunction=ACT.TANH))


def unidirectional_sequence_lstm(seed: int) -> bytes:
    """x [BATCH, TIME, N_IN] (batch major) -> [BATCH, TIME, N_CELL]. Slots as in `lstm`."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, TIME, N_IN])] + _lstm_weights(g, "")
    ins += [g.state("h", [BATCH, N_CELL]), g.state("c", [BATCH, N_CELL]), -1, -1, -1, -1]
    return g.finish(OP.UNIDIRECTIONAL_SEQUENCE_LSTM, ins, [[BATCH, TIME, N_CELL]],
                    OPT.UnidirectionalSequenceLSTMOptions,
                    _opts(tfl.UnidirectionalSequenceLSTMOptionsT, fusedActivationFunction=ACT.TANH,
                          timeMajor=False))


def bidirectional_sequence_lstm(seed: int) -> bytes:
    """x [BATCH, TIME, N_IN] -> [BATCH, TIME, 2 * N_CELL] (merged outputs). Weights: forward
    slots 1-8, backward 18-25 (each as in `_lstm_weights`); 35-38 = forward/backward output and
    cell states (variables); 39 aux input and 40-47 aux weights (absent)."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, TIME, N_IN])] + _lstm_weights(g, "fw_") + _lstm_weights(g, "bw_")
    ins += [g.state(n, [BATCH, N_CELL]) for n in ("fw_h", "fw_c", "bw_h", "bw_c")]
    ins += [-1] * 9
    assert len(ins) == 48
    return g.finish(OP.BIDIRECTIONAL_SEQUENCE_LSTM, ins, [[BATCH, TIME, 2 * N_CELL]],
                    OPT.BidirectionalSequenceLSTMOptions,
                    _opts(tfl.BidirectionalSequenceLSTMOptionsT, fusedActivationFunction=ACT.TANH,
                          mergeOutputs=True, timeMajor=False))


def svdf(seed: int) -> bytes:
    """x [BATCH, 32] -> [BATCH, 64], rank 1, memory 16. Weights: 1 = feature weights [64, 32]
    (filters x input); 2 = time weights [64, 16] (filters x memory); 3 = bias [64]; 4 = state
    [BATCH, 16 * 64] (variable)."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, 32]), g.weight("feature", [64, 32]), g.weight("time", [64, 16], 0.25),
           g.bias("b", 64), g.state("state", [BATCH, 16 * 64])]
    return g.finish(OP.SVDF, ins, [[BATCH, 64]], OPT.SVDFOptions, _opts(tfl.SVDFOptionsT, rank=1))


def _rnn_weights(g: Graph, prefix: str) -> list[int]:
    """Input weights [N_CELL, N_IN], recurrent weights [N_CELL, N_CELL], bias [N_CELL]."""
    return [g.weight(f"{prefix}w", [N_CELL, N_IN]), g.weight(f"{prefix}rec", [N_CELL, N_CELL], 0.1),
            g.bias(f"{prefix}b", N_CELL)]


def rnn(seed: int) -> bytes:
    """x [BATCH, N_IN] -> [BATCH, N_CELL], one step. Weights: 1 = input weights, 2 = recurrent
    weights (see `_rnn_weights`); 3 = bias; 4 = hidden state (variable)."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, N_IN])] + _rnn_weights(g, "") + [g.state("h", [BATCH, N_CELL])]
    return g.finish(OP.RNN, ins, [[BATCH, N_CELL]], OPT.RNNOptions,
                    _opts(tfl.RNNOptionsT, fusedActivationFunction=ACT.TANH))


def unidirectional_sequence_rnn(seed: int) -> bytes:
    """x [BATCH, TIME, N_IN] (batch major) -> [BATCH, TIME, N_CELL]. Slots as in `rnn`."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, TIME, N_IN])] + _rnn_weights(g, "") + [g.state("h", [BATCH, N_CELL])]
    return g.finish(OP.UNIDIRECTIONAL_SEQUENCE_RNN, ins, [[BATCH, TIME, N_CELL]], OPT.SequenceRNNOptions,
                    _opts(tfl.SequenceRNNOptionsT, fusedActivationFunction=ACT.TANH, timeMajor=False))


def bidirectional_sequence_rnn(seed: int) -> bytes:
    """x [BATCH, TIME, N_IN] -> [BATCH, TIME, 2 * N_CELL] (merged). Weights: 1-2 forward input and
    recurrent weights, 3 forward bias, 4 forward state; 5-6 backward weights, 7 bias, 8 state;
    9 aux input and 10-11 aux weights (absent)."""
    g = Graph(seed)
    ins = [g.input("x", [BATCH, TIME, N_IN])]
    ins += _rnn_weights(g, "fw_") + [g.state("fw_h", [BATCH, N_CELL])]
    ins += _rnn_weights(g, "bw_") + [g.state("bw_h", [BATCH, N_CELL])]
    ins += [-1, -1, -1]
    return g.finish(OP.BIDIRECTIONAL_SEQUENCE_RNN, ins, [[BATCH, TIME, 2 * N_CELL]],
                    OPT.BidirectionalSequenceRNNOptions,
                    _opts(tfl.BidirectionalSequenceRNNOptionsT, fusedActivationFunction=ACT.TANH,
                          timeMajor=False, mergeOutputs=True))


BUILDERS = {f.__name__.upper(): f for f in (
    fully_connected, conv_2d, depthwise_conv_2d, transpose_conv, batch_matmul, embedding_lookup,
    lstm, unidirectional_sequence_lstm, bidirectional_sequence_lstm, svdf, rnn,
    unidirectional_sequence_rnn, bidirectional_sequence_rnn, conv_3d, gather)}

_LSTM = (1, 2, 3, 4, 5, 6, 7, 8)
# Op -> input slots holding the big weights (each >= 1024 elements) the builder writes.
WEIGHT_SLOTS = {
    "FULLY_CONNECTED": (1,), "CONV_2D": (1,), "DEPTHWISE_CONV_2D": (1,), "TRANSPOSE_CONV": (1,),
    "BATCH_MATMUL": (1,), "EMBEDDING_LOOKUP": (1,), "LSTM": _LSTM, "UNIDIRECTIONAL_SEQUENCE_LSTM": _LSTM,
    "BIDIRECTIONAL_SEQUENCE_LSTM": _LSTM + tuple(s + 17 for s in _LSTM), "SVDF": (1, 2), "RNN": (1, 2),
    "UNIDIRECTIONAL_SEQUENCE_RNN": (1, 2), "BIDIRECTIONAL_SEQUENCE_RNN": (1, 2, 5, 6),
    "CONV_3D": (1,), "GATHER": (0,),
}
