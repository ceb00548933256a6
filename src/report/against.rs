//! Measuring a model quantized by any tool against its float original.
//!
//! Every constant INT8 tensor with quantization parameters in the quantized model is matched
//! with a float32 constant of the same shape in the float model, by the first rule that
//! finds one:
//!
//! 1. `dequantize`: it feeds a DEQUANTIZE whose output is read by an operator that lines up
//!    with an operator of the float model, at the same input slot (or, failing that, whose
//!    output has the same index and name as a float constant: how `tflq` rewrites);
//! 2. `input_slot`: an operator reads it directly (hybrid kernels), and the operator that
//!    lines up with it in the float model reads a float constant at the same slot;
//! 3. `buffer`: both models have the same number of buffers and a float constant of the same
//!    subgraph uses the same buffer index;
//! 4. `name`: one float constant of the same subgraph has its name (or its name without an
//!    `_int8`, `_quantized` or `_dequantize` suffix).
//!
//! Operators line up when the two subgraphs run the same operator codes in the same order
//! (DEQUANTIZE of constants left out); otherwise by operator code and first output name.
//! What cannot be matched, or has parameters that do not fit its shape, is listed with the
//! reason, never guessed.

use std::collections::HashMap;

use serde::Serialize;

use super::analyze::Meter;
use super::{
    Consumer, QuantizedTensor, Report, ReportOptions, SchemeSummary, SkippedRow, consumers, row,
};
use crate::encoding::{Bits, Codes, Geometry};
use crate::model::details::{self, Quantization};
use crate::model::{DType, Model, SubgraphInfo, TensorInfo};
use crate::ops::Op;
use crate::quant::{self, QuantParams, with_f32};

/// How a quantized tensor was matched with its float original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// Through the DEQUANTIZE operator that restores it.
    Dequantize,
    /// Through the input slot of the operator that reads it.
    InputSlot,
    /// Through the buffer index.
    Buffer,
    /// Through the tensor name.
    Name,
}

impl MatchedBy {
    /// The key used in every format.
    pub fn key(self) -> &'static str {
        match self {
            MatchedBy::Dequantize => "dequantize",
            MatchedBy::InputSlot => "input_slot",
            MatchedBy::Buffer => "buffer",
            MatchedBy::Name => "name",
        }
    }
}

/// A quantized tensor that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmatched {
    /// Subgraph of the quantized model.
    pub subgraph: usize,
    /// Tensor index in the quantized model.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Why it was not measured.
    pub reason: String,
}

fn is_constant(model: &Model<'_>, t: &TensorInfo) -> bool {
    !model.buffer_data(t.buffer).is_empty()
}

fn tensor(sg: &SubgraphInfo, index: i32) -> Option<(usize, &TensorInfo)> {
    let i = usize::try_from(index).ok()?;
    sg.tensors.get(i).map(|t| (i, t))
}

/// Operators of `sg` other than DEQUANTIZE of a constant, in order.
fn real_ops(model: &Model<'_>, sg: &SubgraphInfo) -> Vec<usize> {
    (0..sg.ops.len())
        .filter(|&i| {
            let o = &sg.ops[i];
            !(o.op == Op::Dequantize
                && o.inputs
                    .first()
                    .and_then(|&t| tensor(sg, t))
                    .is_some_and(|(_, t)| is_constant(model, t)))
        })
        .collect()
}

/// For each operator of `q`, the operator of `f` that lines up with it.
fn line_up(
    fm: &Model<'_>,
    f: &SubgraphInfo,
    qm: &Model<'_>,
    q: &SubgraphInfo,
) -> Vec<Option<usize>> {
    let (fo, qo) = (real_ops(fm, f), real_ops(qm, q));
    let mut map = vec![None; q.ops.len()];
    let same = fo.len() == qo.len()
        && fo
            .iter()
            .zip(&qo)
            .all(|(&a, &b)| f.ops[a].name() == q.ops[b].name());
    if same {
        for (&a, &b) in fo.iter().zip(&qo) {
            map[b] = Some(a);
        }
        return map;
    }
    let key = |sg: &SubgraphInfo, i: usize| {
        let o = &sg.ops[i];
        let out = o
            .outputs
            .first()
            .and_then(|&t| tensor(sg, t))
            .map(|(_, t)| t.name.clone());
        (o.name(), out)
    };
    let mut by_key: HashMap<_, Option<usize>> = HashMap::new();
    for &a in &fo {
        by_key
            .entry(key(f, a))
            .and_modify(|v| *v = None) // Ambiguous: line up none of them.
            .or_insert(Some(a));
    }
    for &b in &qo {
        if let Some(&Some(a)) = by_key.get(&key(q, b)) {
            map[b] = Some(a);
        }
    }
    map
}

/// Parameters of a quantized tensor checked against its shape: INT8, INT4 or INT2 codes,
/// per-tensor, per-channel, or blockwise with a float16 scale tensor of `sg`.
fn scheme(
    q: &Quantization,
    t: &TensorInfo,
    model: &Model<'_>,
    sg: &SubgraphInfo,
) -> Result<Codes, String> {
    let bits = match t.dtype {
        DType::INT8 => Bits::Eight,
        DType::INT4 => Bits::Four,
        DType::INT2 => Bits::Two,
        other => return Err(format!("{other} codes")),
    };
    let half = 1i32 << (bits.width() - 1);
    if let Some((scales, size)) = q.blockwise {
        // Checked on read: the tensor exists, is FLOAT16 and has the right shape.
        let st = &sg.tensors[scales];
        let data = model.buffer_data(st.buffer);
        let dims: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        let geometry = Geometry::blocks(&dims, size)
            .ok_or_else(|| format!("block size {size} does not divide shape {:?}", t.shape))?;
        if data.len() != 2 * geometry.groups() {
            return Err(format!(
                "block scale tensor {scales} holds {} bytes, not {}",
                data.len(),
                2 * geometry.groups()
            ));
        }
        let params = data
            .chunks_exact(2)
            .map(|h| QuantParams {
                scale: half::f16::from_le_bytes([h[0], h[1]]).to_f32(),
                zero_point: 0,
                qmin: -half,
                qmax: half - 1,
            })
            .collect();
        return Ok(Codes {
            bits,
            geometry,
            params,
        });
    }
    let n = q.scale.len();
    if n == 0 {
        return Err("quantization parameters have no scale".into());
    }
    if !(q.zero_point.is_empty() || q.zero_point.len() == n) {
        return Err(format!(
            "{} but {}",
            crate::text::count(n, "scale", "scales"),
            crate::text::count(q.zero_point.len(), "zero point", "zero points")
        ));
    }
    let mut params = Vec::with_capacity(n);
    for (i, &scale) in q.scale.iter().enumerate() {
        let zp = q.zero_point.get(i).copied().unwrap_or(0);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("scale {scale} is not a positive finite number"));
        }
        if !(i64::from(-half)..i64::from(half)).contains(&zp) {
            return Err(format!(
                "zero point {zp} is outside the {} range",
                bits.name()
            ));
        }
        params.push(QuantParams {
            scale,
            zero_point: zp as i32,
            qmin: -half,
            qmax: half - 1,
        });
    }
    let geometry = if n == 1 {
        Geometry::Tensor
    } else {
        let axis = usize::try_from(q.axis)
            .ok()
            .filter(|&a| a < t.shape.len())
            .ok_or_else(|| format!("channel axis {} is outside shape {:?}", q.axis, t.shape))?;
        if t.shape[axis] as usize != n {
            return Err(format!(
                "{n} scales along axis {axis}, but shape {:?} has {} channels there",
                t.shape, t.shape[axis]
            ));
        }
        let dims: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
        Geometry::channels(&dims, axis)
    };
    Ok(Codes {
        bits,
        geometry,
        params,
    })
}

const SUFFIXES: [&str; 3] = ["_int8", "_quantized", "_dequantize"];

/// Finds the float original of quantized tensor `ti` of subgraph `s`.
fn find(
    fm: &Model<'_>,
    qm: &Model<'_>,
    s: usize,
    ti: usize,
    aligned: &[Option<usize>],
    qcons: &[Vec<Consumer>],
) -> Option<(usize, MatchedBy)> {
    let (f, q) = (&fm.subgraphs()[s], &qm.subgraphs()[s]);
    let t = &q.tensors[ti];
    let fits = |fi: usize| {
        f.tensors.get(fi).is_some_and(|c| {
            c.dtype == DType::FLOAT32 && !c.sparse && c.shape == t.shape && is_constant(fm, c)
        })
    };
    let through = |cons: &[Consumer]| {
        cons.iter().find_map(|c| {
            let fo = aligned[c.op]?;
            let fi = usize::try_from(*f.ops[fo].inputs.get(c.input)?).ok()?;
            fits(fi).then_some(fi)
        })
    };
    // 1. Through DEQUANTIZE.
    for o in &q.ops {
        if o.op != Op::Dequantize || o.inputs.first() != Some(&(ti as i32)) {
            continue;
        }
        let Some((out, out_t)) = o.outputs.first().and_then(|&x| tensor(q, x)) else {
            continue;
        };
        if let Some(fi) = through(&qcons[out]) {
            return Some((fi, MatchedBy::Dequantize));
        }
        if fits(out) && f.tensors[out].name == out_t.name {
            return Some((out, MatchedBy::Dequantize));
        }
    }
    // 2. Through the input slot of a reading operator.
    if let Some(fi) = through(&qcons[ti]) {
        return Some((fi, MatchedBy::InputSlot));
    }
    // 3. Through the buffer, when the numbering of buffers was kept.
    if fm.buffers().len() == qm.buffers().len() {
        let mut hits =
            (0..f.tensors.len()).filter(|&fi| f.tensors[fi].buffer == t.buffer && fits(fi));
        if let (Some(fi), None) = (hits.next(), hits.next()) {
            return Some((fi, MatchedBy::Buffer));
        }
    }
    // 4. Through the name.
    let mut names = vec![t.name.as_str()];
    names.extend(SUFFIXES.iter().filter_map(|s| t.name.strip_suffix(s)));
    let mut hits =
        (0..f.tensors.len()).filter(|&fi| names.contains(&f.tensors[fi].name.as_str()) && fits(fi));
    if let (Some(fi), None) = (hits.next(), hits.next()) {
        return Some((fi, MatchedBy::Name));
    }
    None
}

/// Measures every constant INT8 tensor of `quantized` against its float original in `float`.
pub fn against(float: &Model<'_>, quantized: &Model<'_>, opts: &ReportOptions) -> Report {
    let qd = details::details(quantized);
    // A model that tflq quantized after cross-layer equalization approximates the equalized
    // weights, not the original ones; equalization is a function of the float model, so the
    // same values can be made here and each such tensor is measured against whichever of the
    // two its codes stand for.
    let default_plan = crate::plan::plan(float, &crate::plan::Options::default());
    let equalized = default_plan.rescaled();
    let mut compared_equalized = 0usize;
    let fcons: Vec<_> = float.subgraphs().iter().map(consumers).collect();
    let mut rows = Vec::new();
    let mut unmatched = Vec::new();
    let mut matched = vec![Vec::<bool>::new(); float.subgraphs().len()];
    for (s, f) in float.subgraphs().iter().enumerate() {
        matched[s] = vec![false; f.tensors.len()];
    }
    for (s, q) in quantized.subgraphs().iter().enumerate() {
        let qcons = consumers(q);
        let f = float.subgraphs().get(s);
        let aligned = f.map(|f| line_up(float, f, quantized, q));
        for (ti, t) in q.tensors.iter().enumerate() {
            let Some(qp) = qd.quantization(s, ti) else {
                continue;
            };
            if !is_constant(quantized, t) {
                continue;
            }
            let mut skip = |reason: String| {
                unmatched.push(Unmatched {
                    subgraph: s,
                    tensor: ti,
                    name: t.name.clone(),
                    dtype: t.dtype.name(),
                    reason,
                })
            };
            if ![DType::INT8, DType::INT4, DType::INT2].contains(&t.dtype) {
                skip(format!(
                    "{} constants are not measured (only INT8, INT4 and INT2)",
                    t.dtype
                ));
                continue;
            }
            if t.sparse {
                skip("stored sparse: not measured".into());
                continue;
            }
            let (Some(_), Some(aligned)) = (f, &aligned) else {
                skip(format!("the float model has no subgraph {s}"));
                continue;
            };
            let scheme = match scheme(qp, t, quantized, q) {
                Ok(s) => s,
                Err(e) => {
                    skip(format!("invalid quantization parameters: {e}"));
                    continue;
                }
            };
            let Some((fi, by)) = find(float, quantized, s, ti, aligned, &qcons) else {
                skip(format!(
                    "no float32 constant of shape {:?} in subgraph {s} of the float model lines \
                     up with it (by DEQUANTIZE, operator input, buffer or name)",
                    t.shape
                ));
                continue;
            };
            let ft = &float.subgraphs()[s].tensors[fi];
            let measure = |values: &[f32]| {
                let range = quant::scan_range_par(values);
                if range.non_finite > 0 {
                    return Err(range.non_finite);
                }
                let data = quantized.buffer_data(t.buffer);
                let unpacked;
                let codes: &[i8] = if scheme.bits == Bits::Eight {
                    bytemuck::cast_slice(data)
                } else {
                    unpacked = crate::encoding::unpack(scheme.bits, data, values.len());
                    &unpacked
                };
                let mut meter = Meter::new(&scheme, range.min, range.max, opts.histograms);
                meter.add(values, codes, None);
                Ok((range, meter.finish()))
            };
            let mut measured = with_f32(float.buffer_data(ft.buffer), measure);
            if let (Ok((_, original)), Some(rescale)) = (&measured, equalized.get(&ft.buffer)) {
                let other = measure(&rescale.values(float.buffer_data(ft.buffer)));
                if let Ok((_, m)) = &other {
                    if m.stats.noise < original.stats.noise {
                        measured = other;
                        compared_equalized += 1;
                    }
                }
            }
            let (range, measured) = match measured {
                Ok(m) => m,
                Err(n) => {
                    skip(format!(
                        "its float original (tensor {fi}) has {n} NaN or infinite values"
                    ));
                    continue;
                }
            };
            matched[s][fi] = true;
            let mut r = row(
                float,
                &fcons,
                (s, fi),
                SchemeSummary::new(&scheme),
                (range.min, range.max),
                measured,
                quantized.buffer_data(t.buffer).len() as u64,
                t.buffer,
            );
            r.quantized = Some(QuantizedTensor {
                subgraph: s,
                tensor: ti,
                name: t.name.clone(),
                buffer: t.buffer,
                matched_by: by,
            });
            rows.push(r);
        }
    }
    let mut skipped = Vec::new();
    for (s, f) in float.subgraphs().iter().enumerate() {
        for (ti, t) in f.tensors.iter().enumerate() {
            if t.dtype == DType::FLOAT32
                && !t.is_variable
                && is_constant(float, t)
                && !matched[s][ti]
            {
                skipped.push(SkippedRow {
                    subgraph: s,
                    tensor: ti,
                    name: t.name.clone(),
                    reason: "not_quantized".into(),
                    detail: "no quantized tensor of the other model matches it".into(),
                });
            }
        }
    }
    let mut report = Report::new(rows, skipped, unmatched);
    // `--format plan`: the plan the options make for the float model.
    report.plan = Some(crate::plan::plan(float, &opts.quant).to_file());
    // A real original reconstructs with an error far below the signal; 0 dB or less means
    // the operators lined up but the float model is not the one this model was made from.
    report.warnings = report
        .tensors
        .iter()
        .filter(|r| r.sqnr <= 0.0)
        .map(|r| {
            format!(
                "subgraph {} tensor {} ({}): SQNR {:.1} dB; the matched float tensor is probably \
                 not its original (is MODEL the model it was quantized from?)",
                r.subgraph, r.tensor, r.name, r.sqnr
            )
        })
        .collect();
    if compared_equalized > 0 {
        report.warnings.push(format!(
            "{compared_equalized} tensor{} measured against the float weights after cross-layer \
             equalization (what tflq quantizes by default; `tflq quantize --equalize-only` \
             writes that float model): their codes stand for those values, not the original ones",
            if compared_equalized == 1 {
                " was"
            } else {
                "s were"
            }
        ));
    }
    report
}
