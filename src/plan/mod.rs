//! Choosing what to quantize and how. The plan owns every decision; the rewriter, the
//! summary and the report only read it. It is made in stages, each in its own module:
//!
//! 1. [`select`]: which constant tensors qualify, and why each of the others does not;
//! 2. [`route::hybrid_ops`]: which operators read their weights directly (dynamic mode);
//! 3. [`encode`]: the encoding of each buffer (per-tensor or per-channel int8, symmetric or
//!    not, float16), given who reads it;
//! 4. [`route::users`]: for every reader of a quantized buffer, whether it reads the stored
//!    tensor directly or the float tensor a DEQUANTIZE restores, and the op versions that
//!    follow.
//!
//! The unit of quantization is the buffer: a buffer shared by several tensors (weights
//! reused across subgraphs or signatures) is quantized once, and only when every tensor
//! that reads it qualifies, so that all of them stay consistent.

pub mod assign;
mod encode;
mod names;
mod route;
mod select;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::encoding::Encoding;
pub use crate::equalize::Values;
use crate::model::{Model, OpRef, TensorRef};
use crate::ops::Op;
pub use names::Named;

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
    /// When not empty, only weights read solely by these operators are quantized.
    pub include_ops: Vec<Op>,
    /// Weights read by any of these operators stay float.
    pub exclude_ops: Vec<Op>,
    /// Weights whose name matches stay float.
    pub exclude_tensors: Option<regex::Regex>,
    /// Quantize biases and per-channel vectors of elementwise ops too (they stay float by
    /// default: a fraction of a percent of the bytes, and costly in accuracy).
    pub quantize_biases: bool,
    /// How int8 clipping ranges are chosen.
    pub range: RangeMethod,
    /// Cross-layer equalization before per-tensor int8 (no effect on per-channel or
    /// float16, where it gains nothing).
    pub equalize: bool,
    /// Equalize and write the float model, quantizing nothing (to check that equalization
    /// keeps the model's function).
    pub equalize_only: bool,
    /// Elements per block for [`Granularity::Block`] (32, 64, 128 or 256).
    pub block_size: usize,
    /// The runtime the output must compute right on.
    pub target: Target,
    /// A plan (`--plan`): each listed tensor gets its own encoding, exactly, and the rest
    /// stay float32; the fields above give the rest of the options.
    pub assignment: Option<std::sync::Arc<assign::Assignment>>,
    /// `--target-sqnr DB`: each tensor gets the smallest encoding its readers take whose
    /// weight SQNR is at least DB (else it stays float32).
    pub target_sqnr: Option<f64>,
}

impl Options {
    /// Why these options cannot be used together, if so: the one check the command line
    /// and the Python package make before running (messages name the command's flags).
    pub fn conflict(&self) -> Option<String> {
        if self.target == Target::Micro && (self.assignment.is_some() || self.target_sqnr.is_some())
        {
            return Some(
                "--target micro takes per-tensor int8 only: not --plan or --target-sqnr".to_owned(),
            );
        }
        let sub_byte = matches!(self.weight_type, WeightType::Int4 | WeightType::Int2);
        if self.granularity == Granularity::Block && !sub_byte {
            return Some("--granularity block needs --type int4 or int2".to_owned());
        }
        if self.granularity == Granularity::Block && ![32, 64, 128, 256].contains(&self.block_size)
        {
            return Some(format!(
                "--block-size {}: must be 32, 64, 128 or 256",
                self.block_size
            ));
        }
        if self.mode == Mode::Dynamic && self.weight_type == WeightType::Float16 {
            return Some(
                "--mode dynamic needs --type int8: hybrid kernels take int8 weights only"
                    .to_owned(),
            );
        }
        self.target_conflict()
    }

    /// Why these options cannot be honoured on their target, if so.
    pub fn target_conflict(&self) -> Option<String> {
        if self.target != Target::Micro {
            return None;
        }
        let why = "TensorFlow Lite Micro computes only per-tensor int8 behind DEQUANTIZE right";
        if self.mode == Mode::Dynamic {
            Some(format!(
                "--target micro cannot take --mode dynamic: TFLM refuses hybrid kernels (float activations, int8 weights); {why}"
            ))
        } else if self.granularity == Granularity::PerChannel {
            Some(format!(
                "--target micro cannot take --granularity per-channel: TFLM's DEQUANTIZE applies one scale to the whole tensor and computes wrong values; {why}"
            ))
        } else if self.layout == LayoutPolicy::External {
            Some(
                "--target micro cannot take --layout external: TFLM reads buffers stored after the flatbuffer (offset/size) as garbage".to_owned(),
            )
        } else if self.weight_type != WeightType::Int8 {
            Some(format!(
                "--target micro needs --type int8: TFLM's DEQUANTIZE takes int8, int16 and uint8 only; {why}"
            ))
        } else {
            None
        }
    }

    /// The options the planner follows: on TFLM, only what it computes right (per-tensor
    /// int8 behind DEQUANTIZE), whatever was asked.
    fn for_target(&self) -> Options {
        let mut o = self.clone();
        if o.target == Target::Micro {
            o.mode = Mode::WeightOnly;
            o.granularity = Granularity::PerTensor;
            o.weight_type = WeightType::Int8;
            o.layout = LayoutPolicy::Auto;
        }
        o
    }
}

/// The runtime a quantized model is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// LiteRT (TensorFlow Lite), with or without XNNPACK: every encoding tflq writes.
    #[default]
    Litert,
    /// TensorFlow Lite Micro: per-tensor int8 behind DEQUANTIZE only.
    Micro,
}

/// How the clipping range of int8 weights is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeMethod {
    /// The smallest range that holds every value.
    #[default]
    Minmax,
    /// The range with the least squared reconstruction error of the tensor (or each
    /// channel), data-free ([`crate::range::search`]).
    Mse,
}

/// The clipping range chosen for one buffer, against min-max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RangeChoice {
    /// How it was chosen.
    pub method: RangeMethod,
    /// Smallest value the grid reconstructs (over all channels).
    pub lo: f32,
    /// Largest value the grid reconstructs (over all channels).
    pub hi: f32,
    /// Share of the values outside their range (clipped).
    pub clipped_share: f64,
    /// Less squared error than min-max, in dB (0 when min-max was kept).
    pub gain_db: f64,
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
            quantize_biases: false,
            range: RangeMethod::Minmax,
            equalize: true,
            equalize_only: false,
            block_size: 32,
            target: Target::Litert,
            assignment: None,
            target_sqnr: None,
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
    /// One scale per block of [`Options::block_size`] elements along the last axis, for
    /// int4/int2 weights read by kernels that read blocks themselves; per-channel elsewhere.
    Block,
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
    /// 4-bit integer codes, two per byte.
    Int4,
    /// 2-bit integer codes, four per byte.
    Int2,
}

impl WeightType {
    /// The code width, for integer types.
    pub fn bits(self) -> Option<crate::encoding::Bits> {
        use crate::encoding::Bits;
        match self {
            WeightType::Int8 => Some(Bits::Eight),
            WeightType::Int4 => Some(Bits::Four),
            WeightType::Int2 => Some(Bits::Two),
            WeightType::Float16 => None,
        }
    }
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
    /// The bias input of an operator (left float unless `--quantize-biases`).
    Bias {
        /// The operator's name.
        op: String,
    },
    /// A vector of one value per channel read by an elementwise operator: a folded batch
    /// norm's scale or shift, or PReLU's slopes (left float unless `--quantize-biases`).
    ChannelVector {
        /// The operator's name.
        op: String,
    },
    /// `--include-ops` is given and an operator that reads it is not listed (or none reads it).
    NotIncludedOp {
        /// The operator's name ("none" when no operator reads it).
        op: String,
    },
    /// The plan (`--plan`, `--target-sqnr`) keeps it float32.
    PlannedFloat {
        /// Why: "float32 in the plan", "not in the plan", or the SQNR target no encoding met.
        why: String,
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
            SkipReason::Bias { .. } => "bias",
            SkipReason::ChannelVector { .. } => "channel_vector",
            SkipReason::NotIncludedOp { .. } => "not_included_op",
            SkipReason::PlannedFloat { .. } => "planned_float",
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
            SkipReason::Bias { op } => {
                write!(
                    f,
                    "bias of {op} (kept float; --quantize-biases quantizes it)"
                )
            }
            SkipReason::ChannelVector { op } => write!(
                f,
                "per-channel vector read by {op} (kept float; --quantize-biases quantizes it)"
            ),
            SkipReason::NotIncludedOp { op } => {
                write!(f, "read by {op}, which --include-ops does not list")
            }
            SkipReason::PlannedFloat { why } => write!(f, "planned float32: {why}"),
        }
    }
}

/// Readers of each tensor of each subgraph: (operator index, input slot).
#[derive(Debug, Clone, Default)]
pub struct Readers(Vec<Vec<Vec<(usize, usize)>>>);

impl Readers {
    /// The readers of every tensor of `model`.
    pub fn new(model: &Model<'_>) -> Readers {
        Readers(
            model
                .subgraphs()
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
                .collect(),
        )
    }

    /// (operator, input slot) of every reader of `t`.
    pub fn of(&self, t: TensorRef) -> &[(usize, usize)] {
        &self.0[t.subgraph][t.tensor]
    }
}

/// One reader of a quantized buffer and how it gets its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The float32 tensor that reads the buffer.
    pub tensor: TensorRef,
    /// Its readers (operator, input slot) whose hybrid kernel reads the stored tensor
    /// directly.
    pub direct: Vec<(usize, usize)>,
    /// Whether a DEQUANTIZE restores the float tensor (some reader needs float, or it is an
    /// output of its subgraph). When false, the tensor itself becomes the stored one.
    pub dequantize: bool,
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
    pub users: Vec<User>,
    /// Why per-channel was asked for but not used, if so.
    pub per_channel_fallback: Option<String>,
    /// The clipping range searched for (`--range mse`), if so.
    pub range: Option<RangeChoice>,
    /// Why the asked type (int4, int2) or granularity (block) was not used, and which rule
    /// chose the encoding it got instead.
    pub fallback: Option<String>,
}

impl BufferJob {
    /// Bytes of the stored data.
    pub fn stored_bytes(&self) -> u64 {
        self.encoding.bytes_for(self.elements)
    }

    /// Bytes of the float16 block scales (a buffer of their own), if blockwise.
    pub fn scale_bytes(&self) -> u64 {
        match self.encoding.block_size() {
            Some(size) => 2 * self.elements / size.max(1) as u64,
            None => 0,
        }
    }
}

/// What a hybrid operator needs written so that its kernel reads the stored weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HybridOp {
    /// The operator.
    pub op: Op,
    /// Op version to write (at least).
    pub version: i32,
    /// Turn on `asymmetric_quantize_inputs` in its options.
    pub asymmetric_inputs: bool,
}

/// The decision for a whole model. Only [`plan`] makes one, from the model it keeps.
#[derive(Debug, Clone)]
pub struct Plan<'m> {
    model: &'m Model<'m>,
    jobs: Vec<BufferJob>,
    skipped: Vec<(TensorRef, SkipReason)>,
    hybrid_ops: BTreeMap<OpRef, HybridOp>,
    clamped: Vec<TensorRef>,
    dequantize_version: Option<i32>,
    /// How equalization changes buffers' float32 values.
    rescaled: BTreeMap<u32, crate::equalize::Rescale>,
    equalized_pairs: usize,
    target: Target,
    /// Why the plan (`--plan`) cannot be applied exactly, one line per tensor.
    conflicts: Vec<String>,
    /// Made from a plan or `--target-sqnr`.
    planned: bool,
}

impl<'m> Plan<'m> {
    /// The runtime the plan is made for.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Why the given plan (`--plan`) cannot be applied exactly: one message per tensor,
    /// naming it and the rule (empty without a plan, or when it applies).
    pub fn conflicts(&self) -> &[String] {
        &self.conflicts
    }

    /// The plan document describing what this plan does (`--write-plan`): every quantized
    /// tensor with its encoding, and every tensor a plan or target kept float32.
    pub fn to_file(&self) -> assign::PlanFile {
        let mut tensors = Vec::new();
        let name = |t: TensorRef| self.model.tensor(t).name.clone();
        for job in &self.jobs {
            for u in &job.users {
                tensors.push(assign::entry_of(
                    u.tensor.subgraph,
                    &name(u.tensor),
                    job.buffer,
                    &job.encoding,
                    job.range.is_some(),
                ));
            }
        }
        for (t, r) in &self.skipped {
            if let SkipReason::PlannedFloat { .. } = r {
                let mut e = assign::entry_of(
                    t.subgraph,
                    &name(*t),
                    self.model.tensor(*t).buffer,
                    &Encoding::Float16,
                    false,
                );
                e.kind = assign::Kind::Float32;
                tensors.push(e);
            }
        }
        tensors
            .sort_by(|a, b| (a.subgraph, a.buffer, &a.name).cmp(&(b.subgraph, b.buffer, &b.name)));
        assign::PlanFile {
            tflq_plan: assign::VERSION,
            equalize: self.equalized_pairs > 0,
            tensors,
        }
    }

    /// Whether the encodings come from a plan or `--target-sqnr`, not uniform options.
    pub fn planned(&self) -> bool {
        self.planned
    }

    /// The model the plan was made for.
    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// Buffers to quantize, in buffer order.
    pub fn jobs(&self) -> &[BufferJob] {
        &self.jobs
    }

    /// Constant tensors left alone, with the reason, in (subgraph, tensor) order.
    pub fn skipped(&self) -> &[(TensorRef, SkipReason)] {
        &self.skipped
    }

    /// Tensors (weights of hybrid ops) with values beyond the float16 range, clamped.
    pub fn clamped(&self) -> &[TensorRef] {
        &self.clamped
    }

    /// Operators that read their weights directly (dynamic mode), with what they need.
    pub fn hybrid_ops(&self) -> &BTreeMap<OpRef, HybridOp> {
        &self.hybrid_ops
    }

    /// The DEQUANTIZE version the model needs, if any tensor goes through one.
    pub fn dequantize_version(&self) -> Option<i32> {
        self.dequantize_version
    }

    /// The float32 values the plan works from for `buffer`: the model's, rescaled when
    /// equalization changed them.
    pub fn values(&self, buffer: u32) -> Values<'_> {
        Values {
            bytes: self.model.buffer_data(buffer),
            rescale: self.rescaled.get(&buffer),
        }
    }

    /// Buffers whose float32 values equalization changes (written rescaled when not
    /// quantized).
    pub fn rescaled(&self) -> &BTreeMap<u32, crate::equalize::Rescale> {
        &self.rescaled
    }

    /// Layer pairs equalized.
    pub fn equalized_pairs(&self) -> usize {
        self.equalized_pairs
    }

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
}

/// Decides which buffers to quantize and how. Reads every candidate's data once (in
/// parallel) to find its range(s) and to rule out NaN and infinities.
pub fn plan<'m>(model: &'m Model<'m>, opts: &Options) -> Plan<'m> {
    let opts = &opts.for_target();
    let readers = Readers::new(model);
    let equalizing = opts.equalize_only
        || (opts.equalize
            && opts.target_sqnr.is_none()
            && opts.assignment.as_ref().map_or(
                opts.weight_type == WeightType::Int8 && opts.granularity == Granularity::PerTensor,
                |a| a.equalize,
            ));
    // The first scan of a buffer equalization will rescale measures it per channel, along
    // the axis equalization reads first, so that equalizing does not read it again.
    let axes = if equalizing {
        crate::equalize::first_axes(model)
    } else {
        Default::default()
    };
    let mut selected = select::select(model, &readers, opts, &axes);
    let equalization = if equalizing {
        crate::equalize::find_measured(
            model,
            |b| {
                selected.candidates.get(&b).is_some_and(|users| {
                    opts.assignment
                        .as_ref()
                        .is_none_or(|a| a.equalizes(model, users))
                })
            },
            std::mem::take(&mut selected.channel_ranges),
        )
    } else {
        Default::default()
    };
    let data = |b: u32| Values {
        bytes: model.buffer_data(b),
        rescale: equalization.buffers.get(&b),
    };
    if opts.equalize_only {
        selected.candidates.clear();
    }
    for &b in equalization.buffers.keys() {
        if let (Some(r), Some(new)) = (selected.ranges.get_mut(&b), equalization.range(model, b)) {
            *r = new;
        }
    }
    let hybrid = if opts.mode == Mode::Dynamic && opts.weight_type != WeightType::Float16 {
        route::hybrid_ops(model, &selected.candidates)
    } else {
        Default::default()
    };
    let encoded = encode::encode(model, &data, &readers, &selected, &hybrid, opts);
    let routed = route::users(model, &readers, encoded.jobs, &hybrid);
    let mut skipped = selected.skipped;
    skipped.extend(encoded.planned_float);
    skipped.sort_by_key(|(r, _)| *r);
    Plan {
        model,
        jobs: routed.jobs,
        skipped,
        hybrid_ops: routed.hybrid_ops,
        clamped: encoded.clamped,
        dequantize_version: routed.dequantize_version,
        equalized_pairs: equalization.pairs.len(),
        rescaled: equalization.buffers,
        target: opts.target,
        conflicts: encoded.conflicts,
        planned: opts.assignment.is_some() || opts.target_sqnr.is_some(),
    }
}

/// Whether every tensor of `users` has the same shape. A buffer can be shared by tensors of
/// one size but different shapes (the converter shares equal constants); per-channel scales
/// then fit at most one of them.
fn one_shape(model: &Model<'_>, users: &[TensorRef]) -> bool {
    let shape = |u: &TensorRef| &model.tensor(*u).shape;
    users.windows(2).all(|w| shape(&w[0]) == shape(&w[1]))
}

#[cfg(test)]
mod tests;
