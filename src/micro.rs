//! What TensorFlow Lite Micro would refuse or compute wrongly in a model, whoever wrote it.
//!
//! The rules, measured with TFLM's Python interpreter (PyPI `tflite-micro`
//! 0.dev20261023182759; tests/oracle/test_micro.py checks them):
//! - DEQUANTIZE takes INT8, INT16 and UINT8 only: FLOAT16, INT4 and other inputs are refused
//!   when the tensors are allocated;
//! - DEQUANTIZE applies one scale and zero point to the whole tensor: a per-channel input
//!   loads and computes wrong values, silently;
//! - hybrid kernels (float activations, int8/int4 weights read directly) are refused
//!   (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D) or load and compute wrong values
//!   (UNIDIRECTIONAL_SEQUENCE_LSTM);
//! - buffers stored after the flatbuffer (`offset`/`size`) are read as garbage.

use std::fmt;

use serde::Serialize;

use crate::model::details::{self, Quantization};
use crate::model::{DType, Model};
use crate::ops::Op;

/// What TFLM does with the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The model does not load (allocation fails).
    Refused,
    /// The model loads and computes wrong values, silently.
    Wrong,
}

/// One thing TFLM would refuse or compute wrongly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MicroIssue {
    /// Subgraph index.
    pub subgraph: usize,
    /// Operator index in the subgraph (`null` for a buffer problem).
    pub op: Option<usize>,
    /// The operator's name (`null` for a buffer problem).
    pub op_name: Option<String>,
    /// The tensor involved.
    pub tensor: usize,
    /// Its name.
    pub tensor_name: String,
    /// Refused at allocation, or silently wrong.
    pub severity: Severity,
    /// What is wrong, in words.
    pub detail: String,
}

impl fmt::Display for MicroIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.severity {
            Severity::Refused => "refused",
            Severity::Wrong => "WRONG",
        };
        match (&self.op, &self.op_name) {
            (Some(op), Some(name)) => {
                write!(f, "{what}: subgraph {} op {op} {name}", self.subgraph)?
            }
            _ => write!(f, "{what}: subgraph {}", self.subgraph)?,
        }
        write!(
            f,
            ", tensor {} {:?}: {}",
            self.tensor, self.tensor_name, self.detail
        )
    }
}

/// Whether TFLM's DEQUANTIZE takes this input type.
fn dequantize_takes(dtype: DType) -> bool {
    matches!(
        tflq_schema::TensorType(dtype.0),
        tflq_schema::TensorType::INT8
            | tflq_schema::TensorType::INT16
            | tflq_schema::TensorType::UINT8
    )
}

/// Everything in `model` that TFLM would refuse or compute wrongly, in (subgraph, operator)
/// order; empty when TFLM runs it as LiteRT does (as far as these rules go).
pub fn check(model: &Model<'_>) -> Vec<MicroIssue> {
    let d = details::details(model);
    let mut out = Vec::new();
    for (si, sg) in model.subgraphs().iter().enumerate() {
        let constant = |t: usize| {
            sg.tensors
                .get(t)
                .is_some_and(|t| !model.buffer_data(t.buffer).is_empty())
        };
        let issue =
            |oi: usize, op: &crate::model::OpInfo, t: usize, severity, detail: String| MicroIssue {
                subgraph: si,
                op: Some(oi),
                op_name: Some(op.name()),
                tensor: t,
                tensor_name: sg.tensors[t].name.clone(),
                severity,
                detail,
            };
        for (oi, o) in sg.ops.iter().enumerate() {
            let inputs: Vec<usize> = o
                .inputs
                .iter()
                .filter_map(|&t| usize::try_from(t).ok())
                .filter(|&t| t < sg.tensors.len())
                .collect();
            if o.op == Op::Dequantize {
                let Some(&t) = inputs.first() else { continue };
                let ty = sg.tensors[t].dtype;
                if !dequantize_takes(ty) {
                    out.push(issue(
                        oi,
                        o,
                        t,
                        Severity::Refused,
                        format!("DEQUANTIZE input is {ty}; TFLM takes INT8, INT16 and UINT8 only"),
                    ));
                } else if d.quantization(si, t).is_some_and(Quantization::per_channel) {
                    let n = d.quantization(si, t).map_or(0, |q| q.scale.len());
                    out.push(issue(
                        oi,
                        o,
                        t,
                        Severity::Wrong,
                        format!(
                            "per-channel DEQUANTIZE input ({n} scales); TFLM applies one scale to the whole tensor"
                        ),
                    ));
                }
                continue;
            }
            let float_activation = inputs
                .iter()
                .any(|&t| !constant(t) && sg.tensors[t].dtype == DType::FLOAT32);
            if !float_activation {
                continue;
            }
            for &t in &inputs {
                let x = &sg.tensors[t];
                if constant(t)
                    && x.quantized
                    && x.dtype != DType::FLOAT32
                    && x.dtype != DType::FLOAT16
                {
                    // Measured: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D refuse them at
                    // prepare; UNIDIRECTIONAL_SEQUENCE_LSTM loads and computes wrong values.
                    let (severity, what) = match o.op {
                        Op::FullyConnected | Op::Conv2d | Op::DepthwiseConv2d => {
                            (Severity::Refused, "TFLM refuses hybrid kernels")
                        }
                        _ => (
                            Severity::Wrong,
                            "TFLM has no hybrid kernels: it may load the model and compute wrong values",
                        ),
                    };
                    out.push(issue(
                        oi,
                        o,
                        t,
                        severity,
                        format!(
                            "hybrid op: float activations with {} weights read directly; {what}",
                            x.dtype
                        ),
                    ));
                }
            }
        }
        for (ti, t) in sg.tensors.iter().enumerate() {
            if model
                .buffers()
                .get(t.buffer as usize)
                .is_some_and(|b| b.external && !b.data.is_empty())
            {
                out.push(MicroIssue {
                    subgraph: si,
                    op: None,
                    op_name: None,
                    tensor: ti,
                    tensor_name: t.name.clone(),
                    severity: Severity::Wrong,
                    detail:
                        "data stored after the flatbuffer (offset/size); TFLM reads it as garbage"
                            .to_owned(),
                });
            }
        }
    }
    out
}

/// Bytes of TFLM's arena that its greedy memory planner gives the tensors of subgraph 0 (the
/// "head" that `print_allocations` reports; TFLM adds a few KB of persistent structures),
/// computed the way TFLM plans: every non-constant tensor lives from the operator that
/// writes it (subgraph inputs: from the start) to its last reader (subgraph outputs: to the
/// end), sizes rounded up to 16 bytes; largest first, each at the lowest offset that does not
/// overlap a placed tensor alive at the same time.
///
/// `restored`: constant tensors of subgraph 0 that a DEQUANTIZE placed right before their
/// first reader will restore (what tflq writes), counted as arena tensors from there on.
/// `None` for models with several subgraphs (control flow: TFLM plans those otherwise),
/// variable tensors (recurrent ops, whose kernels also ask for scratch buffers: measured 768
/// bytes more on lstm.tflite) or tensors whose size does not follow from their shape.
pub fn planned_arena(model: &Model<'_>, restored: &[usize]) -> Option<u64> {
    let [sg] = model.subgraphs() else {
        return None;
    };
    if sg.tensors.iter().any(|t| t.is_variable) {
        return None;
    }
    // Times: operator i runs at 2i + 1; a DEQUANTIZE placed before operator r runs at 2r.
    let n = sg.ops.len();
    let end = 2 * n + 1;
    let mut life: Vec<Option<(usize, usize)>> = vec![None; sg.tensors.len()];
    let is_restored = |t: usize| restored.contains(&t);
    let constant =
        |t: usize| !model.buffer_data(sg.tensors[t].buffer).is_empty() && !is_restored(t);
    let index = |t: i32| usize::try_from(t).ok().filter(|&t| t < sg.tensors.len());
    for &t in &sg.inputs {
        if let Some(t) = index(t) {
            life[t] = Some((0, 0));
        }
    }
    for (i, o) in sg.ops.iter().enumerate() {
        let now = 2 * i + 1;
        for t in o.inputs.iter().filter_map(|&t| index(t)) {
            if constant(t) {
                continue;
            }
            match &mut life[t] {
                Some((_, last)) => *last = (*last).max(now),
                None if is_restored(t) => life[t] = Some((now - 1, now)),
                None => {}
            }
        }
        for t in o.outputs.iter().filter_map(|&t| index(t)) {
            life[t].get_or_insert((now, now));
        }
    }
    for &t in &sg.outputs {
        if let Some(t) = index(t) {
            let l = life[t].get_or_insert((end - 1, end));
            l.1 = end;
        }
    }
    let mut tensors = Vec::new();
    for (t, l) in life.iter().enumerate() {
        let Some((first, last)) = *l else { continue };
        let x = &sg.tensors[t];
        if x.shape.iter().any(|&d| d < 0) {
            return None;
        }
        let bytes = x.dtype.size()?.checked_mul(x.elements)?.div_ceil(16) * 16;
        tensors.push((bytes, first, last));
    }
    // Largest first; ties in tensor order (a stable sort), as TFLM does.
    tensors.sort_by_key(|&(bytes, _, _)| std::cmp::Reverse(bytes));
    let mut placed: Vec<(u64, u64, usize, usize)> = Vec::new();
    let mut top = 0;
    for (bytes, first, last) in tensors {
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|p| !(p.3 < first || p.2 > last))
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (lo, hi) in busy {
            if offset + bytes <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        placed.push((offset, bytes, first, last));
        top = top.max(offset + bytes);
    }
    Some(top)
}
