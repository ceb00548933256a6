//! Stage 3: the encoding of each selected buffer, given its readers and which of them run
//! hybrid kernels.

use std::collections::BTreeSet;

use super::select::Selection;
use super::{
    BufferJob, Granularity, Options, RangeChoice, RangeMethod, Readers, WeightType, one_shape,
};
use crate::encoding::{Encoding, F16_MAX, Geometry};
use crate::model::{Model, OpRef, TensorRef};
use crate::ops::{self, Op};
use crate::quant::{self, QuantParams};
use crate::range::{self, Grid};
use rayon::prelude::*;

/// The float32 data of a buffer as the plan sees it (equalized or the model's).
pub(super) type Data<'d> = dyn Fn(u32) -> &'d [u8] + Sync + 'd;

/// One read of a buffer: the operator, the input slot, and whether it runs hybrid.
#[derive(Debug, Clone, Copy)]
struct Read {
    op: Op,
    slot: usize,
    hybrid: bool,
}

/// Jobs with their encodings (users not yet routed), and the tensors whose float16 values
/// were clamped.
pub(super) struct Encoded {
    pub jobs: Vec<(BufferJob, Vec<TensorRef>)>,
    pub clamped: Vec<TensorRef>,
}

pub(super) fn encode<'d>(
    model: &Model<'_>,
    data: &Data<'d>,
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
                readers.of(u).iter().map(move |&(oi, slot)| Read {
                    op: model.subgraphs()[u.subgraph].ops[oi].op,
                    slot,
                    hybrid: hybrid.contains(&OpRef {
                        subgraph: u.subgraph,
                        op: oi,
                    }),
                })
            })
            .collect();
        let (encoding, fallback, searched) = if opts.weight_type == WeightType::Float16 {
            if range.min < -F16_MAX || range.max > F16_MAX {
                clamped.extend(users.iter().copied());
            }
            (Encoding::Float16, None, None)
        } else {
            int8(model, data(buffer), users, &shape, range, &reads, opts)
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
            range: searched,
        };
        jobs.push((job, users.clone()));
    }
    Encoded { jobs, clamped }
}

/// The int8 encoding of one buffer (float32 `data`), why per-channel was asked for but not
/// used, and the searched range when `--range mse`.
fn int8(
    model: &Model<'_>,
    data: &[u8],
    users: &[TensorRef],
    shape: &[usize],
    range: quant::Range,
    reads: &[Read],
    opts: &Options,
) -> (Encoding, Option<String>, Option<RangeChoice>) {
    let symmetric = opts.symmetric || reads.iter().any(|r| r.hybrid);
    if opts.range == RangeMethod::Mse {
        let grid = Grid::new(8, symmetric).expect("8 bits is a valid grid");
        let (encoding, fallback, choices) = int8_mse(model, data, users, shape, reads, opts, grid);
        return (encoding, fallback, Some(summarize(&choices)));
    }
    let params = |r: quant::Range| {
        if symmetric {
            quant::symmetric_params(r.min, r.max)
        } else {
            quant::asymmetric_params(r.min, r.max)
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
        // One set of scales must fit every reader's shape.
        Granularity::PerChannel if !one_shape(model, users) => {
            fallback = Some("its readers have different shapes".to_owned());
            None
        }
        Granularity::PerChannel => match channel_axis(reads, shape.len()) {
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
            let ranges = quant::with_f32(data, |v| geometry.ranges(v));
            fallback = None;
            Encoding::int8_channels(geometry, ranges.into_iter().map(params).collect())
        }
        (_, Some(axis)) => Encoding::int8_channels(
            Geometry::channels(shape, axis),
            vec![params(range); shape[axis]],
        ),
        (_, None) => Encoding::int8(params(range)),
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
        Granularity::PerChannel => match channel_axis(reads, shape.len()) {
            Ok(axis) if shape[axis] > 1 => (Some(axis), None),
            Ok(_) => (None, Some("a single channel".to_owned())),
            Err(why) => (None, Some(why)),
        },
    };
    (agreed, fallback, required)
}

/// [`int8`] with each range searched for (`--range mse`): per channel, each channel its own
/// search. Returns the searches made.
fn int8_mse(
    model: &Model<'_>,
    data: &[u8],
    users: &[TensorRef],
    shape: &[usize],
    reads: &[Read],
    opts: &Options,
    grid: Grid,
) -> (Encoding, Option<String>, Vec<range::Choice>) {
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
            let choices = quant::with_f32(data, |v| {
                let mut channels = vec![Vec::new(); geometry.groups()];
                geometry.runs(0, v.len(), |g, run| channels[g].extend_from_slice(&v[run]));
                channels
                    .par_iter()
                    .map(|c| range::search(c, grid))
                    .collect::<Vec<_>>()
            });
            let encoding = Encoding::int8_channels(geometry, choices.iter().map(params).collect());
            (encoding, None, choices)
        }
        (_, Some(axis)) => {
            let choice = quant::with_f32(data, |v| range::search(v, grid));
            let encoding = Encoding::int8_channels(
                Geometry::channels(shape, axis),
                vec![params(&choice); shape[axis]],
            );
            (encoding, fallback, vec![choice])
        }
        (_, None) => {
            let choice = quant::with_f32(data, |v| range::search(v, grid));
            (Encoding::int8(params(&choice)), fallback, vec![choice])
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
