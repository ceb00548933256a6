//! Models that are structurally valid but wrong in meaning, built with the object API, and
//! the message each must be refused with.
//!
//! [`ATTACKS`] is one named model per way a model can be wrong, each with the words its
//! error must contain; the in-process tests and the CLI tests (which also check that no
//! output appears) both run the whole list. [`random`] makes random semantic damage of the
//! same kinds for the mutation run.

#![allow(dead_code)] // Shared by two test binaries, each using a part.

use std::path::Path;

use flatbuffers::FlatBufferBuilder;
use tflq_schema as fb;

use crate::rng::Rng;

/// The bytes of fixture `name`.
pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The model in `bytes` as owned objects, with data stored after the flatbuffer
/// (`offset`/`size`) moved into the buffers' `data`, so that packing it again is valid.
pub fn unpack(bytes: &[u8]) -> fb::ModelT {
    let mut m = fb::root_as_model(bytes)
        .expect("seed model verifies")
        .unpack();
    for b in m.buffers.iter_mut().flatten() {
        if b.offset > 1 {
            let (o, s) = (b.offset as usize, b.size as usize);
            b.data = Some(bytes[o..o + s].to_vec());
            b.offset = 0;
            b.size = 0;
        }
    }
    m
}

/// Packs `m` into a model file (all data inline).
pub fn pack(m: &fb::ModelT) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

/// Packs `m` with every non-empty buffer stored after the flatbuffer, 16-byte aligned, as
/// the converter's `use_buffer_offset` mode does. `tweak` may then change any buffer's
/// `(offset, size)`; the file keeps the original data where it was laid out.
pub fn pack_external(m: &fb::ModelT, tweak: impl FnOnce(&mut [(u64, u64)])) -> Vec<u8> {
    let mut m = m.clone();
    let mut data = Vec::new();
    for b in m.buffers.iter_mut().flatten() {
        match b.data.take().filter(|d| !d.is_empty()) {
            Some(d) => {
                // Placeholders of the final width, so the second packing has the same size.
                b.offset = u64::MAX;
                b.size = d.len() as u64;
                data.push(Some(d));
            }
            None => data.push(None),
        }
    }
    let head = pack(&m).len() as u64;
    let mut places = Vec::new();
    let mut at = head;
    for d in &data {
        match d {
            Some(d) => {
                at = at.div_ceil(16) * 16;
                places.push((at, d.len() as u64));
                at += d.len() as u64;
            }
            None => places.push((0, 0)),
        }
    }
    let laid_out = places.clone();
    tweak(&mut places);
    for (b, &(o, s)) in m.buffers.iter_mut().flatten().zip(&places) {
        if (o, s) != (0, 0) {
            b.offset = o;
            b.size = s;
        }
    }
    let mut bytes = pack(&m);
    assert_eq!(bytes.len() as u64, head, "placeholders keep the size");
    for (d, &(o, _)) in data.iter().zip(&laid_out) {
        if let Some(d) = d {
            bytes.resize(o as usize, 0);
            bytes.extend_from_slice(d);
        }
    }
    bytes
}

fn fixture(name: &str) -> fb::ModelT {
    unpack(&read_fixture(name))
}

fn tensor(m: &mut fb::ModelT, sg: usize, t: usize) -> &mut fb::TensorT {
    &mut m.subgraphs.as_mut().unwrap()[sg].tensors.as_mut().unwrap()[t]
}

fn op(m: &mut fb::ModelT, sg: usize, o: usize) -> &mut fb::OperatorT {
    &mut m.subgraphs.as_mut().unwrap()[sg]
        .operators
        .as_mut()
        .unwrap()[o]
}

fn subgraph(m: &mut fb::ModelT, sg: usize) -> &mut fb::SubGraphT {
    &mut m.subgraphs.as_mut().unwrap()[sg]
}

/// One named attack: how to make the model, and what its error must say.
pub struct Attack {
    pub name: &'static str,
    pub make: fn() -> Vec<u8>,
    /// Every one of these must appear in the message.
    pub expect: &'static [&'static str],
}

// mlp.tflite: tensor 5 is the 128x64 float32 weight in buffer 6, read by operator 0.
const MLP: &str = "mlp.tflite";

/// Every way a model can be wrong that the reader must refuse, with the words that say so.
pub const ATTACKS: &[Attack] = &[
    Attack {
        name: "empty file",
        make: Vec::new,
        expect: &["the file is empty (0 bytes): not a TFLite model"],
    },
    Attack {
        name: "seven bytes",
        make: || read_fixture(MLP)[..7].to_vec(),
        expect: &["truncated: the file has 7 bytes, the model refers to byte 8"],
    },
    Attack {
        name: "cut in half",
        make: || {
            let b = read_fixture(MLP);
            b[..b.len() / 2].to_vec()
        },
        expect: &["truncated: the file has 35406 bytes, the model refers to byte "],
    },
    Attack {
        name: "wrong identifier",
        make: || {
            let mut b = read_fixture(MLP);
            b[4..8].copy_from_slice(b"TFL2");
            b
        },
        expect: &["not a TFLite model: no TFL3 identifier (bytes 4 to 8 are \"TFL2\")"],
    },
    Attack {
        name: "a text file",
        make: || b"this is certainly not a model, just some text\n".to_vec(),
        expect: &["not a TFLite model: no TFL3 identifier (bytes 4 to 8 are \" is \")"],
    },
    Attack {
        name: "root offset past the end",
        make: || {
            let mut b = read_fixture(MLP);
            let past = (b.len() as u32 + 16).to_le_bytes();
            b[..4].copy_from_slice(&past);
            b
        },
        expect: &["truncated: the file has 70812 bytes, the model refers to byte "],
    },
    Attack {
        name: "tensor vector length inflated",
        make: || {
            let bytes = read_fixture(MLP);
            let model = fb::root_as_model(&bytes).unwrap();
            let tensors = model.subgraphs().unwrap().get(0).tensors().unwrap();
            let mut b = bytes.clone();
            let at = tensors.bytes().as_ptr() as usize - bytes.as_ptr() as usize - 4;
            b[at..at + 4].copy_from_slice(&0x3fff_ffffu32.to_le_bytes());
            b
        },
        expect: &["truncated: the file has 70812 bytes, the model refers to byte "],
    },
    Attack {
        name: "shared tables multiply the work",
        make: table_bomb,
        expect: &[
            "corrupt flatbuffer",
            "more tables than a",
            "offsets share tables",
        ],
    },
    Attack {
        name: "a shared vector multiplies the work",
        make: vector_bomb,
        expect: &["corrupt flatbuffer", "shared tables or vectors"],
    },
    Attack {
        name: "schema version 2",
        make: || {
            let mut m = fixture(MLP);
            m.version = 2;
            pack(&m)
        },
        expect: &["unsupported TFLite schema version 2"],
    },
    Attack {
        name: "no subgraphs",
        make: || {
            let mut m = fixture(MLP);
            m.subgraphs = Some(Vec::new());
            pack(&m)
        },
        expect: &["model has no subgraphs"],
    },
    Attack {
        name: "tensor buffer index out of range",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).buffer = 1000;
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 5",
            "mlp/dense_1/MatMul",
            "refers to buffer 1000, but the model has 14 buffers",
        ],
    },
    Attack {
        name: "operator code index out of range",
        make: || {
            let mut m = fixture(MLP);
            op(&mut m, 0, 1).opcode_index = 77;
            pack(&m)
        },
        expect: &["subgraph 0 operator 1 uses operator code 77, but the model has 2"],
    },
    Attack {
        name: "operator input out of range",
        make: || {
            let mut m = fixture(MLP);
            op(&mut m, 0, 0).inputs = Some(vec![0, 500, 6]);
            pack(&m)
        },
        expect: &[
            "subgraph 0 operator 0 input refers to tensor 500, but subgraph 0 has 11 tensors",
        ],
    },
    Attack {
        name: "operator output negative",
        make: || {
            let mut m = fixture(MLP);
            op(&mut m, 0, 3).outputs = Some(vec![-7]);
            pack(&m)
        },
        expect: &["subgraph 0 operator 3 output refers to tensor -7"],
    },
    Attack {
        name: "subgraph output out of range",
        make: || {
            let mut m = fixture(MLP);
            subgraph(&mut m, 0).outputs = Some(vec![11]);
            pack(&m)
        },
        expect: &["subgraph 0 output refers to tensor 11, but subgraph 0 has 11 tensors"],
    },
    Attack {
        name: "signature names a missing subgraph",
        make: || {
            let mut m = fixture("two_signatures.tflite");
            m.signature_defs.as_mut().unwrap()[1].subgraph_index = 5;
            pack(&m)
        },
        expect: &["signature 1 refers to subgraph 5, but the model has 2 subgraphs"],
    },
    Attack {
        name: "signature names a missing tensor",
        make: || {
            let mut m = fixture("two_signatures.tflite");
            let sig = &mut m.signature_defs.as_mut().unwrap()[0];
            sig.outputs.as_mut().unwrap()[0].tensor_index = 40;
            pack(&m)
        },
        expect: &["signature 0 (\"encode\") refers to tensor 40, but subgraph 0 has 4 tensors"],
    },
    Attack {
        name: "WHILE body is its own subgraph",
        make: || {
            let mut m = fixture("control_flow.tflite");
            if let fb::BuiltinOptionsT::WhileOptions(w) = &mut op(&mut m, 0, 0).builtin_options {
                w.body_subgraph_index = 0;
            }
            pack(&m)
        },
        expect: &["control-flow subgraphs form a cycle: 0 -> 0"],
    },
    Attack {
        name: "IF branch calls back into the main subgraph",
        make: || {
            // Subgraph 2 (the IF's then-branch) gets an IF of its own that calls subgraph 0.
            let mut m = fixture("control_flow.tflite");
            let mut call = op(&mut m, 0, 3).clone();
            if let fb::BuiltinOptionsT::IfOptions(o) = &mut call.builtin_options {
                o.then_subgraph_index = 0;
                o.else_subgraph_index = 0;
            }
            call.inputs = Some(vec![0]);
            call.outputs = Some(vec![2]);
            subgraph(&mut m, 2).operators.as_mut().unwrap().push(call);
            pack(&m)
        },
        expect: &["control-flow subgraphs form a cycle: 0 -> 2 -> 0"],
    },
    Attack {
        name: "WHILE condition out of range",
        make: || {
            let mut m = fixture("control_flow.tflite");
            if let fb::BuiltinOptionsT::WhileOptions(w) = &mut op(&mut m, 0, 0).builtin_options {
                w.cond_subgraph_index = 9;
            }
            pack(&m)
        },
        expect: &["subgraph 0 operator 0 refers to subgraph 9, but the model has 5 subgraphs"],
    },
    Attack {
        name: "negative dimension on a constant",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).shape = Some(vec![-128, -64]);
            pack(&m)
        },
        expect: &["subgraph 0 tensor 5", "invalid shape [-128, -64]"],
    },
    Attack {
        name: "element count overflows",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).shape = Some(vec![i32::MAX, i32::MAX, i32::MAX, 8]);
            pack(&m)
        },
        expect: &["subgraph 0 tensor 5", "whose size overflows"],
    },
    Attack {
        name: "byte size overflows",
        make: || {
            // (2^31-1)^2 * 2 elements fit in u64; times 4 bytes they do not.
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).shape = Some(vec![i32::MAX, i32::MAX, 2]);
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 5",
            "[2147483647, 2147483647, 2]",
            "overflows",
        ],
    },
    Attack {
        name: "absurd but representable dimensions",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).shape = Some(vec![1 << 30, 1 << 20]);
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 5",
            "buffer 6 holds 32768 bytes, but shape [1073741824, 1048576] of FLOAT32 needs 4503599627370496",
        ],
    },
    Attack {
        name: "buffer shorter than the shape needs",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).shape = Some(vec![129, 64]);
            pack(&m)
        },
        expect: &["buffer 6 holds 32768 bytes, but shape [129, 64] of FLOAT32 needs 33024"],
    },
    Attack {
        name: "tensor reads another tensor's buffer",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).buffer = 2;
            pack(&m)
        },
        expect: &["buffer 2 holds 256 bytes, but shape [128, 64] of FLOAT32 needs 32768"],
    },
    Attack {
        name: "type changed under the data",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).type_ = fb::TensorType::INT64;
            pack(&m)
        },
        expect: &["buffer 6 holds 32768 bytes, but shape [128, 64] of INT64 needs 65536"],
    },
    Attack {
        name: "unknown tensor type",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).type_ = fb::TensorType(77);
            pack(&m)
        },
        expect: &["subgraph 0 tensor 5", "unknown element type 77"],
    },
    Attack {
        name: "unknown operator",
        make: || {
            let mut m = fixture(MLP);
            let c = &mut m.operator_codes.as_mut().unwrap()[1];
            c.builtin_code = fb::BuiltinOperator(4000);
            pack(&m)
        },
        expect: &[
            "operator code 1 is builtin operator 4000, which the TFLite schema does not define",
        ],
    },
    Attack {
        name: "negative dimension on an activation",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 7).shape = Some(vec![-1, 128]);
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 7",
            "invalid shape [-1, 128]",
            "shape_signature",
        ],
    },
    Attack {
        name: "activation whose byte size overflows",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 7).shape = Some(vec![i32::MAX, i32::MAX, i32::MAX]);
            pack(&m)
        },
        expect: &["subgraph 0 tensor 7", "whose size overflows"],
    },
    Attack {
        name: "empty data vector read as zero bytes",
        make: || {
            let mut m = fixture(MLP);
            m.buffers.as_mut().unwrap()[6].data = Some(Vec::new());
            pack(&m)
        },
        expect: &["buffer 6 holds 0 bytes, but shape [128, 64] of FLOAT32 needs 32768"],
    },
    Attack {
        name: "variable with constant data",
        make: || {
            let mut m = fixture(MLP);
            tensor(&mut m, 0, 5).is_variable = true;
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 5",
            "is a variable but has constant data in buffer 6",
        ],
    },
    Attack {
        name: "more scales than zero points",
        make: || {
            let mut m = fixture("int8.tflite");
            // Tensor 9: the depthwise filter, 48 scales along dimension 3.
            let q = tensor(&mut m, 0, 9).quantization.as_mut().unwrap();
            q.zero_point = Some(vec![0; 47]);
            pack(&m)
        },
        expect: &[
            "subgraph 0 tensor 9 (\"cnn/dwconv/depthwise\")",
            "invalid quantization parameters: 48 scales but 47 zero points",
        ],
    },
    Attack {
        name: "quantized dimension outside the shape",
        make: || {
            let mut m = fixture("int8.tflite");
            tensor(&mut m, 0, 9)
                .quantization
                .as_mut()
                .unwrap()
                .quantized_dimension = 9;
            pack(&m)
        },
        expect: &[
            "invalid quantization parameters: quantized dimension 9 outside the 4 dimensions",
        ],
    },
    Attack {
        name: "wrong number of per-channel scales",
        make: || {
            let mut m = fixture(MLP);
            let mut q = fb::QuantizationParametersT::default();
            q.scale = Some(vec![0.5; 3]);
            q.zero_point = Some(vec![0; 3]);
            tensor(&mut m, 0, 5).quantization = Some(Box::new(q));
            pack(&m)
        },
        expect: &["3 scales: neither one (per tensor) nor 128 (per slice of dimension 0)"],
    },
    Attack {
        name: "operator reads what it writes",
        make: || {
            let mut m = fixture(MLP);
            op(&mut m, 0, 3).outputs = Some(vec![9]);
            pack(&m)
        },
        expect: &["subgraph 0 operator 3 both reads and writes tensor 9"],
    },
    Attack {
        name: "signature without a key",
        make: || {
            let mut m = fixture("two_signatures.tflite");
            m.signature_defs.as_mut().unwrap()[1].signature_key = None;
            pack(&m)
        },
        expect: &["signature 1 has no signature_key"],
    },
    Attack {
        name: "offset that points at itself",
        make: || {
            // The shape field of tensor 5 pointed at itself reads as an empty shape here,
            // but the runtime refuses the file: so must we.
            let bytes = read_fixture(MLP);
            let model = fb::root_as_model(&bytes).unwrap();
            let t = model.subgraphs().unwrap().get(0).tensors().unwrap().get(5);
            let at = t._tab.loc() + usize::from(t._tab.vtable().get(fb::Tensor::VT_SHAPE));
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&[0; 4]);
            b
        },
        expect: &[
            "corrupt flatbuffer: subgraph 0 tensor 5: an offset at position",
            "points at itself",
        ],
    },
    Attack {
        name: "zero-byte data after the flatbuffer",
        make: || {
            let m = fixture("external_buffers.tflite");
            pack_external(&m, |b| b[6].1 = 0)
        },
        expect: &["buffer 6 holds 0 bytes, but shape [128, 64] of FLOAT32 needs 32768"],
    },
    Attack {
        name: "no buffer table",
        make: || {
            let mut m = fixture("int8.tflite");
            m.buffers = None;
            pack(&m)
        },
        expect: &["model has no buffer table"],
    },
    Attack {
        name: "subgraph without a tensor table",
        make: || {
            let mut m = fixture("control_flow.tflite");
            subgraph(&mut m, 2).tensors = None;
            pack(&m)
        },
        expect: &["subgraph 2 has no tensor table"],
    },
    Attack {
        name: "custom operator without a name",
        make: || {
            let mut m = fixture(MLP);
            let c = &mut m.operator_codes.as_mut().unwrap()[1];
            c.builtin_code = fb::BuiltinOperator::CUSTOM;
            c.deprecated_builtin_code = 32;
            pack(&m)
        },
        expect: &["operator code 1 is CUSTOM but has no custom_code"],
    },
    Attack {
        name: "operator options of an unknown type",
        make: || {
            // Set the union's type byte in place: the object API cannot write an unknown one.
            let bytes = read_fixture(MLP);
            let model = fb::root_as_model(&bytes).unwrap();
            let o = model
                .subgraphs()
                .unwrap()
                .get(0)
                .operators()
                .unwrap()
                .get(3);
            let vt = o._tab.vtable().get(fb::Operator::VT_BUILTIN_OPTIONS_TYPE);
            let at = o._tab.loc() + usize::from(vt);
            let mut b = bytes.clone();
            b[at] = 250;
            b
        },
        expect: &["subgraph 0 operator 3: builtin options of unknown type 250"],
    },
    Attack {
        name: "external buffer past the end of the file",
        make: || {
            let m = fixture("external_buffers.tflite");
            pack_external(&m, |b| b[6].1 += 4096)
        },
        expect: &[
            "buffer 6: data at offset",
            "with size 36864 lies outside the",
            "-byte file",
        ],
    },
    Attack {
        name: "external offset plus size overflows",
        make: || {
            let m = fixture("external_buffers.tflite");
            pack_external(&m, |b| b[5] = (u64::MAX - 8, 32768))
        },
        expect: &["buffer 5: data at offset 18446744073709551607 with size 32768 lies outside"],
    },
    Attack {
        name: "overlapping external buffers",
        make: || {
            let m = fixture("external_buffers.tflite");
            pack_external(&m, |b| b[6].0 = b[5].0 + 16)
        },
        expect: &["buffers 5 and 6 overlap in the file"],
    },
    Attack {
        name: "inline data and an offset",
        make: || {
            let mut m = fixture(MLP);
            m.buffers.as_mut().unwrap()[6].offset = 64;
            m.buffers.as_mut().unwrap()[6].size = 16;
            pack(&m)
        },
        expect: &["buffer 6 has both inline data and an offset into the file"],
    },
    Attack {
        name: "large custom options outside the file",
        make: || {
            let mut m = fixture(MLP);
            let o = op(&mut m, 0, 3);
            o.large_custom_options_offset = 1 << 40;
            o.large_custom_options_size = 64;
            pack(&m)
        },
        expect: &[
            "subgraph 0 operator 3: custom options at offset 1099511627776 with size 64 lie outside the",
        ],
    },
    Attack {
        name: "metadata names a missing buffer",
        make: || {
            let mut m = fixture("metadata.tflite");
            m.metadata.as_mut().unwrap()[2].buffer = 4000;
            pack(&m)
        },
        expect: &["metadata 2 (\"tflq_test_metadata\") refers to buffer 4000, but the model has"],
    },
];

/// A model of one subgraph list and one buffer, around the given subgraphs.
fn finish<'a>(
    mut fbb: FlatBufferBuilder<'a>,
    subgraphs: &[flatbuffers::WIPOffset<fb::SubGraph<'a>>],
) -> Vec<u8> {
    let subgraphs = fbb.create_vector(subgraphs);
    let empty = fb::Buffer::create(&mut fbb, &fb::BufferArgs::default());
    let buffers = fbb.create_vector(&[empty]);
    let model = fb::Model::create(
        &mut fbb,
        &fb::ModelArgs {
            version: 3,
            subgraphs: Some(subgraphs),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    fb::finish_model_buffer(&mut fbb, model);
    fbb.finished_data().to_vec()
}

/// A file whose tables are shared so that following every offset visits far more than its
/// size: 512 subgraph entries point at one subgraph whose 512 tensor entries point at one
/// tensor. About 4 KB on disk; 2^18 tensors to whoever follows every offset.
pub fn table_bomb() -> Vec<u8> {
    let n = 512;
    let mut fbb = FlatBufferBuilder::new();
    let shape = fbb.create_vector(&[1i32, 2, 3]);
    let t = fb::Tensor::create(
        &mut fbb,
        &fb::TensorArgs {
            shape: Some(shape),
            ..Default::default()
        },
    );
    let tensors = fbb.create_vector(&vec![t; n]);
    let sg = fb::SubGraph::create(
        &mut fbb,
        &fb::SubGraphArgs {
            tensors: Some(tensors),
            ..Default::default()
        },
    );
    finish(fbb, &vec![sg; n])
}

/// 2000 distinct tensors share one shape of 8000 dimensions: about 60 KB on disk, 64 MB of
/// shapes to whoever copies each tensor's shape.
pub fn vector_bomb() -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let shape = fbb.create_vector(&vec![1i32; 8000]);
    let tensors: Vec<_> = (0..2000)
        .map(|_| {
            fb::Tensor::create(
                &mut fbb,
                &fb::TensorArgs {
                    shape: Some(shape),
                    ..Default::default()
                },
            )
        })
        .collect();
    let tensors = fbb.create_vector(&tensors);
    let sg = fb::SubGraph::create(
        &mut fbb,
        &fb::SubGraphArgs {
            tensors: Some(tensors),
            ..Default::default()
        },
    );
    finish(fbb, &[sg])
}

/// Random semantic damage to `m`: the same kinds as [`ATTACKS`], with random targets and
/// values. Returns what was done.
pub fn random(rng: &mut Rng, m: &mut fb::ModelT) -> String {
    let n_sg = m.subgraphs.as_ref().map_or(0, Vec::len);
    let n_buf = m.buffers.as_ref().map_or(0, Vec::len);
    let n_codes = m.operator_codes.as_ref().map_or(0, Vec::len);
    if n_sg == 0 {
        m.version = rng.next() as u32;
        return "version".to_owned();
    }
    let si = rng.below(n_sg);
    let n_t = subgraph(m, si).tensors.as_ref().map_or(0, Vec::len);
    let n_o = subgraph(m, si).operators.as_ref().map_or(0, Vec::len);
    let wild = |rng: &mut Rng, count: usize| -> i64 {
        match rng.below(6) {
            0 => -1,
            1 => count as i64,
            2 => count as i64 + rng.below(1000) as i64,
            3 => i64::from(i32::MAX),
            4 => i64::from(i32::MIN),
            _ => rng.below(count.max(1)) as i64,
        }
    };
    let dim = |rng: &mut Rng| -> i32 {
        match rng.below(7) {
            0 => -1,
            1 => -(rng.below(1 << 20) as i32),
            2 => i32::MAX,
            3 => 1 << rng.below(31),
            4 => 0,
            _ => rng.below(300) as i32,
        }
    };
    match rng.below(16) {
        0 | 1 if n_t > 0 => {
            let ti = rng.below(n_t);
            let t = tensor(m, si, ti);
            let rank = rng.below(6);
            let shape: Vec<i32> = (0..rank).map(|_| dim(rng)).collect();
            let s = format!("subgraph {si} tensor {ti} shape := {shape:?}");
            if rng.one_in(4) {
                t.shape_signature = Some(shape);
            } else {
                t.shape = Some(shape);
            }
            s
        }
        2 if n_t > 0 => {
            let ti = rng.below(n_t);
            let b = wild(rng, n_buf) as u32;
            tensor(m, si, ti).buffer = b;
            format!("subgraph {si} tensor {ti} buffer := {b}")
        }
        3 if n_t > 0 => {
            let ti = rng.below(n_t);
            let ty = rng.range(-3, 30) as i8;
            tensor(m, si, ti).type_ = fb::TensorType(ty);
            format!("subgraph {si} tensor {ti} type := {ty}")
        }
        4 if n_o > 0 => {
            let oi = rng.below(n_o);
            let c = wild(rng, n_codes) as u32;
            op(m, si, oi).opcode_index = c;
            format!("subgraph {si} op {oi} opcode := {c}")
        }
        5 if n_o > 0 => {
            let oi = rng.below(n_o);
            let v = wild(rng, n_t) as i32;
            let o = op(m, si, oi);
            let list = if rng.one_in(2) {
                o.inputs.get_or_insert_with(Vec::new)
            } else {
                o.outputs.get_or_insert_with(Vec::new)
            };
            if list.is_empty() || rng.one_in(4) {
                list.push(v);
            } else {
                let k = rng.below(list.len());
                list[k] = v;
            }
            format!("subgraph {si} op {oi} tensor ref := {v}")
        }
        6 if n_o > 0 => {
            // Control flow: make an operator call a subgraph (maybe its own: a cycle).
            let oi = rng.below(n_o);
            let a = wild(rng, n_sg) as i32;
            let b = wild(rng, n_sg) as i32;
            let mut w = fb::WhileOptionsT::default();
            w.cond_subgraph_index = a;
            w.body_subgraph_index = b;
            op(m, si, oi).builtin_options = fb::BuiltinOptionsT::WhileOptions(Box::new(w));
            format!("subgraph {si} op {oi} := WHILE({a}, {b})")
        }
        7 => {
            let which = rng.below(2);
            let v = wild(rng, n_t) as i32;
            let sg = subgraph(m, si);
            let list = if which == 0 {
                sg.inputs.get_or_insert_with(Vec::new)
            } else {
                sg.outputs.get_or_insert_with(Vec::new)
            };
            list.push(v);
            format!("subgraph {si} io += {v}")
        }
        8 if n_buf > 1 => {
            // A buffer moves after the flatbuffer, maybe outside it.
            let bi = 1 + rng.below(n_buf - 1);
            let b = &mut m.buffers.as_mut().unwrap()[bi];
            let keep = rng.one_in(3);
            if !keep {
                b.data = None;
            }
            let r = rng.next() % 100_000;
            b.offset = *rng.pick(&[2, 64, 1 << 20, u64::MAX - 4, r]);
            let r = rng.next() % 100_000;
            b.size = *rng.pick(&[0, 4, 1 << 12, u64::MAX, r]);
            format!(
                "buffer {bi} := offset {} size {} (data kept: {keep})",
                b.offset, b.size
            )
        }
        9 if n_buf > 1 => {
            let bi = 1 + rng.below(n_buf - 1);
            let b = &mut m.buffers.as_mut().unwrap()[bi];
            let d = b.data.get_or_insert_with(Vec::new);
            let new = match rng.below(3) {
                0 => d.len().saturating_sub(1 + rng.below(8)),
                1 => d.len() + 1 + rng.below(8),
                _ => rng.below(64),
            };
            d.resize(new, 0x7f);
            format!("buffer {bi} data length := {new}")
        }
        10 => {
            if let Some(sigs) = m.signature_defs.as_mut().filter(|s| !s.is_empty()) {
                let k = rng.below(sigs.len());
                let s = &mut sigs[k];
                if rng.one_in(2) {
                    s.subgraph_index = wild(rng, n_sg) as u32;
                    format!("signature {k} subgraph := {}", s.subgraph_index)
                } else {
                    let v = wild(rng, n_t) as u32;
                    let mut map = fb::TensorMapT::default();
                    map.name = Some("wild".to_owned());
                    map.tensor_index = v;
                    s.inputs.get_or_insert_with(Vec::new).push(map);
                    format!("signature {k} input tensor := {v}")
                }
            } else {
                m.version = 4;
                "version := 4".to_owned()
            }
        }
        11 => {
            let codes = m.operator_codes.get_or_insert_with(Vec::new);
            if codes.is_empty() {
                codes.push(fb::OperatorCodeT::default());
            }
            let k = rng.below(codes.len());
            let c = &mut codes[k];
            c.builtin_code = fb::BuiltinOperator(rng.range(-5, 300) as i32);
            c.deprecated_builtin_code = rng.next() as i8;
            format!(
                "opcode {k} := ({}, {})",
                c.builtin_code.0, c.deprecated_builtin_code
            )
        }
        12 if n_t > 0 => {
            // Float data changed: NaN, infinities, huge, subnormal, all equal.
            let ti = rng.below(n_t);
            let b = tensor(m, si, ti).buffer as usize;
            let v = *rng.pick(&[
                f32::NAN,
                f32::INFINITY,
                f32::MAX,
                -f32::MAX,
                f32::MIN_POSITIVE / 8.0,
                0.0,
                1.0,
            ]);
            let all = rng.one_in(3);
            if let Some(d) = m
                .buffers
                .as_mut()
                .and_then(|bs| bs.get_mut(b))
                .and_then(|b| b.data.as_mut())
            {
                for (i, c) in d.chunks_exact_mut(4).enumerate() {
                    if all || i % 7 == 3 {
                        c.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            format!("subgraph {si} tensor {ti} data := {v} (all: {all})")
        }
        13 if n_t > 0 => {
            // Quantization parameters of odd lengths on a float tensor.
            let ti = rng.below(n_t);
            let mut q = fb::QuantizationParametersT::default();
            q.scale = Some(vec![0.5; rng.below(4)]);
            q.zero_point = Some(vec![0; rng.below(4)]);
            q.quantized_dimension = rng.range(-2, 6) as i32;
            tensor(m, si, ti).quantization = Some(Box::new(q));
            format!("subgraph {si} tensor {ti} odd quantization")
        }
        14 if n_o > 0 => {
            let oi = rng.below(n_o);
            let o = op(m, si, oi);
            o.large_custom_options_offset = *rng.pick(&[0, 8, 1 << 16, u64::MAX]);
            o.large_custom_options_size = *rng.pick(&[1, 64, u64::MAX]);
            format!(
                "subgraph {si} op {oi} large custom options := {} + {}",
                o.large_custom_options_offset, o.large_custom_options_size
            )
        }
        _ => {
            // Duplicate a subgraph (shared weights across subgraphs), or drop one.
            let subs = m.subgraphs.as_mut().unwrap();
            if rng.one_in(2) {
                let copy = subs[si].clone();
                subs.push(copy);
                format!("subgraph {si} duplicated")
            } else {
                subs.remove(si);
                format!("subgraph {si} removed")
            }
        }
    }
}
