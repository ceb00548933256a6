//! `tflq quantize` on single models: outputs, summaries, skip reasons, errors, and that
//! everything but the intended changes survives the rewrite.

use std::collections::BTreeSet;

use tflq_schema as fb;

use crate::*;

/// Runs `tflq quantize IN -o OUT --json [extra]` and returns the output path and summary.
fn quantize(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = dir.join(name.replace(".tflite", ".q.tflite"));
    let assert = tflq()
        .args(["quantize", "--json"])
        .args(extra)
        .arg(fixture(name))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    (out, json(&assert.get_output().stdout))
}

fn unpack(bytes: &[u8]) -> fb::ModelT {
    fb::root_as_model(bytes).expect("output verifies").unpack()
}

/// The float32 fixtures, which all have weights to quantize.
const FLOAT_FIXTURES: [&str; 9] = [
    "mlp.tflite",
    "cnn.tflite",
    "lstm.tflite",
    "embedding.tflite",
    "control_flow.tflite",
    "two_signatures.tflite",
    "deprecated_opcodes.tflite",
    "metadata.tflite",
    "external_buffers.tflite",
];

#[test]
fn quantizes_the_mlp_and_shrinks_it() {
    let dir = tmp();
    let (out, j) = quantize(dir.path(), "mlp.tflite", &[]);
    assert_eq!(j["changed"], true);
    let before = std::fs::metadata(fixture("mlp.tflite")).unwrap().len();
    let after = std::fs::metadata(&out).unwrap().len();
    assert!(after * 100 < before * 35, "{before} -> {after}");
    assert_eq!(j["output_bytes"], after);
    assert_eq!(j["input_bytes"], before);
    assert_eq!(entries(dir.path()), ["mlp.q.tflite"]);
}

/// Everything the rewrite should not touch is the same, tensor by tensor and op by op; what
/// it should touch is exactly: each quantized tensor lost its buffer, gained an INT8 twin
/// holding that buffer, and a DEQUANTIZE op (first in its subgraph) from twin to tensor
/// (the shared diff of `tests/mutate/structure.rs`), for the tensors the summary names.
#[test]
fn every_fixture_keeps_all_but_the_intended_changes() {
    for name in FLOAT_FIXTURES {
        let dir = tmp();
        let (out, j) = quantize(dir.path(), name, &["--no-equalize"]);
        let input = std::fs::read(fixture(name)).unwrap();
        let output = std::fs::read(&out).unwrap();
        let a = unpack(&input);
        let rows = j["quantized"].as_array().unwrap();
        let want: BTreeSet<(usize, usize)> = rows
            .iter()
            .map(|q| {
                let (s, t) = (
                    q["subgraph"].as_u64().unwrap(),
                    q["tensor"].as_u64().unwrap(),
                );
                let tensor = &a.subgraphs.as_ref().unwrap()[s as usize]
                    .tensors
                    .as_ref()
                    .unwrap()[t as usize];
                assert_eq!(q["buffer"], tensor.buffer, "{name}: the summary's buffer");
                (s as usize, t as usize)
            })
            .collect();
        assert!(!want.is_empty(), "{name}");
        assert_eq!(want.len(), rows.len(), "{name}: each tensor named once");
        let run = std::panic::catch_unwind(|| {
            structure::check_weight_only(&input, &output, &want);
        });
        assert!(
            run.is_ok(),
            "{name}: the structural diff failed (see above)"
        );
    }
}

#[test]
fn buffer_data_is_16_byte_aligned() {
    for name in FLOAT_FIXTURES {
        let dir = tmp();
        let (out, _) = quantize(dir.path(), name, &[]);
        let bytes = std::fs::read(&out).unwrap();
        let model = tflq::Model::parse(&bytes).unwrap();
        for (i, b) in model.buffers().iter().enumerate() {
            if !b.data.is_empty() {
                assert_eq!(
                    b.data.start % 16,
                    0,
                    "{name}: buffer {i} at {}",
                    b.data.start
                );
            }
        }
    }
}

#[test]
fn running_twice_gives_the_same_model_as_once() {
    let dir = tmp();
    for name in FLOAT_FIXTURES {
        let (once, _) = quantize(dir.path(), name, &[]);
        let twice = dir.path().join("twice.tflite");
        let assert = tflq()
            .args(["quantize", "--json"])
            .arg(&once)
            .arg("-o")
            .arg(&twice)
            .assert()
            .success();
        let j = json(&assert.get_output().stdout);
        assert_eq!(j["changed"], false, "{name}");
        assert_eq!(
            std::fs::read(&once).unwrap(),
            std::fs::read(&twice).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn output_is_deterministic() {
    let dir = tmp();
    let (a, _) = quantize(dir.path(), "cnn.tflite", &[]);
    let first = std::fs::read(&a).unwrap();
    let (b, _) = quantize(dir.path(), "cnn.tflite", &[]);
    assert_eq!(first, std::fs::read(&b).unwrap());
}

#[test]
fn nothing_to_do_models_are_copied_unchanged_and_say_why() {
    for name in ["float16.tflite", "int8.tflite"] {
        let dir = tmp();
        let (out, j) = quantize(dir.path(), name, &[]);
        assert_eq!(j["changed"], false);
        assert_eq!(j["quantized"].as_array().unwrap().len(), 0);
        assert!(
            j["skipped_by_reason"]["not_float32"].as_u64().unwrap() > 0,
            "{name}: {j}"
        );
        assert_eq!(
            std::fs::read(out).unwrap(),
            std::fs::read(fixture(name)).unwrap()
        );
        let assert = tflq()
            .arg("quantize")
            .arg(fixture(name))
            .arg("-o")
            .arg(dir.path().join("x"))
            .assert();
        let text = String::from_utf8(assert.success().get_output().stdout.clone()).unwrap();
        assert!(text.contains("nothing to quantize"), "{text}");
    }
}

#[test]
fn min_elements_decides_what_is_too_small() {
    let dir = tmp();
    let (_, default) = quantize(dir.path(), "mlp.tflite", &[]);
    assert_eq!(default["quantized"].as_array().unwrap().len(), 2);
    assert_eq!(default["skipped_by_reason"]["too_small"], 4);
    for s in default["skipped"].as_array().unwrap() {
        assert_eq!(s["reason"], "too_small");
        assert!(s["elements"].as_u64().unwrap() < 1024);
        assert_eq!(s["min_elements"], 1024);
    }
    // With no minimum, the three kernels are quantized and the three biases stay float,
    // each named as the bias of its FULLY_CONNECTED; --quantize-biases takes them too.
    let (_, all) = quantize(dir.path(), "mlp.tflite", &["--min-elements", "0"]);
    assert_eq!(all["quantized"].as_array().unwrap().len(), 3);
    let skipped = all["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3);
    for s in skipped {
        assert_eq!(s["reason"], "bias");
        assert_eq!(s["op"], "FULLY_CONNECTED");
        assert!(s["name"].as_str().unwrap().contains("BiasAdd"), "{s}");
    }
    let (_, every) = quantize(
        dir.path(),
        "mlp.tflite",
        &["--min-elements", "0", "--quantize-biases"],
    );
    assert_eq!(every["quantized"].as_array().unwrap().len(), 6);
    assert_eq!(every["skipped"].as_array().unwrap().len(), 0);
}

#[test]
fn a_buffer_shared_with_an_int32_tensor_is_left_alone() {
    // control_flow.tflite: the converter stored the float 0.0 of `Greater/y` and the int32 0
    // of a loop counter in one 4-byte buffer.
    let dir = tmp();
    let (_, j) = quantize(dir.path(), "control_flow.tflite", &["--min-elements", "0"]);
    let shared: Vec<_> = j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reason"] == "shared_with_non_float")
        .collect();
    assert!(!shared.is_empty(), "{j}");
    assert!(
        shared
            .iter()
            .all(|s| s["detail"] == "buffer shared with a non-float tensor")
    );
}

#[test]
fn weights_shared_by_two_signatures_are_quantized_once() {
    let dir = tmp();
    let (out, j) = quantize(dir.path(), "two_signatures.tflite", &[]);
    let q = j["quantized"].as_array().unwrap();
    assert_eq!(q.len(), 2);
    assert_ne!(q[0]["subgraph"], q[1]["subgraph"]);
    assert_eq!(q[0]["buffer"], q[1]["buffer"]);
    assert_eq!(q[0]["scale"], q[1]["scale"]);
    let bytes = std::fs::read(out).unwrap();
    let model = tflq::Model::parse(&bytes).unwrap();
    let b = q[0]["buffer"].as_u64().unwrap() as usize;
    let users: Vec<_> = model
        .subgraphs()
        .iter()
        .flat_map(|s| s.tensors.iter())
        .filter(|t| t.buffer as usize == b)
        .map(|t| t.dtype)
        .collect();
    assert_eq!(users, [tflq::model::DType::INT8, tflq::model::DType::INT8]);
}

#[test]
fn deprecated_opcode_models_are_read_right() {
    let dir = tmp();
    let (out, j) = quantize(dir.path(), "deprecated_opcodes.tflite", &[]);
    let (_, mlp) = quantize(dir.path(), "mlp.tflite", &[]);
    assert_eq!(j["quantized"], mlp["quantized"]);
    let bytes = std::fs::read(out).unwrap();
    let model = tflq::Model::parse(&bytes).unwrap();
    let names: Vec<String> = model.subgraphs()[0].ops.iter().map(|o| o.name()).collect();
    assert_eq!(names.iter().filter(|n| *n == "DEQUANTIZE").count(), 2);
    assert!(names.contains(&"FULLY_CONNECTED".to_owned()), "{names:?}");
}

#[test]
fn external_layout_is_read_and_can_be_written() {
    let dir = tmp();
    let (out, j) = quantize(dir.path(), "external_buffers.tflite", &[]);
    assert_eq!(j["layout"], "inline");
    let (_, mlp) = quantize(dir.path(), "mlp.tflite", &[]);
    assert_eq!(j["quantized"], mlp["quantized"]);
    assert!(tflq::Model::parse(&std::fs::read(out).unwrap()).is_ok());

    let ext = dir.path().join("ext.tflite");
    let assert = tflq()
        .args(["quantize", "--json", "--layout", "external"])
        .arg(fixture("mlp.tflite"))
        .arg("-o")
        .arg(&ext)
        .assert()
        .success();
    assert_eq!(json(&assert.get_output().stdout)["layout"], "external");
    let bytes = std::fs::read(&ext).unwrap();
    let model = tflq::Model::parse(&bytes).unwrap();
    assert!(
        model
            .buffers()
            .iter()
            .filter(|b| !b.data.is_empty())
            .all(|b| b.external && b.data.start % 16 == 0)
    );
    let inline = std::fs::read(dir.path().join("mlp.q.tflite")).unwrap();
    let inline = tflq::Model::parse(&inline).unwrap();
    for (i, b) in model.buffers().iter().enumerate() {
        assert_eq!(
            model.buffer_data(i as u32),
            inline.buffer_data(i as u32),
            "buffer {i}"
        );
        assert_eq!(b.data.is_empty(), inline.buffers()[i].data.is_empty());
    }
}

#[test]
fn summary_text_fits_one_screen_and_names_reasons() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let assert = tflq()
        .arg("quantize")
        .arg(fixture("cnn.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let text = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    assert!(text.lines().count() < 25, "{text}");
    for needle in [
        "4 quantized",
        "too small",
        "weights:",
        "file:",
        "worst:",
        "time:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn missing_input_is_a_clear_error_and_writes_nothing() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    tflq()
        .arg("quantize")
        .arg(dir.path().join("nope.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("nope.tflite"))
        .stderr(predicates::str::contains("No such file"));
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn an_existing_folder_as_output_gets_the_input_name() {
    let dir = tmp();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    tflq()
        .arg("quantize")
        .arg(fixture("mlp.tflite"))
        .arg("-o")
        .arg(dir.path().join("d"))
        .assert()
        .code(0);
    assert_eq!(entries(dir.path()), ["d"]);
    assert_eq!(entries(&dir.path().join("d")), ["mlp.tflite"]);
}

#[test]
fn a_corrupt_model_is_refused_by_name_and_leaves_nothing() {
    let dir = tmp();
    let bad = dir.path().join("bad.tflite");
    let mut bytes = std::fs::read(fixture("mlp.tflite")).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&bad, &bytes).unwrap();
    tflq()
        .arg("quantize")
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("out.tflite"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("bad.tflite"))
        .stderr(predicates::str::contains("truncated: the file has "));
    assert_eq!(entries(dir.path()), ["bad.tflite"]);
    std::fs::write(&bad, b"hello world, not a model").unwrap();
    tflq()
        .arg("quantize")
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("out.tflite"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("not a TFLite model"));
    assert_eq!(entries(dir.path()), ["bad.tflite"]);
}

#[test]
fn output_equal_to_input_needs_in_place() {
    let dir = tmp();
    let model = dir.path().join("m.tflite");
    std::fs::copy(fixture("mlp.tflite"), &model).unwrap();
    let original = std::fs::read(&model).unwrap();
    tflq()
        .arg("quantize")
        .arg(&model)
        .arg("-o")
        .arg(&model)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--in-place"));
    assert_eq!(std::fs::read(&model).unwrap(), original);
    assert_eq!(entries(dir.path()), ["m.tflite"]);
    tflq()
        .arg("quantize")
        .arg(&model)
        .arg("-o")
        .arg(&model)
        .arg("--in-place")
        .assert()
        .success();
    let now = std::fs::read(&model).unwrap();
    assert!(now.len() * 3 < original.len());
    assert_eq!(entries(dir.path()), ["m.tflite"]);
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    tflq().arg("quantize").assert().code(2);
    tflq()
        .args(["quantize", "--min-elements", "lots", "a", "-o", "b"])
        .assert()
        .code(2);
    let help = tflq().arg("--help").assert().success();
    let text = String::from_utf8(help.get_output().stdout.clone()).unwrap();
    assert!(text.contains("Exit codes"), "{text}");
    let help = tflq().args(["quantize", "--help"]).assert().success();
    let text = String::from_utf8(help.get_output().stdout.clone()).unwrap();
    assert!(text.contains("--min-elements"), "{text}");
}

/// Newer converters' fields (FullyConnectedOptions.quant_spec) survive the rewrite, which
/// unpacks and repacks every operator.
#[test]
fn fully_connected_quant_spec_survives() {
    let dir = tmp();
    let bytes = std::fs::read(fixture("mlp.tflite")).unwrap();
    let mut m = fb::root_as_model(&bytes).unwrap().unpack();
    let mut set = 0;
    for op in m.subgraphs.as_mut().unwrap()[0].operators.as_mut().unwrap() {
        if let fb::BuiltinOptionsT::FullyConnectedOptions(o) = &mut op.builtin_options {
            o.quant_spec = Some(vec![7, 1, 2]);
            set += 1;
        }
    }
    assert!(set > 0);
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    let input = dir.path().join("spec.tflite");
    std::fs::write(&input, fbb.finished_data()).unwrap();
    let out = dir.path().join("out.tflite");
    tflq()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let q = unpack(&std::fs::read(out).unwrap());
    let specs: Vec<_> = q.subgraphs.unwrap()[0]
        .operators
        .clone()
        .unwrap()
        .into_iter()
        .filter_map(|op| match op.builtin_options {
            fb::BuiltinOptionsT::FullyConnectedOptions(o) => o.quant_spec,
            _ => None,
        })
        .collect();
    assert_eq!(specs, vec![vec![7u8, 1, 2]; set]);
}
