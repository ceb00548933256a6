//! Writing the rewritten model: a small flatbuffer skeleton, then the buffer data streamed.
//!
//! The skeleton (operator codes, subgraphs, metadata, signatures, buffer tables) is built in
//! memory with the object API of everything but the buffers; weight data never goes through
//! `unpack()`. Each buffer table gets a placeholder; once the skeleton's size is known, the
//! data blocks are laid out after it (16-byte aligned) and the placeholders are patched to
//! point at them: inline `data` vectors (a `uoffset` may point anywhere later in the file)
//! or, when the file would pass 2 GiB, `offset`/`size` fields. The data is then streamed:
//! copied from the input map, or quantized block by block, so memory stays flat.
//!
//! Each quantized float32 tensor `T` keeps its index (so consumers, subgraph inputs/outputs
//! and signatures stay valid) but loses its buffer; a new INT8 tensor holds the codes and a
//! `DEQUANTIZE` operator, placed first in the subgraph, turns them back into `T`.

use std::io::Write;

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use serde::Serialize;
use tflq_schema as fb;

use crate::error::{Error, ModelError};
use crate::model::{Model, op};
use crate::plan::{LayoutPolicy, Plan};
use crate::quant::{Encoding, ErrorStats};

/// How buffer data is stored in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Inside the flatbuffer, as `Buffer.data` vectors.
    Inline,
    /// After the flatbuffer, addressed by `Buffer.offset`/`size` (files over 2 GiB).
    External,
}

/// Files at or above this size cannot use inline data: flatbuffers offsets are 32-bit and the
/// runtime's verifier stops at 2 GiB.
pub const INLINE_LIMIT: u64 = (1 << 31) - 1;

/// Alignment of every data block in the output.
const ALIGN: u64 = 16;

/// Elements quantized per streamed block (4 Mi elements: 16 MiB in, 4 MiB out).
const BLOCK: usize = 1 << 22;

/// What [`write_model`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes written.
    pub len: u64,
    /// Where the buffer data went.
    pub layout: Layout,
    /// Error statistics of each job of the plan, in plan order.
    pub stats: Vec<ErrorStats>,
}

/// Where one buffer's output bytes come from.
#[derive(Debug, Clone)]
enum Source {
    /// Copy this byte range of the input.
    Copy(std::ops::Range<usize>),
    /// Quantize job `n` of the plan.
    Quantize(usize),
}

impl Source {
    fn len(&self, plan: &Plan) -> u64 {
        match self {
            Source::Copy(r) => r.len() as u64,
            Source::Quantize(j) => {
                plan.jobs[*j].elements * plan.jobs[*j].encoding.element_size() as u64
            }
        }
    }
}

/// One data block of the tail: which buffer, where its bytes start in the output.
#[derive(Debug, Clone)]
struct Block {
    buffer: usize,
    source: Source,
    /// Position of the data in the output file.
    at: u64,
}

/// Writes the model that `plan` describes to `out`. `out` receives the bytes in order; it is
/// never sought, so a pipe works.
pub fn write_model<W: Write>(
    model: &Model<'_>,
    plan: &Plan,
    policy: LayoutPolicy,
    out: W,
) -> Result<Written, Error> {
    let sources = buffer_sources(model, plan);
    let mut layout = match policy {
        LayoutPolicy::Auto => Layout::Inline,
        LayoutPolicy::External => Layout::External,
    };
    let (skeleton, blocks, len) = loop {
        let skeleton = build_skeleton(model, plan, &sources, layout)?;
        let (blocks, len) = lay_out(skeleton.len() as u64, &sources, plan, layout);
        if layout == Layout::Inline && len > INLINE_LIMIT {
            layout = Layout::External;
            continue;
        }
        break (patch(skeleton, &blocks, plan, layout)?, blocks, len);
    };
    let stats = stream(model, plan, &skeleton, &blocks, layout, out).map_err(Error::Write)?;
    debug_assert_eq!(stats.0, len);
    Ok(Written {
        len,
        layout,
        stats: stats.1,
    })
}

/// The source of every buffer's bytes in the output (`None`: no data).
fn buffer_sources(model: &Model<'_>, plan: &Plan) -> Vec<Option<Source>> {
    let mut sources: Vec<Option<Source>> = model
        .buffers
        .iter()
        .map(|b| (!b.data.is_empty()).then(|| Source::Copy(b.data.clone())))
        .collect();
    for (j, job) in plan.jobs.iter().enumerate() {
        sources[job.buffer as usize] = Some(Source::Quantize(j));
    }
    sources
}

fn too_big(what: &str) -> Error {
    ModelError::Unrepresentable {
        what: what.to_owned(),
    }
    .into()
}

fn build_skeleton(
    model: &Model<'_>,
    plan: &Plan,
    sources: &[Option<Source>],
    layout: Layout,
) -> Result<Vec<u8>, Error> {
    let root = &model.root;
    let mut codes: Vec<fb::OperatorCodeT> = root
        .operator_codes()
        .into_iter()
        .flatten()
        .map(|c| c.unpack())
        .collect();
    let readers = &plan.readers;
    // Per subgraph: (tensor, job, whether it needs the DEQUANTIZE path).
    let mut per_subgraph: Vec<Vec<(usize, usize, bool)>> = vec![Vec::new(); model.subgraphs.len()];
    let mut dq_version = 0;
    for (j, job) in plan.jobs.iter().enumerate() {
        for u in &job.users {
            let r = &readers[u.subgraph][u.tensor];
            let ops = &model.subgraphs[u.subgraph].ops;
            let all_hybrid = !r.is_empty()
                && r.iter()
                    .all(|&(oi, slot)| plan.reads_int8(u.subgraph, oi, ops[oi].code, slot));
            let is_output = model.subgraphs[u.subgraph]
                .outputs
                .contains(&(u.tensor as i32));
            let needs_dq = !all_hybrid || is_output;
            if needs_dq {
                dq_version = dq_version.max(dequantize_version(&job.encoding));
            }
            per_subgraph[u.subgraph].push((u.tensor, j, needs_dq));
        }
    }
    let dequantize = if dq_version == 0 {
        0
    } else {
        dequantize_opcode(&mut codes, model, dq_version)?
    };
    for h in &plan.hybrid_ops {
        let o = &model.subgraphs[h.subgraph].ops[h.op];
        let Some(spec) = crate::ops::hybrid(o.code) else {
            continue;
        };
        let tensors = &model.subgraphs[h.subgraph].tensors;
        let per_channel = spec.slots.iter().any(|&slot| {
            o.inputs
                .get(slot)
                .and_then(|&t| tensors.get(usize::try_from(t).ok()?))
                .and_then(|t| plan.job_of(t.buffer))
                .is_some_and(|j| matches!(j.encoding, Encoding::PerChannel(_)))
        });
        let version = if per_channel {
            spec.version.1
        } else {
            spec.version.0
        };
        if let Some(c) = codes.get_mut(o.opcode as usize) {
            c.version = c.version.max(version);
        }
    }

    let mut fbb = FlatBufferBuilder::with_capacity(model.bytes.len().min(64 << 20) / 4 + 4096);
    let mut subgraphs = Vec::with_capacity(model.subgraphs.len());
    for (si, sg) in root.subgraphs().into_iter().flatten().enumerate() {
        let mut sg = sg.unpack();
        let tensors = sg.tensors.get_or_insert_with(Vec::new);
        let operators = sg.operators.get_or_insert_with(Vec::new);
        let mut new_ops = Vec::with_capacity(per_subgraph[si].len());
        for &(ti, j, needs_dq) in &per_subgraph[si] {
            let job = &plan.jobs[j];
            let float = &mut tensors[ti];
            if !needs_dq {
                // Only hybrid kernels read it: the tensor itself becomes the int8 weight.
                float.type_ = encoded_type(&job.encoding);
                float.quantization = quantization(&job.encoding);
                continue;
            }
            let buffer = std::mem::take(&mut float.buffer);
            let mut twin = fb::TensorT::default();
            twin.shape = float.shape.clone();
            twin.type_ = encoded_type(&job.encoding);
            twin.buffer = buffer;
            let suffix = if job.encoding == Encoding::Float16 {
                "fp16"
            } else {
                "int8"
            };
            twin.name = Some(format!(
                "{}_{suffix}",
                float.name.as_deref().unwrap_or("tensor")
            ));
            twin.quantization = quantization(&job.encoding);
            twin.shape_signature = float.shape_signature.clone();
            twin.has_rank = float.has_rank;
            let index =
                i32::try_from(tensors.len()).map_err(|_| too_big("more than 2^31 tensors"))?;
            tensors.push(twin);
            // Hybrid readers take the int8 twin directly; the others read the DEQUANTIZE output.
            for &(oi, slot) in &readers[si][ti] {
                if plan.reads_int8(si, oi, model.subgraphs[si].ops[oi].code, slot) {
                    if let Some(input) = operators[oi].inputs.as_mut().and_then(|v| v.get_mut(slot))
                    {
                        *input = index;
                    }
                }
            }
            let mut dq = fb::OperatorT::default();
            dq.opcode_index = dequantize;
            dq.inputs = Some(vec![index]);
            dq.outputs = Some(vec![ti as i32]);
            new_ops.push(dq);
        }
        for (oi, o) in operators.iter_mut().enumerate() {
            if plan.is_hybrid(si, oi) {
                let code = model.subgraphs[si].ops[oi].code;
                if crate::ops::hybrid(code).is_some_and(|h| h.asymmetric_inputs) {
                    set_asymmetric_inputs(o);
                }
            }
        }
        if !new_ops.is_empty() {
            new_ops.append(operators);
            *operators = new_ops;
        }
        for o in sg.operators.iter_mut().flatten() {
            inline_large_custom_options(model, o)?;
        }
        subgraphs.push(sg.pack(&mut fbb));
    }
    let subgraphs = fbb.create_vector(&subgraphs);
    let codes: Vec<_> = codes.iter().map(|c| c.pack(&mut fbb)).collect();
    let codes = fbb.create_vector(&codes);

    let placeholder = fbb.create_vector::<u8>(&[]);
    let buffers: Vec<WIPOffset<fb::Buffer>> = sources
        .iter()
        .map(|s| {
            let args = match (s, layout) {
                (None, _) => fb::BufferArgs::default(),
                (Some(_), Layout::Inline) => fb::BufferArgs {
                    data: Some(placeholder),
                    ..Default::default()
                },
                // Non-zero so that the builder writes the fields; patched below.
                (Some(_), Layout::External) => fb::BufferArgs {
                    data: None,
                    offset: 1,
                    size: 1,
                },
            };
            fb::Buffer::create(&mut fbb, &args)
        })
        .collect();
    let buffers = fbb.create_vector(&buffers);

    let description = root.description().map(|d| fbb.create_string(d));
    let metadata_buffer = root
        .metadata_buffer()
        .map(|m| fbb.create_vector_from_iter(m.iter()));
    let metadata: Option<Vec<_>> = root
        .metadata()
        .map(|m| m.iter().map(|x| x.unpack().pack(&mut fbb)).collect());
    let metadata = metadata.map(|m| fbb.create_vector(&m));
    let signatures: Option<Vec<_>> = root
        .signature_defs()
        .map(|m| m.iter().map(|x| x.unpack().pack(&mut fbb)).collect());
    let signature_defs = signatures.map(|m| fbb.create_vector(&m));
    let groups: Option<Vec<_>> = root
        .external_buffer_groups()
        .map(|m| m.iter().map(|x| x.unpack().pack(&mut fbb)).collect());
    let external_buffer_groups = groups.map(|m| fbb.create_vector(&m));
    let ext: Option<Vec<_>> = root
        .external_buffers()
        .map(|m| m.iter().map(|x| x.unpack().pack(&mut fbb)).collect());
    let external_buffers = ext.map(|m| fbb.create_vector(&m));

    let model_table = fb::Model::create(
        &mut fbb,
        &fb::ModelArgs {
            version: root.version(),
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            description,
            buffers: Some(buffers),
            metadata_buffer,
            metadata,
            signature_defs,
            external_buffer_groups,
            external_buffers,
        },
    );
    fb::finish_model_buffer(&mut fbb, model_table);
    Ok(fbb.finished_data().to_vec())
}

/// Index of the DEQUANTIZE operator code, added once (or reused, at version 2 at least: the
/// version that takes int8 input).
fn dequantize_opcode(
    codes: &mut Vec<fb::OperatorCodeT>,
    model: &Model<'_>,
    version: i32,
) -> Result<u32, Error> {
    let existing = model.opcodes.iter().enumerate().position(|(i, &c)| {
        c == op::DEQUANTIZE && codes.get(i).is_some_and(|c| c.custom_code.is_none())
    });
    let index = match existing {
        Some(i) => {
            codes[i].version = codes[i].version.max(version);
            i
        }
        None => {
            let mut code = fb::OperatorCodeT::default();
            // Codes below 127 go in both fields: old readers only know the first.
            code.deprecated_builtin_code = op::DEQUANTIZE as i8;
            code.builtin_code = fb::BuiltinOperator::DEQUANTIZE;
            code.version = version;
            codes.push(code);
            codes.len() - 1
        }
    };
    u32::try_from(index).map_err(|_| too_big("too many operator codes"))
}

/// The DEQUANTIZE version the converter writes for this input: 2 for int8, 3 for float16,
/// 5 for per-channel int8.
fn dequantize_version(e: &Encoding) -> i32 {
    match e {
        Encoding::PerTensor(_) => 2,
        Encoding::Float16 => 3,
        Encoding::PerChannel(_) => 5,
    }
}

fn encoded_type(e: &Encoding) -> fb::TensorType {
    match e {
        Encoding::Float16 => fb::TensorType::FLOAT16,
        Encoding::PerTensor(_) | Encoding::PerChannel(_) => fb::TensorType::INT8,
    }
}

/// The tensor's quantization parameters for an encoding (none for float16).
fn quantization(e: &Encoding) -> Option<Box<fb::QuantizationParametersT>> {
    let mut q = fb::QuantizationParametersT::default();
    match e {
        Encoding::Float16 => return None,
        Encoding::PerTensor(p) => {
            q.scale = Some(vec![p.scale]);
            q.zero_point = Some(vec![i64::from(p.zero_point)]);
        }
        Encoding::PerChannel(pc) => {
            q.scale = Some(pc.params.iter().map(|p| p.scale).collect());
            q.zero_point = Some(pc.params.iter().map(|p| i64::from(p.zero_point)).collect());
            q.quantized_dimension = pc.axis as i32;
        }
    }
    Some(Box::new(q))
}

/// Turns on `asymmetric_quantize_inputs` in a hybrid operator's options, creating the
/// options table when the model left it out.
fn set_asymmetric_inputs(o: &mut fb::OperatorT) {
    use fb::BuiltinOptionsT as B;
    match &mut o.builtin_options {
        B::FullyConnectedOptions(x) => x.asymmetric_quantize_inputs = true,
        B::BatchMatMulOptions(x) => x.asymmetric_quantize_inputs = true,
        B::LSTMOptions(x) => x.asymmetric_quantize_inputs = true,
        B::UnidirectionalSequenceLSTMOptions(x) => x.asymmetric_quantize_inputs = true,
        B::BidirectionalSequenceLSTMOptions(x) => x.asymmetric_quantize_inputs = true,
        B::SVDFOptions(x) => x.asymmetric_quantize_inputs = true,
        B::RNNOptions(x) => x.asymmetric_quantize_inputs = true,
        B::SequenceRNNOptions(x) => x.asymmetric_quantize_inputs = true,
        B::BidirectionalSequenceRNNOptions(x) => x.asymmetric_quantize_inputs = true,
        _ => {}
    }
}

/// Custom options stored after the flatbuffer would point at the wrong bytes once the data
/// moves; they go back inline (the skeleton stays far below 2 GiB for any real model).
fn inline_large_custom_options(model: &Model<'_>, o: &mut fb::OperatorT) -> Result<(), Error> {
    if o.large_custom_options_size == 0 {
        return Ok(());
    }
    let bad = || {
        Error::from(ModelError::Corrupt {
            detail: format!(
                "operator custom options at offset {} with size {} lie outside the file",
                o.large_custom_options_offset, o.large_custom_options_size
            ),
        })
    };
    let start = usize::try_from(o.large_custom_options_offset).map_err(|_| bad())?;
    let len = usize::try_from(o.large_custom_options_size).map_err(|_| bad())?;
    let bytes = model
        .bytes
        .get(start..start.checked_add(len).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    o.custom_options = Some(bytes.to_vec());
    o.large_custom_options_offset = 0;
    o.large_custom_options_size = 0;
    Ok(())
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Places every data block after a skeleton of `skeleton_len` bytes. Inline blocks carry a
/// 4-byte length prefix before their 16-byte aligned data.
fn lay_out(
    skeleton_len: u64,
    sources: &[Option<Source>],
    plan: &Plan,
    layout: Layout,
) -> (Vec<Block>, u64) {
    let prefix = if layout == Layout::Inline { 4 } else { 0 };
    let mut pos = skeleton_len;
    let mut blocks = Vec::new();
    for (buffer, s) in sources.iter().enumerate() {
        let Some(source) = s else { continue };
        let at = align_up(pos + prefix, ALIGN);
        pos = at + source.len(plan);
        blocks.push(Block {
            buffer,
            source: source.clone(),
            at,
        });
    }
    (blocks, align_up(pos, 4))
}

/// Points the skeleton's buffer tables at their blocks.
fn patch(
    mut skeleton: Vec<u8>,
    blocks: &[Block],
    plan: &Plan,
    layout: Layout,
) -> Result<Vec<u8>, Error> {
    let mut writes: Vec<(usize, Vec<u8>)> = Vec::new();
    {
        let opts = flatbuffers::VerifierOptions {
            max_tables: usize::MAX,
            max_apparent_size: usize::MAX,
            ..Default::default()
        };
        let root = fb::root_as_model_with_opts(&opts, &skeleton)
            .map_err(|e| too_big(&format!("skeleton does not verify: {e}")))?;
        let tables = root
            .buffers()
            .ok_or_else(|| too_big("skeleton lost its buffers"))?;
        for b in blocks {
            let table = tables.get(b.buffer)._tab;
            let field = |vt| table.loc() + usize::from(table.vtable().get(vt));
            match layout {
                Layout::Inline => {
                    let at = field(fb::Buffer::VT_DATA);
                    let rel = u32::try_from(b.at - 4 - at as u64)
                        .map_err(|_| too_big("offset over 4 GiB"))?;
                    writes.push((at, rel.to_le_bytes().to_vec()));
                }
                Layout::External => {
                    writes.push((field(fb::Buffer::VT_OFFSET), b.at.to_le_bytes().to_vec()));
                    writes.push((
                        field(fb::Buffer::VT_SIZE),
                        b.source.len(plan).to_le_bytes().to_vec(),
                    ));
                }
            }
        }
    }
    for (at, bytes) in writes {
        skeleton[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(skeleton)
}

/// Writes the skeleton and every block in order. Returns the bytes written and the error
/// statistics of each plan job.
fn stream<W: Write>(
    model: &Model<'_>,
    plan: &Plan,
    skeleton: &[u8],
    blocks: &[Block],
    layout: Layout,
    out: W,
) -> std::io::Result<(u64, Vec<ErrorStats>)> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut stats = vec![ErrorStats::default(); plan.jobs.len()];
    out.write_all(skeleton)?;
    let mut pos = skeleton.len() as u64;
    let zeros = [0u8; 32];
    let mut codes: [Vec<u8>; 2] = Default::default();
    for b in blocks {
        let len = b.source.len(plan);
        let start = if layout == Layout::Inline {
            b.at - 4
        } else {
            b.at
        };
        out.write_all(&zeros[..(start - pos) as usize])?;
        if layout == Layout::Inline {
            // Lengths past u32 cannot occur: the layout is inline only below 2 GiB.
            out.write_all(&(len as u32).to_le_bytes())?;
        }
        match &b.source {
            Source::Copy(range) => out.write_all(&model.bytes[range.clone()])?,
            Source::Quantize(j) => {
                let job = &plan.jobs[*j];
                let data = model.buffer_data(job.buffer);
                stats[*j] = write_encoded(data, &job.encoding, &mut out, &mut codes)?;
            }
        }
        pos = b.at + len;
    }
    let end = align_up(pos, 4);
    out.write_all(&zeros[..(end - pos) as usize])?;
    out.flush()?;
    Ok((end, stats))
}

/// Encodes the little-endian f32 `data` and writes the result, block by block. While one
/// block is written, the next is encoded on the thread pool, so the copy into the page cache
/// overlaps the arithmetic instead of following it.
fn write_encoded<W: Write>(
    data: &[u8],
    encoding: &Encoding,
    out: &mut W,
    bufs: &mut [Vec<u8>; 2],
) -> std::io::Result<ErrorStats> {
    // At least four blocks per tensor (of at least one parallel chunk each), so that small
    // tensors overlap too; at most BLOCK elements, so that memory stays flat.
    let elements = data.len() / 4;
    let block = elements.div_ceil(4).clamp(crate::quant::CHUNK, BLOCK);
    let [current, next] = bufs;
    let mut blocks = data.chunks(block * 4).enumerate();
    let Some((_, first)) = blocks.next() else {
        return Ok(ErrorStats::default());
    };
    let mut stats = encode_block(first, 0, encoding, current);
    for (k, following) in blocks {
        let mut following_stats = ErrorStats::default();
        let mut written = Ok(());
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| {
                following_stats = encode_block(following, k * block, encoding, next);
            });
            written = out.write_all(current);
        });
        written?;
        stats = stats.merge(following_stats);
        std::mem::swap(current, next);
    }
    out.write_all(current)?;
    Ok(stats)
}

/// Encodes one block of little-endian f32 bytes, elements `first..` of its tensor, into
/// `out` (resized to fit).
fn encode_block(bytes: &[u8], first: usize, encoding: &Encoding, out: &mut Vec<u8>) -> ErrorStats {
    let n = bytes.len() / 4;
    out.resize(n * encoding.element_size(), 0);
    crate::plan::with_f32(bytes, |values| encoding.encode_par(values, first, out))
}
