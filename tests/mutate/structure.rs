//! The structural diff of a weight-only rewrite, shared by the CLI tests (`tests/cli`, every
//! fixture) and the property tests here (generated models): the output must be the input
//! with exactly the tensors `want` quantized, and nothing else changed.
//!
//! What the rewrite may change, and how: each quantized tensor lost its buffer (index 0), an
//! INT8 twin (appended to its subgraph, same shape) holds the codes in the old buffer index,
//! and a DEQUANTIZE operator from the twin to the tensor sits right before the first operator
//! that reads the tensor (at the end when only the subgraph's outputs read it); the
//! operator codes are the old ones plus one DEQUANTIZE (reused with version >= 2, or
//! appended). Everything else (metadata, signatures, other tensors, operators, buffers) is
//! equal object by object, and each code dequantizes to within half a step of its weight.

use std::collections::BTreeSet;

use tflq_schema as fb;

use crate::attacks::unpack;

const DEQUANTIZE: i32 = 6;

/// The bytes of buffer `buffer` (data inlined by [`unpack`]).
pub fn data(m: &fb::ModelT, buffer: u32) -> &[u8] {
    m.buffers
        .as_ref()
        .and_then(|b| b.get(buffer as usize))
        .and_then(|b| b.data.as_deref())
        .unwrap_or(&[])
}

/// The builtin code of an operator code (the larger of its two fields, as the runtime reads).
pub fn code_of(c: &fb::OperatorCodeT) -> i32 {
    c.builtin_code.0.max(i32::from(c.deprecated_builtin_code))
}

/// Checks that `output` is `input` rewritten weight-only per-tensor int8 with exactly the
/// (subgraph, tensor) pairs of `want` quantized. Panics naming what differs.
pub fn check_weight_only(input: &[u8], output: &[u8], want: &BTreeSet<(usize, usize)>) {
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
    assert!(data(&b, 0).is_empty(), "buffer 0 stays the empty sentinel");
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
    assert_eq!(dq.len(), 1, "exactly one DEQUANTIZE code");
    let dq = dq[0];
    assert!(bc.len() == ac.len() || (bc.len() == ac.len() + 1 && dq == ac.len()));
    assert_eq!(bc[dq].builtin_code, fb::BuiltinOperator::DEQUANTIZE);
    assert_eq!(i32::from(bc[dq].deprecated_builtin_code), DEQUANTIZE);
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
        let is_new = |op: &fb::OperatorT| {
            op.opcode_index as usize == dq
                && op.inputs.as_deref().is_some_and(|i| {
                    i.len() == 1 && usize::try_from(i[0]).is_ok_and(|t| t >= ta.len())
                })
        };
        let old_ops: Vec<fb::OperatorT> = ob.iter().filter(|o| !is_new(o)).cloned().collect();
        assert_eq!(
            &old_ops[..],
            &oa[..],
            "subgraph {si}: old operators unchanged, in their order"
        );
        assert_eq!((&sa.inputs, &sa.outputs), (&sb.inputs, &sb.outputs));
        assert_eq!(sa.name, sb.name);
        let mut done = BTreeSet::new();
        let mut twins = BTreeSet::new();
        for (p, op) in ob.iter().enumerate().filter(|(_, o)| is_new(o)) {
            let twin_index = op.inputs.as_ref().unwrap()[0] as usize;
            assert!(
                twin_index < tb.len() && twins.insert(twin_index),
                "one DEQUANTIZE per twin"
            );
            assert_eq!(op.outputs.as_ref().map(Vec::len), Some(1));
            let out = op.outputs.as_ref().unwrap()[0];
            // The next old operator (or the end) is the first one that reads the tensor.
            let next = ob[..p].iter().filter(|o| !is_new(o)).count();
            let first = oa
                .iter()
                .position(|o| o.inputs.as_deref().unwrap_or(&[]).contains(&out))
                .unwrap_or(oa.len());
            assert_eq!(
                next, first,
                "subgraph {si}: the DEQUANTIZE of tensor {out} sits right before its first reader"
            );
            let t = op.outputs.as_ref().unwrap()[0] as usize;
            assert!(
                mine.contains(&t),
                "subgraph {si}: tensor {t} was not to be quantized"
            );
            done.insert(t);
            let (orig, twin) = (&ta[t], &tb[twin_index]);
            assert_eq!(tb[t].buffer, 0, "the float tensor lost its data");
            assert_eq!(twin.buffer, orig.buffer, "the codes reuse the buffer index");
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
