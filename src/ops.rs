//! What tflq knows about operators: which inputs are weights, along which axis their output
//! channels run, and which operators have hybrid kernels (float activations, int8 weights)
//! in the TFLite runtime, with the op version and options those kernels need.
//!
//! The facts come from the runtime's kernels and op-version rules (LiteRT 2.3.0) and were
//! checked by running rewritten models in it; see `docs/modes.md`.

use crate::model::op;

/// Builtin codes used below.
mod code {
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const EMBEDDING_LOOKUP: i32 = 7;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const LSTM: i32 = 16;
    pub const RNN: i32 = 24;
    pub const SVDF: i32 = 27;
    pub const UNIDIRECTIONAL_SEQUENCE_RNN: i32 = 35;
    pub const GATHER: i32 = 36;
    pub const UNIDIRECTIONAL_SEQUENCE_LSTM: i32 = 44;
    pub const BIDIRECTIONAL_SEQUENCE_RNN: i32 = 46;
    pub const BIDIRECTIONAL_SEQUENCE_LSTM: i32 = 52;
    pub const TRANSPOSE_CONV: i32 = 67;
    pub const BATCH_MATMUL: i32 = 126;
    pub const CONV_3D: i32 = 132;
}
pub use code::*;

/// The axis of a weight input along which per-channel scales make sense (its output
/// channels), or `None` when the operator/input has no such axis.
pub fn channel_axis(code: i32, slot: usize, rank: usize) -> Option<usize> {
    let axis = match (code, slot) {
        (CONV_2D | FULLY_CONNECTED | TRANSPOSE_CONV, 1) => 0,
        (DEPTHWISE_CONV_2D, 1) => 3,
        (CONV_3D, 1) => 4,
        // [..., K, N]: one scale per output column.
        (BATCH_MATMUL, 1) if rank >= 2 => rank - 1,
        // Embedding tables: one scale per row.
        (EMBEDDING_LOOKUP, 1) | (GATHER, 0) => 0,
        _ => return None,
    };
    (axis < rank).then_some(axis)
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

/// The hybrid kernel of `code` in the TFLite runtime, if it has one. GATHER and CONV_3D
/// have none (they keep the DEQUANTIZE path).
pub fn hybrid(code: i32) -> Option<Hybrid> {
    let h = |slots, per_channel, version, asymmetric_inputs| Hybrid {
        slots,
        activation: Some(0),
        per_channel,
        requires_per_channel: false,
        version,
        asymmetric_inputs,
    };
    Some(match code {
        FULLY_CONNECTED => h(&[1], true, (9, 12), true),
        CONV_2D => h(&[1], true, (2, 5), false),
        DEPTHWISE_CONV_2D => Hybrid {
            requires_per_channel: true,
            ..h(&[1], true, (6, 6), false)
        },
        // Inputs: output shape, weights, activation, bias.
        TRANSPOSE_CONV => Hybrid {
            activation: Some(2),
            ..h(&[1], true, (2, 2), false)
        },
        BATCH_MATMUL => h(&[1], false, (4, 4), true),
        // Inputs: int32 ids, table: no float activation.
        EMBEDDING_LOOKUP => Hybrid {
            activation: None,
            ..h(&[1], true, (1, 4), false)
        },
        UNIDIRECTIONAL_SEQUENCE_LSTM => h(LSTM_SLOTS, false, (3, 3), true),
        LSTM => h(LSTM_SLOTS, false, (4, 4), true),
        BIDIRECTIONAL_SEQUENCE_LSTM => h(BIDI_LSTM_SLOTS, false, (3, 3), true),
        SVDF => h(&[1, 2], false, (4, 4), true),
        RNN | UNIDIRECTIONAL_SEQUENCE_RNN => h(&[1, 2], false, (3, 3), true),
        // Forward, backward, and the two auxiliary weight matrices.
        BIDIRECTIONAL_SEQUENCE_RNN => h(&[1, 2, 5, 6, 10, 11], false, (3, 3), true),
        _ => return None,
    })
}

/// Whether `code` is a control-flow operator (its inputs are passed to other subgraphs).
pub fn is_control_flow(code: i32) -> bool {
    matches!(code, op::WHILE | op::IF | op::CALL | op::CALL_ONCE)
}

/// The builtin code named `name` (case-insensitive), e.g. "fully_connected".
pub fn code_by_name(name: &str) -> Option<i32> {
    tflq_schema::BuiltinOperator::ENUM_VALUES
        .iter()
        .find(|c| {
            c.variant_name()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|c| c.0)
}
