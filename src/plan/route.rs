//! Stages 2 and 4: which operators read their weights directly, and for every reader of a
//! quantized buffer, whether it reads the stored tensor or the float one a DEQUANTIZE
//! restores. The rewriter and the summary read these decisions; neither recomputes them.

use std::collections::{BTreeMap, BTreeSet};

use super::{BufferJob, HybridOp, Readers, User, one_shape};
use crate::model::{DType, Model, OpRef, TensorRef};
use crate::ops;

/// Operators whose hybrid kernel can take every one of their weights as int8: each present
/// weight slot holds a quantizable constant, and the activation input is float32.
pub(super) fn hybrid_ops(
    model: &Model<'_>,
    candidates: &BTreeMap<u32, Vec<TensorRef>>,
) -> BTreeSet<OpRef> {
    let mut out = BTreeSet::new();
    for (si, sg) in model.subgraphs().iter().enumerate() {
        for (oi, o) in sg.ops.iter().enumerate() {
            let Some(h) = ops::hybrid(o.op) else {
                continue;
            };
            let tensor = |slot: usize| {
                o.inputs
                    .get(slot)
                    .and_then(|&t| usize::try_from(t).ok())
                    .and_then(|t| sg.tensors.get(t).map(|x| (t, x)))
            };
            let activation_is_float = h
                .activation
                .is_none_or(|slot| tensor(slot).is_some_and(|(_, t)| t.dtype == DType::FLOAT32));
            let mut any = false;
            let all = h.slots.iter().all(|&slot| match tensor(slot) {
                None => true, // optional input left out
                Some((ti, t)) => {
                    any = true;
                    candidates.get(&t.buffer).is_some_and(|users| {
                        users.contains(&TensorRef {
                            subgraph: si,
                            tensor: ti,
                        }) && one_shape(model, users)
                    })
                }
            });
            if activation_is_float && any && all {
                out.insert(OpRef {
                    subgraph: si,
                    op: oi,
                });
            }
        }
    }
    out
}

/// Jobs with routed users, what each hybrid operator needs, and the DEQUANTIZE version.
pub(super) struct Routed {
    pub jobs: Vec<BufferJob>,
    pub hybrid_ops: BTreeMap<OpRef, HybridOp>,
    pub dequantize_version: Option<i32>,
}

pub(super) fn users(
    model: &Model<'_>,
    readers: &Readers,
    jobs: Vec<(BufferJob, Vec<TensorRef>)>,
    hybrid: &BTreeSet<OpRef>,
) -> Routed {
    // Input `slot` of operator `oi` of subgraph `si` reads its weight directly.
    let direct = |si: usize, oi: usize, slot: usize| {
        hybrid.contains(&OpRef {
            subgraph: si,
            op: oi,
        }) && ops::hybrid(model.subgraphs()[si].ops[oi].op).is_some_and(|h| h.slots.contains(&slot))
    };
    let mut dequantize_version = None;
    let mut routed = Vec::with_capacity(jobs.len());
    for (mut job, tensors) in jobs {
        for u in tensors {
            let r = readers.of(u);
            let direct: Vec<(usize, usize)> = r
                .iter()
                .copied()
                // A plan may give a hybrid reader's weight float16: it goes through DEQUANTIZE.
                .filter(|&(oi, slot)| {
                    job.encoding.codes().is_some() && direct(u.subgraph, oi, slot)
                })
                .collect();
            let is_output = model.subgraphs()[u.subgraph]
                .outputs
                .contains(&(u.tensor as i32));
            let dequantize = r.is_empty() || direct.len() < r.len() || is_output;
            if dequantize {
                let v = job.encoding.dequantize_version();
                dequantize_version = Some(dequantize_version.map_or(v, |d: i32| d.max(v)));
            }
            job.users.push(User {
                tensor: u,
                direct,
                dequantize,
            });
        }
        routed.push(job);
    }
    let job_of = |buffer: u32| {
        routed
            .binary_search_by_key(&buffer, |j: &BufferJob| j.buffer)
            .ok()
            .map(|i| &routed[i])
    };
    let mut hybrid_ops = BTreeMap::new();
    for &h in hybrid {
        let sg = &model.subgraphs()[h.subgraph];
        let o = &sg.ops[h.op];
        let Some(spec) = ops::hybrid(o.op) else {
            continue;
        };
        // A plan kept its weights float32 or float16: the float kernel runs, unchanged.
        let reads_codes = spec.slots.iter().any(|&slot| {
            o.inputs
                .get(slot)
                .and_then(|&t| sg.tensors.get(usize::try_from(t).ok()?))
                .and_then(|t| job_of(t.buffer))
                .is_some_and(|j| j.encoding.codes().is_some())
        });
        if !reads_codes {
            continue;
        }
        let per_channel = spec.slots.iter().any(|&slot| {
            o.inputs
                .get(slot)
                .and_then(|&t| sg.tensors.get(usize::try_from(t).ok()?))
                .and_then(|t| job_of(t.buffer))
                .is_some_and(|j| j.encoding.channels().is_some())
        });
        let version = if per_channel {
            spec.version.1
        } else {
            spec.version.0
        };
        hybrid_ops.insert(
            h,
            HybridOp {
                op: o.op,
                version,
                asymmetric_inputs: spec.asymmetric_inputs,
            },
        );
    }
    Routed {
        jobs: routed,
        hybrid_ops,
        dequantize_version,
    }
}
