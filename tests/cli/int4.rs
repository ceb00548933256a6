//! int4/int2 and blockwise weights on the command line: flags, names, fallbacks in the JSON
//! and text summaries, and the packed sizes the reader checks. (Their runtime behaviour, on
//! both kernel paths, is checked in tests/oracle/test_int4.py.)

use tflq_schema as fb;

use crate::*;

fn quantize(input: &Path, out: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let assert = tflq()
        .args(["quantize", "--json"])
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(out)
        .assert()
        .success();
    let text = tflq()
        .arg("quantize")
        .args(extra)
        .arg(input)
        .arg("-o")
        .arg(out)
        .assert()
        .success();
    (
        json(&assert.get_output().stdout),
        String::from_utf8(text.get_output().stdout.clone()).unwrap(),
    )
}

#[test]
fn bad_int4_flags_are_usage_errors() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let cases: [(&[&str], &str); 4] = [
        (&["--granularity", "block"], "needs --type int4 or int2"),
        (
            &[
                "--type",
                "int4",
                "--granularity",
                "block",
                "--block-size",
                "48",
            ],
            "must be 32, 64, 128 or 256",
        ),
        (
            &["--type", "int4", "--block-size", "64"],
            "needs --granularity block",
        ),
        (&["--type", "int3"], "int3"),
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

/// Each INT4/INT2 tensor of `path` with its element count and buffer length.
fn packed_tensors(path: &Path) -> Vec<(String, i8, u64, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let m = fb::root_as_model(&bytes).unwrap();
    let buffers = m.buffers().unwrap();
    let mut v = Vec::new();
    for sg in m.subgraphs().unwrap() {
        for t in sg.tensors().unwrap() {
            if matches!(t.type_(), fb::TensorType::INT4 | fb::TensorType::INT2) {
                let n: u64 = t.shape().unwrap().iter().map(|d| d as u64).product();
                let len = buffers
                    .get(t.buffer() as usize)
                    .data()
                    .map_or(0, |d| d.len());
                v.push((t.name().unwrap().to_owned(), t.type_().0, n, len));
            }
        }
    }
    v
}

#[test]
fn int4_and_int2_pack_two_and_four_per_byte() {
    let dir = tmp();
    for (ty, code, per) in [("int4", 17i8, 2u64), ("int2", 19, 4)] {
        let out = dir.path().join(format!("{ty}.tflite"));
        let (j, _) = quantize(&fixture("mlp.tflite"), &out, &["--type", ty]);
        let rows = j["quantized"].as_array().unwrap();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r["encoding"] == ty), "{rows:?}");
        let packed = packed_tensors(&out);
        assert_eq!(packed.len(), rows.len());
        for (name, t, n, len) in packed {
            assert_eq!((t, len as u64), (code, n.div_ceil(per)), "{name}");
        }
        // The reader checks the packed size exactly: the output reads back.
        tflq().arg("inspect").arg(&out).assert().success();
    }
}

#[test]
fn kernels_that_take_int8_only_keep_int8_and_say_why() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let (j, text) = quantize(
        &fixture("lstm.tflite"),
        &out,
        &[
            "--type",
            "int4",
            "--mode",
            "dynamic",
            "--granularity",
            "per-channel",
        ],
    );
    let rows = j["quantized"].as_array().unwrap();
    let int8: Vec<_> = rows.iter().filter(|r| r["encoding"] == "int8").collect();
    assert!(!int8.is_empty());
    for r in &int8 {
        let why = r["fallback"].as_str().unwrap();
        assert!(
            why.starts_with("the hybrid UNIDIRECTIONAL_SEQUENCE_LSTM kernel takes int8"),
            "{why}"
        );
    }
    assert!(
        text.contains(&format!(
            "fallback: {} {} to int8: the hybrid UNIDIRECTIONAL_SEQUENCE_LSTM kernel takes \
             int8 weights only, not int4",
            int8.len(),
            if int8.len() == 1 { "tensor" } else { "tensors" }
        )),
        "{text}"
    );
    // Rows that got what was asked carry no fallback field at all.
    assert!(
        rows.iter()
            .filter(|r| r["encoding"] == "int4_per_channel")
            .all(|r| r.get("fallback").is_none())
    );
}

#[test]
fn weight_only_block_falls_back_to_per_channel_with_the_rule() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    let (j, text) = quantize(
        &fixture("mlp.tflite"),
        &out,
        &["--type", "int4", "--granularity", "block"],
    );
    for r in j["quantized"].as_array().unwrap() {
        assert!(r["encoding"].as_str().unwrap().starts_with("int4"));
        assert!(
            r["fallback"].as_str().unwrap().contains("DEQUANTIZE"),
            "{r}"
        );
    }
    assert!(text.contains("fallback: "), "{text}");
}

#[test]
fn a_packed_tensor_of_the_wrong_size_is_refused() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    quantize(&fixture("mlp.tflite"), &out, &["--type", "int4"]);
    let bytes = std::fs::read(&out).unwrap();
    let mut m = fb::root_as_model(&bytes).unwrap().unpack();
    let sg = &m.subgraphs.as_ref().unwrap()[0];
    let t = sg
        .tensors
        .as_ref()
        .unwrap()
        .iter()
        .find(|t| t.type_ == fb::TensorType::INT4)
        .unwrap();
    let (buffer, name) = (t.buffer as usize, t.name.clone().unwrap());
    let data = m.buffers.as_mut().unwrap()[buffer].data.as_mut().unwrap();
    let want = data.len();
    data.pop();
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    let bad = dir.path().join("bad.tflite");
    std::fs::write(&bad, fbb.finished_data()).unwrap();
    tflq()
        .arg("inspect")
        .arg(&bad)
        .assert()
        .failure()
        .stderr(predicates::str::contains(&name))
        .stderr(predicates::str::contains(format!("{want}")));
}

/// A blockwise output of embedding.tflite with its quantization changed by `f`, read back.
fn mutated_blockwise(
    f: impl Fn(&mut fb::TensorT, &mut Vec<fb::TensorT>),
) -> assert_cmd::assert::Assert {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    quantize(
        &fixture("embedding.tflite"),
        &out,
        &[
            "--type",
            "int4",
            "--mode",
            "dynamic",
            "--granularity",
            "block",
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    let mut m = fb::root_as_model(&bytes).unwrap().unpack();
    let tensors = m.subgraphs.as_mut().unwrap()[0].tensors.as_mut().unwrap();
    let i = tensors
        .iter()
        .position(|t| {
            t.quantization.as_ref().is_some_and(|q| {
                matches!(
                    q.details,
                    fb::QuantizationDetailsT::BlockwiseQuantization(_)
                )
            })
        })
        .expect("a blockwise tensor");
    let mut t = tensors[i].clone();
    f(&mut t, tensors);
    tensors[i] = t;
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    let bad = dir.path().join("bad.tflite");
    std::fs::write(&bad, fbb.finished_data()).unwrap();
    tflq().arg("inspect").arg(&bad).assert()
}

fn blockwise(t: &mut fb::TensorT) -> &mut fb::BlockwiseQuantizationT {
    match &mut t.quantization.as_mut().unwrap().details {
        fb::QuantizationDetailsT::BlockwiseQuantization(b) => b,
        _ => unreachable!(),
    }
}

#[test]
fn blockwise_parameters_are_checked_on_read() {
    mutated_blockwise(|_, _| {}).success();
    mutated_blockwise(|t, _| blockwise(t).block_size = 48)
        .failure()
        .stderr(predicates::str::contains("block size 48 does not divide"));
    mutated_blockwise(|t, _| blockwise(t).scales = 100_000)
        .failure()
        .stderr(predicates::str::contains("is not a tensor of the subgraph"));
    mutated_blockwise(|t, all| {
        let s = blockwise(t).scales as usize;
        all[s].type_ = fb::TensorType::BFLOAT16;
    })
    .failure()
    .stderr(predicates::str::contains("not FLOAT16"));
    mutated_blockwise(|t, _| blockwise(t).block_size = 64)
        .failure()
        .stderr(predicates::str::contains("has shape"));
}
