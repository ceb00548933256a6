//! Stage 3: the encoding of each selected buffer, given its readers and which of them run
//! hybrid kernels.

use std::collections::BTreeSet;

use super::select::Selection;
use super::{BufferJob, Granularity, Options, Readers, one_shape};
use crate::encoding::{Bits, Encoding, F16_MAX, Geometry};
use crate::model::{Model, OpRef, TensorRef};
use crate::ops::{self, Op};
use crate::quant;

/// One read of a buffer: the operator, the input slot, and whether it runs hybrid.
#[derive(Debug, Clone, Copy)]
struct Read {
    op: Op,
    slot: usize,
    hybrid: bool,
    /// The hybrid kernel reads this input as a weight (no DEQUANTIZE for it).
    direct: bool,
    /// The operator fuses an activation.
    fused_activation: bool,
}

/// Jobs with their encodings (users not yet routed), and the tensors whose float16 values
/// were clamped.
pub(super) struct Encoded {
    pub jobs: Vec<(BufferJob, Vec<TensorRef>)>,
    pub clamped: Vec<TensorRef>,
}

pub(super) fn encode(
    model: &Model<'_>,
    readers: &Readers,
    selected: &Selection,
    hybrid: &BTreeSet<OpRef>,
    opts: &Options,
) -> Encoded {
    let mut jobs = Vec::new();
    let mut clamped = Vec::new();
    for (&buffer, users) in &selected.candidates {
        let range = selected.ranges[&buffer];
        let t = model.tensor(users[0]);
        let shape: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        let reads: Vec<Read> = users
            .iter()
            .flat_map(|&u| {
                readers.of(u).iter().map(move |&(oi, slot)| {
                    let info = &model.subgraphs()[u.subgraph].ops[oi];
                    let op = info.op;
                    let hybrid = hybrid.contains(&OpRef {
                        subgraph: u.subgraph,
                        op: oi,
                    });
                    Read {
                        op,
                        slot,
                        hybrid,
                        direct: hybrid && ops::hybrid(op).is_some_and(|h| h.slots.contains(&slot)),
                        fused_activation: info.fused_activation,
                    }
                })
            })
            .collect();
        let is_output = users.iter().any(|u| {
            model.subgraphs()[u.subgraph]
                .outputs
                .contains(&(u.tensor as i32))
        });
        let mut other = None;
        let (encoding, fallback) = match opts.weight_type.bits() {
            None => {
                if range.min < -F16_MAX || range.max > F16_MAX {
                    clamped.extend(users.iter().copied());
                }
                (Encoding::Float16, None)
            }
            Some(Bits::Eight) => integer(
                model,
                buffer,
                users,
                &shape,
                range,
                &reads,
                opts,
                Bits::Eight,
            ),
            Some(bits) => {
                let w = Weight {
                    model,
                    buffer,
                    users,
                    shape: &shape,
                    range,
                    reads: &reads,
                    through_dequantize: is_output
                        || reads.is_empty()
                        || reads.iter().any(|r| !r.direct),
                };
                let (e, pc, why) = sub_byte(&w, opts, bits);
                other = why;
                (e, pc)
            }
        };
        let job = BufferJob {
            buffer,
            elements: t.elements,
            shape,
            encoding,
            min: range.min,
            max: range.max,
            users: Vec::new(),
            per_channel_fallback: fallback,
            fallback: other,
        };
        jobs.push((job, users.clone()));
    }
    Encoded { jobs, clamped }
}

/// One buffer to encode, with what the decisions read.
struct Weight<'a> {
    model: &'a Model<'a>,
    buffer: u32,
    users: &'a [TensorRef],
    shape: &'a [usize],
    range: quant::Range,
    reads: &'a [Read],
    /// Some reader (or a subgraph output) gets the float tensor from a DEQUANTIZE.
    through_dequantize: bool,
}

/// The int4/int2 encoding of one buffer: why per-channel was not used, and why the asked
/// type or granularity was not used (the rule that chose instead).
fn sub_byte(
    w: &Weight<'_>,
    opts: &Options,
    bits: Bits,
) -> (Encoding, Option<String>, Option<String>) {
    let width = bits.width();
    let direct: Vec<&Read> = w.reads.iter().filter(|r| r.direct).collect();
    // A direct reader whose kernel takes int8 only keeps the weight int8.
    if let Some(r) = direct
        .iter()
        .find(|r| ops::hybrid_sub_byte(r.op, width).is_none())
    {
        let why = format!(
            "the hybrid {} kernel takes int8 weights only, not {}",
            r.op.name(),
            bits.name()
        );
        let (e, pc) = integer(
            w.model,
            w.buffer,
            w.users,
            w.shape,
            w.range,
            w.reads,
            opts,
            Bits::Eight,
        );
        return (e, pc, Some(why));
    }
    let mut why = None;
    let mut granularity = opts.granularity;
    if granularity == Granularity::Block {
        match blockwise(w, opts.block_size, bits, &direct) {
            Ok(e) => return (e, None, None),
            Err(reason) => {
                why = Some(format!("{reason}: per-channel instead of blockwise"));
                granularity = Granularity::PerChannel;
            }
        }
    }
    if granularity == Granularity::PerTensor
        && direct
            .iter()
            .any(|r| ops::hybrid_sub_byte(r.op, width).is_some_and(|s| !s.per_tensor))
    {
        granularity = Granularity::PerChannel;
    }
    let (e, pc) = integer(
        w.model,
        w.buffer,
        w.users,
        w.shape,
        w.range,
        w.reads,
        &Options {
            granularity,
            ..opts.clone()
        },
        bits,
    );
    (e, pc, why)
}

/// The blockwise encoding of one buffer, or why it cannot take one.
fn blockwise(
    w: &Weight<'_>,
    size: usize,
    bits: Bits,
    direct: &[&Read],
) -> Result<Encoding, String> {
    if w.through_dequantize {
        return Err("DEQUANTIZE does not read blockwise weights (LiteRT computes zeros)".into());
    }
    if !one_shape(w.model, w.users) {
        return Err("its readers have different shapes".into());
    }
    for r in direct {
        let rule = ops::hybrid_sub_byte(r.op, bits.width()).and_then(|s| s.blockwise);
        match rule {
            None => {
                return Err(format!(
                    "the hybrid {} kernel does not read {} blocks",
                    r.op.name(),
                    bits.name()
                ));
            }
            Some(ops::BlockRule::FullyConnected4Bit) => {
                let &[n, k] = w.shape else {
                    return Err("a FULLY_CONNECTED filter that is not 2-D".into());
                };
                if r.fused_activation {
                    return Err(
                        "FULLY_CONNECTED's blockwise kernel ignores a fused activation \
                                (builtin path)"
                            .into(),
                    );
                }
                if n < 4 || k < 32 || k % 2 != 0 {
                    return Err(format!(
                        "FULLY_CONNECTED reads blocks only with N >= 4 output rows and an even \
                         K >= 32 (this filter is [{n}, {k}]): otherwise its kernel ignores the \
                         block scales"
                    ));
                }
            }
            Some(ops::BlockRule::Rows) => {}
        }
    }
    let Some(geometry) = Geometry::blocks(w.shape, size) else {
        return Err(format!(
            "the block size {size} does not divide the last axis of {:?}",
            w.shape
        ));
    };
    let ranges = quant::with_f32(w.model.buffer_data(w.buffer), |v| geometry.ranges(v));
    let qmax = (1i32 << (bits.width() - 1)) - 1;
    let mut params = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Some(scale) = quant::block_scale(r.min.abs().max(r.max.abs()), bits.width()) else {
            return Err("a block needs a scale beyond the float16 range".into());
        };
        params.push(quant::QuantParams {
            scale,
            zero_point: 0,
            qmin: -qmax,
            qmax,
        });
    }
    Ok(Encoding::int(bits, geometry, params))
}

/// The integer encoding of one buffer with `bits`-bit codes, and why per-channel was asked
/// for but not used.
#[allow(clippy::too_many_arguments)]
fn integer(
    model: &Model<'_>,
    buffer: u32,
    users: &[TensorRef],
    shape: &[usize],
    range: quant::Range,
    reads: &[Read],
    opts: &Options,
    bits: Bits,
) -> (Encoding, Option<String>) {
    let symmetric = opts.symmetric || reads.iter().any(|r| r.hybrid);
    let width = bits.width();
    let params = |r: quant::Range| {
        if symmetric {
            quant::symmetric_params_bits(r.min, r.max, width)
        } else {
            quant::asymmetric_params_bits(r.min, r.max, width)
        }
    };
    // A direct reader whose kernel only reads per-channel scales gets them, repeated from the
    // whole-tensor parameters when per-tensor was asked for.
    let required = reads
        .iter()
        .find(|r| r.hybrid && ops::hybrid(r.op).is_some_and(|h| h.requires_per_channel))
        .and_then(|r| ops::channel_axis(r.op, r.slot, shape.len()));
    let mut fallback = None;
    let agreed = match opts.granularity {
        Granularity::PerTensor => None,
        // Blocks are decided in `sub_byte`; int8 takes them per channel.
        // One set of scales must fit every reader's shape.
        Granularity::PerChannel if !one_shape(model, users) => {
            fallback = Some("its readers have different shapes".to_owned());
            None
        }
        Granularity::PerChannel | Granularity::Block => match channel_axis(reads, shape.len()) {
            Ok(axis) if shape[axis] > 1 => Some(axis),
            Ok(_) => {
                fallback = Some("a single channel".to_owned());
                None
            }
            Err(why) => {
                fallback = Some(why);
                None
            }
        },
    };
    let encoding = match (agreed, required) {
        (Some(axis), r) if r.is_none_or(|r| r == axis) => {
            let geometry = Geometry::channels(shape, axis);
            let ranges = quant::with_f32(model.buffer_data(buffer), |v| geometry.ranges(v));
            fallback = None;
            Encoding::int(bits, geometry, ranges.into_iter().map(params).collect())
        }
        (_, Some(axis)) => Encoding::int(
            bits,
            Geometry::channels(shape, axis),
            vec![params(range); shape[axis]],
        ),
        (_, None) => Encoding::int(bits, Geometry::Tensor, vec![params(range)]),
    };
    (encoding, fallback)
}

/// The one axis all readers of a buffer agree on for per-channel scales, or why there is
/// none.
fn channel_axis(reads: &[Read], rank: usize) -> Result<usize, String> {
    let mut axis = None;
    for r in reads {
        let Some(a) = ops::channel_axis(r.op, r.slot, rank) else {
            return Err(format!(
                "{} has no channel axis for this input",
                r.op.name()
            ));
        };
        if r.hybrid && !ops::hybrid(r.op).is_some_and(|h| h.per_channel) {
            return Err(format!(
                "the hybrid {} kernel takes per-tensor weights only",
                r.op.name()
            ));
        }
        match axis {
            Some(b) if b != a => return Err("its readers expect different axes".to_owned()),
            _ => axis = Some(a),
        }
    }
    axis.ok_or_else(|| "no operator reads it".to_owned())
}
