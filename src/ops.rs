//! What tflq knows about operators: which inputs are weights, along which axis their output
//! channels run, and which operators have hybrid kernels (float activations, int8 weights)
//! in the TFLite runtime, with the op version and options those kernels need.
//!
//! The facts come from the runtime's kernels and op-version rules (LiteRT 2.3.0) and were
//! checked by running rewritten models in it; see `docs/modes.md`.

use serde::Serialize;
use tflq_schema as fb;

/// A builtin operator. The operators tflq reasons about have a variant each; every other
/// builtin the schema knows is `Other(code)`. Made from the schema's code with `TryFrom`,
/// which refuses codes the schema does not name (the runtime refuses them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `ADD`.
    Add,
    /// `CONV_2D`.
    Conv2d,
    /// `DEPTHWISE_CONV_2D`.
    DepthwiseConv2d,
    /// `DEQUANTIZE`.
    Dequantize,
    /// `EMBEDDING_LOOKUP`.
    EmbeddingLookup,
    /// `FULLY_CONNECTED`.
    FullyConnected,
    /// `MUL`.
    Mul,
    /// `RELU`.
    Relu,
    /// `RELU6`.
    Relu6,
    /// `LSTM`.
    Lstm,
    /// `RNN`.
    Rnn,
    /// `SVDF`.
    Svdf,
    /// `CALL` (legacy control flow).
    Call,
    /// `CUSTOM`: the operator code's `custom_code` names it.
    Custom,
    /// `SUB`.
    Sub,
    /// `DIV`.
    Div,
    /// `PRELU`.
    Prelu,
    /// `MAXIMUM`.
    Maximum,
    /// `MINIMUM`.
    Minimum,
    /// `UNIDIRECTIONAL_SEQUENCE_RNN`.
    UnidirectionalSequenceRnn,
    /// `GATHER`.
    Gather,
    /// `UNIDIRECTIONAL_SEQUENCE_LSTM`.
    UnidirectionalSequenceLstm,
    /// `BIDIRECTIONAL_SEQUENCE_RNN`.
    BidirectionalSequenceRnn,
    /// `BIDIRECTIONAL_SEQUENCE_LSTM`.
    BidirectionalSequenceLstm,
    /// `TRANSPOSE_CONV`.
    TransposeConv,
    /// `SQUARED_DIFFERENCE`.
    SquaredDifference,
    /// `IF`.
    If,
    /// `WHILE`.
    While,
    /// `BATCH_MATMUL`.
    BatchMatmul,
    /// `CALL_ONCE`.
    CallOnce,
    /// `CONV_3D`.
    Conv3d,
    /// `CONV_3D_TRANSPOSE`.
    Conv3dTranspose,
    /// Any other builtin the schema names, by code.
    Other(i32),
}

/// The variants with their schema codes: the one table both conversions read.
const CODES: [(Op, i32); 32] = [
    (Op::Add, 0),
    (Op::Conv2d, 3),
    (Op::DepthwiseConv2d, 4),
    (Op::Dequantize, 6),
    (Op::EmbeddingLookup, 7),
    (Op::FullyConnected, 9),
    (Op::Mul, 18),
    (Op::Relu, 19),
    (Op::Relu6, 21),
    (Op::Lstm, 16),
    (Op::Rnn, 24),
    (Op::Svdf, 27),
    (Op::Call, 31),
    (Op::Custom, 32),
    (Op::Sub, 41),
    (Op::Div, 42),
    (Op::Prelu, 54),
    (Op::Maximum, 55),
    (Op::Minimum, 57),
    (Op::SquaredDifference, 99),
    (Op::UnidirectionalSequenceRnn, 35),
    (Op::Gather, 36),
    (Op::UnidirectionalSequenceLstm, 44),
    (Op::BidirectionalSequenceRnn, 46),
    (Op::BidirectionalSequenceLstm, 52),
    (Op::TransposeConv, 67),
    (Op::If, 118),
    (Op::While, 119),
    (Op::BatchMatmul, 126),
    (Op::CallOnce, 129),
    (Op::Conv3d, 132),
    (Op::Conv3dTranspose, 141),
];

/// A builtin code the schema does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownOp(pub i32);

impl TryFrom<fb::BuiltinOperator> for Op {
    type Error = UnknownOp;
    fn try_from(code: fb::BuiltinOperator) -> Result<Op, UnknownOp> {
        if code.variant_name().is_none() {
            return Err(UnknownOp(code.0));
        }
        Ok(CODES
            .iter()
            .find(|(_, c)| *c == code.0)
            .map_or(Op::Other(code.0), |&(op, _)| op))
    }
}

impl Op {
    /// The schema's code.
    pub fn code(self) -> i32 {
        match self {
            Op::Other(c) => c,
            op => CODES.iter().find(|(o, _)| *o == op).map_or(-1, |&(_, c)| c),
        }
    }

    /// The schema's name, e.g. `FULLY_CONNECTED`.
    pub fn name(self) -> String {
        let code = self.code();
        fb::BuiltinOperator(code)
            .variant_name()
            .map_or_else(|| format!("OP_{code}"), str::to_owned)
    }

    /// The builtin named `name` (case-insensitive), e.g. "fully_connected".
    pub fn by_name(name: &str) -> Option<Op> {
        fb::BuiltinOperator::ENUM_VALUES
            .iter()
            .find(|c| {
                c.variant_name()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .and_then(|&c| Op::try_from(c).ok())
    }

    /// Whether this is a control-flow operator (its inputs are passed to other subgraphs).
    pub fn is_control_flow(self) -> bool {
        matches!(self, Op::While | Op::If | Op::Call | Op::CallOnce)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The axis of a weight input along which per-channel scales make sense (its output
/// channels), or `None` when the operator/input has no such axis.
pub fn channel_axis(op: Op, slot: usize, rank: usize) -> Option<usize> {
    let axis = match (op, slot) {
        (Op::Conv2d | Op::FullyConnected | Op::TransposeConv, 1) => 0,
        (Op::DepthwiseConv2d, 1) => 3,
        (Op::Conv3d, 1) => 4,
        // [..., K, N]: one scale per output column.
        (Op::BatchMatmul, 1) if rank >= 2 => rank - 1,
        // Embedding tables: one scale per row.
        (Op::EmbeddingLookup, 1) | (Op::Gather, 0) => 0,
        _ => return None,
    };
    (axis < rank).then_some(axis)
}

/// The input slot of an operator's bias, if it has one: a vector of one value per output
/// channel, added after the weights are applied.
pub fn bias_slot(op: Op) -> Option<usize> {
    match op {
        Op::Conv2d | Op::DepthwiseConv2d | Op::FullyConnected | Op::Conv3d => Some(2),
        // Inputs: output shape, weights, activation, bias.
        Op::TransposeConv | Op::Conv3dTranspose => Some(3),
        _ => None,
    }
}

/// Whether `op` combines its inputs element by element (with broadcasting): a constant vector
/// it reads is a per-channel scale or shift (a folded batch norm), or PReLU's slopes.
pub fn is_elementwise(op: Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Mul
            | Op::Sub
            | Op::Div
            | Op::Prelu
            | Op::Maximum
            | Op::Minimum
            | Op::SquaredDifference
    )
}

/// How an operator with a hybrid kernel takes int8 weights directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hybrid {
    /// Input slots holding weights that must all be int8 for the hybrid kernel: the runtime
    /// refuses a mix, or (SVDF, bidirectional RNN) computes it wrongly.
    pub slots: &'static [usize],
    /// Input slot of the float activation (`None`: the op has no float data input).
    pub activation: Option<usize>,
    /// The hybrid kernel accepts per-channel weights (on [`channel_axis`]).
    pub per_channel: bool,
    /// The hybrid kernel reads one scale per channel whatever the tensor says: a single
    /// scale gives garbage (DEPTHWISE_CONV_2D), so per-tensor is written as a repeated scale.
    pub requires_per_channel: bool,
    /// Op version the converter writes for this hybrid kernel: per-tensor, per-channel.
    pub version: (i32, i32),
    /// The options table has `asymmetric_quantize_inputs`, which tflq turns on: activations
    /// are then quantized per row with their own zero point, as the converter does.
    pub asymmetric_inputs: bool,
}

/// LSTM weights: input-to-gate (1-4), recurrent-to-gate (5-8), cell-to-gate peepholes
/// (9-11, optional) and projection (16, optional).
const LSTM_SLOTS: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16];

/// Bidirectional LSTM: the forward weights as in [`LSTM_SLOTS`], the backward ones 17 later,
/// and the auxiliary-input weights of both directions (40-47).
const BIDI_LSTM_SLOTS: &[usize] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 33, 40, 41,
    42, 43, 44, 45, 46, 47,
];

/// The hybrid kernel of `op` in the TFLite runtime, if it has one. GATHER and CONV_3D
/// have none (they keep the DEQUANTIZE path).
pub fn hybrid(op: Op) -> Option<Hybrid> {
    let h = |slots, per_channel, version, asymmetric_inputs| Hybrid {
        slots,
        activation: Some(0),
        per_channel,
        requires_per_channel: false,
        version,
        asymmetric_inputs,
    };
    Some(match op {
        Op::FullyConnected => h(&[1], true, (9, 12), true),
        Op::Conv2d => h(&[1], true, (2, 5), false),
        Op::DepthwiseConv2d => Hybrid {
            requires_per_channel: true,
            ..h(&[1], true, (6, 6), false)
        },
        // Inputs: output shape, weights, activation, bias.
        Op::TransposeConv => Hybrid {
            activation: Some(2),
            ..h(&[1], true, (2, 2), false)
        },
        Op::BatchMatmul => h(&[1], false, (4, 4), true),
        // Inputs: int32 ids, table: no float activation.
        Op::EmbeddingLookup => Hybrid {
            activation: None,
            ..h(&[1], true, (1, 4), false)
        },
        Op::UnidirectionalSequenceLstm => h(LSTM_SLOTS, false, (3, 3), true),
        Op::Lstm => h(LSTM_SLOTS, false, (4, 4), true),
        Op::BidirectionalSequenceLstm => h(BIDI_LSTM_SLOTS, false, (3, 3), true),
        Op::Svdf => h(&[1, 2], false, (4, 4), true),
        Op::Rnn | Op::UnidirectionalSequenceRnn => h(&[1, 2], false, (3, 3), true),
        // Forward, backward, and the two auxiliary weight matrices.
        Op::BidirectionalSequenceRnn => h(&[1, 2, 5, 6, 10, 11], false, (3, 3), true),
        _ => return None,
    })
}

/// What a hybrid kernel accepts for sub-byte (int4, int2) weights, as measured on LiteRT
/// 2.3.0 with XNNPACK on and off (`tests/oracle/test_int4.py`). Always symmetric (zero
/// point 0): the kernels ignore or refuse a zero point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubByte {
    /// One scale per tensor.
    pub per_tensor: bool,
    /// One scale per channel on [`channel_axis`].
    pub per_channel: bool,
    /// Blockwise along the last axis, with float16 scales, under [`BlockRule`].
    pub blockwise: Option<BlockRule>,
}

/// The conditions under which a kernel reads blockwise weights right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRule {
    /// FULLY_CONNECTED's optimized 4-bit path: a `[N, K]` filter with K even, N >= 4 and
    /// K >= 32, and no fused activation; otherwise the builtin kernel ignores the block
    /// scales, or the activation (silently wrong).
    FullyConnected4Bit,
    /// EMBEDDING_LOOKUP: any table whose last axis the block size divides.
    Rows,
}

/// How the hybrid kernel of `op` takes `bits`-bit weights, or `None` when it takes int8 only
/// (then the weight keeps int8).
pub fn hybrid_sub_byte(op: Op, bits: u32) -> Option<SubByte> {
    Some(match (op, bits) {
        (Op::FullyConnected, 4) => SubByte {
            per_tensor: true,
            per_channel: true,
            blockwise: Some(BlockRule::FullyConnected4Bit),
        },
        (Op::Conv2d, 4) => SubByte {
            per_tensor: true,
            per_channel: true,
            blockwise: None,
        },
        (Op::EmbeddingLookup, 4 | 2) => SubByte {
            per_tensor: true,
            per_channel: true,
            blockwise: Some(BlockRule::Rows),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_its_schema_code() {
        for &(op, code) in &CODES {
            let back = Op::try_from(fb::BuiltinOperator(code)).unwrap();
            assert_eq!(back, op);
            assert_eq!(back.code(), code);
            // The schema's own name for the code, independent of our table.
            assert_eq!(
                Some(op.name().as_str()),
                fb::BuiltinOperator(code).variant_name()
            );
        }
    }

    #[test]
    fn other_builtins_keep_their_code_and_unknown_codes_are_refused() {
        // SOFTMAX is 25 and TANH 28 in the schema.
        assert_eq!(Op::try_from(fb::BuiltinOperator(25)), Ok(Op::Other(25)));
        assert_eq!(Op::Other(28).name(), "TANH");
        assert_eq!(
            Op::try_from(fb::BuiltinOperator(100_000)),
            Err(UnknownOp(100_000))
        );
        assert_eq!(Op::by_name("fully_connected"), Some(Op::FullyConnected));
        assert_eq!(Op::by_name("Add"), Some(Op::Add));
        assert_eq!(Op::by_name("softmax"), Some(Op::Other(25)));
        assert_eq!(Op::by_name("no_such_op"), None);
    }
}
