//! What a model holds: layout, metadata, signatures, operators and weights, on one screen.
//!
//! [`inspect`] describes a verified model as plain serialisable data; its `Display` is the
//! human view. It reads float, int8, float16, sparse and externally stored models alike:
//! nothing here depends on the tensor types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::model::Model;
use crate::model::details::{self, Metadata, Quantization, Signature};
use crate::ops::Op;
use crate::text::{Align, Column, Cut, Table, human};

/// Where a model's buffer data lives.
#[derive(Debug, Clone, Serialize)]
pub struct BufferLayout {
    /// Number of buffers (the empty buffer 0 included).
    pub buffers: usize,
    /// Buffers with data inside the flatbuffer.
    pub inline: usize,
    /// Bytes of those.
    pub inline_bytes: u64,
    /// Buffers with data after the flatbuffer (`offset`/`size`).
    pub external: usize,
    /// Bytes of those.
    pub external_bytes: u64,
}

/// A signature tensor with its subgraph tensor's type and shape.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureIo {
    /// The signature's key for it.
    pub name: String,
    /// Tensor index in the subgraph.
    pub tensor: u32,
    /// The tensor's name in the subgraph.
    pub tensor_name: String,
    /// Element type.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<i32>,
}

/// A signature with typed inputs and outputs.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureInfo {
    /// Signature key.
    pub key: String,
    /// Subgraph index.
    pub subgraph: usize,
    /// Inputs.
    pub inputs: Vec<SignatureIo>,
    /// Outputs.
    pub outputs: Vec<SignatureIo>,
}

/// One subgraph in brief.
#[derive(Debug, Clone, Serialize)]
pub struct SubgraphSummary {
    /// Index.
    pub index: usize,
    /// Name (may be empty).
    pub name: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of operators.
    pub operators: usize,
    /// Operators by name, with counts.
    pub ops: BTreeMap<String, usize>,
    /// Input tensor indices.
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
}

/// Quantization of a constant tensor, summarised.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuantSummary {
    /// No quantization parameters.
    None,
    /// One scale and zero point.
    PerTensor {
        /// Scale.
        scale: f32,
        /// Zero point (0 when absent).
        zero_point: i64,
    },
    /// One pair per channel.
    PerChannel {
        /// Channel axis.
        axis: i32,
        /// Number of channels.
        channels: usize,
        /// Smallest scale.
        scale_min: f32,
        /// Largest scale.
        scale_max: f32,
        /// Smallest zero point.
        zero_point_min: i64,
        /// Largest zero point.
        zero_point_max: i64,
    },
    /// Only a `details` member (e.g. custom quantization).
    Other {
        /// The details type.
        details: String,
    },
}

impl QuantSummary {
    fn new(q: Option<&Quantization>) -> QuantSummary {
        let Some(q) = q else {
            return QuantSummary::None;
        };
        match q.scale.len() {
            0 => QuantSummary::Other {
                details: q.details.clone().unwrap_or_default(),
            },
            1 => QuantSummary::PerTensor {
                scale: q.scale[0],
                zero_point: q.zero_point.first().copied().unwrap_or(0),
            },
            n => QuantSummary::PerChannel {
                axis: q.axis,
                channels: n,
                scale_min: q.scale.iter().copied().fold(f32::INFINITY, f32::min),
                scale_max: q.scale.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                zero_point_min: q.zero_point.iter().copied().min().unwrap_or(0),
                zero_point_max: q.zero_point.iter().copied().max().unwrap_or(0),
            },
        }
    }
}

impl fmt::Display for QuantSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantSummary::None => f.write_str("none"),
            QuantSummary::PerTensor { scale, zero_point } => {
                write!(f, "per-tensor scale {scale:.3e} zp {zero_point}")
            }
            QuantSummary::PerChannel {
                axis,
                channels,
                scale_min,
                scale_max,
                zero_point_min,
                zero_point_max,
            } => {
                write!(
                    f,
                    "per-channel axis {axis} x{channels} scale {scale_min:.2e}..{scale_max:.2e} zp "
                )?;
                if zero_point_min == zero_point_max {
                    write!(f, "{zero_point_min}")
                } else {
                    write!(f, "{zero_point_min}..{zero_point_max}")
                }
            }
            QuantSummary::Other { details } => write!(f, "{details}"),
        }
    }
}

/// One constant tensor.
#[derive(Debug, Clone, Serialize)]
pub struct ConstantTensor {
    /// Subgraph index.
    pub subgraph: usize,
    /// Tensor index.
    pub tensor: usize,
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<i32>,
    /// Bytes of its buffer.
    pub bytes: u64,
    /// Buffer index.
    pub buffer: u32,
    /// Stored after the flatbuffer.
    pub external: bool,
    /// Stored sparse.
    pub sparse: bool,
    /// Quantization.
    pub quantization: QuantSummary,
    /// Operators that read it (`NAME@op:input`; through DEQUANTIZE: `DEQUANTIZE>NAME@op:input`).
    pub consumers: Vec<String>,
}

/// Everything `tflq inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// File size in bytes.
    pub file_bytes: u64,
    /// Schema version.
    pub version: u32,
    /// Description, if any.
    pub description: Option<String>,
    /// Buffer layout.
    pub layout: BufferLayout,
    /// Metadata entries.
    pub metadata: Vec<Metadata>,
    /// `min_runtime_version` metadata, when present.
    pub min_runtime_version: Option<String>,
    /// Signatures.
    pub signatures: Vec<SignatureInfo>,
    /// Subgraphs.
    pub subgraphs: Vec<SubgraphSummary>,
    /// Constant bytes by element type (shared buffers counted once).
    pub weight_bytes_by_type: BTreeMap<String, u64>,
    /// Constant tensors, in (subgraph, tensor) order.
    pub constants: Vec<ConstantTensor>,
}

/// Describes `model`.
pub fn inspect(model: &Model<'_>) -> Inspection {
    let d = details::details(model);
    let mut layout = BufferLayout {
        buffers: model.buffers().len(),
        inline: 0,
        inline_bytes: 0,
        external: 0,
        external_bytes: 0,
    };
    for b in model.buffers() {
        if b.data.is_empty() {
            continue;
        }
        if b.external {
            layout.external += 1;
            layout.external_bytes += b.data.len() as u64;
        } else {
            layout.inline += 1;
            layout.inline_bytes += b.data.len() as u64;
        }
    }
    let signatures = d
        .signatures
        .iter()
        .map(|s: &Signature| {
            let io = |list: &[details::SignatureTensor]| {
                list.iter()
                    .map(|m| {
                        let t = model
                            .subgraphs()
                            .get(s.subgraph)
                            .and_then(|sg| sg.tensors.get(m.tensor as usize));
                        SignatureIo {
                            name: m.name.clone(),
                            tensor: m.tensor,
                            tensor_name: t.map(|t| t.name.clone()).unwrap_or_default(),
                            dtype: t.map(|t| t.dtype.name()).unwrap_or_default(),
                            shape: t.map(|t| t.shape.clone()).unwrap_or_default(),
                        }
                    })
                    .collect()
            };
            SignatureInfo {
                key: s.key.clone(),
                subgraph: s.subgraph,
                inputs: io(&s.inputs),
                outputs: io(&s.outputs),
            }
        })
        .collect();
    let mut subgraphs = Vec::new();
    let mut constants = Vec::new();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut counted = vec![false; model.buffers().len()];
    for (si, sg) in model.subgraphs().iter().enumerate() {
        let mut ops = BTreeMap::new();
        let mut readers: Vec<Vec<String>> = vec![Vec::new(); sg.tensors.len()];
        for (oi, o) in sg.ops.iter().enumerate() {
            *ops.entry(o.name()).or_insert(0) += 1;
            for (slot, &t) in o.inputs.iter().enumerate() {
                if let Some(list) = usize::try_from(t).ok().and_then(|t| readers.get_mut(t)) {
                    list.push(format!("{}@{oi}:{slot}", o.name()));
                }
            }
        }
        // Readers of a DEQUANTIZE's output count as readers of its input, marked as such.
        for (oi, o) in sg.ops.iter().enumerate() {
            if o.op != Op::Dequantize {
                continue;
            }
            let (Some(&i), Some(&out)) = (o.inputs.first(), o.outputs.first()) else {
                continue;
            };
            let (Ok(i), Ok(out)) = (usize::try_from(i), usize::try_from(out)) else {
                continue;
            };
            let behind: Vec<String> = readers
                .get(out)
                .into_iter()
                .flatten()
                .map(|r| format!("DEQUANTIZE>{r}"))
                .collect();
            if let Some(list) = readers.get_mut(i) {
                list.retain(|r| r != &format!("DEQUANTIZE@{oi}:0"));
                list.extend(behind);
            }
        }
        for (ti, t) in sg.tensors.iter().enumerate() {
            let data = model.buffer_data(t.buffer);
            if data.is_empty() {
                continue;
            }
            if let Some(c) = counted.get_mut(t.buffer as usize) {
                if !*c {
                    *c = true;
                    *by_type.entry(t.dtype.name()).or_insert(0) += data.len() as u64;
                }
            }
            constants.push(ConstantTensor {
                subgraph: si,
                tensor: ti,
                name: t.name.clone(),
                dtype: t.dtype.name(),
                shape: t.shape.clone(),
                bytes: data.len() as u64,
                buffer: t.buffer,
                external: model
                    .buffers()
                    .get(t.buffer as usize)
                    .is_some_and(|b| b.external),
                sparse: t.sparse,
                quantization: QuantSummary::new(d.quantization(si, ti)),
                consumers: std::mem::take(&mut readers[ti]),
            });
        }
        subgraphs.push(SubgraphSummary {
            index: si,
            name: sg.name.clone(),
            tensors: sg.tensors.len(),
            operators: sg.ops.len(),
            ops,
            inputs: sg.inputs.clone(),
            outputs: sg.outputs.clone(),
        });
    }
    let min_runtime_version = d
        .metadata
        .iter()
        .find(|m| m.name == "min_runtime_version")
        .and_then(|m| m.text.clone());
    Inspection {
        file_bytes: model.bytes().len() as u64,
        version: d.version,
        description: d.description,
        layout,
        metadata: d.metadata,
        min_runtime_version,
        signatures,
        subgraphs,
        weight_bytes_by_type: by_type,
        constants,
    }
}

fn shape(s: &[i32]) -> String {
    let dims: Vec<String> = s.iter().map(i32::to_string).collect();
    format!("[{}]", dims.join(","))
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "file:        {} ({}), schema version {}",
            human(self.file_bytes),
            crate::text::count(self.file_bytes as usize, "byte", "bytes"),
            self.version
        )?;
        let l = &self.layout;
        write!(
            f,
            "buffers:     {} ({} inline, {}",
            l.buffers,
            l.inline,
            human(l.inline_bytes)
        )?;
        if l.external > 0 {
            write!(
                f,
                "; {} after the flatbuffer (offset/size), {}",
                l.external,
                human(l.external_bytes)
            )?;
        }
        writeln!(f, ")")?;
        if let Some(d) = &self.description {
            writeln!(f, "description: {d}")?;
        }
        if let Some(v) = &self.min_runtime_version {
            writeln!(f, "min runtime: {v}")?;
        }
        if !self.metadata.is_empty() {
            writeln!(f, "metadata:")?;
            for m in &self.metadata {
                write!(
                    f,
                    "  {} (buffer {}, {})",
                    m.name,
                    m.buffer,
                    crate::text::count(m.bytes as usize, "byte", "bytes")
                )?;
                match &m.text {
                    Some(t) => writeln!(f, ": {t:?}")?,
                    None => writeln!(f)?,
                }
            }
        }
        if !self.signatures.is_empty() {
            writeln!(f, "signatures:")?;
            for s in &self.signatures {
                writeln!(f, "  {} (subgraph {})", s.key, s.subgraph)?;
                for (dir, list) in [("in ", &s.inputs), ("out", &s.outputs)] {
                    for io in list {
                        writeln!(
                            f,
                            "    {dir} {}: {} {} (tensor {} {})",
                            io.name,
                            io.dtype,
                            shape(&io.shape),
                            io.tensor,
                            io.tensor_name
                        )?;
                    }
                }
            }
        }
        writeln!(f, "subgraphs:")?;
        for s in &self.subgraphs {
            let name = if s.name.is_empty() {
                String::new()
            } else {
                format!(" {:?}", s.name)
            };
            writeln!(
                f,
                "  {}{name}: {}, {}, inputs {:?}, outputs {:?}",
                s.index,
                crate::text::count(s.tensors, "tensor", "tensors"),
                crate::text::count(s.operators, "operator", "operators"),
                s.inputs,
                s.outputs
            )?;
            let ops: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            if !ops.is_empty() {
                writeln!(f, "    {}", ops.join(", "))?;
            }
        }
        let by_type: Vec<String> = self
            .weight_bytes_by_type
            .iter()
            .map(|(k, v)| format!("{k} {}", human(*v)))
            .collect();
        writeln!(f, "weights:     {}", by_type.join(", "))?;
        if !self.constants.is_empty() {
            let rows: Vec<[String; 7]> = self
                .constants
                .iter()
                .map(|c| {
                    let mut ty = c.dtype.clone();
                    if c.sparse {
                        ty.push_str(" sparse");
                    }
                    let mut readers: Vec<String> = Vec::new();
                    for r in &c.consumers {
                        let n = r.split('@').next().unwrap_or(r).to_owned();
                        if !readers.contains(&n) {
                            readers.push(n);
                        }
                    }
                    [
                        format!("{}:{}", c.subgraph, c.tensor),
                        c.name.clone(),
                        ty,
                        shape(&c.shape),
                        c.bytes.to_string(),
                        c.quantization.to_string(),
                        readers.join(","),
                    ]
                })
                .collect();
            // Long names would push every other column off the screen.
            let col = |head: &str, align| Column::new(head, align);
            let mut table = Table::new(vec![
                col("sg:idx", Align::Left),
                col("name", Align::Left).max(48, Cut::End),
                col("type", Align::Left),
                col("shape", Align::Left),
                col("bytes", Align::Right),
                col("quantization", Align::Left),
                col("read by", Align::Left),
            ])
            .trim_end();
            for r in rows {
                table.row(r.into());
            }
            writeln!(f, "constants:   {}", self.constants.len())?;
            for line in table.lines(true) {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}
