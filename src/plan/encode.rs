//! Stage 3: the encoding of each selected buffer, given its readers and which of them run
//! hybrid kernels.

use std::collections::BTreeSet;

use super::select::Selection;
use super::{BufferJob, Granularity, Options, RangeChoice, RangeMethod, Readers, one_shape};
use crate::encoding::{Bits, Encoding, F16_MAX, Geometry};
use crate::equalize::Values;
use crate::model::{Model, OpRef, TensorRef};
use crate::ops::{self, Op};
use crate::quant::{self, QuantParams};
use crate::range::{self, Grid};
use rayon::prelude::*;

/// The float32 values of a buffer as the plan sees them (equalized or the model's).
pub(super) type Data<'d> = dyn Fn(u32) -> Values<'d> + Sync + 'd;

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
    /// Candidates a plan or target keeps float32, with why.
    pub planned_float: Vec<(TensorRef, super::SkipReason)>,
    /// Why the plan cannot be applied exactly.
    pub conflicts: Vec<String>,
}

pub(super) fn encode<'d>(
    model: &Model<'_>,
    data: &Data<'d>,
    readers: &Readers,
    selected: &Selection,
    hybrid: &BTreeSet<OpRef>,
    opts: &Options,
) -> Encoded {
    let mut out = Encoded {
        jobs: Vec::new(),
        clamped: Vec::new(),
        planned_float: Vec::new(),
        conflicts: Vec::new(),
    };
    if let Some(a) = &opts.assignment {
        super::assign::check_listed(model, selected, a, &mut out.conflicts);
    }
    for (&buffer, users) in &selected.candidates {
        let one = |opts: &Options| job(model, data, readers, selected, hybrid, buffer, users, opts);
        let chosen = match (&opts.assignment, opts.target_sqnr) {
            (Some(a), _) => super::assign::planned(model, a, users, opts, &one, &mut out.conflicts),
            (None, Some(db)) => super::assign::by_sqnr(model, data(buffer), users, opts, db, &one),
            (None, None) => Ok(one(opts)),
        };
        match chosen {
            Ok((job, clamped)) => {
                if clamped {
                    out.clamped.extend(users.iter().copied());
                }
                out.jobs.push((job, users.clone()));
            }
            Err(why) => out.planned_float.extend(
                users
                    .iter()
                    .map(|&u| (u, super::SkipReason::PlannedFloat { why: why.clone() })),
            ),
        }
    }
    out
}

/// The job of one buffer with `opts`, and whether its float16 values were clamped.
#[allow(clippy::too_many_arguments)]
pub(super) fn job(
    model: &Model<'_>,
    data: &Data<'_>,
    readers: &Readers,
    selected: &Selection,
    hybrid: &BTreeSet<OpRef>,
    buffer: u32,
    users: &[TensorRef],
    opts: &Options,
) -> (BufferJob, bool) {
    let mut clamped = false;
    {
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
        let (encoding, fallback, searched) = match opts.weight_type.bits() {
            None => {
                if range.min < -F16_MAX || range.max > F16_MAX {
                    clamped = true;
                }
                (Encoding::Float16, None, None)
            }
            Some(bits) => {
                let w = Weight {
                    model,
                    data: data(buffer),
                    users,
                    shape: &shape,
                    range,
                    reads: &reads,
                    through_dequantize: is_output
                        || reads.is_empty()
                        || reads.iter().any(|r| !r.direct),
                };
                let (e, pc, why, searched) = if bits == Bits::Eight {
                    let (e, pc, searched) = integer(&w, opts, bits);
                    (e, pc, None, searched)
                } else {
                    sub_byte(&w, opts, bits)
                };
                other = why;
                (e, pc, searched)
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
            range: searched,
        };
        (job, clamped)
    }
}

/// One buffer to encode, with what the decisions read.
struct Weight<'a> {
    model: &'a Model<'a>,
    /// Its float32 values (equalized or the model's).
    data: Values<'a>,
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
) -> (
    Encoding,
    Option<String>,
    Option<String>,
    Option<RangeChoice>,
) {
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
        let (e, pc, searched) = integer(w, opts, Bits::Eight);
        return (e, pc, Some(why), searched);
    }
    let mut why = None;
    let mut granularity = opts.granularity;
    if granularity == Granularity::Block {
        match blockwise(w, opts.block_size, bits, &direct) {
            Ok(e) => return (e, None, None, None),
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
    let opts = Options {
        granularity,
        ..opts.clone()
    };
    let (e, pc, searched) = integer(w, &opts, bits);
    (e, pc, why, searched)
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
    let ranges = w.data.with(|v| geometry.ranges(v));
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
fn integer(
    w: &Weight<'_>,
    opts: &Options,
    bits: Bits,
) -> (Encoding, Option<String>, Option<RangeChoice>) {
    let Weight {
        model,
        data,
        users,
        shape,
        range,
        reads,
        ..
    } = *w;
    let symmetric = opts.symmetric || reads.iter().any(|r| r.hybrid);
    let width = bits.width();
    if opts.range == RangeMethod::Mse {
        let grid = Grid::new(width, symmetric).expect("2 to 8 bits is a valid grid");
        let (encoding, fallback, choices) = int_mse(w, opts, grid, bits);
        return (encoding, fallback, Some(summarize(&choices)));
    }
    let params = |r: quant::Range| {
        if symmetric {
            quant::symmetric_params_bits(r.min, r.max, width)
        } else {
            quant::asymmetric_params_bits(r.min, r.max, width)
        }
    };
    // A direct reader whose kernel only reads per-channel scales gets them, repeated from the
    // whole-tensor parameters when per-tensor was asked for.
    let (agreed, fallback, required) = axes(model, users, shape, reads, opts);
    let encoding = match (agreed, required) {
        (Some(axis), r) if r.is_none_or(|r| r == axis) => {
            let geometry = Geometry::channels(shape, axis);
            let ranges = data.with(|v| geometry.ranges(v));
            Encoding::int(bits, geometry, ranges.into_iter().map(params).collect())
        }
        (_, Some(axis)) => Encoding::int(
            bits,
            Geometry::channels(shape, axis),
            vec![params(range); shape[axis]],
        ),
        (_, None) => Encoding::int(bits, Geometry::Tensor, vec![params(range)]),
    };
    (encoding, fallback, None)
}

/// The axis per-channel parameters go on, if any, and why per-channel was asked for but not
/// used; and the axis a hybrid reader requires scales on.
fn axes(
    model: &Model<'_>,
    users: &[TensorRef],
    shape: &[usize],
    reads: &[Read],
    opts: &Options,
) -> (Option<usize>, Option<String>, Option<usize>) {
    let required = reads
        .iter()
        .find(|r| r.hybrid && ops::hybrid(r.op).is_some_and(|h| h.requires_per_channel))
        .and_then(|r| ops::channel_axis(r.op, r.slot, shape.len()));
    let (agreed, fallback) = match opts.granularity {
        Granularity::PerTensor => (None, None),
        Granularity::PerChannel if !one_shape(model, users) => {
            (None, Some("its readers have different shapes".to_owned()))
        }
        Granularity::PerChannel | Granularity::Block => match channel_axis(reads, shape.len()) {
            Ok(axis) if shape[axis] > 1 => (Some(axis), None),
            Ok(_) => (None, Some("a single channel".to_owned())),
            Err(why) => (None, Some(why)),
        },
    };
    (agreed, fallback, required)
}

/// [`integer`] with each range searched for (`--range mse`): per channel, each channel its
/// own search. Returns the searches made.
fn int_mse(
    w: &Weight<'_>,
    opts: &Options,
    grid: Grid,
    bits: Bits,
) -> (Encoding, Option<String>, Vec<range::Choice>) {
    let Weight {
        model,
        data,
        users,
        shape,
        reads,
        ..
    } = *w;
    let params = |c: &range::Choice| QuantParams {
        scale: c.params.scale,
        zero_point: c.params.zero_point,
        qmin: grid.qmin(),
        qmax: grid.qmax(),
    };
    let (agreed, fallback, required) = axes(model, users, shape, reads, opts);
    match (agreed, required) {
        (Some(axis), r) if r.is_none_or(|r| r == axis) => {
            let geometry = Geometry::channels(shape, axis);
            let choices = data.with(|v| {
                let mut channels = vec![Vec::new(); geometry.groups()];
                geometry.runs(0, v.len(), |g, run| channels[g].extend_from_slice(&v[run]));
                channels
                    .par_iter()
                    .map(|c| range::search(c, grid))
                    .collect::<Vec<_>>()
            });
            let encoding = Encoding::int(bits, geometry, choices.iter().map(params).collect());
            (encoding, None, choices)
        }
        (_, Some(axis)) => {
            let choice = data.with(|v| range::search(v, grid));
            let encoding = Encoding::int(
                bits,
                Geometry::channels(shape, axis),
                vec![params(&choice); shape[axis]],
            );
            (encoding, fallback, vec![choice])
        }
        (_, None) => {
            let choice = data.with(|v| range::search(v, grid));
            (
                Encoding::int(bits, Geometry::Tensor, vec![params(&choice)]),
                fallback,
                vec![choice],
            )
        }
    }
}

/// One buffer's searches in one figure: the outermost range, the share clipped, and the
/// gain over min-max of the whole buffer's squared error.
fn summarize(choices: &[range::Choice]) -> RangeChoice {
    let (mut error, mut minmax, mut clipped, mut count) = (0.0, 0.0, 0u64, 0u64);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for c in choices {
        error += c.error;
        minmax += c.minmax_error;
        clipped += c.clipped;
        count += c.count;
        lo = lo.min(c.lo);
        hi = hi.max(c.hi);
    }
    RangeChoice {
        method: RangeMethod::Mse,
        lo,
        hi,
        clipped_share: if count > 0 {
            clipped as f64 / count as f64
        } else {
            0.0
        },
        gain_db: if error > 0.0 && minmax > 0.0 {
            10.0 * (minmax / error).log10()
        } else {
            0.0
        },
    }
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
