//! Quantization-error reports: what int8 costs each weight tensor.
//!
//! [`report`] measures the tensors that `quantize` would quantize with the same options,
//! through the same plan and the same kernels, without writing a model. [`against`] measures
//! a model already quantized by any tool against its float original, from the real int8 data.
//! Both give a [`Report`]: one row per tensor, sorted worst first, with totals; [`format`]
//! turns it into a table, JSON, CSV, Markdown or a self-contained HTML page.
//!
//! Metrics, for float values x and their reconstruction x' (codes dequantized with the
//! tensor's scale and zero point, per channel where it has several):
//! max |x - x'|; RMSE = sqrt(mean((x - x')²)); SQNR = 10·log10(Σx² / Σ(x - x')²) dB
//! (infinite, reported as exact, when x' = x); cosine = Σx·x' / (|x|·|x'|); distinct codes
//! used (of 256); the share of values whose code is an end of the allowed range.

pub mod against;
pub mod analyze;
mod cells;
pub mod csv;
pub mod format;
pub mod html;
pub mod json;
pub mod markdown;
pub mod model_explorer;
pub mod table;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::{Model, SubgraphInfo};
use crate::plan::{self, Options};
use crate::quant::ErrorStats;

pub use against::{MatchedBy, Unmatched, against};
pub use analyze::Histograms;
pub use format::{Format, write_report};

/// What to measure and how much detail to keep.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The options `quantize` would run with (which tensors qualify).
    pub quant: Options,
    /// Keep value and error histograms of every tensor (for the HTML report).
    pub histograms: bool,
}

/// An operator input that reads a tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consumer {
    /// Operator index in the subgraph.
    pub op: usize,
    /// Operator name, e.g. `FULLY_CONNECTED`.
    pub name: String,
    /// Input slot.
    pub input: usize,
}

/// The quantized tensor of the other model that a row was measured from (`--against`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuantizedTensor {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Buffer index.
    pub buffer: u32,
    /// How it was matched with its float original.
    pub matched_by: MatchedBy,
}

/// The quantization scheme of a row, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemeSummary {
    /// `per_tensor` or `per_channel`.
    pub granularity: &'static str,
    /// Every zero point is 0.
    pub symmetric: bool,
    /// Channel axis (per-channel only).
    pub axis: Option<usize>,
    /// Number of scale/zero point pairs.
    pub channels: usize,
    /// Smallest scale.
    pub scale_min: f32,
    /// Largest scale.
    pub scale_max: f32,
    /// Smallest zero point.
    pub zero_point_min: i32,
    /// Largest zero point.
    pub zero_point_max: i32,
}

impl SchemeSummary {
    /// Float16 weights: no scales, no zero points, no codes.
    fn float16() -> SchemeSummary {
        SchemeSummary {
            granularity: "float16",
            symmetric: true,
            axis: None,
            channels: 0,
            scale_min: 0.0,
            scale_max: 0.0,
            zero_point_min: 0,
            zero_point_max: 0,
        }
    }

    fn new(s: &crate::encoding::Codes) -> SchemeSummary {
        let scales = s.params.iter().map(|p| p.scale);
        let zps = s.params.iter().map(|p| p.zero_point);
        SchemeSummary {
            granularity: if matches!(s.geometry, crate::encoding::Geometry::Blocks { .. }) {
                "blockwise"
            } else if s.params.len() > 1 {
                "per_channel"
            } else {
                "per_tensor"
            },
            symmetric: s.symmetric(),
            axis: match s.geometry {
                crate::encoding::Geometry::Tensor => None,
                crate::encoding::Geometry::Channels { axis, .. } => Some(axis),
                crate::encoding::Geometry::Blocks { .. } => None,
            },
            channels: s.params.len(),
            scale_min: scales.clone().fold(f32::INFINITY, f32::min),
            scale_max: scales.fold(f32::NEG_INFINITY, f32::max),
            zero_point_min: zps.clone().min().unwrap_or(0),
            zero_point_max: zps.max().unwrap_or(0),
        }
    }
}

/// One measured tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    /// Subgraph of the float tensor.
    pub subgraph: usize,
    /// Index of the float tensor in its subgraph.
    pub tensor: usize,
    /// Name of the float tensor.
    pub name: String,
    /// Buffer of the float tensor.
    pub buffer: u32,
    /// Shape.
    pub shape: Vec<i32>,
    /// Operators that read the float tensor.
    pub consumers: Vec<Consumer>,
    /// Number of elements.
    pub elements: u64,
    /// Smallest float value.
    pub min: f32,
    /// Largest float value.
    pub max: f32,
    /// Scale and zero point(s).
    pub scheme: SchemeSummary,
    /// Largest |x - x'|.
    pub max_abs_error: f64,
    /// sqrt(mean((x - x')²)).
    pub rmse: f64,
    /// SQNR in dB; `null` when not finite (see `exact`).
    pub sqnr_db: Option<f64>,
    /// The reconstruction equals the float values (infinite SQNR).
    pub exact: bool,
    /// Cosine similarity of x and x'.
    pub cosine: f64,
    /// Distinct codes used, of 256.
    pub levels_used: u32,
    /// Share of values whose code is an end of the allowed range, in [0, 1].
    pub clamp_share: f64,
    /// Bytes of the float data.
    pub bytes_before: u64,
    /// Bytes of the int8 data.
    pub bytes_after: u64,
    /// The clipping range searched for (`--range mse`): chosen range, share clipped, gain
    /// over min-max; `null` with min-max.
    pub range: Option<crate::plan::RangeChoice>,
    /// The quantized tensor measured (`--against` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedTensor>,
    /// Histograms for plots (not serialised).
    #[serde(skip)]
    pub histograms: Option<Histograms>,
    /// The exact SQNR, ±infinity included, for sorting and gates.
    #[serde(skip)]
    pub sqnr: f64,
    /// Buffer whose bytes `bytes_after` counts (shared buffers are counted once in totals).
    #[serde(skip)]
    data_buffer: u32,
}

/// One constant tensor not measured, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedRow {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Stable reason key, e.g. `too_small`.
    pub reason: String,
    /// The reason in words.
    pub detail: String,
}

/// The tensor with the lowest SQNR.
#[derive(Debug, Clone, Serialize)]
pub struct Worst {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Its SQNR (`null`: exact).
    pub sqnr_db: Option<f64>,
}

/// Totals over the measured tensors; buffers shared by several rows are counted once.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Rows measured.
    pub tensors: usize,
    /// Constant tensors not measured.
    pub skipped: usize,
    /// Quantized tensors that could not be matched (`--against`).
    pub unmatched: usize,
    /// Elements measured.
    pub elements: u64,
    /// Bytes of the float data.
    pub bytes_before: u64,
    /// Bytes of the int8 data.
    pub bytes_after: u64,
    /// The worst tensor.
    pub worst: Option<Worst>,
    /// Mean SQNR in dB weighted by element count, over tensors with a finite SQNR.
    pub mean_sqnr_db: Option<f64>,
    /// Tensors reconstructed exactly (left out of the mean).
    pub exact: usize,
}

/// A quantization-error report of one model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The float model, as named by the caller.
    pub model: Option<String>,
    /// The quantized model measured (`--against`), as named by the caller.
    pub against: Option<String>,
    /// `--min-elements` used to choose the tensors (planned reports).
    pub min_elements: Option<u64>,
    /// Totals.
    pub summary: Totals,
    /// Measured tensors, worst first.
    pub tensors: Vec<TensorRow>,
    /// Constant tensors not measured.
    pub skipped: Vec<SkippedRow>,
    /// Quantized tensors of the other model that match no float tensor.
    pub unmatched: Vec<Unmatched>,
    /// Things to look at, e.g. a match whose error is as large as the signal.
    pub warnings: Vec<String>,
    /// Layer pairs equalized before quantizing (planned reports), else `null`.
    pub equalized_pairs: Option<usize>,
    /// What the report measures: the weights, not the model's outputs.
    pub measures: &'static str,
    /// The plan the options make (planned reports; `--format plan`).
    #[serde(skip)]
    pub plan: Option<crate::plan::assign::PlanFile>,
    /// Why the given `--plan` cannot be applied exactly (planned reports).
    #[serde(skip)]
    pub plan_conflicts: Vec<String>,
}

/// What every report says it measures, in every format.
pub const MEASURES: &str = "weights only (each tensor against its float values), not the \
     model's outputs; for outputs run the model: `tflq validate` (Python package)";

impl Report {
    /// Rows whose SQNR is below `db` (exact rows never are).
    pub fn below(&self, db: f64) -> Vec<&TensorRow> {
        self.tensors.iter().filter(|r| r.sqnr < db).collect()
    }

    fn new(
        mut tensors: Vec<TensorRow>,
        mut skipped: Vec<SkippedRow>,
        unmatched: Vec<Unmatched>,
    ) -> Report {
        tensors.sort_by(|a, b| {
            a.sqnr
                .total_cmp(&b.sqnr)
                .then((a.subgraph, a.tensor).cmp(&(b.subgraph, b.tensor)))
        });
        skipped.sort_by_key(|s| (s.subgraph, s.tensor));
        let mut before = BTreeSet::new();
        let mut after = BTreeSet::new();
        let (mut elements, mut bytes_before, mut bytes_after) = (0, 0, 0);
        let (mut weighted, mut weight, mut exact) = (0.0, 0.0, 0);
        for r in &tensors {
            if before.insert(r.buffer) {
                bytes_before += r.bytes_before;
            }
            if after.insert(r.data_buffer) {
                bytes_after += r.bytes_after;
                elements += r.elements;
                if r.sqnr.is_finite() {
                    weighted += r.sqnr * r.elements as f64;
                    weight += r.elements as f64;
                } else if r.exact {
                    exact += 1;
                }
            }
        }
        let worst = tensors.first().map(|r| Worst {
            subgraph: r.subgraph,
            tensor: r.tensor,
            name: r.name.clone(),
            sqnr_db: r.sqnr_db,
        });
        Report {
            model: None,
            against: None,
            min_elements: None,
            summary: Totals {
                tensors: tensors.len(),
                skipped: skipped.len(),
                unmatched: unmatched.len(),
                elements,
                bytes_before,
                bytes_after,
                worst,
                mean_sqnr_db: (weight > 0.0).then(|| weighted / weight),
                exact,
            },
            tensors,
            skipped,
            unmatched,
            warnings: Vec::new(),
            equalized_pairs: None,
            measures: MEASURES,
            plan: None,
            plan_conflicts: Vec::new(),
        }
    }
}

/// Operators reading each tensor of `sg`.
fn consumers(sg: &SubgraphInfo) -> Vec<Vec<Consumer>> {
    let mut out = vec![Vec::new(); sg.tensors.len()];
    for (oi, op) in sg.ops.iter().enumerate() {
        for (slot, &t) in op.inputs.iter().enumerate() {
            if let Some(list) = usize::try_from(t).ok().and_then(|t| out.get_mut(t)) {
                list.push(Consumer {
                    op: oi,
                    name: op.name(),
                    input: slot,
                });
            }
        }
    }
    out
}

/// The measured part of a row, filled in from statistics.
#[allow(clippy::too_many_arguments)]
fn row(
    model: &Model<'_>,
    consumers: &[Vec<Vec<Consumer>>],
    (subgraph, tensor): (usize, usize),
    scheme: SchemeSummary,
    (min, max): (f32, f32),
    measured: analyze::Measured,
    bytes_after: u64,
    data_buffer: u32,
) -> TensorRow {
    let t = &model.subgraphs()[subgraph].tensors[tensor];
    let s: ErrorStats = measured.stats;
    let sqnr = s.sqnr_db();
    TensorRow {
        subgraph,
        tensor,
        name: t.name.clone(),
        buffer: t.buffer,
        shape: t.shape.clone(),
        consumers: consumers[subgraph][tensor].clone(),
        elements: t.elements,
        min,
        max,
        scheme,
        max_abs_error: s.max_abs,
        rmse: s.rmse(),
        sqnr_db: sqnr.is_finite().then_some(sqnr),
        exact: s.noise == 0.0,
        cosine: s.cosine(),
        levels_used: measured.code_use.levels,
        clamp_share: measured.code_use.edge_share(),
        bytes_before: model.buffer_data(t.buffer).len() as u64,
        bytes_after,
        range: None,
        quantized: None,
        histograms: measured.histograms,
        sqnr,
        data_buffer,
    }
}

/// Elements quantized per block, as in the rewriter: memory stays flat on large tensors.
const BLOCK: usize = 1 << 22;

/// Measures every tensor that `quantize` would quantize with `opts.quant`, without writing a
/// model: same plan, same parameters, same kernels.
pub fn report(model: &Model<'_>, opts: &ReportOptions) -> Report {
    let plan = plan::plan(model, &opts.quant);
    let consumers: Vec<_> = model.subgraphs().iter().map(consumers).collect();
    let mut rows = Vec::new();
    let mut codes = Vec::new();
    let mut half = Vec::new();
    for job in plan.jobs() {
        let Some(scheme) = analyze::job_codes(job) else {
            // float16: the encoder's own error sums; no codes to count.
            let mut stats = ErrorStats::default();
            plan.values(job.buffer).blocks(BLOCK, |first, v| {
                half.resize(v.len() * 2, 0u8);
                stats = stats.merge(job.encoding.encode_par(v, first, &mut half));
            });
            let measured = analyze::Measured {
                stats,
                code_use: crate::quant::CodeUse {
                    levels: 0,
                    at_edges: 0,
                    count: job.elements,
                },
                histograms: None,
            };
            for u in &job.users {
                rows.push(row(
                    model,
                    &consumers,
                    (u.tensor.subgraph, u.tensor.tensor),
                    SchemeSummary::float16(),
                    (job.min, job.max),
                    measured.clone(),
                    job.elements * 2,
                    job.buffer,
                ));
            }
            continue;
        };
        let mut meter = analyze::Meter::new(scheme, job.min, job.max, opts.histograms);
        plan.values(job.buffer).blocks(BLOCK, |first, values| {
            let n = values.len();
            codes.resize(n, 0);
            let stats = analyze::quantize_job(values, first, job, &mut codes[..n]);
            meter.add(values, &codes[..n], Some(stats));
        });
        let measured = meter.finish();
        for u in &job.users {
            rows.push(row(
                model,
                &consumers,
                (u.tensor.subgraph, u.tensor.tensor),
                SchemeSummary::new(scheme),
                (job.min, job.max),
                measured.clone(),
                job.stored_bytes() + job.scale_bytes(),
                job.buffer,
            ));
            if let Some(r) = rows.last_mut() {
                r.range = job.range;
            }
        }
    }
    let skipped = plan
        .skipped()
        .iter()
        .map(|(r, reason)| SkippedRow {
            subgraph: r.subgraph,
            tensor: r.tensor,
            name: model.tensor(*r).name.clone(),
            reason: reason.key().to_owned(),
            detail: reason.to_string(),
        })
        .collect();
    let mut report = Report::new(rows, skipped, Vec::new());
    report.equalized_pairs = Some(plan.equalized_pairs());
    report.min_elements = Some(opts.quant.min_elements);
    report.plan = Some(plan.to_file());
    report.plan_conflicts = plan.conflicts().to_vec();
    // Per-channel asked for, per-tensor used: said, with how many and why.
    let fallbacks = plan.jobs().iter().flat_map(|job| {
        job.per_channel_fallback
            .as_deref()
            .into_iter()
            .flat_map(|r| {
                job.users
                    .iter()
                    .map(move |u| (r, model.tensor(u.tensor).name.as_str()))
            })
    });
    report.warnings = crate::text::fallback_lines(fallbacks);
    report
}
