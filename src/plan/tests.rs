//! The planner's decisions on the fixtures, checked against what the model itself says
//! (shapes, operators, buffers) rather than against the planner's own helpers.

use super::*;
use crate::encoding::Geometry;

const MLP: &[u8] = include_bytes!("../../fixtures/mlp.tflite");
const CNN: &[u8] = include_bytes!("../../fixtures/cnn.tflite");
const LSTM: &[u8] = include_bytes!("../../fixtures/lstm.tflite");
const TWO_SIGNATURES: &[u8] = include_bytes!("../../fixtures/two_signatures.tflite");

fn dynamic() -> Options {
    Options {
        mode: Mode::Dynamic,
        ..Options::default()
    }
}

/// (operator, slot) of every reader of tensor `t` of subgraph 0, found by scanning inputs.
fn readers_of(model: &Model<'_>, t: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (oi, o) in model.subgraphs()[0].ops.iter().enumerate() {
        for (slot, &i) in o.inputs.iter().enumerate() {
            if i == t as i32 {
                out.push((oi, slot));
            }
        }
    }
    out
}

#[test]
fn default_plan_takes_every_big_float_constant_and_names_why_not_the_rest() {
    for bytes in [MLP, CNN, LSTM] {
        let model = Model::parse(bytes).unwrap();
        let plan = plan(&model, &Options::default());
        let sg = &model.subgraphs()[0];
        for (ti, t) in sg.tensors.iter().enumerate() {
            let r = TensorRef {
                subgraph: 0,
                tensor: ti,
            };
            let constant = !model.buffer_data(t.buffer).is_empty();
            let quantized = plan
                .jobs()
                .iter()
                .any(|j| j.users.iter().any(|u| u.tensor == r));
            let skipped = plan.skipped().iter().find(|(s, _)| *s == r);
            let qualifies = constant
                && t.dtype == crate::model::DType::FLOAT32
                && !t.is_variable
                && t.elements >= 1024;
            assert_eq!(quantized, qualifies, "tensor {ti} {}", t.name);
            // Every constant is either quantized or skipped with a reason, never both.
            assert_eq!(constant && !quantized, skipped.is_some(), "tensor {ti}");
            if let Some((_, reason)) = skipped {
                if t.dtype != crate::model::DType::FLOAT32 {
                    assert_eq!(reason.key(), "not_float32");
                } else if t.elements < 1024 {
                    assert_eq!(reason.key(), "too_small");
                }
            }
        }
        // Weight-only: every reader goes through DEQUANTIZE, none reads directly.
        for job in plan.jobs() {
            assert!(
                job.users
                    .iter()
                    .all(|u| u.dequantize && u.direct.is_empty())
            );
            assert_eq!(job.encoding.name(), "int8");
        }
        assert_eq!(plan.dequantize_version(), Some(2));
        assert!(plan.hybrid_ops().is_empty());
    }
}

#[test]
fn dynamic_mode_routes_fully_connected_weights_straight_into_the_kernel() {
    let model = Model::parse(MLP).unwrap();
    let plan = plan(&model, &dynamic());
    assert!(!plan.jobs().is_empty());
    for job in plan.jobs() {
        for u in &job.users {
            let readers = readers_of(&model, u.tensor.tensor);
            // Each weight is input 1 of a FULLY_CONNECTED, which now reads it directly.
            assert!(!readers.is_empty());
            for &(oi, slot) in &readers {
                assert_eq!(model.subgraphs()[0].ops[oi].op, Op::FullyConnected);
                assert_eq!(slot, 1);
            }
            assert_eq!(u.direct, readers);
            assert!(!u.dequantize, "no reader needs the float tensor");
        }
        let p = job.encoding.per_tensor().expect("per-tensor");
        assert_eq!(
            (p.zero_point, p.qmin),
            (0, -127),
            "hybrid weights are symmetric"
        );
    }
    // No DEQUANTIZE needed at all; every FULLY_CONNECTED with a quantized weight is hybrid at
    // the per-tensor version, with asymmetric inputs.
    assert_eq!(plan.dequantize_version(), None);
    let fcs: Vec<_> = plan.hybrid_ops().values().collect();
    assert!(!fcs.is_empty());
    for h in fcs {
        assert_eq!(
            (h.op, h.version, h.asymmetric_inputs),
            (Op::FullyConnected, 9, true)
        );
    }
}

#[test]
fn per_channel_follows_each_operator_s_axis() {
    let model = Model::parse(CNN).unwrap();
    let opts = Options {
        granularity: Granularity::PerChannel,
        ..Options::default()
    };
    let plan = plan(&model, &opts);
    let sg = &model.subgraphs()[0];
    let mut seen = BTreeMap::new();
    for job in plan.jobs() {
        let u = &job.users[0];
        let (oi, _) = readers_of(&model, u.tensor.tensor)[0];
        let op = sg.ops[oi].op;
        let want_axis = match op {
            Op::DepthwiseConv2d => 3,
            Op::Conv2d | Op::FullyConnected => 0,
            other => panic!("unexpected reader {other}"),
        };
        let (axis, channels) = job.encoding.channels().expect("per-channel");
        assert_eq!(axis, want_axis, "{op}");
        assert_eq!(channels, job.shape[axis]);
        assert_eq!(job.per_channel_fallback, None);
        seen.insert(op, axis);
    }
    assert_eq!(seen.len(), 3, "conv, depthwise and dense weights: {seen:?}");
    assert_eq!(plan.dequantize_version(), Some(5));
}

#[test]
fn hybrid_depthwise_gets_one_scale_per_channel_even_when_per_tensor_was_asked() {
    let model = Model::parse(CNN).unwrap();
    let plan = plan(&model, &dynamic());
    let sg = &model.subgraphs()[0];
    let depthwise = plan
        .jobs()
        .iter()
        .find(|j| {
            readers_of(&model, j.users[0].tensor.tensor)
                .iter()
                .any(|&(oi, _)| sg.ops[oi].op == Op::DepthwiseConv2d)
        })
        .expect("the depthwise kernel is quantized");
    let c = depthwise.encoding.codes().unwrap();
    assert_eq!(c.geometry, Geometry::channels(&depthwise.shape, 3));
    // The whole-tensor symmetric scale, repeated.
    let want = crate::quant::symmetric_params(depthwise.min, depthwise.max);
    assert!(c.params.iter().all(|&p| p == want));
    let op = plan
        .hybrid_ops()
        .values()
        .find(|h| h.op == Op::DepthwiseConv2d)
        .unwrap();
    assert_eq!(op.version, 6);
}

#[test]
fn recurrent_weights_fall_back_to_per_tensor_with_the_reason() {
    let model = Model::parse(LSTM).unwrap();
    let opts = Options {
        granularity: Granularity::PerChannel,
        ..Options::default()
    };
    let plan = plan(&model, &opts);
    let lstm_jobs: Vec<_> = plan
        .jobs()
        .iter()
        .filter(|j| j.per_channel_fallback.is_some())
        .collect();
    assert!(!lstm_jobs.is_empty());
    for j in lstm_jobs {
        assert!(j.encoding.per_tensor().is_some());
        assert_eq!(
            j.per_channel_fallback.as_deref(),
            Some("UNIDIRECTIONAL_SEQUENCE_LSTM has no channel axis for this input")
        );
    }
}

#[test]
fn a_buffer_shared_by_two_signatures_is_one_job_with_both_readers() {
    let model = Model::parse(TWO_SIGNATURES).unwrap();
    let plan = plan(&model, &Options::default());
    // Buffers read by tensors of more than one subgraph, found from the model alone.
    let mut owners: BTreeMap<u32, Vec<TensorRef>> = BTreeMap::new();
    for (si, sg) in model.subgraphs().iter().enumerate() {
        for (ti, t) in sg.tensors.iter().enumerate() {
            if t.elements >= 1024 && !model.buffer_data(t.buffer).is_empty() {
                owners.entry(t.buffer).or_default().push(TensorRef {
                    subgraph: si,
                    tensor: ti,
                });
            }
        }
    }
    let shared: Vec<_> = owners.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(!shared.is_empty());
    for (&buffer, tensors) in shared {
        let job = plan.job_of(buffer).expect("the shared buffer is quantized");
        let users: Vec<TensorRef> = job.users.iter().map(|u| u.tensor).collect();
        assert_eq!(&users, tensors);
    }
}

#[test]
fn excluded_and_not_included_operators_are_named() {
    let model = Model::parse(CNN).unwrap();
    let excluded = plan(
        &model,
        &Options {
            exclude_ops: vec![Op::DepthwiseConv2d],
            ..Options::default()
        },
    );
    let reasons: Vec<_> = excluded
        .skipped()
        .iter()
        .filter(|(_, r)| r.key() == "excluded_op")
        .collect();
    assert_eq!(reasons.len(), 1);
    assert_eq!(
        reasons[0].1.to_string(),
        "read by DEPTHWISE_CONV_2D, which --exclude-ops lists"
    );
    let included = plan(
        &model,
        &Options {
            include_ops: vec![Op::FullyConnected],
            ..Options::default()
        },
    );
    for job in included.jobs() {
        for &(oi, _) in &readers_of(&model, job.users[0].tensor.tensor) {
            assert_eq!(model.subgraphs()[0].ops[oi].op, Op::FullyConnected);
        }
    }
    assert!(
        included
            .skipped()
            .iter()
            .any(|(_, r)| r.key() == "not_included_op")
    );
}

#[test]
fn micro_target_plans_only_per_tensor_int8_behind_dequantize_whatever_is_asked() {
    for bytes in [MLP, CNN, LSTM] {
        let model = Model::parse(bytes).unwrap();
        for opts in [
            dynamic(),
            Options {
                granularity: Granularity::PerChannel,
                ..Options::default()
            },
            Options {
                weight_type: WeightType::Float16,
                ..Options::default()
            },
        ] {
            let asked = plan(&model, &opts);
            let micro = Options {
                target: Target::Micro,
                ..opts.clone()
            };
            assert!(micro.target_conflict().is_some(), "{opts:?}");
            let p = plan(&model, &micro);
            assert_eq!(p.target(), Target::Micro);
            assert!(p.hybrid_ops().is_empty());
            // The same tensors as on LiteRT, each per-tensor int8 behind a DEQUANTIZE.
            assert_eq!(p.jobs().len(), asked.jobs().len());
            for j in p.jobs() {
                assert_eq!(j.encoding.name(), "int8", "buffer {}", j.buffer);
                assert!(j.encoding.per_tensor().is_some());
                assert!(j.users.iter().all(|u| u.dequantize && u.direct.is_empty()));
            }
        }
    }
    assert_eq!(
        Options {
            target: Target::Micro,
            symmetric: true,
            ..Options::default()
        }
        .target_conflict(),
        None
    );
}
