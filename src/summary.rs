//! What a run did, for people (`Display`) and machines (`serde`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::{Plan, RangeMethod, SkipReason, Target};
use crate::rewrite::{Layout, Written};
use crate::text::{human, ratio};

/// One quantized tensor.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizedTensor {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index within the subgraph.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Buffer index (shared buffers are quantized once).
    pub buffer: u32,
    /// Element count.
    pub elements: u64,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// `int8`, `int8_per_channel` or `float16`.
    pub encoding: &'static str,
    /// Scale (per-tensor int8), else `null`.
    pub scale: Option<f32>,
    /// Zero point (per-tensor int8), else `null`.
    pub zero_point: Option<i32>,
    /// Quantized dimension (per-channel int8), else `null`.
    pub axis: Option<usize>,
    /// Number of channels (per-channel int8), else `null`.
    pub channels: Option<usize>,
    /// Read directly by a hybrid kernel (dynamic mode) rather than through DEQUANTIZE.
    pub hybrid: bool,
    /// Why per-channel was asked for but per-tensor used, if so.
    pub per_channel_fallback: Option<String>,
    /// Why the asked type (int4, int2) or block granularity was not used, and the rule that
    /// chose this encoding instead (absent when there is nothing to say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Signal-to-quantization-noise ratio of the weights in dB (`null` when exact).
    pub sqnr_db: Option<f64>,
    /// Largest absolute reconstruction error.
    pub max_abs_error: f64,
    /// How the clipping range was chosen: `minmax` or `mse` (int8), else `null`.
    pub range: Option<RangeMethod>,
    /// Smallest value the int8 grid reconstructs (over all channels), else `null`.
    pub range_lo: Option<f32>,
    /// Largest value the int8 grid reconstructs (over all channels), else `null`.
    pub range_hi: Option<f32>,
    /// Share of the values clipped by the range (0 with min-max; int8), else `null`.
    pub clipped_share: Option<f64>,
    /// Less squared error than min-max, in dB (0 with min-max; int8), else `null`.
    pub range_gain_db: Option<f64>,
}

/// One constant tensor left as it was.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedTensor {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index within the subgraph.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Why it was skipped.
    #[serde(flatten)]
    pub reason: SkipReason,
    /// The reason in words.
    pub detail: String,
}

/// TFLM's arena for the planned tensors (`--target micro`), computed as its greedy planner
/// does ([`crate::micro::planned_arena`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Arena {
    /// Bytes for the float model.
    pub float_bytes: u64,
    /// Bytes for the output (dequantized weights are arena tensors).
    pub quantized_bytes: u64,
}

/// The outcome of quantizing one model.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The runtime the output is made for (`litert` or `micro`).
    pub target: Target,
    /// With `--target micro`: TFLM's arena before and after (`null` for models with several
    /// subgraphs, or other targets).
    pub arena: Option<Arena>,
    /// False when nothing qualified and the output is the input unchanged.
    pub changed: bool,
    /// Size of the input file.
    pub input_bytes: u64,
    /// Size of the output file.
    pub output_bytes: u64,
    /// Bytes of constant tensor data in the input.
    pub weight_bytes_before: u64,
    /// Bytes of constant tensor data in the output.
    pub weight_bytes_after: u64,
    /// How buffer data is stored in the output.
    pub layout: Layout,
    /// Quantized tensors, in (subgraph, tensor) order.
    pub quantized: Vec<QuantizedTensor>,
    /// Constant tensors left alone, in (subgraph, tensor) order.
    pub skipped: Vec<SkippedTensor>,
    /// Number of skipped tensors per reason.
    pub skipped_by_reason: BTreeMap<String, usize>,
    /// Layer pairs whose channels were equalized (cross-layer equalization).
    pub equalized_pairs: usize,
    /// Things the user should know (e.g. tensors with NaN left in float).
    pub warnings: Vec<String>,
    /// Wall time of the run in seconds (0 when not measured).
    pub seconds: f64,
    /// With a plan or `--target-sqnr`: tensors and stored bytes per encoding (`float32`:
    /// kept float by the plan), else empty.
    pub by_encoding: BTreeMap<String, EncodingTotal>,
    /// The plan this run used (`--write-plan`).
    #[serde(skip)]
    pub plan: crate::plan::assign::PlanFile,
}

/// Tensors and stored bytes that went to one encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EncodingTotal {
    /// Tensors.
    pub tensors: usize,
    /// Stored bytes (codes and block scales; buffers shared by tensors counted once).
    pub bytes: u64,
}

impl Summary {
    pub(crate) fn new(plan: &Plan<'_>, written: Option<&Written>) -> Summary {
        let model = plan.model();
        let name = |s: usize, t: usize| model.subgraphs()[s].tensors[t].name.clone();
        let mut quantized = Vec::new();
        for (j, job) in plan.jobs().iter().enumerate() {
            let stats = written
                .and_then(|w| w.stats.get(j))
                .copied()
                .unwrap_or_default();
            let per_tensor = job.encoding.per_tensor();
            let channels = job.encoding.channels();
            let int = job.encoding.codes().is_some();
            // Min-max: the grid's ends over all groups.
            let (lo, hi) = job.encoding.codes().map_or((job.min, job.max), |c| {
                c.params
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| {
                        let lo = p.scale * (p.qmin - p.zero_point) as f32;
                        let hi = p.scale * (p.qmax - p.zero_point) as f32;
                        (a.min(lo), b.max(hi))
                    })
            });
            for user in &job.users {
                let u = user.tensor;
                let sqnr = stats.sqnr_db();
                quantized.push(QuantizedTensor {
                    subgraph: u.subgraph,
                    tensor: u.tensor,
                    name: name(u.subgraph, u.tensor),
                    buffer: job.buffer,
                    elements: job.elements,
                    min: job.min,
                    max: job.max,
                    encoding: job.encoding.name(),
                    scale: per_tensor.map(|p| p.scale),
                    zero_point: per_tensor.map(|p| p.zero_point),
                    axis: channels.map(|c| c.0),
                    channels: channels.map(|c| c.1),
                    hybrid: !user.direct.is_empty(),
                    per_channel_fallback: job.per_channel_fallback.clone(),
                    fallback: job.fallback.clone(),
                    sqnr_db: sqnr.is_finite().then_some(sqnr),
                    max_abs_error: stats.max_abs,
                    range: int.then(|| job.range.map_or(RangeMethod::Minmax, |r| r.method)),
                    range_lo: int.then(|| job.range.map_or(lo, |r| r.lo)),
                    range_hi: int.then(|| job.range.map_or(hi, |r| r.hi)),
                    clipped_share: int.then(|| job.range.map_or(0.0, |r| r.clipped_share)),
                    range_gain_db: int.then(|| job.range.map_or(0.0, |r| r.gain_db)),
                });
            }
        }
        quantized.sort_by_key(|q| (q.subgraph, q.tensor));
        let mut warnings = Vec::new();
        if !plan.clamped().is_empty() {
            let names: Vec<String> = plan
                .clamped()
                .iter()
                .map(|r| format!("{:?}", name(r.subgraph, r.tensor)))
                .collect();
            warnings.push(format!(
                "values beyond the float16 range (±65504) were clamped in {}",
                names.join(", ")
            ));
        }
        let skipped: Vec<SkippedTensor> = plan
            .skipped()
            .iter()
            .map(|(r, reason)| {
                let n = name(r.subgraph, r.tensor);
                if let SkipReason::NonFinite { count } = reason {
                    warnings.push(format!(
                        "subgraph {} tensor {} ({n:?}) has {count} NaN or infinite values: left in float32",
                        r.subgraph, r.tensor
                    ));
                }
                SkippedTensor {
                    subgraph: r.subgraph,
                    tensor: r.tensor,
                    name: n,
                    reason: reason.clone(),
                    detail: reason.to_string(),
                }
            })
            .collect();
        let mut used = vec![false; model.buffers().len()];
        for sg in model.subgraphs() {
            for t in &sg.tensors {
                used[t.buffer as usize] = true;
            }
        }
        // Buffer 0 is the empty sentinel: a tensor pointing at it has no data, whatever it holds.
        let weight_bytes_before: u64 = model
            .buffers()
            .iter()
            .zip(&used)
            .skip(1)
            .filter(|(_, u)| **u)
            .map(|(b, _)| b.data.len() as u64)
            .sum();
        let saved: u64 = if written.is_some() {
            plan.jobs()
                .iter()
                .map(|j| 4 * j.elements - j.stored_bytes() - j.scale_bytes())
                .sum()
        } else {
            0
        };
        let input_bytes = model.bytes().len() as u64;
        let arena = (plan.target() == Target::Micro)
            .then(|| {
                let restored: Vec<usize> = plan
                    .jobs()
                    .iter()
                    .flat_map(|j| &j.users)
                    .filter(|u| u.dequantize && u.tensor.subgraph == 0)
                    .map(|u| u.tensor.tensor)
                    .collect();
                Some(Arena {
                    float_bytes: crate::micro::planned_arena(model, &[])?,
                    quantized_bytes: crate::micro::planned_arena(model, &restored)?,
                })
            })
            .flatten();
        Summary {
            target: plan.target(),
            arena,
            changed: written.is_some(),
            input_bytes,
            output_bytes: written.map_or(input_bytes, |w| w.len),
            weight_bytes_before,
            weight_bytes_after: weight_bytes_before - saved,
            layout: written.map_or(
                if model.has_external_buffers() {
                    Layout::External
                } else {
                    Layout::Inline
                },
                |w| w.layout,
            ),
            quantized,
            skipped_by_reason: plan
                .skipped_by_reason()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            skipped,
            equalized_pairs: plan.equalized_pairs(),
            warnings,
            seconds: 0.0,
            by_encoding: by_encoding(plan),
            plan: plan.to_file(),
        }
    }

    /// The quantized tensor with the lowest SQNR.
    pub fn worst(&self) -> Option<&QuantizedTensor> {
        self.quantized.iter().min_by(|a, b| {
            a.sqnr_db
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.sqnr_db.unwrap_or(f64::INFINITY))
        })
    }
}

/// [`Summary::by_encoding`] of `plan`.
fn by_encoding(plan: &Plan<'_>) -> BTreeMap<String, EncodingTotal> {
    let mut m: BTreeMap<String, EncodingTotal> = BTreeMap::new();
    if !plan.planned() {
        return m;
    }
    for job in plan.jobs() {
        let e = m.entry(job.encoding.name().to_owned()).or_default();
        e.tensors += job.users.len();
        e.bytes += job.stored_bytes() + job.scale_bytes();
    }
    let mut seen = std::collections::BTreeSet::new();
    for (t, r) in plan.skipped() {
        if let crate::plan::SkipReason::PlannedFloat { .. } = r {
            let e = m.entry("float32".to_owned()).or_default();
            e.tensors += 1;
            let b = plan.model().tensor(*t).buffer;
            if seen.insert(b) {
                e.bytes += plan.model().buffer_data(b).len() as u64;
            }
        }
    }
    m
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.changed {
            writeln!(
                f,
                "nothing to quantize: no float32 weight tensor qualifies; output is the input unchanged"
            )?;
        }
        writeln!(
            f,
            "target:   {}",
            match self.target {
                Target::Litert => "litert (LiteRT / TensorFlow Lite)",
                Target::Micro => "micro (TensorFlow Lite Micro: per-tensor int8 behind DEQUANTIZE)",
            }
        )?;
        writeln!(
            f,
            "tensors:  {} quantized, {} skipped",
            self.quantized.len(),
            self.skipped.len()
        )?;
        for (reason, n) in &self.skipped_by_reason {
            writeln!(f, "          {n:>5} {}", reason.replace('_', " "))?;
        }
        let fallbacks = self.quantized.iter().filter_map(|t| {
            t.per_channel_fallback
                .as_deref()
                .map(|r| (r, t.name.as_str()))
        });
        for line in crate::text::fallback_lines(fallbacks) {
            writeln!(f, "fallback: {line}")?;
        }
        // Fallbacks of the type or the blocks (int4, int2, blockwise), each reason once with its
        // count.
        let mut reasons: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for q in &self.quantized {
            if let Some(why) = &q.fallback {
                *reasons.entry((q.encoding, why.as_str())).or_insert(0) += 1;
            }
        }
        for ((encoding, why), n) in reasons {
            writeln!(
                f,
                "fallback: {} to {encoding}: {why}",
                crate::text::count(n, "tensor", "tensors")
            )?;
        }
        for (encoding, t) in &self.by_encoding {
            writeln!(
                f,
                "planned:  {:>5} tensors {encoding}: {}",
                t.tensors,
                human(t.bytes)
            )?;
        }
        writeln!(
            f,
            "weights:  {} -> {} ({})",
            human(self.weight_bytes_before),
            human(self.weight_bytes_after),
            ratio(self.weight_bytes_after, self.weight_bytes_before)
        )?;
        writeln!(
            f,
            "file:     {} -> {} ({}){}",
            human(self.input_bytes),
            human(self.output_bytes),
            ratio(self.output_bytes, self.input_bytes),
            if self.layout == Layout::External {
                ", data after the flatbuffer (offset/size)"
            } else {
                ""
            }
        )?;
        if self.equalized_pairs > 0 {
            writeln!(
                f,
                "equalized: {} (cross-layer equalization)",
                crate::text::count(self.equalized_pairs, "layer pair", "layer pairs")
            )?;
        }
        let searched: Vec<&QuantizedTensor> = self
            .quantized
            .iter()
            .filter(|q| q.range == Some(RangeMethod::Mse))
            .collect();
        if !searched.is_empty() {
            let clipped = searched
                .iter()
                .filter_map(|q| q.clipped_share)
                .fold(0.0, f64::max);
            let gain = searched
                .iter()
                .filter_map(|q| q.range_gain_db)
                .fold(0.0, f64::max);
            let narrowed = searched
                .iter()
                .filter(|q| q.range_gain_db.is_some_and(|g| g > 0.0))
                .count();
            writeln!(
                f,
                "range:    mse, narrower than min-max in {narrowed} of {} (gain up to {gain:.1} dB, at most {:.2}% of values clipped)",
                crate::text::count(searched.len(), "tensor", "tensors"),
                100.0 * clipped
            )?;
        }
        if let Some(a) = &self.arena {
            writeln!(
                f,
                "arena:    {} -> {} ({}), TFLM's planned tensors (greedy, as TFLM plans them)",
                human(a.float_bytes),
                human(a.quantized_bytes),
                ratio(a.quantized_bytes, a.float_bytes)
            )?;
        }
        if let Some(w) = self.worst() {
            let sqnr = w
                .sqnr_db
                .map_or("exact".to_owned(), |s| format!("{s:.1} dB"));
            writeln!(
                f,
                "worst:    {sqnr} SQNR in subgraph {} tensor {} ({})",
                w.subgraph, w.tensor, w.name
            )?;
        }
        if self.seconds > 0.0 {
            writeln!(f, "time:     {:.3} s", self.seconds)?;
        }
        Ok(())
    }
}
