//! Stage 1: which constant tensors qualify for quantization, and why each of the others
//! does not. A buffer qualifies only when every tensor that reads it does.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{Options, Readers, SkipReason};
use crate::equalize::ChannelRanges;
use crate::model::{DType, Model, TensorRef};
use crate::ops;
use crate::quant;

/// What selection found.
pub(super) struct Selection {
    /// Buffers that qualify, with the tensors that read them (in (subgraph, tensor) order).
    pub candidates: BTreeMap<u32, Vec<TensorRef>>,
    /// The whole-buffer range of each candidate (all finite).
    pub ranges: BTreeMap<u32, quant::Range>,
    /// Constant tensors left alone, with the reason (unsorted).
    pub skipped: Vec<(TensorRef, SkipReason)>,
    /// Per-channel ranges of the candidates measured along the axis asked (all finite).
    pub channel_ranges: BTreeMap<u32, ChannelRanges>,
}

/// Why tensor `r` cannot be quantized on its own account, if it cannot.
fn reason(
    model: &Model<'_>,
    readers: &Readers,
    opts: &Options,
    r: TensorRef,
    written: bool,
    is_input: bool,
) -> Option<SkipReason> {
    let t = model.tensor(r);
    let sg = &model.subgraphs()[r.subgraph];
    let mut ops = readers.of(r).iter().map(|&(oi, _)| sg.ops[oi].op);
    if t.dtype != DType::FLOAT32 {
        return Some(SkipReason::NotFloat32 {
            dtype: t.dtype.name(),
        });
    }
    Some(if t.external_file {
        SkipReason::ExternalFile
    } else if t.is_variable {
        SkipReason::Variable
    } else if t.sparse {
        SkipReason::Sparse
    } else if t.quantized {
        SkipReason::AlreadyQuantized
    } else if written {
        SkipReason::WrittenByOperator
    } else if is_input {
        SkipReason::SubgraphInput
    } else if t.elements < opts.min_elements.max(1) {
        SkipReason::TooSmall {
            elements: t.elements,
            min_elements: opts.min_elements,
        }
    } else if let Some(reason) = bias_like(model, readers, opts, r) {
        reason
    } else if let Some(re) = opts
        .exclude_tensors
        .as_ref()
        .filter(|re| re.is_match(&t.name))
    {
        SkipReason::ExcludedByName {
            pattern: re.as_str().to_owned(),
        }
    } else if let Some(op) = ops.clone().find(|op| opts.exclude_ops.contains(op)) {
        SkipReason::ExcludedOp { op: op.name() }
    } else if !opts.include_ops.is_empty() {
        match ops.find(|op| !opts.include_ops.contains(op)) {
            Some(op) => SkipReason::NotIncludedOp { op: op.name() },
            None if readers.of(r).is_empty() => SkipReason::NotIncludedOp {
                op: "none".to_owned(),
            },
            None => return None,
        }
    } else {
        return None;
    })
}

/// Why a bias or a per-channel vector stays float, unless biases are to be quantized.
fn bias_like(
    model: &Model<'_>,
    readers: &Readers,
    opts: &Options,
    r: TensorRef,
) -> Option<SkipReason> {
    if opts.quantize_biases {
        return None;
    }
    let sg = &model.subgraphs()[r.subgraph];
    let reads = readers
        .of(r)
        .iter()
        .map(|&(oi, slot)| (sg.ops[oi].op, slot));
    if let Some((op, _)) = reads
        .clone()
        .find(|&(op, slot)| ops::bias_slot(op) == Some(slot))
    {
        return Some(SkipReason::Bias { op: op.name() });
    }
    let t = model.tensor(r);
    let vector = t.shape.iter().filter(|&&d| d != 1).count() == 1;
    let (op, _) = reads.clone().find(|&(op, _)| ops::is_elementwise(op))?;
    vector.then(|| SkipReason::ChannelVector { op: op.name() })
}

/// Marks the tensors named by `indices` (ignoring out-of-range ones).
fn marks(len: usize, indices: impl IntoIterator<Item = i32>) -> Vec<bool> {
    let mut m = vec![false; len];
    for i in indices {
        if let Some(w) = usize::try_from(i).ok().and_then(|i| m.get_mut(i)) {
            *w = true;
        }
    }
    m
}

/// Selects the candidates and scans each once; a buffer in `axes` (its shape and an axis) is
/// scanned per channel along that axis.
pub(super) fn select(
    model: &Model<'_>,
    readers: &Readers,
    opts: &Options,
    axes: &BTreeMap<u32, (Vec<usize>, usize)>,
) -> Selection {
    // Per buffer: its readers, and whether one of them cannot be quantized.
    #[derive(Default)]
    struct Users {
        ok: Vec<TensorRef>,
        blocked_by_non_float: bool,
        blocked: bool,
    }
    let mut by_buffer: BTreeMap<u32, Users> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (si, sg) in model.subgraphs().iter().enumerate() {
        let written = marks(
            sg.tensors.len(),
            sg.ops.iter().flat_map(|o| o.outputs.iter().copied()),
        );
        let is_input = marks(sg.tensors.len(), sg.inputs.iter().copied());
        for (ti, t) in sg.tensors.iter().enumerate() {
            if model.buffer_data(t.buffer).is_empty() {
                continue; // Not a constant.
            }
            let r = TensorRef {
                subgraph: si,
                tensor: ti,
            };
            let users = by_buffer.entry(t.buffer).or_default();
            match reason(model, readers, opts, r, written[ti], is_input[ti]) {
                None => users.ok.push(r),
                Some(reason) => {
                    users.blocked = true;
                    users.blocked_by_non_float |= t.dtype != DType::FLOAT32;
                    skipped.push((r, reason));
                }
            }
        }
    }

    let mut candidates = BTreeMap::new();
    for (buffer, users) in by_buffer {
        if users.ok.is_empty() {
            continue;
        }
        if users.blocked {
            let reason = if users.blocked_by_non_float {
                SkipReason::SharedWithNonFloat
            } else {
                SkipReason::SharedWithSkipped
            };
            skipped.extend(users.ok.into_iter().map(|r| (r, reason.clone())));
        } else {
            candidates.insert(buffer, users.ok);
        }
    }

    // Non-finite values rule a buffer out before any decision depends on it.
    let scanned: Vec<(u32, quant::Range, Option<ChannelRanges>)> = candidates
        .keys()
        .copied()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|b| {
            let data = model.buffer_data(b);
            let per_channel = axes
                .get(&b)
                .map(|(dims, axis)| ChannelRanges::measure(data, dims, *axis));
            match per_channel.as_ref().and_then(ChannelRanges::range) {
                Some(range) => (b, range, per_channel),
                // Not finite: the whole scan counts what is not.
                None => (b, quant::with_f32(data, quant::scan_range_par), None),
            }
        })
        .collect();
    let mut ranges = BTreeMap::new();
    let mut channel_ranges = BTreeMap::new();
    for (b, range, per_channel) in scanned {
        ranges.insert(b, range);
        if let Some(c) = per_channel {
            channel_ranges.insert(b, c);
        }
    }
    candidates.retain(|b, users| {
        let r = ranges[b];
        if r.non_finite > 0 {
            let reason = SkipReason::NonFinite {
                count: r.non_finite,
            };
            skipped.extend(users.iter().map(|&u| (u, reason.clone())));
            false
        } else {
            true
        }
    });
    Selection {
        candidates,
        ranges,
        skipped,
        channel_ranges,
    }
}
