//! Quantization modes and tensor selection on the command line: flags, skip reasons,
//! fallbacks, warnings. (Their runtime behaviour is checked in tests/oracle/test_modes.py.)

use tflq_schema as fb;

use crate::*;

fn run_json(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let assert = tflq()
        .args(["quantize", "--json"])
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(out)
        .assert()
        .success();
    json(&assert.get_output().stdout)
}

fn reasons(j: &serde_json::Value) -> Vec<(String, String)> {
    j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn dynamic_mode_marks_hybrid_weights_and_removes_their_dequantize() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let j = run_json(&fixture("mlp.tflite"), &out, &["--mode", "dynamic"]);
    let q = j["quantized"].as_array().unwrap();
    assert!(
        q.iter()
            .all(|t| t["hybrid"] == true && t["zero_point"] == 0),
        "{j}"
    );
    let bytes = std::fs::read(out).unwrap();
    let model = tflq::Model::parse(&bytes).unwrap();
    assert!(
        model.subgraphs()[0]
            .ops
            .iter()
            .all(|o| o.name() != "DEQUANTIZE")
    );
    let fc = model.subgraphs()[0]
        .ops
        .iter()
        .filter(|o| o.name() == "FULLY_CONNECTED");
    for op in fc {
        let w = &model.subgraphs()[0].tensors[op.inputs[1] as usize];
        if w.elements >= 1024 {
            assert_eq!(w.dtype, tflq::model::DType::INT8, "{}", w.name);
        }
    }
}

#[test]
fn per_channel_reports_axis_and_falls_back_with_a_reason() {
    let dir = tmp();
    let j = run_json(
        &fixture("cnn.tflite"),
        &dir.path().join("o.tflite"),
        &["--granularity", "per-channel"],
    );
    let q = j["quantized"].as_array().unwrap();
    let axes: Vec<_> = q
        .iter()
        .map(|t| (t["encoding"].clone(), t["axis"].clone()))
        .collect();
    assert!(
        axes.iter().any(|(e, a)| e == "int8_per_channel" && a == 0),
        "{axes:?}"
    );
    let j = run_json(
        &fixture("lstm.tflite"),
        &dir.path().join("l.tflite"),
        &["--granularity", "per-channel"],
    );
    let fallbacks: Vec<_> = j["quantized"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["per_channel_fallback"].as_str())
        .collect();
    assert!(
        fallbacks
            .iter()
            .any(|f| f.contains("UNIDIRECTIONAL_SEQUENCE_LSTM has no channel axis")),
        "{fallbacks:?}"
    );
}

#[test]
fn float16_halves_the_weights() {
    let dir = tmp();
    let j = run_json(
        &fixture("mlp.tflite"),
        &dir.path().join("o.tflite"),
        &["--type", "float16"],
    );
    let q = j["quantized"].as_array().unwrap();
    assert!(q.iter().all(|t| t["encoding"] == "float16"));
    let elements: u64 = q.iter().map(|t| t["elements"].as_u64().unwrap()).sum();
    let before = j["weight_bytes_before"].as_u64().unwrap();
    assert_eq!(
        j["weight_bytes_after"].as_u64().unwrap(),
        before - 2 * elements
    );
}

#[test]
fn exclusion_rules_name_themselves() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let j = run_json(&fixture("cnn.tflite"), &out, &["--exclude-ops", "conv_2d"]);
    let r = reasons(&j);
    assert!(r.iter().any(|(_, why)| why == "excluded_op"), "{r:?}");
    let excluded: Vec<_> = j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reason"] == "excluded_op")
        .collect();
    assert!(
        excluded
            .iter()
            .all(|s| s["detail"] == "read by CONV_2D, which --exclude-ops lists")
    );
    assert_eq!(j["quantized"].as_array().unwrap().len() + excluded.len(), 4);
    let j = run_json(
        &fixture("cnn.tflite"),
        &out,
        &["--include-ops", "FULLY_CONNECTED"],
    );
    let skipped: Vec<_> = j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reason"] == "not_included_op")
        .collect();
    assert!(!skipped.is_empty());
    assert!(skipped.iter().all(|s| {
        s["detail"]
            .as_str()
            .unwrap()
            .contains("--include-ops does not list")
    }));
    let j = run_json(
        &fixture("mlp.tflite"),
        &out,
        &["--exclude-tensors", "dense_2"],
    );
    let r = reasons(&j);
    assert!(
        r.iter()
            .any(|(n, why)| n.contains("dense_2") && why == "excluded_by_name"),
        "{r:?}"
    );
    assert_eq!(j["quantized"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_mode_flags_are_usage_errors() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let cases: [(&[&str], &str); 7] = [
        (
            &["--mode", "dynamic", "--type", "float16"],
            "needs --type int8",
        ),
        (
            &["--target", "micro", "--mode", "dynamic"],
            "--target micro cannot take --mode dynamic: TFLM refuses hybrid kernels",
        ),
        (
            &["--target", "micro", "--granularity", "per-channel"],
            "TFLM's DEQUANTIZE applies one scale to the whole tensor",
        ),
        (
            &["--target", "micro", "--type", "float16"],
            "--target micro needs --type int8: TFLM's DEQUANTIZE takes int8, int16 and uint8 only",
        ),
        (
            &["--target", "micro", "--layout", "external"],
            "(offset/size) as garbage",
        ),
        (
            &["--exclude-ops", "NOT_AN_OP"],
            "unknown operator \"NOT_AN_OP\"",
        ),
        (&["--exclude-tensors", "("], "invalid regular expression"),
    ];
    for (flags, message) in cases {
        tflq()
            .arg("quantize")
            .args(flags)
            .arg(fixture("mlp.tflite"))
            .arg("-o")
            .arg(&out)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(message));
        assert!(entries(dir.path()).is_empty());
    }
}

#[test]
fn the_summary_states_the_target() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    for (flags, want, text) in [
        (&[][..], "litert", "target:   litert"),
        (&["--target", "micro"][..], "micro", "target:   micro"),
        (
            &["--target", "micro", "--symmetric"][..],
            "micro",
            "target:   micro",
        ),
    ] {
        let run = |extra: &[&str]| {
            tflq()
                .arg("quantize")
                .arg(fixture("cnn.tflite"))
                .arg("-o")
                .arg(&out)
                .args(flags)
                .args(extra)
                .assert()
                .success()
                .get_output()
                .stdout
                .clone()
        };
        let j = json(&run(&["--json"]));
        assert_eq!(j["target"], want);
        if want == "micro" {
            for q in j["quantized"].as_array().unwrap() {
                assert_eq!(q["encoding"], "int8", "{q}");
                assert_eq!(q["hybrid"], false, "{q}");
            }
        }
        let shown = String::from_utf8(run(&[])).unwrap();
        assert!(shown.contains(text), "{shown}");
    }
}

/// A copy of mlp.tflite whose largest weight holds `values` at its start.
fn mlp_with_values(dir: &Path, values: &[f32]) -> (PathBuf, String) {
    let bytes = std::fs::read(fixture("mlp.tflite")).unwrap();
    let mut m = fb::root_as_model(&bytes).unwrap().unpack();
    let sg = &m.subgraphs.as_ref().unwrap()[0];
    let buffers = m.buffers.as_mut().unwrap();
    let t = sg
        .tensors
        .as_ref()
        .unwrap()
        .iter()
        .max_by_key(|t| buffers[t.buffer as usize].data.as_ref().map_or(0, Vec::len))
        .unwrap();
    let data = buffers[t.buffer as usize].data.as_mut().unwrap();
    for (i, v) in values.iter().enumerate() {
        data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let name = t.name.clone().unwrap();
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    let path = dir.join("edited.tflite");
    std::fs::write(&path, fbb.finished_data()).unwrap();
    (path, name)
}

#[test]
fn float16_clamps_out_of_range_values_with_a_warning() {
    let dir = tmp();
    let (input, name) = mlp_with_values(dir.path(), &[1e6, -1e9]);
    let out = dir.path().join("o.tflite");
    let assert = tflq()
        .args(["quantize", "--type", "float16"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("clamped"))
        .stderr(predicates::str::contains(name.as_str()));
    drop(assert);
    let bytes = std::fs::read(&out).unwrap();
    let model = tflq::Model::parse(&bytes).unwrap();
    let t = model.subgraphs()[0]
        .tensors
        .iter()
        .find(|t| t.name == format!("{name}_fp16"))
        .unwrap();
    let data = model.buffer_data(t.buffer);
    let first = half::f16::from_le_bytes([data[0], data[1]]).to_f32();
    let second = half::f16::from_le_bytes([data[2], data[3]]).to_f32();
    assert_eq!((first, second), (65504.0, -65504.0));
}

#[test]
fn nan_weights_stay_float_with_a_warning() {
    let dir = tmp();
    let (input, name) = mlp_with_values(dir.path(), &[f32::NAN, f32::INFINITY]);
    let out = dir.path().join("o.tflite");
    let assert = tflq()
        .args(["quantize", "--json"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("2 NaN or infinite values"))
        .stderr(predicates::str::contains(name.as_str()));
    let j = json(&assert.get_output().stdout);
    let r = reasons(&j);
    assert!(
        r.contains(&(name.clone(), "non_finite".to_owned())),
        "{r:?}"
    );
    assert_eq!(j["quantized"].as_array().unwrap().len(), 1);
}
