//! Property tests over random valid models: quantizing changes exactly what it should.
//!
//! For each generated model, the tensors that should be quantized are worked out here from
//! the rules (FLOAT32 constant, not variable, sparse, quantized, written by an operator or
//! fed as a subgraph input; enough elements; all finite; every reader of its buffer
//! qualifying), and the output is compared with the input object by object: each quantized
//! tensor lost its buffer, gained an INT8 twin holding it and a DEQUANTIZE operator from the
//! twin, first in its subgraph; everything else is equal.

use std::collections::{BTreeMap, BTreeSet};

use tflq::{Granularity, LayoutPolicy, Mode, Options, WeightType};
use tflq_schema as fb;

use crate::attacks::unpack;
use crate::generator;
use crate::harness::{self, env_u64};
use crate::rng::Rng;
use crate::structure::{check_weight_only, code_of, data};

const DEQUANTIZE: i32 = 6;

/// The (subgraph, tensor) pairs the rules say must be quantized.
fn expected(m: &fb::ModelT, min_elements: u64) -> BTreeSet<(usize, usize)> {
    // Per buffer: its constant readers, and whether all of them qualify.
    let mut readers: BTreeMap<u32, (Vec<(usize, usize)>, bool)> = BTreeMap::new();
    for (si, sg) in m.subgraphs.iter().flatten().enumerate() {
        let written: BTreeSet<i32> = sg
            .operators
            .iter()
            .flatten()
            .flat_map(|o| o.outputs.iter().flatten().copied())
            .collect();
        let inputs: BTreeSet<i32> = sg.inputs.iter().flatten().copied().collect();
        // Each tensor's readers as (builtin code, input slot).
        let mut reads: BTreeMap<i32, Vec<(i32, usize)>> = BTreeMap::new();
        for o in sg.operators.iter().flatten() {
            let code = m
                .operator_codes
                .as_ref()
                .and_then(|c| c.get(o.opcode_index as usize))
                .map_or(-1, |c| {
                    c.builtin_code.0.max(i32::from(c.deprecated_builtin_code))
                });
            for (slot, &t) in o.inputs.iter().flatten().enumerate() {
                reads.entry(t).or_default().push((code, slot));
            }
        }
        for (ti, t) in sg.tensors.iter().flatten().enumerate() {
            let bytes = data(m, t.buffer);
            if bytes.is_empty() {
                continue;
            }
            let elements: u64 = t.shape.iter().flatten().map(|&d| d as u64).product();
            let quantized = t.quantization.as_ref().is_some_and(|q| {
                q.scale.as_ref().is_some_and(|s| !s.is_empty())
                    || q.details != fb::QuantizationDetailsT::NONE
            });
            let finite = bytes
                .chunks_exact(4)
                .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite());
            // Biases (CONV_2D 3, DEPTHWISE_CONV_2D 4, FULLY_CONNECTED 9, CONV_3D 132 at slot
            // 2; TRANSPOSE_CONV 67, CONV_3D_TRANSPOSE 141 at slot 3) and vectors read by
            // elementwise ops (ADD 0, MUL 18, SUB 41, DIV 42, PRELU 54, MAXIMUM 55, MINIMUM
            // 57, SQUARED_DIFFERENCE 99) stay float by default.
            let r = reads.get(&(ti as i32)).map_or(&[][..], Vec::as_slice);
            let bias = r
                .iter()
                .any(|&(c, slot)| matches!((c, slot), (3 | 4 | 9 | 132, 2) | (67 | 141, 3)));
            let vector = t.shape.iter().flatten().filter(|&&d| d != 1).count() == 1
                && r.iter()
                    .any(|&(c, _)| matches!(c, 0 | 18 | 41 | 42 | 54 | 55 | 57 | 99));
            let ok = t.type_ == fb::TensorType::FLOAT32
                && !bias
                && !vector
                && t.external_buffer == 0
                && !t.is_variable
                && t.sparsity.is_none()
                && !quantized
                && !written.contains(&(ti as i32))
                && !inputs.contains(&(ti as i32))
                && elements >= min_elements.max(1)
                && finite;
            let entry = readers.entry(t.buffer).or_insert((Vec::new(), true));
            entry.0.push((si, ti));
            entry.1 &= ok;
        }
    }
    readers
        .into_values()
        .filter(|(_, ok)| *ok)
        .flat_map(|(r, _)| r)
        .collect()
}

#[test]
fn quantizing_random_models_changes_exactly_what_it_should() {
    let cases = env_u64("TFLQ_PROPERTY_CASES", 300);
    let mut quantized = 0;
    for i in 0..cases {
        let mut rng = Rng::new(0x9a0d_0000 + i);
        let g = generator::model(&mut rng);
        let mut opts = Options {
            min_elements: *rng.pick(&[0, 1, 16, 1024]),
            ..Options::default()
        };
        if rng.one_in(3) {
            opts.layout = LayoutPolicy::External;
        }
        let out = tflq::quantize(&g.bytes, &opts)
            .unwrap_or_else(|e| panic!("generated model {i} is refused: {e}"));
        let want = expected(&g.model, opts.min_elements);
        let got: BTreeSet<(usize, usize)> = out
            .summary
            .quantized
            .iter()
            .map(|q| (q.subgraph, q.tensor))
            .collect();
        assert_eq!(got, want, "generated model {i}: which tensors");
        assert_eq!(out.summary.changed, !want.is_empty());
        let run = std::panic::catch_unwind(|| check_weight_only(&g.bytes, &out.bytes, &want));
        if run.is_err() {
            panic!("generated model {i} (min_elements {})", opts.min_elements);
        }
        // And the general property: it re-reads, and a second run keeps it.
        let mut tally = harness::Tally::default();
        harness::check(&out.bytes, &mut tally).unwrap_or_else(|e| panic!("model {i}: {e}"));
        quantized += usize::from(!want.is_empty());
    }
    // The generator must exercise the rewrite, not only the "nothing to do" path.
    assert!(quantized as u64 * 2 > cases, "{quantized} of {cases}");
}

/// The generated models also go into the mutation run; check the generator's own claim.
#[test]
fn generated_models_are_read_back_as_built() {
    for i in 0..50 {
        let g = generator::model(&mut Rng::new(0x7e57 + i));
        let model = tflq::Model::parse(&g.bytes).unwrap_or_else(|e| panic!("model {i}: {e}"));
        let sgs = g.model.subgraphs.as_ref().unwrap();
        assert_eq!(model.subgraphs().len(), sgs.len());
        for (s, t) in model.subgraphs().iter().zip(sgs) {
            let tensors = t.tensors.as_ref().unwrap();
            assert_eq!(s.tensors.len(), tensors.len());
            for (x, y) in s.tensors.iter().zip(tensors) {
                assert_eq!(model.buffer_data(x.buffer), data(&g.model, y.buffer));
            }
        }
    }
}

/// Option sets beyond the defaults: each mode, granularity, symmetry and type, and combined.
fn option_sets() -> Vec<(&'static str, Options)> {
    let o = Options::default;
    vec![
        (
            "dynamic",
            Options {
                mode: Mode::Dynamic,
                ..o()
            },
        ),
        (
            "per-channel",
            Options {
                granularity: Granularity::PerChannel,
                ..o()
            },
        ),
        (
            "symmetric",
            Options {
                symmetric: true,
                ..o()
            },
        ),
        (
            "float16",
            Options {
                weight_type: WeightType::Float16,
                ..o()
            },
        ),
        (
            "dynamic per-channel",
            Options {
                mode: Mode::Dynamic,
                granularity: Granularity::PerChannel,
                ..o()
            },
        ),
        (
            "per-channel symmetric external",
            Options {
                granularity: Granularity::PerChannel,
                symmetric: true,
                layout: LayoutPolicy::External,
                ..o()
            },
        ),
        (
            "dynamic float16 per-channel",
            Options {
                mode: Mode::Dynamic,
                weight_type: WeightType::Float16,
                granularity: Granularity::PerChannel,
                ..o()
            },
        ),
    ]
}

/// Operators with weight handling of their own (hybrid kernels, channel axes), written in
/// place of the generator's CONV_2D code so that the property runs over them too.
const RETARGET: &[i32] = &[3, 4, 7, 9, 16, 24, 27, 35, 36, 44, 46, 52, 67, 126, 132];

/// The generated model with its CONV_2D operator code (index 2) replaced by another code.
fn retarget(m: &fb::ModelT, code: i32) -> (fb::ModelT, Vec<u8>) {
    let mut m = m.clone();
    let c = &mut m.operator_codes.as_mut().unwrap()[2];
    c.builtin_code = fb::BuiltinOperator(code);
    c.deprecated_builtin_code = code.min(127) as i8;
    let bytes = crate::attacks::pack(&m);
    (m, bytes)
}

fn dims(t: &fb::TensorT) -> Vec<usize> {
    t.shape.iter().flatten().map(|&d| d as usize).collect()
}

/// Checks one quantized tensor of `b` (the output) against its float original in `a`, from
/// the raw bytes: the stored type, and every stored value within half a step (int8, per
/// tensor or per channel along `quantized_dimension`) or within float16 rounding.
fn check_encoding(
    a: &fb::ModelT,
    b: &fb::ModelT,
    row: &tflq::summary::QuantizedTensor,
    opts: &Options,
) {
    let (s, t) = (row.subgraph, row.tensor);
    let (sa, sb) = (
        &a.subgraphs.as_ref().unwrap()[s],
        &b.subgraphs.as_ref().unwrap()[s],
    );
    let orig = &sa.tensors.as_ref().unwrap()[t];
    let tb = sb.tensors.as_ref().unwrap();
    let codes = b.operator_codes.as_ref().unwrap();
    let is_dq = |o: &fb::OperatorT| code_of(&codes[o.opcode_index as usize]) == DEQUANTIZE;
    let reads = |o: &fb::OperatorT, i: usize| o.inputs.iter().flatten().any(|&x| x == i as i32);
    // The codes: in place of the float tensor (only hybrid readers), or in a twin that a
    // DEQUANTIZE turns back into the float tensor for the other readers.
    let writer = sb
        .operators
        .iter()
        .flatten()
        .find(|o| o.outputs.as_deref() == Some(&[t as i32][..]) && is_dq(o));
    let si = writer.map_or(t, |op| op.inputs.as_ref().unwrap()[0] as usize);
    let stored = &tb[si];
    let direct = sb
        .operators
        .iter()
        .flatten()
        .any(|o| !is_dq(o) && reads(o, si));
    assert_eq!(
        direct, row.hybrid,
        "{s}/{t}: read directly by an op iff the summary says hybrid"
    );
    assert_eq!(
        stored.buffer, orig.buffer,
        "{s}/{t}: the codes reuse the buffer index"
    );
    assert_eq!(stored.shape, orig.shape);
    let floats: Vec<f32> = data(a, orig.buffer)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let raw = data(b, stored.buffer);
    if opts.weight_type == WeightType::Float16 {
        assert!(
            !row.hybrid,
            "{s}/{t}: float16 weights never go to a hybrid kernel"
        );
        assert_eq!(stored.type_, fb::TensorType::FLOAT16);
        assert_eq!(raw.len(), floats.len() * 2);
        for (x, h) in floats.iter().zip(raw.chunks_exact(2)) {
            let y = half::f16::from_le_bytes([h[0], h[1]]).to_f32();
            // Round to nearest: half an ulp of 11 significant bits, or of the subnormal step.
            let tol = (x.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
            assert!((x - y).abs() <= tol, "{s}/{t}: float16 {x} stored as {y}");
        }
        return;
    }
    assert_eq!(stored.type_, fb::TensorType::INT8);
    assert_eq!(raw.len(), floats.len());
    let q = stored.quantization.as_ref().unwrap();
    let (scale, zp) = (q.scale.clone().unwrap(), q.zero_point.clone().unwrap());
    assert_eq!(scale.len(), zp.len());
    let shape = dims(orig);
    let axis = q.quantized_dimension as usize;
    let channels = if scale.len() > 1 { shape[axis] } else { 1 };
    assert_eq!(
        scale.len(),
        channels,
        "{s}/{t}: one scale per channel of axis {axis}"
    );
    if opts.granularity == Granularity::PerTensor && scale.len() > 1 {
        // Only a kernel that needs one scale per channel gets them, all equal.
        assert!(
            row.hybrid && scale.iter().all(|&x| x == scale[0]),
            "{s}/{t}"
        );
    }
    let inner: usize = shape[axis.min(shape.len())..].iter().skip(1).product();
    let symmetric = opts.symmetric || row.hybrid;
    for (i, (&x, &c)) in floats.iter().zip(raw).enumerate() {
        let ch = if channels > 1 {
            (i / inner) % channels
        } else {
            0
        };
        let (sc, z) = (scale[ch], zp[ch]);
        assert!(sc > 0.0 && sc.is_finite() && (-128..=127).contains(&z));
        let c = c as i8;
        if symmetric {
            assert!(
                z == 0 && c >= -127,
                "{s}/{t}: symmetric codes, zero point 0"
            );
        }
        let y = sc * (i64::from(c) - z) as f32;
        assert!(
            (x - y).abs() <= sc * 0.5001 + x.abs() * 1e-6,
            "{s}/{t} element {i}: {x} stored as {y} (scale {sc}, zero point {z})"
        );
    }
}

/// The properties of the default run, over dynamic, per-channel, symmetric and float16
/// options and their combinations, on generated models whose operators include every op
/// with a hybrid kernel or a channel axis: the same tensors are chosen as the rules say;
/// each is stored as the options ask and decodes to its float values; hybrid weights are
/// read directly and the rest through DEQUANTIZE; the output verifies and re-reads; a
/// second run with the same options changes nothing; nothing panics.
#[test]
fn quantizing_random_models_in_every_mode_keeps_the_properties() {
    let cases = env_u64("TFLQ_PROPERTY_MODE_CASES", 120);
    let (mut hybrid, mut per_channel, mut changed) = (0, 0, 0);
    for i in 0..cases {
        let mut rng = Rng::new(0x30de_0000 + i);
        let g = generator::model(&mut rng);
        let code = *rng.pick(RETARGET);
        let (model, bytes) = retarget(&g.model, code);
        let min_elements = *rng.pick(&[0, 16, 1024]);
        let want = expected(&model, min_elements);
        for (name, base) in option_sets() {
            let opts = Options {
                min_elements,
                ..base
            };
            let what =
                format!("generated model {i} (code {code}, {name}, min_elements {min_elements})");
            let out = std::panic::catch_unwind(|| tflq::quantize(&bytes, &opts))
                .unwrap_or_else(|_| panic!("{what}: panics"))
                .unwrap_or_else(|e| panic!("{what}: refused: {e}"));
            let got: BTreeSet<(usize, usize)> = out
                .summary
                .quantized
                .iter()
                .map(|q| (q.subgraph, q.tensor))
                .collect();
            assert_eq!(got, want, "{what}: which tensors");
            assert_eq!(out.summary.changed, !want.is_empty(), "{what}");
            fb::root_as_model(&out.bytes)
                .unwrap_or_else(|e| panic!("{what}: does not verify: {e}"));
            tflq::Model::parse(&out.bytes)
                .unwrap_or_else(|e| panic!("{what}: does not re-read: {e}"));
            if want.is_empty() {
                assert_eq!(out.bytes, bytes, "{what}: nothing to do, unchanged");
                continue;
            }
            changed += 1;
            let (a, b) = (unpack(&bytes), unpack(&out.bytes));
            for row in &out.summary.quantized {
                let run = std::panic::catch_unwind(|| check_encoding(&a, &b, row, &opts));
                assert!(
                    run.is_ok(),
                    "{what}: tensor {}/{}",
                    row.subgraph,
                    row.tensor
                );
                hybrid += usize::from(row.hybrid);
                per_channel += usize::from(row.channels.is_some());
                if row.hybrid {
                    assert!(opts.mode == Mode::Dynamic && opts.weight_type == WeightType::Int8);
                }
            }
            let again = tflq::quantize(&out.bytes, &opts)
                .unwrap_or_else(|e| panic!("{what}: refuses its own output: {e}"));
            assert!(
                !again.summary.changed,
                "{what}: a second run changes the model"
            );
            assert_eq!(
                again.bytes, out.bytes,
                "{what}: a second run changes the bytes"
            );
        }
    }
    // The cases must reach the paths under test, not only weight-only per-tensor.
    assert!(
        hybrid > 0 && per_channel > 0 && changed > 0,
        "hybrid {hybrid}, per-channel {per_channel}, changed {changed}"
    );
    eprintln!(
        "mode property: {changed} rewrites, {hybrid} hybrid and {per_channel} per-channel tensors"
    );
}
