//! `tflq inspect` on every kind of fixture: float, int8, float16, sparse, external buffers.

use crate::*;

fn inspect_json(name: &str) -> serde_json::Value {
    let out = tflq()
        .args(["inspect", "--json"])
        .arg(fixture(name))
        .assert()
        .success();
    json(&out.get_output().stdout)
}

#[test]
fn every_fixture_is_described_in_text_and_json() {
    for path in all_fixtures() {
        let out = tflq().arg("inspect").arg(&path).assert().success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        assert!(text.contains("schema version 3"), "{}", path.display());
        assert!(text.contains("subgraphs:"));
        let j = json(
            &tflq()
                .args(["inspect", "--json"])
                .arg(&path)
                .assert()
                .success()
                .get_output()
                .stdout,
        );
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(j["file_bytes"], size);
        assert_eq!(j["version"], 3);
    }
}

#[test]
fn metadata_description_and_runtime_version() {
    let j = inspect_json("metadata.tflite");
    assert_eq!(
        j["description"],
        "tflq test fixture: small MLP with custom metadata"
    );
    let md = j["metadata"].as_array().unwrap();
    let custom = md
        .iter()
        .find(|m| m["name"] == "tflq_test_metadata")
        .unwrap();
    assert_eq!(custom["bytes"], 30);
    assert!(custom["text"].is_null(), "binary value shown as text");
    let v = j["min_runtime_version"].as_str().unwrap();
    assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
}

#[test]
fn signatures_with_inputs_and_outputs() {
    let j = inspect_json("two_signatures.tflite");
    let sigs = j["signatures"].as_array().unwrap();
    let keys: Vec<&str> = sigs.iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["encode", "encode_scaled"]);
    for s in sigs {
        assert_eq!(s["inputs"][0]["name"], "x");
        assert_eq!(s["inputs"][0]["dtype"], "FLOAT32");
        assert_eq!(s["inputs"][0]["shape"], serde_json::json!([1, 64]));
        assert_eq!(s["outputs"][0]["name"], "code");
    }
    let text = String::from_utf8(
        tflq()
            .arg("inspect")
            .arg(fixture("control_flow.tflite"))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        text.contains("WHILE x1") && text.contains("IF x1"),
        "{text}"
    );
}

#[test]
fn layouts_types_and_quantization() {
    let j = inspect_json("external_buffers.tflite");
    assert_eq!(j["layout"]["external"], 6);
    assert!(
        j["constants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["external"] == true)
    );

    let j = inspect_json("float16.tflite");
    assert!(j["weight_bytes_by_type"]["FLOAT16"].as_u64().unwrap() > 0);
    let fp16 = j["constants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dtype"] == "FLOAT16")
        .unwrap();
    assert!(
        fp16["consumers"][0]
            .as_str()
            .unwrap()
            .starts_with("DEQUANTIZE>")
    );

    let j = inspect_json("cnn_dynamic_range.tflite");
    let dw = j["constants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cnn/dwconv/depthwise")
        .unwrap();
    assert_eq!(dw["dtype"], "INT8");
    assert_eq!(dw["quantization"]["kind"], "per_channel");
    assert_eq!(dw["quantization"]["axis"], 3);
    assert_eq!(dw["quantization"]["channels"], 48);
    assert_eq!(dw["quantization"]["zero_point_max"], 0);
    assert_eq!(dw["consumers"][0], "DEPTHWISE_CONV_2D@2:1");

    let j = inspect_json("int8.tflite");
    assert!(
        j["constants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["quantization"]["kind"] == "per_tensor"
                || c["quantization"]["kind"] == "per_channel")
    );

    let j = inspect_json("sparse.tflite");
    let sparse: Vec<_> = j["constants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sparse"] == true)
        .collect();
    assert_eq!(sparse.len(), 1);
    assert_eq!(sparse[0]["consumers"][0], "DENSIFY@0:0");
}

#[test]
fn a_file_that_is_no_model_is_refused_with_its_name() {
    let dir = tmp();
    let bad = dir.path().join("bad.tflite");
    std::fs::write(&bad, b"not a model at all").unwrap();
    tflq()
        .arg("inspect")
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("bad.tflite"))
        .stderr(predicates::str::contains("not a TFLite model"));
}

/// `inspect --target micro`: exit 3 and one line per problem TFLM would have, exit 0 on what it
/// runs right; the JSON lists the same problems.
#[test]
fn inspect_target_micro_lists_what_tflm_refuses_or_computes_wrongly() {
    let dir = tmp();
    let quantized = |name: &str, flags: &[&str]| {
        let out = dir.path().join(format!("{name}.tflite"));
        tflq()
            .arg("quantize")
            .arg(fixture("mlp.tflite"))
            .arg("-o")
            .arg(&out)
            .args(flags)
            .assert()
            .success();
        out
    };
    let cases = [
        // (model, problems, text of each)
        (
            quantized("pc", &["--granularity", "per-channel"]),
            2,
            "WRONG: subgraph 0 op",
            "per-channel DEQUANTIZE input (",
        ),
        (
            quantized("dyn", &["--mode", "dynamic"]),
            2,
            "refused: subgraph 0 op",
            "FULLY_CONNECTED, tensor",
        ),
        (
            fixture("float16.tflite"),
            10,
            "refused: subgraph 0 op",
            "DEQUANTIZE input is FLOAT16; TFLM takes INT8, INT16 and UINT8 only",
        ),
        (
            fixture("external_buffers.tflite"),
            6,
            "WRONG: subgraph 0, tensor",
            "offset/size",
        ),
    ];
    for (model, n, head, text) in cases {
        let out = tflq()
            .args(["inspect", "--target", "micro"])
            .arg(&model)
            .assert()
            .code(3)
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("  ") && l.contains(head))
            .collect();
        assert_eq!(lines.len(), n, "{}: {out}", model.display());
        assert!(lines.iter().all(|l| l.contains(text)), "{out}");
        let j = tflq()
            .args(["inspect", "--json", "--target", "micro"])
            .arg(&model)
            .assert()
            .code(3)
            .get_output()
            .stdout
            .clone();
        assert_eq!(json(&j)["target_issues"].as_array().unwrap().len(), n);
    }
    for model in [
        quantized("micro", &["--target", "micro"]),
        quantized("sym", &["--symmetric"]),
        fixture("int8.tflite"),
        fixture("mlp.tflite"),
    ] {
        let out = tflq()
            .args(["inspect", "--target", "micro"])
            .arg(&model)
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("nothing TensorFlow Lite Micro would refuse")
        );
    }
    // Without --target, nothing is checked: exit 0 on the per-channel model too.
    tflq()
        .arg("inspect")
        .arg(dir.path().join("pc.tflite"))
        .assert()
        .code(0);
    let help = tflq()
        .args(["inspect", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(
        String::from_utf8(help)
            .unwrap()
            .contains("inspect --target micro")
    );
}
