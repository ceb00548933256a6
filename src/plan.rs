//! Choosing what to quantize and how: which constant tensors qualify, why the others do
//! not, and the encoding of each (per-tensor or per-channel int8, symmetric or not, float16;
//! consumed through DEQUANTIZE or directly by a hybrid kernel).
//!
//! The unit of quantization is the buffer: a buffer shared by several tensors (weights
//! reused across subgraphs or signatures) is quantized once, and only when every tensor
//! that reads it qualifies, so that all of them stay consistent.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::model::{DType, Model, op_name};
use crate::ops;
use crate::quant::{self, Encoding, PerChannel};

/// Options that decide which tensors are quantized, how, and how the output is laid out.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tensors with fewer elements stay float (0: quantize all).
    pub min_elements: u64,
    /// Where buffer data goes in the output.
    pub layout: LayoutPolicy,
    /// DEQUANTIZE everywhere, or int8 straight into hybrid kernels.
    pub mode: Mode,
    /// One scale per tensor, or one per output channel where the consumer allows it.
    pub granularity: Granularity,
    /// Zero point 0 and codes in [-127, 127] (always so for weights of hybrid kernels).
    pub symmetric: bool,
    /// The type weights are stored in.
    pub weight_type: WeightType,
    /// When not empty, only weights read solely by these builtin codes are quantized.
    pub include_ops: Vec<i32>,
    /// Weights read by any of these builtin codes stay float.
    pub exclude_ops: Vec<i32>,
    /// Weights whose name matches stay float.
    pub exclude_tensors: Option<regex::Regex>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_elements: 1024,
            layout: LayoutPolicy::Auto,
            mode: Mode::WeightOnly,
            granularity: Granularity::PerTensor,
            symmetric: false,
            weight_type: WeightType::Int8,
            include_ops: Vec::new(),
            exclude_ops: Vec::new(),
            exclude_tensors: None,
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

/// How quantized weights reach their operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every quantized weight goes through a DEQUANTIZE op: works for every op everywhere.
    #[default]
    WeightOnly,
    /// Ops with hybrid kernels read int8 weights directly (smaller at run time, faster);
    /// the rest keep the DEQUANTIZE path.
    Dynamic,
}

/// Scales per tensor or per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale and zero point per tensor.
    #[default]
    PerTensor,
    /// One per output channel, on the axis the consuming op expects; per-tensor where the
    /// op or the runtime cannot take it.
    PerChannel,
}

/// Storage type of quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightType {
    /// 8-bit integer codes with scales.
    #[default]
    Int8,
    /// IEEE half precision.
    Float16,
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
    /// Its name matches `--exclude-tensors`.
    ExcludedByName {
        /// The pattern it matched.
        pattern: String,
    },
    /// An operator that reads it is listed in `--exclude-ops`.
    ExcludedOp {
        /// The operator's name.
        op: String,
    },
    /// `--include-ops` is given and an operator that reads it is not listed (or none reads it).
    NotIncludedOp {
        /// The operator's name ("none" when no operator reads it).
        op: String,
    },
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
            SkipReason::ExcludedByName { .. } => "excluded_by_name",
            SkipReason::ExcludedOp { .. } => "excluded_op",
            SkipReason::NotIncludedOp { .. } => "not_included_op",
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
            SkipReason::ExcludedByName { pattern } => {
                write!(f, "name matches --exclude-tensors {pattern:?}")
            }
            SkipReason::ExcludedOp { op } => write!(f, "read by {op}, which --exclude-ops lists"),
            SkipReason::NotIncludedOp { op } => {
                write!(f, "read by {op}, which --include-ops does not list")
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

/// An operator by place: subgraph and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpRef {
    /// Subgraph index.
    pub subgraph: usize,
    /// Operator index within the subgraph.
    pub op: usize,
}

/// One buffer to quantize, with every tensor that reads it.
#[derive(Debug, Clone)]
pub struct BufferJob {
    /// Buffer index.
    pub buffer: u32,
    /// Number of float32 elements.
    pub elements: u64,
    /// Shape of the tensors that read it.
    pub shape: Vec<usize>,
    /// How its values are stored.
    pub encoding: Encoding,
    /// Float range of the data.
    pub min: f32,
    /// Float range of the data.
    pub max: f32,
    /// The tensors that read the buffer, all of which are rewritten.
    pub users: Vec<TensorRef>,
    /// Why per-channel was asked for but not used, if so.
    pub per_channel_fallback: Option<String>,
}

/// The decision for a whole model.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Buffers to quantize, in buffer order.
    pub jobs: Vec<BufferJob>,
    /// Constant tensors left alone, with the reason.
    pub skipped: Vec<(TensorRef, SkipReason)>,
    /// Operators that read their int8 weights directly (dynamic mode).
    pub hybrid_ops: BTreeSet<OpRef>,
    /// Tensors (weights of hybrid ops) with values beyond the float16 range, clamped.
    pub clamped: Vec<TensorRef>,
    /// Readers of every tensor: `readers[subgraph][tensor]` lists (operator, input slot).
    pub readers: Vec<Vec<Vec<(usize, usize)>>>,
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

    /// The job that quantizes `buffer`, if any (jobs are in buffer order).
    pub fn job_of(&self, buffer: u32) -> Option<&BufferJob> {
        self.jobs
            .binary_search_by_key(&buffer, |j| j.buffer)
            .ok()
            .map(|i| &self.jobs[i])
    }

    /// Whether the operator reads its weights directly.
    pub fn is_hybrid(&self, subgraph: usize, op: usize) -> bool {
        self.hybrid_ops.contains(&OpRef { subgraph, op })
    }

    /// Whether input `slot` of operator `op` (of builtin `code`) reads int8 weights directly.
    pub fn reads_int8(&self, subgraph: usize, op: usize, code: i32, slot: usize) -> bool {
        self.is_hybrid(subgraph, op) && ops::hybrid(code).is_some_and(|h| h.slots.contains(&slot))
    }
}

/// Readers of each tensor of each subgraph: (operator index, input slot).
pub fn consumers(model: &Model<'_>) -> Vec<Vec<Vec<(usize, usize)>>> {
    model
        .subgraphs
        .iter()
        .map(|sg| {
            let mut c = vec![Vec::new(); sg.tensors.len()];
            for (oi, o) in sg.ops.iter().enumerate() {
                for (slot, &t) in o.inputs.iter().enumerate() {
                    if let Some(list) = usize::try_from(t).ok().and_then(|t| c.get_mut(t)) {
                        list.push((oi, slot));
                    }
                }
            }
            c
        })
        .collect()
}

/// Decides which buffers to quantize and how. Reads every candidate's data once (in
/// parallel) to find its range(s) and to rule out NaN and infinities.
pub fn plan(model: &Model<'_>, opts: &Options) -> Plan {
    // Per buffer: its readers, and whether one of them cannot be quantized.
    #[derive(Default)]
    struct Users {
        ok: Vec<TensorRef>,
        blocked_by_non_float: bool,
        blocked: bool,
    }
    let readers = consumers(model);
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
            let codes = readers[si][ti].iter().map(|&(oi, _)| sg.ops[oi].code);
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
            } else if let Some(re) = opts
                .exclude_tensors
                .as_ref()
                .filter(|re| re.is_match(&t.name))
            {
                Some(SkipReason::ExcludedByName {
                    pattern: re.as_str().to_owned(),
                })
            } else if let Some(c) = codes.clone().find(|c| opts.exclude_ops.contains(c)) {
                Some(SkipReason::ExcludedOp { op: op_name(c) })
            } else if !opts.include_ops.is_empty() {
                match codes.clone().find(|c| !opts.include_ops.contains(c)) {
                    Some(c) => Some(SkipReason::NotIncludedOp { op: op_name(c) }),
                    None if readers[si][ti].is_empty() => Some(SkipReason::NotIncludedOp {
                        op: "none".to_owned(),
                    }),
                    None => None,
                }
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
    let ranges: BTreeMap<u32, quant::Range> = candidates
        .keys()
        .copied()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|b| (b, with_f32(model.buffer_data(b), quant::scan_range_par)))
        .collect();
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

    let hybrid_ops = if opts.mode == Mode::Dynamic && opts.weight_type == WeightType::Int8 {
        hybrid_ops(model, &candidates)
    } else {
        BTreeSet::new()
    };

    let mut jobs = Vec::new();
    let mut clamped = Vec::new();
    let hybrid = &hybrid_ops;
    for (buffer, users) in candidates {
        let range = ranges[&buffer];
        let first = users[0];
        let t = &model.subgraphs[first.subgraph].tensors[first.tensor];
        let shape: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        // Every reader of the buffer: (op code, slot, whether that op runs hybrid).
        let reads: Vec<(i32, usize, bool)> = users
            .iter()
            .flat_map(|u| {
                readers[u.subgraph][u.tensor]
                    .iter()
                    .map(move |&(oi, slot)| {
                        let is_hybrid = hybrid.contains(&OpRef {
                            subgraph: u.subgraph,
                            op: oi,
                        });
                        (model.subgraphs[u.subgraph].ops[oi].code, slot, is_hybrid)
                    })
            })
            .collect();
        let mut fallback = None;
        let encoding = if opts.weight_type == WeightType::Float16 {
            if range.min < -quant::F16_MAX || range.max > quant::F16_MAX {
                clamped.extend(users.iter().copied());
            }
            Encoding::Float16
        } else {
            let symmetric = opts.symmetric || reads.iter().any(|r| r.2);
            let params = |r: quant::Range| {
                if symmetric {
                    quant::symmetric_params(r.min, r.max)
                } else {
                    quant::asymmetric_params(r.min, r.max)
                }
            };
            // A direct reader whose kernel only reads per-channel scales gets them, repeated
            // from the whole-tensor parameters when per-tensor was asked for.
            let required = reads
                .iter()
                .find(|r| r.2 && ops::hybrid(r.0).is_some_and(|h| h.requires_per_channel))
                .and_then(|r| ops::channel_axis(r.0, r.1, shape.len()));
            let agreed = match opts.granularity {
                Granularity::PerTensor => None,
                // One set of scales must fit every reader's shape.
                Granularity::PerChannel if !one_shape(model, &users) => {
                    fallback = Some("its readers have different shapes".to_owned());
                    None
                }
                Granularity::PerChannel => match channel_axis(&reads, shape.len()) {
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
            let per_channel = |axis: usize, params: Vec<quant::QuantParams>| {
                Encoding::PerChannel(PerChannel {
                    axis,
                    inner: shape[axis + 1..].iter().product(),
                    params,
                })
            };
            match (agreed, required) {
                (Some(axis), r) if r.is_none_or(|r| r == axis) => {
                    let ranges = with_f32(model.buffer_data(buffer), |v| {
                        quant::channel_ranges(v, &shape, axis)
                    });
                    fallback = None;
                    per_channel(axis, ranges.into_iter().map(params).collect())
                }
                (_, Some(axis)) => per_channel(axis, vec![params(range); shape[axis]]),
                (_, None) => Encoding::PerTensor(params(range)),
            }
        };
        jobs.push(BufferJob {
            buffer,
            elements: t.elements,
            shape,
            encoding,
            min: range.min,
            max: range.max,
            users,
            per_channel_fallback: fallback,
        });
    }
    skipped.sort_by_key(|(r, _)| *r);
    Plan {
        jobs,
        skipped,
        hybrid_ops,
        clamped,
        readers,
    }
}

/// Whether every tensor of `users` has the same shape. A buffer can be shared by tensors of
/// one size but different shapes (the converter shares equal constants); per-channel scales
/// then fit at most one of them.
fn one_shape(model: &Model<'_>, users: &[TensorRef]) -> bool {
    let shape = |u: &TensorRef| &model.subgraphs[u.subgraph].tensors[u.tensor].shape;
    users.windows(2).all(|w| shape(&w[0]) == shape(&w[1]))
}

/// The one axis all readers of a buffer agree on for per-channel scales, or why there is
/// none.
fn channel_axis(reads: &[(i32, usize, bool)], rank: usize) -> Result<usize, String> {
    let mut axis = None;
    for &(code, slot, hybrid) in reads {
        let Some(a) = ops::channel_axis(code, slot, rank) else {
            return Err(format!(
                "{} has no channel axis for this input",
                op_name(code)
            ));
        };
        if hybrid && !ops::hybrid(code).is_some_and(|h| h.per_channel) {
            return Err(format!(
                "the hybrid {} kernel takes per-tensor weights only",
                op_name(code)
            ));
        }
        match axis {
            Some(b) if b != a => return Err("its readers expect different axes".to_owned()),
            _ => axis = Some(a),
        }
    }
    axis.ok_or_else(|| "no operator reads it".to_owned())
}

/// Operators whose hybrid kernel can take every one of their weights as int8: each
/// present weight slot holds a quantizable constant, and the activation input is float32.
fn hybrid_ops(model: &Model<'_>, candidates: &BTreeMap<u32, Vec<TensorRef>>) -> BTreeSet<OpRef> {
    let mut out = BTreeSet::new();
    for (si, sg) in model.subgraphs.iter().enumerate() {
        for (oi, o) in sg.ops.iter().enumerate() {
            let Some(h) = ops::hybrid(o.code) else {
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
