//! Reading a model: verify once at the boundary, then describe it in our own types.
//!
//! [`Model::parse`] runs the flatbuffers verifier (structure), then checks meaning: every
//! index in range, every constant buffer inside the file and exactly as long as its tensor's
//! shape needs, no overlapping external buffers, no control-flow cycles. After that the rest
//! of the crate trusts the indices it finds here.

use std::ops::Range;

use tflq_schema as fb;

use crate::error::ModelError;

/// Builtin operator codes this crate refers to by number.
pub mod op {
    /// `DEQUANTIZE`.
    pub const DEQUANTIZE: i32 = 6;
    /// `CALL` (legacy control flow).
    pub const CALL: i32 = 31;
    /// `CUSTOM`.
    pub const CUSTOM: i32 = 32;
    /// `IF`.
    pub const IF: i32 = 118;
    /// `WHILE`.
    pub const WHILE: i32 = 119;
    /// `CALL_ONCE`.
    pub const CALL_ONCE: i32 = 129;
}

/// Element type of a tensor, named after the schema's `TensorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType(pub i8);

impl DType {
    /// 32-bit float.
    pub const FLOAT32: DType = DType(0);
    /// 8-bit signed integer.
    pub const INT8: DType = DType(9);

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

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Name of a builtin operator code, e.g. `FULLY_CONNECTED`.
pub fn op_name(code: i32) -> String {
    fb::BuiltinOperator(code)
        .variant_name()
        .map_or_else(|| format!("OP_{code}"), str::to_owned)
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
    /// Effective builtin code (the larger of the two code fields).
    pub code: i32,
    /// Custom code for `CUSTOM` operators.
    pub custom: Option<String>,
    /// Input tensor indices (-1: optional input left out).
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
}

impl OpInfo {
    /// Human-readable name: the builtin name or the custom code.
    pub fn name(&self) -> String {
        match (&self.custom, self.code) {
            (Some(c), op::CUSTOM) => c.clone(),
            _ => op_name(self.code),
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

/// A verified model: the flatbuffer view plus our description of it.
pub struct Model<'a> {
    /// The whole file.
    pub bytes: &'a [u8],
    /// The verified flatbuffer root, for the rewriter.
    pub root: fb::Model<'a>,
    /// Buffers in index order.
    pub buffers: Vec<BufferInfo>,
    /// Subgraphs in index order.
    pub subgraphs: Vec<SubgraphInfo>,
    /// Effective builtin code of each operator code.
    pub opcodes: Vec<i32>,
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
        ignore_missing_null_terminator: true,
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
    if bytes.len() < MIN_LEN {
        return Err(ModelError::Truncated { len: bytes.len() });
    }
    if !flatbuffers::buffer_has_identifier(bytes, fb::MODEL_IDENTIFIER, false) {
        let found = String::from_utf8_lossy(&bytes[4..8]).into_owned();
        return Err(ModelError::BadIdentifier { found });
    }
    let opts = verifier_options(bytes.len());
    fb::root_as_model_with_opts(&opts, bytes).map_err(|e| ModelError::Corrupt {
        detail: describe(&e, bytes.len()),
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
        let buffers = read_buffers(bytes, &root)?;
        let opcodes: Vec<i32> = root
            .operator_codes()
            .map(|codes| {
                codes
                    .iter()
                    .map(|c| {
                        c.builtin_code()
                            .0
                            .max(i32::from(c.deprecated_builtin_code()))
                    })
                    .collect()
            })
            .unwrap_or_default();
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
            subgraphs.push(read_subgraph(
                si,
                &sg,
                &buffers,
                &opcodes,
                &custom_codes,
                bytes.len(),
            )?);
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

    /// The bytes of buffer `index` (empty when it has none).
    pub fn buffer_data(&self, index: u32) -> &'a [u8] {
        self.buffers
            .get(index as usize)
            .and_then(|b| self.bytes.get(b.data.clone()))
            .unwrap_or(&[])
    }

    /// Whether any buffer uses the `offset`/`size` layout.
    pub fn has_external_buffers(&self) -> bool {
        self.buffers.iter().any(|b| b.external)
    }
}

fn read_buffers(bytes: &[u8], root: &fb::Model<'_>) -> Result<Vec<BufferInfo>, ModelError> {
    let Some(fb_buffers) = root.buffers() else {
        return Ok(Vec::new());
    };
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
    Ok(buffers)
}

fn read_subgraph(
    si: usize,
    sg: &fb::SubGraph<'_>,
    buffers: &[BufferInfo],
    opcodes: &[i32],
    custom_codes: &[Option<String>],
    file_len: usize,
) -> Result<SubgraphInfo, ModelError> {
    let mut tensors = Vec::new();
    for (ti, t) in sg.tensors().into_iter().flatten().enumerate() {
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
        let has_data = !binfo.data.is_empty();
        let mut elements: u64 = 1;
        for &d in &shape {
            if d < 0 {
                // Unknown dimensions belong in shape_signature; a constant needs real ones.
                if has_data {
                    return Err(ModelError::BadShape {
                        subgraph: si,
                        tensor: ti,
                        name,
                        shape,
                    });
                }
                elements = 0;
                break;
            }
            elements = match elements.checked_mul(d as u64) {
                Some(e) => e,
                None => {
                    return Err(ModelError::ShapeOverflow {
                        subgraph: si,
                        tensor: ti,
                        name,
                        shape,
                    });
                }
            };
        }
        let dtype = DType(t.type_().0);
        let sparse = t.sparsity().is_some();
        if has_data && !sparse {
            if let Some(size) = dtype.size() {
                let Some(expected) = elements.checked_mul(size) else {
                    return Err(ModelError::ShapeOverflow {
                        subgraph: si,
                        tensor: ti,
                        name,
                        shape,
                    });
                };
                let got = binfo.data.len() as u64;
                if expected != got {
                    return Err(ModelError::BufferSize {
                        subgraph: si,
                        tensor: ti,
                        name,
                        buffer,
                        shape,
                        dtype: dtype.name(),
                        expected,
                        got,
                    });
                }
            }
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
        let Some(&code) = opcodes.get(idx as usize) else {
            return Err(ModelError::OpcodeIndex {
                subgraph: si,
                op: oi,
                index: idx,
                count: opcodes.len(),
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
        check_custom_options(si, oi, &o, file_len)?;
        let custom = custom_codes.get(idx as usize).cloned().flatten();
        ops.push(OpInfo {
            code,
            custom,
            inputs,
            outputs,
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
