//! Reading a model: verify once at the boundary, then describe it in our own types.
//!
//! [`Model::parse`] runs the flatbuffers verifier (structure), then checks meaning: every
//! index in range, every constant buffer inside the file and exactly as long as its tensor's
//! shape needs, no overlapping external buffers, no control-flow cycles. After that the rest
//! of the crate trusts the indices it finds here.

pub mod details;

use std::ops::Range;

use tflq_schema as fb;

use serde::Serialize;

use crate::error::ModelError;
use crate::ops::Op;

/// Element type of a tensor, named after the schema's `TensorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType(pub i8);

impl DType {
    /// 32-bit float.
    pub const FLOAT32: DType = DType(0);
    /// 16-bit IEEE float.
    pub const FLOAT16: DType = DType(1);
    /// 8-bit signed integer.
    pub const INT8: DType = DType(9);
    /// 4-bit signed integer, two per byte.
    pub const INT4: DType = DType(17);
    /// 2-bit signed integer, four per byte.
    pub const INT2: DType = DType(19);

    /// The schema's name for the type, e.g. `FLOAT32`.
    pub fn name(self) -> String {
        fb::TensorType(self.0)
            .variant_name()
            .map_or_else(|| format!("TYPE_{}", self.0), str::to_owned)
    }

    /// Bytes per element for fixed-size types; `None` for strings, resources, variants and
    /// sub-byte packed types, whose buffer size does not follow from the shape alone.
    pub fn size(self) -> Option<u64> {
        Some(match fb::TensorType(self.0) {
            fb::TensorType::FLOAT32 | fb::TensorType::INT32 | fb::TensorType::UINT32 => 4,
            fb::TensorType::FLOAT16 | fb::TensorType::INT16 | fb::TensorType::UINT16 => 2,
            fb::TensorType::BFLOAT16 => 2,
            fb::TensorType::UINT8 | fb::TensorType::INT8 | fb::TensorType::BOOL => 1,
            fb::TensorType::FLOAT8_E4M3FN | fb::TensorType::FLOAT8_E5M2 => 1,
            fb::TensorType::INT64 | fb::TensorType::UINT64 | fb::TensorType::FLOAT64 => 8,
            fb::TensorType::COMPLEX64 => 8,
            fb::TensorType::COMPLEX128 => 16,
            _ => return None,
        })
    }
}

impl DType {
    /// Bits per element of the packed sub-byte types (INT4, UINT4, INT2).
    pub fn packed_bits(self) -> Option<u64> {
        match fb::TensorType(self.0) {
            fb::TensorType::INT4 | fb::TensorType::UINT4 => Some(4),
            fb::TensorType::INT2 => Some(2),
            _ => None,
        }
    }

    /// Bytes that `n` elements take: `n * size`, or `ceil(n * bits / 8)` for packed types;
    /// `None` for types without a fixed size, or on overflow.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        match (self.size(), self.packed_bits()) {
            (Some(size), _) => n.checked_mul(size),
            (None, Some(bits)) => Some(n.checked_mul(bits)?.div_ceil(8)),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where a buffer's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferInfo {
    /// Byte range in the file; empty for the sentinel and for buffers without data.
    pub data: Range<usize>,
    /// The bytes live after the flatbuffer (`offset`/`size`) rather than inline.
    pub external: bool,
}

/// One tensor, as the quantizer needs to see it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name (may repeat across subgraphs).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape as stored.
    pub shape: Vec<i32>,
    /// Number of elements (checked product of the shape).
    pub elements: u64,
    /// Index into the model's buffers (0: no data).
    pub buffer: u32,
    /// Declared variable (state), not a constant.
    pub is_variable: bool,
    /// Stored in a sparse format.
    pub sparse: bool,
    /// Has quantization parameters (scale/zero point or details).
    pub quantized: bool,
    /// Data lives in an external file (`external_buffer` of schema 3d).
    pub external_file: bool,
}

/// One operator.
#[derive(Debug, Clone)]
pub struct OpInfo {
    /// Index into the model's operator codes.
    pub opcode: u32,
    /// The operator (from the larger of the two code fields).
    pub op: Op,
    /// Custom code for `CUSTOM` operators.
    pub custom: Option<String>,
    /// Input tensor indices (-1: optional input left out).
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
    /// A FULLY_CONNECTED or convolution whose options fuse an activation (RELU, ...).
    pub fused_activation: bool,
}

impl OpInfo {
    /// Human-readable name: the builtin name or the custom code.
    pub fn name(&self) -> String {
        match (&self.custom, self.op) {
            (Some(c), Op::Custom) => c.clone(),
            _ => self.op.name(),
        }
    }
}

/// One subgraph.
#[derive(Debug, Clone)]
pub struct SubgraphInfo {
    /// Subgraph name, possibly empty.
    pub name: String,
    /// Its tensors.
    pub tensors: Vec<TensorInfo>,
    /// Its operators in execution order.
    pub ops: Vec<OpInfo>,
    /// Input tensor indices.
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
}

/// A verified model: the flatbuffer view plus our description of it. Only [`Model::parse`]
/// makes one, so everything downstream can trust its indices.
pub struct Model<'a> {
    bytes: &'a [u8],
    root: fb::Model<'a>,
    buffers: Vec<BufferInfo>,
    subgraphs: Vec<SubgraphInfo>,
    opcodes: Vec<Op>,
}

impl std::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("len", &self.bytes.len())
            .field("buffers", &self.buffers.len())
            .field("subgraphs", &self.subgraphs.len())
            .finish()
    }
}

/// Smallest file that can hold a root offset and an identifier.
const MIN_LEN: usize = 8;

/// Limits that bound the verifier's work, and everything done after it, by the file size.
///
/// Offsets may point many times at one table or vector (a DAG instead of a tree), so a small
/// file can make a reader that follows every offset visit far more than its own size: 512
/// subgraph entries pointing at one subgraph of 512 tensor entries pointing at one tensor
/// is 2^18 tensors in 10 KB. The verifier counts every table it visits and every byte it
/// checks, shared or not, and our reading and the rewrite visit no more than it does, so
/// these two limits bound time and memory by a small multiple of the file size.
fn verifier_options(len: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 64,
        // Each distinct table holds at least its 4-byte vtable offset, so a file without
        // shared tables never needs more.
        max_tables: len / 4 + 64,
        // Real models check about their own size (1.0 to 1.4 times it for the fixtures, the
        // excess being vtables, which tables do share); three times leaves room.
        max_apparent_size: len.saturating_mul(3).saturating_add(1 << 20),
        ignore_missing_null_terminator: false,
    }
}

/// The verifier's error on one line; the limits above in words.
fn describe(e: &flatbuffers::InvalidFlatbuffer, len: usize) -> String {
    use flatbuffers::InvalidFlatbuffer as E;
    match e {
        E::TooManyTables => format!(
            "more tables than a {len}-byte file can hold: offsets share tables, which would \
             multiply the work of reading it"
        ),
        E::ApparentSizeTooLarge => format!(
            "its offsets reach far more than its {len} bytes: shared tables or vectors would \
             multiply the work of reading it"
        ),
        other => other
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Checks the identifier and runs the flatbuffers verifier.
pub fn verify(bytes: &[u8]) -> Result<fb::Model<'_>, ModelError> {
    let len = bytes.len();
    if len == 0 {
        return Err(ModelError::Empty);
    }
    if len < MIN_LEN {
        // The start of a model cut short (its identifier begun), or something else.
        let id = fb::MODEL_IDENTIFIER.as_bytes();
        return Err(if len > 4 && id.starts_with(&bytes[4..]) {
            ModelError::Truncated {
                len,
                needed: MIN_LEN,
            }
        } else {
            ModelError::TooShort { len }
        });
    }
    if !flatbuffers::buffer_has_identifier(bytes, fb::MODEL_IDENTIFIER, false) {
        let found = String::from_utf8_lossy(&bytes[4..8]).into_owned();
        return Err(ModelError::BadIdentifier { found });
    }
    let opts = verifier_options(bytes.len());
    fb::root_as_model_with_opts(&opts, bytes).map_err(|e| match e {
        // A range past the end: the file was cut short (a partial download or copy).
        flatbuffers::InvalidFlatbuffer::RangeOutOfBounds { ref range, .. } if range.end > len => {
            ModelError::Truncated {
                len,
                needed: range.end,
            }
        }
        e => ModelError::Corrupt {
            detail: describe(&e, len),
        },
    })
}

fn check_tensor_ref(
    place: impl FnOnce() -> String,
    subgraph: usize,
    index: i64,
    count: usize,
    allow_optional: bool,
) -> Result<(), ModelError> {
    let ok = (allow_optional && index == -1) || (index >= 0 && (index as u64) < count as u64);
    if ok {
        Ok(())
    } else {
        Err(ModelError::TensorIndex {
            place: place(),
            subgraph,
            index,
            count,
        })
    }
}

impl<'a> Model<'a> {
    /// Verifies `bytes` as a TFLite model and describes it.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>, ModelError> {
        let root = verify(bytes)?;
        if root.version() != 3 {
            return Err(ModelError::UnsupportedVersion {
                version: root.version(),
            });
        }
        check_offsets(&root)?;
        let (buffers, zero_bytes) = read_buffers(bytes, &root)?;
        let mut opcodes = Vec::new();
        for (index, c) in root.operator_codes().into_iter().flatten().enumerate() {
            // The runtime's rule: the larger of the two fields, which must name an operator.
            let code = c
                .builtin_code()
                .0
                .max(i32::from(c.deprecated_builtin_code()));
            let op = Op::try_from(fb::BuiltinOperator(code))
                .map_err(|_| ModelError::UnknownOperator { index, code })?;
            if op == Op::Custom && c.custom_code().is_none() {
                return Err(ModelError::CustomWithoutCode { index });
            }
            opcodes.push(op);
        }
        let custom_codes: Vec<Option<String>> = root
            .operator_codes()
            .map(|codes| {
                codes
                    .iter()
                    .map(|c| c.custom_code().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let fb_subgraphs = root.subgraphs().ok_or(ModelError::NoSubgraphs)?;
        if fb_subgraphs.is_empty() {
            return Err(ModelError::NoSubgraphs);
        }
        let mut subgraphs = Vec::with_capacity(fb_subgraphs.len());
        for (si, sg) in fb_subgraphs.iter().enumerate() {
            let model = Context {
                buffers: &buffers,
                zero_bytes: &zero_bytes,
                opcodes: &opcodes,
                custom_codes: &custom_codes,
                file_len: bytes.len(),
            };
            subgraphs.push(read_subgraph(si, &sg, &model)?);
        }
        check_metadata(&root, buffers.len())?;
        check_signatures(&root, &subgraphs)?;
        check_control_flow(&root, subgraphs.len())?;
        Ok(Model {
            bytes,
            root,
            buffers,
            subgraphs,
            opcodes,
        })
    }

    /// The constant data of a tensor whose buffer is `index` (empty when it has none).
    ///
    /// Buffer 0 is the schema's empty sentinel: the runtime gives a tensor with buffer 0 no
    /// data, whatever the buffer holds, and so does this. (The rewrite still copies buffer
    /// 0's bytes, which a metadata entry may name.)
    pub fn buffer_data(&self, index: u32) -> &'a [u8] {
        if index == 0 {
            return &[];
        }
        self.buffers
            .get(index as usize)
            .and_then(|b| self.bytes.get(b.data.clone()))
            .unwrap_or(&[])
    }

    /// Whether any buffer uses the `offset`/`size` layout.
    pub fn has_external_buffers(&self) -> bool {
        self.buffers.iter().any(|b| b.external)
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Buffers in index order.
    pub fn buffers(&self) -> &[BufferInfo] {
        &self.buffers
    }

    /// Subgraphs in index order.
    pub fn subgraphs(&self) -> &[SubgraphInfo] {
        &self.subgraphs
    }

    /// The tensor at `r`, which must come from this model.
    pub fn tensor(&self, r: TensorRef) -> &TensorInfo {
        &self.subgraphs[r.subgraph].tensors[r.tensor]
    }

    /// The operator of each operator code.
    pub fn opcodes(&self) -> &[Op] {
        &self.opcodes
    }

    /// The verified flatbuffer root, for the rewriter and the detail readers: generated
    /// types stay inside the crate.
    pub(crate) fn root(&self) -> &fb::Model<'a> {
        &self.root
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

/// Reads the buffer table. Also returns, per buffer, whether it holds constant data of zero
/// bytes: a `data` vector that is present but empty, or an `offset` above 1 with `size` 0.
/// The runtime reads both as constant data (and refuses a tensor that needs more), not as
/// "no data" like an absent vector.
fn read_buffers(
    bytes: &[u8],
    root: &fb::Model<'_>,
) -> Result<(Vec<BufferInfo>, Vec<bool>), ModelError> {
    let fb_buffers = root.buffers().ok_or(ModelError::NoBuffers)?;
    let zero_bytes: Vec<bool> = fb_buffers
        .iter()
        .map(|b| match b.data() {
            Some(d) => d.is_empty(),
            None => b.offset() > 1 && b.size() == 0,
        })
        .collect();
    let base = bytes.as_ptr() as usize;
    let mut buffers = Vec::with_capacity(fb_buffers.len());
    let mut external: Vec<(usize, usize, usize)> = Vec::new();
    for (i, b) in fb_buffers.iter().enumerate() {
        let inline = b.data().map(|d| d.bytes());
        // The converter writes offset 1 as a placeholder; only offsets above 1 point at data.
        // The runtime reads a present `data` vector even when it is empty and ignores the
        // offset then; a file with both is refused rather than read one way or the other.
        let has_offset = b.offset() > 1;
        let info = match (inline, has_offset) {
            (Some(_), true) => return Err(ModelError::AmbiguousBuffer { buffer: i }),
            (Some(d), false) if !d.is_empty() => {
                let start = d.as_ptr() as usize - base;
                BufferInfo {
                    data: start..start + d.len(),
                    external: false,
                }
            }
            (None, true) => {
                let out = || ModelError::BufferOutOfFile {
                    buffer: i,
                    offset: b.offset(),
                    size: b.size(),
                    file_len: bytes.len(),
                };
                let start = usize::try_from(b.offset()).map_err(|_| out())?;
                let len = usize::try_from(b.size()).map_err(|_| out())?;
                let end = start.checked_add(len).ok_or_else(out)?;
                if end > bytes.len() {
                    return Err(out());
                }
                if len > 0 {
                    external.push((start, end, i));
                }
                BufferInfo {
                    data: start..end,
                    external: true,
                }
            }
            (_, false) => BufferInfo {
                data: 0..0,
                external: false,
            },
        };
        buffers.push(info);
    }
    external.sort_unstable();
    for pair in external.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(ModelError::OverlappingBuffers {
                a: pair[0].2,
                b: pair[1].2,
            });
        }
    }
    Ok((buffers, zero_bytes))
}

/// What [`read_subgraph`] needs to know about the rest of the model.
struct Context<'m> {
    buffers: &'m [BufferInfo],
    zero_bytes: &'m [bool],
    opcodes: &'m [Op],
    custom_codes: &'m [Option<String>],
    file_len: usize,
}

fn read_subgraph(
    si: usize,
    sg: &fb::SubGraph<'_>,
    model: &Context<'_>,
) -> Result<SubgraphInfo, ModelError> {
    let buffers = model.buffers;
    let fb_tensors = sg.tensors().ok_or(ModelError::NoTensors { subgraph: si })?;
    let mut tensors = Vec::new();
    for (ti, t) in fb_tensors.iter().enumerate() {
        let name = t.name().unwrap_or_default().to_owned();
        let shape: Vec<i32> = t.shape().map(|s| s.iter().collect()).unwrap_or_default();
        let buffer = t.buffer();
        let Some(binfo) = buffers.get(buffer as usize) else {
            return Err(ModelError::BufferIndex {
                subgraph: si,
                tensor: ti,
                name,
                buffer,
                count: buffers.len(),
            });
        };
        // Buffer 0 is the sentinel: never constant data (see `Model::buffer_data`).
        let has_data = buffer != 0
            && (!binfo.data.is_empty()
                || model
                    .zero_bytes
                    .get(buffer as usize)
                    .copied()
                    .unwrap_or(false));
        let dtype = DType(t.type_().0);
        if fb::TensorType(dtype.0).variant_name().is_none() {
            return Err(ModelError::UnknownType {
                subgraph: si,
                tensor: ti,
                name,
                dtype: dtype.0,
            });
        }
        // The runtime sizes every tensor from its shape (negative dimensions included, as
        // huge unsigned numbers) and refuses it when the count or the byte size overflows;
        // unknown dimensions belong in shape_signature.
        if shape.iter().any(|&d| d < 0) {
            return Err(ModelError::BadShape {
                subgraph: si,
                tensor: ti,
                name,
                shape,
            });
        }
        let bytes = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| {
                let size = match dtype.bytes_for(0) {
                    Some(_) => dtype.bytes_for(n)?,
                    None => n,
                };
                Some((n, size))
            });
        let Some((elements, size_in_bytes)) = bytes else {
            return Err(ModelError::ShapeOverflow {
                subgraph: si,
                tensor: ti,
                name,
                shape,
            });
        };
        if t.is_variable() && has_data {
            return Err(ModelError::VariableWithData {
                subgraph: si,
                tensor: ti,
                name,
                buffer,
            });
        }
        check_quantization(si, ti, &name, &t, &shape)?;
        check_blockwise(si, ti, &name, &t, &shape, &fb_tensors)?;
        check_tensor_unions(si, ti, &t)?;
        let sparse = t.sparsity().is_some();
        // Strings and other types without a fixed element size are not checked; sparse data
        // is smaller than its dense shape.
        let got = binfo.data.len() as u64;
        let sized = dtype.bytes_for(0).is_some();
        if has_data && !sparse && sized && size_in_bytes != got {
            return Err(ModelError::BufferSize {
                subgraph: si,
                tensor: ti,
                name,
                buffer,
                shape,
                dtype: dtype.name(),
                expected: size_in_bytes,
                got,
            });
        }
        let quantized = t.quantization().is_some_and(|q| {
            q.scale().is_some_and(|s| !s.is_empty())
                || q.details_type() != fb::QuantizationDetails::NONE
        });
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            elements,
            buffer,
            is_variable: t.is_variable(),
            sparse,
            quantized,
            external_file: t.external_buffer() != 0,
        });
    }
    let count = tensors.len();
    let mut ops = Vec::new();
    for (oi, o) in sg.operators().into_iter().flatten().enumerate() {
        let idx = o.opcode_index();
        let Some(&op) = model.opcodes.get(idx as usize) else {
            return Err(ModelError::OpcodeIndex {
                subgraph: si,
                op: oi,
                index: idx,
                count: model.opcodes.len(),
            });
        };
        let inputs: Vec<i32> = o.inputs().map(|v| v.iter().collect()).unwrap_or_default();
        let outputs: Vec<i32> = o.outputs().map(|v| v.iter().collect()).unwrap_or_default();
        for &i in &inputs {
            check_tensor_ref(
                || format!("subgraph {si} operator {oi} input"),
                si,
                i64::from(i),
                count,
                true,
            )?;
        }
        for &i in &outputs {
            check_tensor_ref(
                || format!("subgraph {si} operator {oi} output"),
                si,
                i64::from(i),
                count,
                true,
            )?;
        }
        for i in o.intermediates().into_iter().flatten() {
            check_tensor_ref(
                || format!("subgraph {si} operator {oi} intermediate"),
                si,
                i64::from(i),
                count,
                true,
            )?;
        }
        if let Some(&tensor) = outputs.iter().find(|&&t| t >= 0 && inputs.contains(&t)) {
            return Err(ModelError::InputIsOutput {
                subgraph: si,
                op: oi,
                tensor,
            });
        }
        check_custom_options(si, oi, &o, model.file_len)?;
        let place = || format!("subgraph {si} operator {oi}");
        if o.builtin_options_type().variant_name().is_none() {
            return Err(unknown_variant(
                place(),
                "builtin options",
                o.builtin_options_type().0,
            ));
        }
        if o.builtin_options_2_type().variant_name().is_none() {
            return Err(unknown_variant(
                place(),
                "builtin options 2",
                o.builtin_options_2_type().0,
            ));
        }
        let custom = model.custom_codes.get(idx as usize).cloned().flatten();
        let none = fb::ActivationFunctionType::NONE;
        let fused_activation = o
            .builtin_options_as_fully_connected_options()
            .map(|x| x.fused_activation_function())
            .or_else(|| {
                o.builtin_options_as_conv_2_doptions()
                    .map(|x| x.fused_activation_function())
            })
            .or_else(|| {
                o.builtin_options_as_depthwise_conv_2_doptions()
                    .map(|x| x.fused_activation_function())
            })
            .is_some_and(|a| a != none);
        ops.push(OpInfo {
            opcode: idx,
            op,
            custom,
            inputs,
            outputs,
            fused_activation,
        });
    }
    let inputs: Vec<i32> = sg.inputs().map(|v| v.iter().collect()).unwrap_or_default();
    let outputs: Vec<i32> = sg.outputs().map(|v| v.iter().collect()).unwrap_or_default();
    for &i in &inputs {
        check_tensor_ref(
            || format!("subgraph {si} input"),
            si,
            i64::from(i),
            count,
            false,
        )?;
    }
    for &i in &outputs {
        check_tensor_ref(
            || format!("subgraph {si} output"),
            si,
            i64::from(i),
            count,
            false,
        )?;
    }
    Ok(SubgraphInfo {
        name: sg.name().unwrap_or_default().to_owned(),
        tensors,
        ops,
        inputs,
        outputs,
    })
}

/// The runtime's rules for quantization parameters: as many zero points as scales, a
/// quantized dimension inside the shape, and one scale or one per slice of that dimension.
fn check_quantization(
    subgraph: usize,
    tensor: usize,
    name: &str,
    t: &fb::Tensor<'_>,
    shape: &[i32],
) -> Result<(), ModelError> {
    let Some(q) = t.quantization() else {
        return Ok(());
    };
    let scales = q.scale().map_or(0, |s| s.len());
    if scales == 0 {
        return Ok(()); // Not quantized, whatever else the table holds.
    }
    let bad = |what: String| {
        Err(ModelError::BadQuantization {
            subgraph,
            tensor,
            name: name.to_owned(),
            what,
        })
    };
    let Some(zero_points) = q.zero_point().map(|z| z.len()) else {
        return bad(format!(
            "{} but no zero points",
            crate::text::count(scales, "scale", "scales")
        ));
    };
    if zero_points != scales {
        return bad(format!(
            "{} but {}",
            crate::text::count(scales, "scale", "scales"),
            crate::text::count(zero_points, "zero point", "zero points")
        ));
    }
    let dim = q.quantized_dimension();
    if dim < 0 || (!shape.is_empty() && dim as usize >= shape.len()) {
        return bad(format!(
            "quantized dimension {dim} outside the {} dimensions of the shape",
            shape.len()
        ));
    }
    if let Some(&size) = shape.get(dim as usize) {
        if scales != 1 && scales as u64 != size as u64 {
            return bad(format!(
                "{scales} scales: neither one (per tensor) nor {size} (per slice of dimension {dim})"
            ));
        }
    }
    Ok(())
}

/// Blockwise quantization parameters: the scale tensor exists in the subgraph, is FLOAT16 of
/// shape `[dims[..-1], last / block_size]`, and the block size divides the last axis.
fn check_blockwise(
    subgraph: usize,
    tensor: usize,
    name: &str,
    t: &fb::Tensor<'_>,
    shape: &[i32],
    all: &flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<fb::Tensor<'_>>>,
) -> Result<(), ModelError> {
    let Some(b) = t
        .quantization()
        .and_then(|q| q.details_as_blockwise_quantization())
    else {
        return Ok(());
    };
    let bad = |what: String| {
        Err(ModelError::BadQuantization {
            subgraph,
            tensor,
            name: name.to_owned(),
            what,
        })
    };
    let size = b.block_size();
    let Some(&last) = shape.last() else {
        return bad("blockwise quantization of a scalar".into());
    };
    if size <= 0 || last % size != 0 {
        return bad(format!(
            "block size {size} does not divide the last dimension ({last})"
        ));
    }
    let Some(scales) = usize::try_from(b.scales())
        .ok()
        .filter(|&i| i < all.len())
        .map(|i| all.get(i))
    else {
        return bad(format!(
            "block scale tensor {} is not a tensor of the subgraph",
            b.scales()
        ));
    };
    if scales.type_() != fb::TensorType::FLOAT16 {
        return bad(format!(
            "block scale tensor {} is {}, not FLOAT16",
            b.scales(),
            DType(scales.type_().0)
        ));
    }
    let mut want = shape.to_vec();
    if let Some(l) = want.last_mut() {
        *l /= size;
    }
    let got: Vec<i32> = scales
        .shape()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    if got != want {
        return bad(format!(
            "block scale tensor {} has shape {got:?}, not {want:?}",
            b.scales()
        ));
    }
    Ok(())
}

fn unknown_variant(place: String, what: &'static str, value: u8) -> ModelError {
    ModelError::UnknownVariant { place, what, value }
}

/// Unions whose type the schema does not know: the object API that the rewrite goes through
/// drops them, so a file with one would come out different from what went in (and a second
/// run would then change it again).
fn check_tensor_unions(si: usize, ti: usize, t: &fb::Tensor<'_>) -> Result<(), ModelError> {
    let place = || format!("subgraph {si} tensor {ti}");
    if let Some(q) = t.quantization() {
        if q.details_type().variant_name().is_none() {
            return Err(unknown_variant(
                place(),
                "quantization details",
                q.details_type().0,
            ));
        }
    }
    let dims = t.sparsity().and_then(|s| s.dim_metadata());
    for d in dims.into_iter().flatten() {
        for kind in [d.array_segments_type(), d.array_indices_type()] {
            if kind.variant_name().is_none() {
                return Err(unknown_variant(place(), "sparse index vector", kind.0));
            }
        }
    }
    Ok(())
}

/// Refuses offsets of zero in the tables the reader follows. A zero offset points at itself:
/// the runtime's (C++) verifier refuses it and no writer produces one, but this crate's
/// verifier reads an empty vector, string or table there, so a damaged file would be read as
/// a different, valid model instead of being refused.
fn check_offsets(root: &fb::Model<'_>) -> Result<(), ModelError> {
    use flatbuffers::{ForwardsUOffset, Table, VOffsetT, Vector};
    fn fields(
        t: &Table<'_>,
        which: &[VOffsetT],
        what: &dyn Fn() -> String,
    ) -> Result<(), ModelError> {
        for &f in which {
            let at = t.vtable().get(f);
            if at == 0 {
                continue;
            }
            let pos = t.loc() + usize::from(at);
            if t.buf().get(pos..pos + 4) == Some(&[0, 0, 0, 0][..]) {
                return Err(ModelError::Corrupt {
                    detail: format!("{}: an offset at position {pos} points at itself", what()),
                });
            }
        }
        Ok(())
    }
    fn elements<T>(
        v: Option<Vector<'_, ForwardsUOffset<T>>>,
        what: &dyn Fn() -> String,
    ) -> Result<(), ModelError> {
        let Some(v) = v else { return Ok(()) };
        if v.bytes().chunks_exact(4).any(|c| c == [0, 0, 0, 0]) {
            return Err(ModelError::Corrupt {
                detail: format!("{}: an element points at itself", what()),
            });
        }
        Ok(())
    }
    use fb::{Model as M, Operator as O, SubGraph as S, Tensor as T};
    let name = || "the model table".to_owned();
    fields(
        &root._tab,
        &[
            M::VT_OPERATOR_CODES,
            M::VT_SUBGRAPHS,
            M::VT_DESCRIPTION,
            M::VT_BUFFERS,
            M::VT_METADATA_BUFFER,
            M::VT_METADATA,
            M::VT_SIGNATURE_DEFS,
        ],
        &name,
    )?;
    elements(root.operator_codes(), &|| "operator codes".to_owned())?;
    for (i, c) in root.operator_codes().into_iter().flatten().enumerate() {
        fields(&c._tab, &[fb::OperatorCode::VT_CUSTOM_CODE], &|| {
            format!("operator code {i}")
        })?;
    }
    elements(root.buffers(), &|| "buffers".to_owned())?;
    for (i, b) in root.buffers().into_iter().flatten().enumerate() {
        fields(&b._tab, &[fb::Buffer::VT_DATA], &|| format!("buffer {i}"))?;
    }
    elements(root.metadata(), &|| "metadata".to_owned())?;
    for (i, m) in root.metadata().into_iter().flatten().enumerate() {
        fields(&m._tab, &[fb::Metadata::VT_NAME], &|| {
            format!("metadata {i}")
        })?;
    }
    elements(root.signature_defs(), &|| "signatures".to_owned())?;
    for (i, sig) in root.signature_defs().into_iter().flatten().enumerate() {
        use fb::SignatureDef as D;
        let what = || format!("signature {i}");
        fields(
            &sig._tab,
            &[D::VT_INPUTS, D::VT_OUTPUTS, D::VT_SIGNATURE_KEY],
            &what,
        )?;
        elements(sig.inputs(), &what)?;
        elements(sig.outputs(), &what)?;
        for m in sig
            .inputs()
            .into_iter()
            .flatten()
            .chain(sig.outputs().into_iter().flatten())
        {
            fields(&m._tab, &[fb::TensorMap::VT_NAME], &what)?;
        }
    }
    elements(root.subgraphs(), &|| "subgraphs".to_owned())?;
    for (si, sg) in root.subgraphs().into_iter().flatten().enumerate() {
        let what = || format!("subgraph {si}");
        fields(
            &sg._tab,
            &[
                S::VT_TENSORS,
                S::VT_INPUTS,
                S::VT_OUTPUTS,
                S::VT_OPERATORS,
                S::VT_NAME,
            ],
            &what,
        )?;
        elements(sg.tensors(), &what)?;
        elements(sg.operators(), &what)?;
        for (ti, t) in sg.tensors().into_iter().flatten().enumerate() {
            let what = || format!("subgraph {si} tensor {ti}");
            fields(
                &t._tab,
                &[
                    T::VT_SHAPE,
                    T::VT_NAME,
                    T::VT_QUANTIZATION,
                    T::VT_SPARSITY,
                    T::VT_SHAPE_SIGNATURE,
                    T::VT_VARIANT_TENSORS,
                ],
                &what,
            )?;
            if let Some(q) = t.quantization() {
                use fb::QuantizationParameters as Q;
                fields(
                    &q._tab,
                    &[
                        Q::VT_MIN,
                        Q::VT_MAX,
                        Q::VT_SCALE,
                        Q::VT_ZERO_POINT,
                        Q::VT_DETAILS,
                    ],
                    &what,
                )?;
            }
        }
        for (oi, o) in sg.operators().into_iter().flatten().enumerate() {
            fields(
                &o._tab,
                &[
                    O::VT_INPUTS,
                    O::VT_OUTPUTS,
                    O::VT_BUILTIN_OPTIONS,
                    O::VT_CUSTOM_OPTIONS,
                    O::VT_MUTATING_VARIABLE_INPUTS,
                    O::VT_INTERMEDIATES,
                    O::VT_BUILTIN_OPTIONS_2,
                ],
                &|| format!("subgraph {si} operator {oi}"),
            )?;
        }
    }
    Ok(())
}

/// Custom options stored after the flatbuffer (`large_custom_options_offset`/`size`) must lie
/// inside the file: the rewrite copies them back inline.
fn check_custom_options(
    subgraph: usize,
    op: usize,
    o: &fb::Operator<'_>,
    file_len: usize,
) -> Result<(), ModelError> {
    let (offset, size) = (
        o.large_custom_options_offset(),
        o.large_custom_options_size(),
    );
    if size == 0 {
        return Ok(());
    }
    match offset.checked_add(size) {
        Some(end) if end <= file_len as u64 => Ok(()),
        _ => Err(ModelError::CustomOptionsOutOfFile {
            subgraph,
            op,
            offset,
            size,
            file_len,
        }),
    }
}

/// Metadata entries name buffers by index; the rewrite keeps them, so they must exist.
fn check_metadata(root: &fb::Model<'_>, count: usize) -> Result<(), ModelError> {
    for (k, m) in root.metadata().into_iter().flatten().enumerate() {
        if m.buffer() as usize >= count {
            return Err(ModelError::MetadataBuffer {
                place: format!("metadata {k} ({:?})", m.name().unwrap_or_default()),
                buffer: i64::from(m.buffer()),
                count,
            });
        }
    }
    for (k, b) in root.metadata_buffer().into_iter().flatten().enumerate() {
        if b < 0 || b as usize >= count {
            return Err(ModelError::MetadataBuffer {
                place: format!("metadata_buffer entry {k}"),
                buffer: i64::from(b),
                count,
            });
        }
    }
    Ok(())
}

fn check_signatures(root: &fb::Model<'_>, subgraphs: &[SubgraphInfo]) -> Result<(), ModelError> {
    for (k, sig) in root.signature_defs().into_iter().flatten().enumerate() {
        if sig.signature_key().is_none() {
            return Err(ModelError::SignatureKey { signature: k });
        }
        let si = sig.subgraph_index() as usize;
        let Some(sg) = subgraphs.get(si) else {
            return Err(ModelError::SubgraphIndex {
                place: format!("signature {k}"),
                index: i64::from(sig.subgraph_index()),
                count: subgraphs.len(),
            });
        };
        let maps = sig
            .inputs()
            .into_iter()
            .flatten()
            .chain(sig.outputs().into_iter().flatten());
        for m in maps {
            check_tensor_ref(
                || {
                    format!(
                        "signature {k} ({:?})",
                        sig.signature_key().unwrap_or_default()
                    )
                },
                si,
                i64::from(m.tensor_index()),
                sg.tensors.len(),
                false,
            )?;
        }
    }
    Ok(())
}

/// Subgraphs each operator of subgraph `sg` calls (WHILE, IF, CALL_ONCE, CALL, composites).
fn callees(op: &fb::Operator<'_>) -> Vec<i64> {
    let mut out = Vec::new();
    if let Some(w) = op.builtin_options_as_while_options() {
        out.extend([
            i64::from(w.cond_subgraph_index()),
            i64::from(w.body_subgraph_index()),
        ]);
    }
    if let Some(o) = op.builtin_options_as_if_options() {
        out.extend([
            i64::from(o.then_subgraph_index()),
            i64::from(o.else_subgraph_index()),
        ]);
    }
    if let Some(o) = op.builtin_options_as_call_once_options() {
        out.push(i64::from(o.init_subgraph_index()));
    }
    if let Some(o) = op.builtin_options_as_call_options() {
        out.push(i64::from(o.subgraph()));
    }
    if let Some(o) = op.builtin_options_2_as_stable_hlocomposite_options() {
        out.push(i64::from(o.decomposition_subgraph_index()));
    }
    out
}

/// Rejects control-flow references out of range and cycles among subgraphs, which would make
/// the runtime (and any tool that follows them) recurse without end.
fn check_control_flow(root: &fb::Model<'_>, count: usize) -> Result<(), ModelError> {
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (si, sg) in root.subgraphs().into_iter().flatten().enumerate() {
        for (oi, op) in sg.operators().into_iter().flatten().enumerate() {
            for callee in callees(&op) {
                if callee < 0 || callee as u64 >= count as u64 {
                    return Err(ModelError::SubgraphIndex {
                        place: format!("subgraph {si} operator {oi}"),
                        index: callee,
                        count,
                    });
                }
                edges[si].push(callee as usize);
            }
        }
    }
    // Iterative depth-first search with colours; no recursion, so no stack overflow.
    let mut colour = vec![0u8; count];
    let mut parent = vec![usize::MAX; count];
    for start in 0..count {
        if colour[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = edges[node].get(*next) {
                *next += 1;
                match colour[child] {
                    0 => {
                        colour[child] = 1;
                        parent[child] = node;
                        stack.push((child, 0));
                    }
                    1 => {
                        let mut path = vec![child];
                        let mut n = node;
                        while n != child && n != usize::MAX {
                            path.push(n);
                            n = parent[n];
                        }
                        path.push(child);
                        path.reverse();
                        let path = path
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(" -> ");
                        return Err(ModelError::SubgraphCycle { path });
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLP: &[u8] = include_bytes!("../fixtures/mlp.tflite");
    const DEPRECATED: &[u8] = include_bytes!("../fixtures/deprecated_opcodes.tflite");
    const EXTERNAL: &[u8] = include_bytes!("../fixtures/external_buffers.tflite");

    #[test]
    fn reads_operators_tensors_and_buffers_of_a_model() {
        let m = Model::parse(MLP).unwrap();
        // fixtures/manifest.json: FULLY_CONNECTED x3 and SOFTMAX in one subgraph.
        let ops: Vec<String> = m.subgraphs()[0].ops.iter().map(|o| o.name()).collect();
        assert_eq!(
            ops,
            [
                "FULLY_CONNECTED",
                "FULLY_CONNECTED",
                "FULLY_CONNECTED",
                "SOFTMAX"
            ]
        );
        assert_eq!(m.opcodes()[0], Op::FullyConnected);
        assert_eq!(m.bytes().len(), MLP.len());
        // Buffer 0 is the sentinel; each tensor's data is exactly its shape times 4 bytes.
        assert!(m.buffer_data(0).is_empty());
        for t in &m.subgraphs()[0].tensors {
            let data = m.buffer_data(t.buffer);
            if !data.is_empty() && t.dtype == DType::FLOAT32 {
                let n: i64 = t.shape.iter().map(|&d| i64::from(d)).product();
                assert_eq!(data.len() as i64, 4 * n, "{}", t.name);
                assert_eq!(t.elements as i64, n);
            }
        }
        assert!(!m.has_external_buffers());
    }

    #[test]
    fn old_opcode_fields_and_external_buffers_read_as_the_same_model() {
        let (a, b, c) = (
            Model::parse(MLP).unwrap(),
            Model::parse(DEPRECATED).unwrap(),
            Model::parse(EXTERNAL).unwrap(),
        );
        assert_eq!(a.opcodes(), b.opcodes());
        assert!(c.has_external_buffers());
        for (x, y) in a.subgraphs()[0]
            .tensors
            .iter()
            .zip(&c.subgraphs()[0].tensors)
        {
            assert_eq!(x.name, y.name);
            assert_eq!(
                a.buffer_data(x.buffer),
                c.buffer_data(y.buffer),
                "{}",
                x.name
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_model() {
        assert!(Model::parse(b"").is_err());
        assert!(Model::parse(b"hello, this is a text file, not a model").is_err());
        // Cut in half: the tables point past the end.
        assert!(Model::parse(&MLP[..MLP.len() / 2]).is_err());
        // Another identifier.
        let mut other = MLP.to_vec();
        other[4..8].copy_from_slice(b"XXXX");
        assert!(Model::parse(&other).is_err());
    }
}
