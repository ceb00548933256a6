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

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use serde::Serialize;
use tflq_schema as fb;

use crate::encoding::{Encoding, QuantSpec};
use crate::equalize::{Rescale, Values};
use crate::error::{Error, ModelError};
use crate::model::Model;
use crate::ops::Op;
use crate::plan::{LayoutPolicy, Plan};
use crate::quant::ErrorStats;

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

/// Elements quantized per streamed block at most (2 Mi elements: 8 MiB in, 2 MiB of int8
/// codes out), so that the blocks in flight (one per thread, and one more) stay small.
const BLOCK: usize = 1 << 21;

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
    /// This buffer's float32 values, rescaled by equalization.
    Rescaled(u32),
    /// The float16 block scales of job `n` (a buffer added after the model's own).
    Scales(usize),
}

impl Source {
    fn len(&self, plan: &Plan<'_>) -> u64 {
        match self {
            Source::Copy(r) => r.len() as u64,
            Source::Quantize(j) => plan.jobs()[*j].stored_bytes(),
            Source::Rescaled(b) => plan.values(*b).bytes.len() as u64,
            Source::Scales(j) => plan.jobs()[*j].scale_bytes(),
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
/// never sought, so a pipe works. The threads of the pool write it in turn (so it must be
/// `Send`), see [`write_pieces`].
pub fn write_model<W: Write + Send>(
    plan: &Plan<'_>,
    policy: LayoutPolicy,
    out: W,
) -> Result<Written, Error> {
    write_model_limited(plan, policy, INLINE_LIMIT, out)
}

/// [`write_model`] with the size above which data moves after the flatbuffer as a parameter,
/// so that tests can cross it without writing 2 GiB.
fn write_model_limited<W: Write + Send>(
    plan: &Plan<'_>,
    policy: LayoutPolicy,
    inline_limit: u64,
    out: W,
) -> Result<Written, Error> {
    let model = plan.model();
    let sources = buffer_sources(model, plan);
    let mut layout = match policy {
        LayoutPolicy::Auto => Layout::Inline,
        LayoutPolicy::External => Layout::External,
    };
    let (skeleton, blocks, len) = loop {
        let skeleton = build_skeleton(model, plan, &sources, layout)?;
        let (blocks, len) = lay_out(skeleton.len() as u64, &sources, plan, layout);
        if layout == Layout::Inline && len > inline_limit {
            layout = Layout::External;
            continue;
        }
        break (patch(skeleton, &blocks, plan, layout)?, blocks, len);
    };
    // On the pool (`scope` from outside it runs there; inside, in place), whose threads
    // encode and write in turn: two threads keep two cores busy.
    let stats = rayon::scope(|_| stream(model, plan, &skeleton, &blocks, layout, out))
        .map_err(Error::Write)?;
    debug_assert_eq!(stats.0, len);
    Ok(Written {
        len,
        layout,
        stats: stats.1,
    })
}

/// The source of every buffer's bytes in the output (`None`: no data).
fn buffer_sources(model: &Model<'_>, plan: &Plan<'_>) -> Vec<Option<Source>> {
    let mut sources: Vec<Option<Source>> = model
        .buffers()
        .iter()
        .map(|b| (!b.data.is_empty()).then(|| Source::Copy(b.data.clone())))
        .collect();
    for &b in plan.rescaled().keys() {
        sources[b as usize] = Some(Source::Rescaled(b));
    }
    for (j, job) in plan.jobs().iter().enumerate() {
        sources[job.buffer as usize] = Some(Source::Quantize(j));
    }
    // Block scales get buffers of their own, after the model's, in job order.
    for (j, job) in plan.jobs().iter().enumerate() {
        if job.scale_bytes() > 0 {
            sources.push(Some(Source::Scales(j)));
        }
    }
    sources
}

/// The buffer index of each job's block scales (see [`buffer_sources`]).
fn scale_buffers(model: &Model<'_>, plan: &Plan<'_>) -> Vec<Option<u32>> {
    let mut next = model.buffers().len() as u32;
    plan.jobs()
        .iter()
        .map(|job| {
            (job.scale_bytes() > 0).then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

fn too_big(what: &str) -> Error {
    ModelError::Unrepresentable {
        what: what.to_owned(),
    }
    .into()
}

/// The operators with each DEQUANTIZE `(output, op)` placed right before the first operator
/// that reads its output (in `dequantizes` order among those of one reader), or at the end
/// when only the subgraph's outputs read it. A float weight then takes memory only from its
/// first reader on, so an arena planner such as TFLite Micro's can reuse the space between
/// layers instead of holding every dequantized weight from the start.
fn place_dequantizes(
    operators: Vec<fb::OperatorT>,
    dequantizes: Vec<(i32, fb::OperatorT)>,
) -> Vec<fb::OperatorT> {
    let mut first_reader: std::collections::HashMap<i32, usize> = Default::default();
    for (oi, o) in operators.iter().enumerate().rev() {
        for &t in o.inputs.iter().flatten() {
            first_reader.insert(t, oi);
        }
    }
    let n = operators.len();
    let mut before: Vec<Vec<fb::OperatorT>> = (0..=n).map(|_| Vec::new()).collect();
    for (t, dq) in dequantizes {
        before[first_reader.get(&t).copied().unwrap_or(n)].push(dq);
    }
    let mut out = Vec::with_capacity(n + before.iter().map(Vec::len).sum::<usize>());
    for (slot, op) in before
        .iter_mut()
        .zip(operators.into_iter().map(Some).chain([None]))
    {
        out.append(slot);
        out.extend(op);
    }
    out
}

fn build_skeleton(
    model: &Model<'_>,
    plan: &Plan<'_>,
    sources: &[Option<Source>],
    layout: Layout,
) -> Result<Vec<u8>, Error> {
    let root = model.root();
    let mut codes: Vec<fb::OperatorCodeT> = root
        .operator_codes()
        .into_iter()
        .flatten()
        .map(|c| c.unpack())
        .collect();
    // Per subgraph: (tensor, job index, user), in job order.
    let mut per_subgraph: Vec<Vec<(usize, usize, &crate::plan::User)>> =
        vec![Vec::new(); model.subgraphs().len()];
    for (j, job) in plan.jobs().iter().enumerate() {
        for u in &job.users {
            per_subgraph[u.tensor.subgraph].push((u.tensor.tensor, j, u));
        }
    }
    let dequantize = match plan.dequantize_version() {
        None => 0,
        Some(version) => dequantize_opcode(&mut codes, model, version)?,
    };
    for (h, spec) in plan.hybrid_ops() {
        let o = &model.subgraphs()[h.subgraph].ops[h.op];
        if let Some(c) = codes.get_mut(o.opcode as usize) {
            c.version = c.version.max(spec.version);
        }
    }

    let scale_buffer = scale_buffers(model, plan);
    // The skeleton holds no tensor data (that is streamed after it), so it starts small and
    // grows if it must: sized like the input, it was a zeroed allocation of up to 16 MiB.
    let mut fbb = FlatBufferBuilder::with_capacity(64 << 10);
    let mut subgraphs = Vec::with_capacity(model.subgraphs().len());
    for (si, sg) in root.subgraphs().into_iter().flatten().enumerate() {
        let mut sg = sg.unpack();
        let tensors = sg.tensors.get_or_insert_with(Vec::new);
        let operators = sg.operators.get_or_insert_with(Vec::new);
        let mut new_ops = Vec::with_capacity(per_subgraph[si].len());
        for &(ti, j, user) in &per_subgraph[si] {
            let job = &plan.jobs()[j];
            // Block scales: a FLOAT16 tensor in this subgraph, on the job's scale buffer.
            let scales = match (job.encoding.quant_spec_for(&job.shape), scale_buffer[j]) {
                (
                    Some(QuantSpec {
                        blocks: Some(b), ..
                    }),
                    Some(buffer),
                ) => {
                    let index = i32::try_from(tensors.len())
                        .map_err(|_| too_big("more than 2^31 tensors"))?;
                    let mut t = fb::TensorT::default();
                    t.shape = Some(b.shape.iter().map(|&d| d as i32).collect());
                    t.type_ = fb::TensorType::FLOAT16;
                    t.buffer = buffer;
                    t.name = Some(format!(
                        "{}_scales",
                        tensors[ti].name.as_deref().unwrap_or("tensor")
                    ));
                    tensors.push(t);
                    Some(index)
                }
                _ => None,
            };
            let float = &mut tensors[ti];
            if !user.dequantize {
                // Only hybrid kernels read it: the tensor itself becomes the stored weight.
                float.type_ = fb::TensorType(job.encoding.dtype().0);
                float.quantization = quantization(&job.encoding, scales);
                continue;
            }
            let buffer = std::mem::take(&mut float.buffer);
            let mut twin = fb::TensorT::default();
            twin.shape = float.shape.clone();
            twin.type_ = fb::TensorType(job.encoding.dtype().0);
            twin.buffer = buffer;
            twin.name = Some(format!(
                "{}_{}",
                float.name.as_deref().unwrap_or("tensor"),
                job.encoding.suffix()
            ));
            twin.quantization = quantization(&job.encoding, scales);
            twin.shape_signature = float.shape_signature.clone();
            twin.has_rank = float.has_rank;
            let index =
                i32::try_from(tensors.len()).map_err(|_| too_big("more than 2^31 tensors"))?;
            tensors.push(twin);
            // Hybrid readers take the stored twin directly; the others read the DEQUANTIZE
            // output.
            for &(oi, slot) in &user.direct {
                if let Some(input) = operators[oi].inputs.as_mut().and_then(|v| v.get_mut(slot)) {
                    *input = index;
                }
            }
            let mut dq = fb::OperatorT::default();
            dq.opcode_index = dequantize;
            dq.inputs = Some(vec![index]);
            dq.outputs = Some(vec![ti as i32]);
            new_ops.push((ti as i32, dq));
        }
        for (h, spec) in plan.hybrid_ops().range(
            crate::model::OpRef {
                subgraph: si,
                op: 0,
            }..=crate::model::OpRef {
                subgraph: si,
                op: usize::MAX,
            },
        ) {
            if spec.asymmetric_inputs {
                if let Some(o) = operators.get_mut(h.op) {
                    set_asymmetric_inputs(o, spec.op);
                }
            }
        }
        if !new_ops.is_empty() {
            *operators = place_dequantizes(std::mem::take(operators), new_ops);
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
    let existing = model.opcodes().iter().enumerate().position(|(i, &c)| {
        c == Op::Dequantize && codes.get(i).is_some_and(|c| c.custom_code.is_none())
    });
    let index = match existing {
        Some(i) => {
            codes[i].version = codes[i].version.max(version);
            i
        }
        None => {
            let mut code = fb::OperatorCodeT::default();
            // Codes below 127 go in both fields: old readers only know the first.
            code.deprecated_builtin_code = Op::Dequantize.code() as i8;
            code.builtin_code = fb::BuiltinOperator::DEQUANTIZE;
            code.version = version;
            codes.push(code);
            codes.len() - 1
        }
    };
    u32::try_from(index).map_err(|_| too_big("too many operator codes"))
}

/// The tensor's quantization parameters for an encoding (none for float16). A blockwise
/// encoding names its scale tensor, `scales`, and has no zero points (-1).
fn quantization(e: &Encoding, scales: Option<i32>) -> Option<Box<fb::QuantizationParametersT>> {
    let spec = e.quant_spec()?;
    let mut q = fb::QuantizationParametersT::default();
    if let (Some(b), Some(index)) = (&spec.blocks, scales) {
        let mut d = fb::BlockwiseQuantizationT::default();
        d.scales = index;
        d.zero_points = -1;
        d.block_size = b.size as i32;
        q.details = fb::QuantizationDetailsT::BlockwiseQuantization(Box::new(d));
        return Some(Box::new(q));
    }
    q.scale = Some(spec.scales);
    q.zero_point = Some(spec.zero_points);
    q.quantized_dimension = spec.axis as i32;
    Some(Box::new(q))
}

/// Turns on `asymmetric_quantize_inputs` in a hybrid operator's options, creating the
/// options table (with the schema's defaults, which is what the runtime reads for a missing
/// table) when the model left it out.
fn set_asymmetric_inputs(o: &mut fb::OperatorT, op: Op) {
    use fb::BuiltinOptionsT as B;
    if matches!(o.builtin_options, B::NONE) {
        o.builtin_options = match op {
            Op::FullyConnected => B::FullyConnectedOptions(Default::default()),
            Op::BatchMatmul => B::BatchMatMulOptions(Default::default()),
            Op::Lstm => B::LSTMOptions(Default::default()),
            Op::UnidirectionalSequenceLstm => {
                B::UnidirectionalSequenceLSTMOptions(Default::default())
            }
            Op::BidirectionalSequenceLstm => {
                B::BidirectionalSequenceLSTMOptions(Default::default())
            }
            Op::Svdf => B::SVDFOptions(Default::default()),
            Op::Rnn => B::RNNOptions(Default::default()),
            Op::UnidirectionalSequenceRnn => B::SequenceRNNOptions(Default::default()),
            Op::BidirectionalSequenceRnn => B::BidirectionalSequenceRNNOptions(Default::default()),
            _ => B::NONE,
        };
    }
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
        .bytes()
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
    plan: &Plan<'_>,
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
    plan: &Plan<'_>,
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
fn stream<W: Write + Send>(
    model: &Model<'_>,
    plan: &Plan<'_>,
    skeleton: &[u8],
    blocks: &[Block],
    layout: Layout,
    out: W,
) -> std::io::Result<(u64, Vec<ErrorStats>)> {
    // Small pieces (lengths, padding, small tensors) are gathered; an encoded block (at
    // least 64 Ki elements, so at least 64 KiB of int8 and 32 KiB of int4 codes) mostly
    // goes straight to `out`, since a buffer no larger than it is bypassed: with a megabyte
    // here, every block was copied once more (100 small models: 3% of the CPU time).
    let mut out = std::io::BufWriter::with_capacity(32 << 10, out);
    const ZEROS: [u8; 32] = [0; 32];
    let mut pieces = vec![Piece::Bytes(skeleton)];
    let mut pos = skeleton.len() as u64;
    for b in blocks {
        let len = b.source.len(plan);
        let start = if layout == Layout::Inline {
            b.at - 4
        } else {
            b.at
        };
        pieces.push(Piece::Bytes(&ZEROS[..(start - pos) as usize]));
        if layout == Layout::Inline {
            // Lengths past u32 cannot occur: the layout is inline only below 2 GiB.
            pieces.push(Piece::Len((len as u32).to_le_bytes()));
        }
        match &b.source {
            Source::Copy(range) => pieces.push(Piece::Bytes(&model.bytes()[range.clone()])),
            Source::Rescaled(buffer) => pieces.push(Piece::Rescaled(plan.values(*buffer))),
            Source::Quantize(j) => {
                let job = &plan.jobs()[*j];
                encode_pieces(*j, plan.values(job.buffer), &job.encoding, &mut pieces);
            }
            Source::Scales(j) => {
                let spec = plan.jobs()[*j].encoding.quant_spec();
                if let Some(b) = spec.and_then(|s| s.blocks) {
                    pieces.push(Piece::Owned(b.bytes));
                }
            }
        }
        pos = b.at + len;
    }
    let end = align_up(pos, 4);
    pieces.push(Piece::Bytes(&ZEROS[..(end - pos) as usize]));
    let mut stats = vec![ErrorStats::default(); plan.jobs().len()];
    write_pieces(&pieces, &mut out, &mut stats)?;
    out.flush()?;
    Ok((end, stats))
}

/// A piece of the output, in file order.
enum Piece<'a> {
    /// Bytes as they are: the skeleton, padding, a copied buffer.
    Bytes(&'a [u8]),
    /// Bytes made for the output: block scales.
    Owned(Vec<u8>),
    /// The length before an inline buffer.
    Len([u8; 4]),
    /// An equalized buffer that stays float: its rescaled values, made as they are written.
    Rescaled(Values<'a>),
    /// A block of a quantized buffer, encoded before it is written.
    Encode(Coded<'a>),
}

/// A block of a quantized buffer: elements `first..` of job `job`'s tensor.
struct Coded<'a> {
    job: usize,
    /// Its little-endian f32 values, as in the model.
    bytes: &'a [u8],
    first: usize,
    encoding: &'a Encoding,
    /// What equalization does to them first, if anything.
    rescale: Option<&'a Rescale>,
}

/// The blocks job `job` (the little-endian f32 `values`) is encoded and written in.
fn encode_pieces<'a>(
    job: usize,
    values: Values<'a>,
    encoding: &'a Encoding,
    pieces: &mut Vec<Piece<'a>>,
) {
    // At least sixteen blocks per tensor (of at least one chunk each), so that the threads
    // share small tensors too and the last block, which one thread encodes and then writes
    // while the others have nothing left, is short (`mlp-50m`: 18.8 ms against 20.0 with
    // four); at most BLOCK elements, so that memory stays flat. On a pool of one thread (a
    // small model of a batch) nothing overlaps, and one large write costs the file system
    // less than several small ones (100 small models: 9% less system time).
    let (data, rescale) = (values.bytes, values.rescale);
    let elements = data.len() / 4;
    let parts = if rayon::current_num_threads() == 1 {
        1
    } else {
        16
    };
    let block = elements.div_ceil(parts).clamp(crate::quant::CHUNK, BLOCK);
    // Sub-byte codes: every block but the last must end on a byte.
    let align = encoding.alignment();
    let block = block.div_ceil(align) * align;
    for (k, bytes) in data.chunks(block * 4).enumerate() {
        pieces.push(Piece::Encode(Coded {
            job,
            bytes,
            first: k * block,
            encoding,
            rescale,
        }));
    }
}

/// Writes `pieces` in order, every block encoded on one of the pool's threads: each thread
/// claims the next block, encodes it on its own (in cache, with no other thread to wait
/// for), and writes whatever is next in the file and ready, block after block, while no
/// other thread is writing. So the copy into the page cache overlaps the arithmetic, a
/// thread that finishes a block goes straight on to the next, and no thread waits at a
/// block's end for the others or for the writer. Each job's statistics are merged into
/// `stats` in block order.
///
/// At most `threads + 1` blocks are claimed and not yet written, which bounds the memory:
/// one block of codes per thread, and one more. (Blocks encoded by all threads at once, with
/// a barrier at each, lost a core at every barrier's tail, and often the writer's whole
/// write: the other thread had fallen asleep and, on a VM, woke late; `mlp-50m` took 1.5 ms
/// more. A writer thread of its own outside the pool, fed over a channel, made three busy
/// threads share two cores, which cost as much again.)
///
/// No thread ever waits for a lock another holds across a write (the writer is taken with
/// `try_lock`), and a block is encoded without calling into the pool, so a thread never runs
/// another's work nested inside its own: every claimed block is finished by its thread.
fn write_pieces<W: Write + Send>(
    pieces: &[Piece<'_>],
    out: &mut W,
    stats: &mut [ErrorStats],
) -> std::io::Result<()> {
    let blocks: Vec<(usize, &Coded<'_>)> = pieces
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Piece::Encode(c) => Some((i, c)),
            _ => None,
        })
        .collect();
    let threads = rayon::current_num_threads();
    let line = Line {
        pieces,
        blocks: &blocks,
        ahead: threads + 1,
        claimed: AtomicUsize::new(0),
        written: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        done: Mutex::new(BTreeMap::new()),
        free: Mutex::new(Vec::new()),
        writer: Mutex::new(Writer {
            out,
            from: 0,
            stats,
            error: None,
        }),
    };
    rayon::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| line.work());
        }
        line.work();
    });
    // Every block was written by the thread that finished it or by the one writing then
    // (see `Line::drain`), unless a write failed.
    let writer = line.writer.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = writer.error {
        return Err(e);
    }
    debug_assert_eq!(line.written.into_inner(), blocks.len());
    write_plain(&pieces[writer.from..], writer.out)
}

/// The shared state of [`write_pieces`]: blocks are numbered in file order.
struct Line<'p, 'w, W> {
    pieces: &'p [Piece<'p>],
    /// Each block, and the index of its piece.
    blocks: &'p [(usize, &'p Coded<'p>)],
    /// How many blocks may be claimed and not yet written.
    ahead: usize,
    /// Blocks claimed so far, and written so far (all before that number).
    claimed: AtomicUsize,
    written: AtomicUsize,
    /// A write failed: claim nothing more.
    failed: AtomicBool,
    /// Blocks encoded and not yet written: their codes and statistics.
    done: Mutex<BTreeMap<usize, (Vec<u8>, ErrorStats)>>,
    /// Code buffers written out, for the next blocks.
    free: Mutex<Vec<Vec<u8>>>,
    writer: Mutex<Writer<'w, W>>,
}

/// What only the thread writing may touch.
struct Writer<'w, W> {
    out: &'w mut W,
    /// The first piece not yet written.
    from: usize,
    stats: &'w mut [ErrorStats],
    error: Option<std::io::Error>,
}

/// Locks `m`; a panic elsewhere (which ends the run anyway) does not stop the others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Write> Line<'_, '_, W> {
    /// One thread's part: claim, encode, write what is ready, until every block is claimed.
    fn work(&self) {
        // A panic here would leave the others waiting for its block: they stop instead, and
        // the scope passes the panic on.
        struct StopOnPanic<'a>(&'a AtomicBool);
        impl Drop for StopOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, Ordering::Release);
                }
            }
        }
        let _stop = StopOnPanic(&self.failed);
        loop {
            if self.failed.load(Ordering::Acquire) {
                return;
            }
            let k = self.claimed.load(Ordering::Acquire);
            if k >= self.blocks.len() {
                return;
            }
            if k >= self.written.load(Ordering::Acquire) + self.ahead {
                // Too far ahead of the file: write if no one is, else let the writer run.
                self.drain();
                std::thread::yield_now();
                continue;
            }
            let next = self
                .claimed
                .compare_exchange(k, k + 1, Ordering::AcqRel, Ordering::Acquire);
            if next.is_err() {
                continue;
            }
            let mut codes = lock(&self.free).pop().unwrap_or_default();
            let block_stats = encode_block(self.blocks[k].1, &mut codes);
            lock(&self.done).insert(k, (codes, block_stats));
            self.drain();
        }
    }

    /// Writes every encoded block that is next in the file, with the plain pieces before it,
    /// unless another thread is writing: that one then writes it. After letting the writer
    /// go, looks again, since a block may have been done meanwhile by a thread that found
    /// the writer taken.
    fn drain(&self) {
        loop {
            let Ok(mut w) = self.writer.try_lock() else {
                return;
            };
            loop {
                let k = self.written.load(Ordering::Acquire);
                let Some((codes, block_stats)) = lock(&self.done).remove(&k) else {
                    break;
                };
                let (i, block) = self.blocks[k];
                if w.error.is_none() {
                    let from = w.from;
                    let wrote = write_plain(&self.pieces[from..i], w.out)
                        .and_then(|()| w.out.write_all(&codes));
                    if let Err(e) = wrote {
                        w.error = Some(e);
                        self.failed.store(true, Ordering::Release);
                    }
                }
                w.stats[block.job] = w.stats[block.job].merge(block_stats);
                w.from = i + 1;
                lock(&self.free).push(codes);
                self.written.store(k + 1, Ordering::Release);
            }
            drop(w);
            let k = self.written.load(Ordering::Acquire);
            if !lock(&self.done).contains_key(&k) {
                return;
            }
        }
    }
}

/// Writes pieces that need no encoding (an `Encode` piece among them is a bug, skipped).
fn write_plain<W: Write>(pieces: &[Piece<'_>], out: &mut W) -> std::io::Result<()> {
    for piece in pieces {
        match piece {
            Piece::Bytes(b) => out.write_all(b)?,
            Piece::Owned(b) => out.write_all(b)?,
            Piece::Len(l) => out.write_all(l)?,
            Piece::Rescaled(values) => {
                let mut written = Ok(());
                // A megabyte at a time: memory stays flat.
                values.blocks(crate::quant::CHUNK * 4, |_, v| {
                    if written.is_ok() {
                        written = write_f32_le(out, v);
                    }
                });
                written?;
            }
            Piece::Encode(_) => debug_assert!(false, "an encoded piece written plain"),
        }
    }
    Ok(())
}

/// Encodes one block, rescaled first when equalization changes it, into `out` (resized to
/// fit).
fn encode_block(block: &Coded<'_>, out: &mut Vec<u8>) -> ErrorStats {
    let (encoding, first) = (block.encoding, block.first);
    let n = block.bytes.len() / 4;
    out.resize(encoding.bytes_for(n as u64) as usize, 0);
    crate::quant::with_f32(block.bytes, |values| match block.rescale {
        None => encoding.encode_chunks(values, first, out, None),
        Some(r) => {
            let prepare = |at, src: &[f32], dst: &mut Vec<f32>| r.apply_to(at, src, dst);
            encoding.encode_chunks(values, first, out, Some(&prepare))
        }
    })
}

/// Writes f32 values as little-endian bytes (the model's byte order on any host).
fn write_f32_le<W: Write>(out: &mut W, values: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        out.write_all(bytemuck::cast_slice(values))
    } else {
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.write_all(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Options};

    const MLP: &[u8] = include_bytes!("../fixtures/mlp.tflite");

    /// Data of every buffer of a written model, from its own tables.
    fn buffer_bytes(bytes: &[u8]) -> Vec<Vec<u8>> {
        let m = Model::parse(bytes).unwrap();
        (0..m.buffers().len() as u32)
            .map(|b| m.buffer_data(b).to_vec())
            .collect()
    }

    /// A float tensor of `n` values that float16 holds exactly and inexactly, as LE bytes.
    fn floats(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (((i % 20_000) as f32 - 10_000.0) * 0.37).to_le_bytes())
            .collect()
    }

    /// float16 codes computed one value at a time, independently of the encoder.
    fn float16_codes(data: &[u8]) -> Vec<u8> {
        data.chunks(4)
            .flat_map(|b| {
                half::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes()
            })
            .collect()
    }

    /// Float16 codes of one tensor written by `write_pieces` called on a thread of a pool.
    fn float16_on_pool(values: Values<'_>) -> Vec<u8> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| float16_written(values))
    }

    /// Writes `values` as one float16 job, block by block, between two plain pieces.
    fn write_float16<W: Write + Send>(
        values: Values<'_>,
        out: &mut W,
    ) -> std::io::Result<ErrorStats> {
        let mut pieces = vec![Piece::Bytes(b"<")];
        encode_pieces(0, values, &Encoding::Float16, &mut pieces);
        pieces.push(Piece::Len(*b">>>>"));
        let mut stats = [ErrorStats::default()];
        write_pieces(&pieces, out, &mut stats)?;
        Ok(stats[0])
    }

    /// Float16 codes of one tensor written by `write_pieces` (without the plain pieces).
    fn float16_written(values: Values<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let stats = write_float16(values, &mut out).unwrap();
        assert_eq!(
            stats.count,
            values.len() as u64,
            "every block measured once"
        );
        assert!(out.starts_with(b"<") && out.ends_with(b">>>>"), "in order");
        out[1..out.len() - 4].to_vec()
    }

    #[test]
    fn streamed_blocks_arrive_whole_and_in_order_from_any_thread() {
        // Ten and a bit parallel chunks: several blocks, the last one short.
        let data = floats(10 * crate::quant::CHUNK + 3);
        let want = float16_codes(&data);
        assert!(
            float16_written(Values::of(&data)) == want,
            "from a thread outside the pool"
        );
        assert!(
            float16_on_pool(Values::of(&data)) == want,
            "from a pool thread"
        );
    }

    /// Two tensors with a plain piece between: the last block of the first is written while
    /// the first of the second is encoded; the bytes stay in order and each job gets the
    /// statistics of its own blocks.
    #[test]
    fn consecutive_tensors_keep_their_order_and_statistics() {
        let (a, b) = (
            floats(5 * crate::quant::CHUNK + 1),
            floats(3 * crate::quant::CHUNK),
        );
        let b: Vec<u8> = b
            .chunks(4)
            .flat_map(|x| (f32::from_le_bytes(x.try_into().unwrap()) * 3.0).to_le_bytes())
            .collect();
        let mut pieces = vec![Piece::Bytes(b"head")];
        encode_pieces(0, Values::of(&a), &Encoding::Float16, &mut pieces);
        pieces.push(Piece::Owned(b"mid".to_vec()));
        encode_pieces(1, Values::of(&b), &Encoding::Float16, &mut pieces);
        let mut stats = [ErrorStats::default(); 2];
        let mut out = Vec::new();
        write_pieces(&pieces, &mut out, &mut stats).unwrap();
        let want = [&b"head"[..], &float16_codes(&a), b"mid", &float16_codes(&b)].concat();
        assert!(out == want);
        // Each job's signal (Σx²), summed here in f64 one value at a time.
        let signal = |d: &[u8]| -> f64 {
            d.chunks(4)
                .map(|x| f64::from(f32::from_le_bytes(x.try_into().unwrap())).powi(2))
                .sum()
        };
        for (s, d) in stats.iter().zip([&a, &b]) {
            assert_eq!(s.count, d.len() as u64 / 4);
            let want = signal(d);
            assert!(
                (s.signal - want).abs() <= want * 1e-5,
                "{} vs {want}",
                s.signal
            );
        }
    }

    /// An equalized buffer is encoded from its rescaled values made piece by piece: the same
    /// bytes as float16 codes of the whole tensor rescaled beforehand, one value at a time,
    /// from outside the pool or on a pool thread.
    #[test]
    fn rescaled_buffers_encode_their_rescaled_values() {
        let (rows, cols) = (37, 4099);
        let data = floats(rows * cols);
        let out_f: Vec<f32> = (0..rows).map(|o| 0.5 + o as f32 * 0.25).collect();
        let in_f: Vec<f32> = (0..cols).map(|i| 2.0 - (i % 7) as f32 * 0.125).collect();
        let r = Rescale::new(&[rows, cols])
            .multiply(1, in_f.clone())
            .divide(0, out_f.clone());
        let rescaled: Vec<u8> = data
            .chunks(4)
            .enumerate()
            .flat_map(|(e, b)| {
                let x = f32::from_le_bytes(b.try_into().unwrap());
                (x * in_f[e % cols] / out_f[e / cols]).to_le_bytes()
            })
            .collect();
        let want = float16_codes(&rescaled);
        let values = Values {
            bytes: &data,
            rescale: Some(&r),
        };
        assert!(float16_written(values) == want, "outside the pool");
        assert!(float16_on_pool(values) == want, "on a pool thread");
    }

    /// A writer that takes its time now and then, so that the encoders get ahead of it and
    /// must wait (at most `threads + 1` blocks in flight).
    struct Slow<'a>(&'a mut Vec<u8>, usize);
    impl Write for Slow<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1 += 1;
            if self.1.is_multiple_of(5) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Fifty blocks of odd sizes, of three jobs, with plain pieces between, on pools of one,
    /// two and five threads behind a slow writer: every byte in file order, and each job's
    /// statistics counting its own elements once.
    #[test]
    fn many_blocks_on_any_pool_come_out_in_order() {
        let data = floats(50 * 3001);
        let mut pieces = Vec::new();
        let mut want = Vec::new();
        let mut counts = [0u64; 3];
        for (k, block) in data.chunks(3001 * 4).enumerate() {
            let bytes: &[u8] = if k % 7 == 3 {
                b""
            } else {
                &block[..block.len() - k % 3 * 4]
            };
            pieces.push(Piece::Len((k as u32).to_le_bytes()));
            want.extend_from_slice(&(k as u32).to_le_bytes());
            pieces.push(Piece::Encode(Coded {
                job: k % 3,
                bytes,
                first: 0,
                encoding: &Encoding::Float16,
                rescale: None,
            }));
            want.extend(float16_codes(bytes));
            counts[k % 3] += bytes.len() as u64 / 4;
        }
        pieces.push(Piece::Bytes(b"end"));
        want.extend_from_slice(b"end");
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = Vec::new();
            let mut stats = [ErrorStats::default(); 3];
            pool.install(|| write_pieces(&pieces, &mut Slow(&mut out, 0), &mut stats))
                .unwrap();
            assert!(out == want, "{threads} threads");
            let got: Vec<u64> = stats.iter().map(|s| s.count).collect();
            assert_eq!(got, counts, "{threads} threads");
        }
    }

    #[test]
    fn a_failing_write_stops_the_stream_with_its_error() {
        /// Accepts `left` bytes, then fails.
        struct Full {
            left: usize,
        }
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.left == 0 {
                    return Err(std::io::Error::other("disk full"));
                }
                let n = buf.len().min(self.left);
                self.left -= n;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let data = floats(40 * crate::quant::CHUNK);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for left in [0, 1000, 3 * crate::quant::CHUNK] {
            let mut out = Full { left };
            let e = write_float16(Values::of(&data), &mut out).unwrap_err();
            assert_eq!(e.to_string(), "disk full");
            // On more threads than blocks in flight, the others stop too (no hang).
            let mut out = Full { left };
            let e = pool
                .install(|| write_float16(Values::of(&data), &mut out))
                .unwrap_err();
            assert_eq!(e.to_string(), "disk full");
        }
    }

    #[test]
    fn passing_the_inline_limit_moves_the_data_after_the_flatbuffer() {
        let model = Model::parse(MLP).unwrap();
        let plan = plan::plan(&model, &Options::default());
        let mut inline = Vec::new();
        let w = write_model_limited(&plan, LayoutPolicy::Auto, INLINE_LIMIT, &mut inline).unwrap();
        assert_eq!(w.layout, Layout::Inline);
        // A limit below this small model's size: the automatic switch must happen.
        let mut moved = Vec::new();
        let limit = inline.len() as u64 / 2;
        let w = write_model_limited(&plan, LayoutPolicy::Auto, limit, &mut moved).unwrap();
        assert_eq!(w.layout, Layout::External);
        assert_eq!(w.len, moved.len() as u64);
        let out = Model::parse(&moved).unwrap();
        assert!(out.has_external_buffers());
        // Every buffer with data is addressed by offset/size, 16-byte aligned, past the
        // flatbuffer, and holds the same bytes as the inline layout.
        for b in out.buffers().iter().filter(|b| !b.data.is_empty()) {
            assert!(b.external);
            assert_eq!(b.data.start % 16, 0);
        }
        assert_eq!(buffer_bytes(&moved), buffer_bytes(&inline));
        // Forcing the layout gives the same file as crossing the limit.
        let mut forced = Vec::new();
        write_model(&plan, LayoutPolicy::External, &mut forced).unwrap();
        assert_eq!(forced, moved);
    }
}
