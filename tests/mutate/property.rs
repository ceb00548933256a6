//! Property tests over random valid models: quantizing changes exactly what it should.
//!
//! For each generated model, the tensors that should be quantized are worked out here from
//! the rules (FLOAT32 constant, not variable, sparse, quantized, written by an operator or
//! fed as a subgraph input; enough elements; all finite; every reader of its buffer
//! qualifying), and the output is compared with the input object by object: each quantized
//! tensor lost its buffer, gained an INT8 twin holding it and a DEQUANTIZE operator from the
//! twin, first in its subgraph; everything else is equal.

use std::collections::{BTreeMap, BTreeSet};

use tflq::{LayoutPolicy, Options};
use tflq_schema as fb;

use crate::attacks::unpack;
use crate::generator;
use crate::harness::{self, env_u64};
use crate::rng::Rng;

const DEQUANTIZE: i32 = 6;

fn data(m: &fb::ModelT, buffer: u32) -> &[u8] {
    m.buffers
        .as_ref()
        .and_then(|b| b.get(buffer as usize))
        .and_then(|b| b.data.as_deref())
        .unwrap_or(&[])
}

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
            let ok = t.type_ == fb::TensorType::FLOAT32
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

fn code_of(c: &fb::OperatorCodeT) -> i32 {
    c.builtin_code.0.max(i32::from(c.deprecated_builtin_code))
}

/// Checks that `output` is `input` with exactly the tensors of `want` quantized.
fn check_rewrite(input: &[u8], output: &[u8], want: &BTreeSet<(usize, usize)>) {
    if want.is_empty() {
        assert_eq!(
            input, output,
            "nothing to do: the input comes out unchanged"
        );
        return;
    }
    let (a, b) = (unpack(input), unpack(output));
    assert_eq!(a.version, b.version);
    assert_eq!(a.description, b.description);
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.metadata_buffer, b.metadata_buffer);
    assert_eq!(a.signature_defs, b.signature_defs);
    let (ab, bb) = (a.buffers.as_ref().unwrap(), b.buffers.as_ref().unwrap());
    assert_eq!(ab.len(), bb.len(), "buffer count");
    let quantized_buffers: BTreeSet<u32> = want
        .iter()
        .map(|&(s, t)| a.subgraphs.as_ref().unwrap()[s].tensors.as_ref().unwrap()[t].buffer)
        .collect();
    for i in 0..ab.len() as u32 {
        if !quantized_buffers.contains(&i) {
            assert_eq!(data(&a, i), data(&b, i), "buffer {i} keeps its bytes");
        }
    }

    // Operator codes: unchanged but for one DEQUANTIZE, reused (version >= 2) or appended.
    let (ac, bc) = (
        a.operator_codes.clone().unwrap(),
        b.operator_codes.clone().unwrap(),
    );
    let dq: Vec<usize> = (0..bc.len())
        .filter(|&i| code_of(&bc[i]) == DEQUANTIZE && bc[i].custom_code.is_none())
        .collect();
    let dq = dq[0];
    assert!(bc.len() == ac.len() || (bc.len() == ac.len() + 1 && dq == ac.len()));
    assert!(bc[dq].version >= 2);
    for (i, c) in ac.iter().enumerate() {
        if i != dq {
            assert_eq!(c, &bc[i], "operator code {i}");
        }
    }

    for (si, (sa, sb)) in a
        .subgraphs
        .as_ref()
        .unwrap()
        .iter()
        .zip(b.subgraphs.as_ref().unwrap())
        .enumerate()
    {
        let (ta, tb) = (sa.tensors.clone().unwrap(), sb.tensors.clone().unwrap());
        let (oa, ob) = (
            sa.operators.clone().unwrap_or_default(),
            sb.operators.clone().unwrap_or_default(),
        );
        let mine: Vec<usize> = want
            .iter()
            .filter(|(s, _)| *s == si)
            .map(|&(_, t)| t)
            .collect();
        let added = tb.len() - ta.len();
        assert_eq!(
            added,
            mine.len(),
            "subgraph {si}: one twin per quantized tensor"
        );
        assert_eq!(
            ob.len(),
            oa.len() + added,
            "subgraph {si}: one DEQUANTIZE each"
        );
        assert_eq!(
            &ob[added..],
            &oa[..],
            "subgraph {si}: old operators unchanged"
        );
        assert_eq!((&sa.inputs, &sa.outputs), (&sb.inputs, &sb.outputs));
        assert_eq!(sa.name, sb.name);
        let mut done = BTreeSet::new();
        for (k, op) in ob[..added].iter().enumerate() {
            assert_eq!(op.opcode_index as usize, dq);
            let twin_index = ta.len() + k;
            assert_eq!(op.inputs.as_deref(), Some(&[twin_index as i32][..]));
            let t = op.outputs.as_ref().unwrap()[0] as usize;
            assert!(
                mine.contains(&t),
                "subgraph {si}: tensor {t} was not to be quantized"
            );
            done.insert(t);
            let (orig, twin) = (&ta[t], &tb[twin_index]);
            assert_eq!(tb[t].buffer, 0, "the float tensor lost its data");
            assert_eq!(twin.buffer, orig.buffer);
            assert_eq!(twin.type_, fb::TensorType::INT8);
            assert_eq!(twin.shape, orig.shape);
            assert_eq!(twin.shape_signature, orig.shape_signature);
            let q = twin.quantization.as_ref().unwrap();
            let (scale, zp) = (q.scale.as_ref().unwrap(), q.zero_point.as_ref().unwrap());
            assert_eq!((scale.len(), zp.len()), (1, 1));
            assert!(scale[0] > 0.0 && scale[0].is_finite());
            assert!((-128..=127).contains(&zp[0]));
            let floats = data(&a, orig.buffer);
            let codes = data(&b, twin.buffer);
            assert_eq!(codes.len() * 4, floats.len());
            for (f, &c) in floats.chunks_exact(4).zip(codes) {
                let x = f32::from_le_bytes(f.try_into().unwrap());
                let y = scale[0] * (i64::from(c as i8) - zp[0]) as f32;
                assert!(
                    (x - y).abs() <= scale[0] * 0.5001 + x.abs() * 1e-6,
                    "{x} vs {y}"
                );
            }
        }
        assert_eq!(done.len(), mine.len(), "subgraph {si}: every tensor once");
        for (i, (x, y)) in ta.iter().zip(&tb).enumerate() {
            let mut x = x.clone();
            if mine.contains(&i) {
                x.buffer = 0;
            }
            assert_eq!(&x, y, "subgraph {si} tensor {i} changed beyond its buffer");
        }
    }
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
        let run = std::panic::catch_unwind(|| check_rewrite(&g.bytes, &out.bytes, &want));
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
