//! Choosing what to quantize: which constant tensors qualify, and why the others do not.
//!
//! The unit of quantization is the buffer: a buffer shared by several tensors (weights
//! reused across subgraphs or signatures) is quantized once, and only when every tensor
//! that reads it qualifies, so that all of them stay consistent.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::model::{DType, Model};
use crate::quant::{self, QuantParams};

/// Options that decide which tensors are quantized and how the output is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Tensors with fewer elements stay float (0: quantize all).
    pub min_elements: u64,
    /// Where buffer data goes in the output.
    pub layout: LayoutPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_elements: 1024,
            layout: LayoutPolicy::Auto,
        }
    }
}

/// Where the output's buffer data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutPolicy {
    /// Inline `data` vectors, or `offset`/`size` when the file would pass 2 GiB.
    #[default]
    Auto,
    /// Always `offset`/`size` after the flatbuffer.
    External,
}

/// Why a constant tensor was left as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum SkipReason {
    /// The element type is not FLOAT32.
    NotFloat32 {
        /// The tensor's type.
        dtype: String,
    },
    /// Fewer elements than `--min-elements`.
    TooSmall {
        /// The tensor's element count.
        elements: u64,
        /// The threshold.
        min_elements: u64,
    },
    /// A variable (state) tensor, written at run time.
    Variable,
    /// Stored in a sparse format.
    Sparse,
    /// Already carries quantization parameters.
    AlreadyQuantized,
    /// Contains NaN or infinite values, which int8 cannot represent.
    NonFinite {
        /// How many values are not finite.
        count: u64,
    },
    /// Its data lives in an external file.
    ExternalFile,
    /// An operator writes it, so it is not a constant.
    WrittenByOperator,
    /// It is an input of its subgraph, fed by the caller.
    SubgraphInput,
    /// Its buffer is also read by a tensor of another type.
    SharedWithNonFloat,
    /// Its buffer is also read by a float tensor that cannot be quantized.
    SharedWithSkipped,
}

impl SkipReason {
    /// Short stable key, used to group skipped tensors in summaries.
    pub fn key(&self) -> &'static str {
        match self {
            SkipReason::NotFloat32 { .. } => "not_float32",
            SkipReason::TooSmall { .. } => "too_small",
            SkipReason::Variable => "variable",
            SkipReason::Sparse => "sparse",
            SkipReason::AlreadyQuantized => "already_quantized",
            SkipReason::NonFinite { .. } => "non_finite",
            SkipReason::ExternalFile => "external_file",
            SkipReason::WrittenByOperator => "written_by_operator",
            SkipReason::SubgraphInput => "subgraph_input",
            SkipReason::SharedWithNonFloat => "shared_with_non_float",
            SkipReason::SharedWithSkipped => "shared_with_skipped",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::NotFloat32 { dtype } => write!(f, "not float32 ({dtype})"),
            SkipReason::TooSmall {
                elements,
                min_elements,
            } => {
                write!(f, "too small ({elements} < {min_elements} elements)")
            }
            SkipReason::Variable => f.write_str("variable tensor"),
            SkipReason::Sparse => f.write_str("sparse tensor"),
            SkipReason::AlreadyQuantized => f.write_str("already has quantization parameters"),
            SkipReason::NonFinite { count } => write!(f, "{count} NaN or infinite values"),
            SkipReason::ExternalFile => f.write_str("data in an external file"),
            SkipReason::WrittenByOperator => f.write_str("written by an operator"),
            SkipReason::SubgraphInput => f.write_str("subgraph input"),
            SkipReason::SharedWithNonFloat => f.write_str("buffer shared with a non-float tensor"),
            SkipReason::SharedWithSkipped => {
                f.write_str("buffer shared with a tensor that cannot be quantized")
            }
        }
    }
}

/// A tensor by place: subgraph and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TensorRef {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index within the subgraph.
    pub tensor: usize,
}

/// One buffer to quantize, with every tensor that reads it.
#[derive(Debug, Clone)]
pub struct BufferJob {
    /// Buffer index.
    pub buffer: u32,
    /// Number of float32 elements.
    pub elements: u64,
    /// Parameters chosen from the data.
    pub params: QuantParams,
    /// Float range of the data.
    pub min: f32,
    /// Float range of the data.
    pub max: f32,
    /// The tensors that read the buffer, all of which are rewritten.
    pub users: Vec<TensorRef>,
}

/// The decision for a whole model.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Buffers to quantize, in buffer order.
    pub jobs: Vec<BufferJob>,
    /// Constant tensors left alone, with the reason.
    pub skipped: Vec<(TensorRef, SkipReason)>,
}

impl Plan {
    /// Skipped tensors counted by reason key.
    pub fn skipped_by_reason(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for (_, r) in &self.skipped {
            *m.entry(r.key()).or_insert(0) += 1;
        }
        m
    }
}

/// Decides which buffers to quantize. Reads every candidate's data once (in parallel) to
/// find its range and to rule out NaN and infinities.
pub fn plan(model: &Model<'_>, opts: &Options) -> Plan {
    // Per buffer: its readers, and the first reason one of them cannot be quantized.
    #[derive(Default)]
    struct Users {
        ok: Vec<TensorRef>,
        blocked_by_non_float: bool,
        blocked: bool,
    }
    let mut by_buffer: BTreeMap<u32, Users> = BTreeMap::new();
    let mut skipped = Vec::new();

    for (si, sg) in model.subgraphs.iter().enumerate() {
        let mut written = vec![false; sg.tensors.len()];
        for op in &sg.ops {
            for &o in &op.outputs {
                if let Some(w) = usize::try_from(o).ok().and_then(|o| written.get_mut(o)) {
                    *w = true;
                }
            }
        }
        let mut is_input = vec![false; sg.tensors.len()];
        for &i in &sg.inputs {
            if let Some(w) = usize::try_from(i).ok().and_then(|i| is_input.get_mut(i)) {
                *w = true;
            }
        }
        for (ti, t) in sg.tensors.iter().enumerate() {
            let r = TensorRef {
                subgraph: si,
                tensor: ti,
            };
            if model.buffer_data(t.buffer).is_empty() {
                continue; // Not a constant.
            }
            let reason = if t.dtype != DType::FLOAT32 {
                Some(SkipReason::NotFloat32 {
                    dtype: t.dtype.name(),
                })
            } else if t.external_file {
                Some(SkipReason::ExternalFile)
            } else if t.is_variable {
                Some(SkipReason::Variable)
            } else if t.sparse {
                Some(SkipReason::Sparse)
            } else if t.quantized {
                Some(SkipReason::AlreadyQuantized)
            } else if written[ti] {
                Some(SkipReason::WrittenByOperator)
            } else if is_input[ti] {
                Some(SkipReason::SubgraphInput)
            } else if t.elements < opts.min_elements.max(1) {
                Some(SkipReason::TooSmall {
                    elements: t.elements,
                    min_elements: opts.min_elements,
                })
            } else {
                None
            };
            let users = by_buffer.entry(t.buffer).or_default();
            match reason {
                None => users.ok.push(r),
                Some(reason) => {
                    users.blocked = true;
                    users.blocked_by_non_float |= t.dtype != DType::FLOAT32;
                    skipped.push((r, reason));
                }
            }
        }
    }

    let mut candidates = Vec::new();
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
            candidates.push((buffer, users.ok));
        }
    }

    let scanned: Vec<_> = candidates
        .into_par_iter()
        .map(|(buffer, users)| {
            let data = model.buffer_data(buffer);
            let range = with_f32(data, quant::scan_range_par);
            (buffer, users, range, (data.len() / 4) as u64)
        })
        .collect();

    let mut jobs = Vec::new();
    for (buffer, users, range, elements) in scanned {
        if range.non_finite > 0 {
            skipped.extend(users.into_iter().map(|r| {
                (
                    r,
                    SkipReason::NonFinite {
                        count: range.non_finite,
                    },
                )
            }));
            continue;
        }
        let params = quant::asymmetric_params(range.min, range.max);
        jobs.push(BufferJob {
            buffer,
            elements,
            params,
            min: range.min,
            max: range.max,
            users,
        });
    }
    skipped.sort_by_key(|(r, _)| *r);
    Plan { jobs, skipped }
}

/// Runs `f` over little-endian f32 data, borrowing it when aligned and copying otherwise.
pub fn with_f32<R>(bytes: &[u8], f: impl FnOnce(&[f32]) -> R) -> R {
    match quant::as_f32(bytes) {
        Some(values) => f(values),
        None => {
            let mut v = Vec::new();
            quant::f32_from_le(bytes, &mut v);
            f(&v)
        }
    }
}
