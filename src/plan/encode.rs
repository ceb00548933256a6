//! Stage 3: the encoding of each selected buffer, given its readers and which of them run
//! hybrid kernels.

use std::collections::BTreeSet;

use super::select::Selection;
use super::{BufferJob, Granularity, Options, Readers, WeightType, one_shape};
use crate::encoding::{Encoding, F16_MAX, Geometry};
use crate::model::{Model, OpRef, TensorRef};
use crate::ops::{self, Op};
use crate::quant;

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
        let (encoding, fallback) = if opts.weight_type == WeightType::Float16 {
            if range.min < -F16_MAX || range.max > F16_MAX {
                clamped.extend(users.iter().copied());
            }
            (Encoding::Float16, None)
        } else {
            int8(model, buffer, users, &shape, range, &reads, opts)
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
        };
        jobs.push((job, users.clone()));
    }
    Encoded { jobs, clamped }
}

/// The int8 encoding of one buffer, and why per-channel was asked for but not used.
fn int8(
    model: &Model<'_>,
    buffer: u32,
    users: &[TensorRef],
    shape: &[usize],
    range: quant::Range,
    reads: &[Read],
    opts: &Options,
) -> (Encoding, Option<String>) {
    let symmetric = opts.symmetric || reads.iter().any(|r| r.hybrid);
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
            let ranges = quant::with_f32(model.buffer_data(buffer), |v| geometry.ranges(v));
            fallback = None;
            Encoding::int8_channels(geometry, ranges.into_iter().map(params).collect())
        }
        (_, Some(axis)) => Encoding::int8_channels(
            Geometry::channels(shape, axis),
            vec![params(range); shape[axis]],
        ),
        (_, None) => Encoding::int8(params(range)),
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
