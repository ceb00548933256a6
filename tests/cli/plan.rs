//! Plans (`--plan`, `--write-plan`, `report --format plan`) and the data-free target
//! (`--target-sqnr`): round trips byte for byte, errors that name the tensor and the rule,
//! and each chosen encoding's SQNR recomputed here from the written file.

use tflq_schema as fb;

use crate::*;

fn run_ok(args: &[&std::ffi::OsStr]) -> std::process::Output {
    tflq().args(args).assert().success().get_output().clone()
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn a_written_plan_gives_the_same_bytes_and_report_writes_the_same_plan() {
    let dir = tmp();
    let (a, b, p) = (
        dir.path().join("a.tflite"),
        dir.path().join("b.tflite"),
        dir.path().join("p.json"),
    );
    let cases: [(&str, &[&str]); 7] = [
        ("cnn.tflite", &[]),
        (
            "cnn.tflite",
            &["--granularity", "per-channel", "--range", "mse"],
        ),
        (
            "dwsep_bn.tflite",
            &["--type", "int4", "--granularity", "per-channel"],
        ),
        (
            "mlp.tflite",
            &[
                "--mode",
                "dynamic",
                "--type",
                "int4",
                "--granularity",
                "block",
            ],
        ),
        ("embedding.tflite", &["--type", "float16"]),
        ("lstm.tflite", &["--mode", "dynamic"]),
        ("cnn.tflite", &["--target-sqnr", "20"]),
    ];
    for (model, flags) in cases {
        let input = fixture(model);
        let mut args = vec![os("quantize"), os(&input), os("-o"), os(&a), os("-q")];
        args.extend(flags.iter().map(os));
        args.extend([os("--write-plan"), os(&p)]);
        run_ok(&args);
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(written["tflq_plan"], 1, "{model} {flags:?}");
        assert!(!written["tensors"].as_array().unwrap().is_empty());
        // The mode is a run option, not part of a plan.
        let mode: Vec<&str> = if flags.contains(&"dynamic") {
            vec!["--mode", "dynamic"]
        } else {
            vec![]
        };
        let mut args = vec![os("quantize"), os(&input), os("-o"), os(&b), os("-q")];
        args.extend(mode.iter().map(os));
        args.extend([os("--plan"), os(&p)]);
        run_ok(&args);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{model} {flags:?}: --plan of --write-plan wrote other bytes"
        );
        let mut args = vec![os("report"), os(&input), os("--format"), os("plan")];
        args.extend(flags.iter().map(os));
        let out = run_ok(&args);
        assert_eq!(json(&out.stdout), written, "{model} {flags:?}");
    }
}

/// Writes `plan` (edited by `f`) of mlp.tflite's default run to `name` in `dir`.
fn edited_plan(dir: &Path, name: &str, f: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let p = dir.join("orig.json");
    run_ok(&[
        os("quantize"),
        os(&fixture("mlp.tflite")),
        os("-o"),
        os(&dir.join("orig.tflite")),
        os("-q"),
        os("--write-plan"),
        os(&p),
    ]);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    let out = dir.join(name);
    std::fs::write(&out, v.to_string()).unwrap();
    out
}

#[test]
fn plans_the_readers_cannot_take_are_errors_naming_the_tensor_and_the_rule() {
    let dir = tmp();
    let out = dir.path().join("x.tflite");
    let first = |v: &mut serde_json::Value| v["tensors"][0].clone();
    let orig = edited_plan(dir.path(), "same.json", |_| {});
    let orig: serde_json::Value = serde_json::from_slice(&std::fs::read(orig).unwrap()).unwrap();
    let name = first(&mut orig.clone())["name"]
        .as_str()
        .unwrap()
        .to_owned();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, Vec<String>)> = vec![
        (
            "block.json",
            Box::new(|v| {
                let t = &mut v["tensors"][0];
                t["type"] = "int4".into();
                t["granularity"] = "block".into();
                t["block_size"] = 32.into();
            }),
            vec![
                name.clone(),
                "DEQUANTIZE does not read blockwise weights".into(),
            ],
        ),
        (
            "buffer.json",
            Box::new(|v| {
                let b = v["tensors"][0]["buffer"].as_u64().unwrap();
                v["tensors"][0]["buffer"] = (b + 1).into();
            }),
            vec![name.clone(), "the plan says buffer".into()],
        ),
        (
            "name.json",
            Box::new(|v| v["tensors"][0]["name"] = "no/such/tensor".into()),
            vec!["\"no/such/tensor\", which the model does not have".into()],
        ),
    ];
    for (file, edit, words) in cases {
        let plan = edited_plan(dir.path(), file, edit);
        let assert = tflq()
            .args([
                os("quantize"),
                os(&fixture("mlp.tflite")),
                os("-o"),
                os(&out),
            ])
            .args([os("--plan"), os(&plan)])
            .assert();
        let output = assert.get_output();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{file}: {stderr}");
        assert!(
            stderr.contains("cannot be applied exactly"),
            "{file}: {stderr}"
        );
        for w in &words {
            assert!(stderr.contains(w.as_str()), "{file}: {w:?} not in {stderr}");
        }
        assert!(!out.exists(), "{file}: an output was written");
    }
    let ver = edited_plan(dir.path(), "ver.json", |v| v["tflq_plan"] = 2.into());
    tflq()
        .args([
            os("quantize"),
            os(&fixture("mlp.tflite")),
            os("-o"),
            os(&out),
        ])
        .args([os("--plan"), os(&ver)])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("plan format version 2"));
    let unknown = edited_plan(dir.path(), "unk.json", |v| {
        v["tensors"][0]["bits"] = 3.into()
    });
    tflq()
        .args([
            os("quantize"),
            os(&fixture("mlp.tflite")),
            os("-o"),
            os(&out),
        ])
        .args([os("--plan"), os(&unknown)])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown field `bits`"));
}

#[test]
fn a_weight_the_plan_cannot_quantize_is_an_error_with_the_reason() {
    let dir = tmp();
    let out = dir.path().join("x.tflite");
    // The smallest tensor of cnn.tflite with data: below --min-elements.
    let plan = dir.path().join("p.json");
    std::fs::write(
        &plan,
        r#"{"tflq_plan": 1, "tensors": [{"subgraph": 0, "name": "cnn/head/MatMul", "buffer": 8, "type": "int8"}]}"#,
    )
    .unwrap();
    let inspect = run_ok(&[
        os("report"),
        os(&fixture("cnn.tflite")),
        os("--format"),
        os("json"),
    ]);
    let report = json(&inspect.stdout);
    let skipped = report["skipped"].as_array().unwrap();
    let head = skipped
        .iter()
        .find(|s| s["name"] == "cnn/head/MatMul")
        .expect("cnn/head/MatMul is skipped by default");
    assert_eq!(head["reason"], "too_small");
    tflq()
        .args([os("quantize"), os(&fixture("cnn.tflite")), os("-o"), os(&out)])
        .args([os("--plan"), os(&plan)])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "tensor \"cnn/head/MatMul\": the plan asks int8 per-tensor asymmetric minmax, but it cannot be quantized: too small",
        ));
    assert!(!out.exists());
}

#[test]
fn float32_in_a_plan_and_unlisted_tensors_stay_float_and_batches_match_by_name() {
    let dir = tmp();
    let plan = edited_plan(dir.path(), "f.json", |v| {
        v["tensors"][0]["type"] = "float32".into();
        v["tensors"][0]["buffer"] = 9999.into();
    });
    let text: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    let kept = text["tensors"][0]["name"].as_str().unwrap().to_owned();
    let out = dir.path().join("o.tflite");
    // A buffer index that does not match is an error on one model...
    tflq()
        .args([
            os("quantize"),
            os(&fixture("mlp.tflite")),
            os("-o"),
            os(&out),
        ])
        .args([os("--plan"), os(&plan)])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("the plan says buffer 9999"));
    // ...and the name decides in a batch.
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::copy(fixture("mlp.tflite"), inputs.join("m.tflite")).unwrap();
    let outs = dir.path().join("out");
    run_ok(&[
        os("quantize"),
        os(&inputs),
        os("-o"),
        os(&outs),
        os("-q"),
        os("--plan"),
        os(&plan),
    ]);
    let bytes = std::fs::read(outs.join("m.tflite")).unwrap();
    let m = fb::root_as_model(&bytes).unwrap();
    let sg = m.subgraphs().unwrap().get(0);
    let types: Vec<(String, fb::TensorType)> = sg
        .tensors()
        .unwrap()
        .iter()
        .map(|t| (t.name().unwrap().to_owned(), t.type_()))
        .collect();
    let of = |n: &str| {
        let twin = format!("{n}_");
        types
            .iter()
            .filter(|(name, _)| name == n || name.starts_with(&twin))
            .count()
    };
    // The float32 tensor has no stored twin; the other has one.
    assert_eq!(of(&kept), 1, "{types:?}");
    let other = text["tensors"][1]["name"].as_str().unwrap();
    assert_eq!(of(other), 2, "{types:?}");
    // Without the buffer check failing (a matching index), the summary says it.
    let plan = edited_plan(dir.path(), "g.json", |v| {
        v["tensors"][0]["type"] = "float32".into()
    });
    let s = run_ok(&[
        os("quantize"),
        os(&fixture("mlp.tflite")),
        os("-o"),
        os(&out),
        os("--json"),
        os("--plan"),
        os(&plan),
    ]);
    let s = json(&s.stdout);
    assert_eq!(s["skipped_by_reason"]["planned_float"], 1, "{s}");
    assert_eq!(s["by_encoding"]["float32"]["tensors"], 1, "{s}");
    assert_eq!(s["by_encoding"]["int8"]["tensors"], 1, "{s}");
}

/// Float values of every weight of `path` stored with codes or as float16 behind a
/// DEQUANTIZE, decoded here from the flatbuffer: (float tensor name, stored type, values).
fn decoded(path: &Path) -> Vec<(String, fb::TensorType, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let m = fb::root_as_model(&bytes).unwrap();
    let buffers = m.buffers().unwrap();
    let codes = m.operator_codes().unwrap();
    let sg = m.subgraphs().unwrap().get(0);
    let tensors = sg.tensors().unwrap();
    let mut out = Vec::new();
    for op in sg.operators().unwrap() {
        let code = codes.get(op.opcode_index() as usize);
        let builtin = code
            .builtin_code()
            .0
            .max(code.deprecated_builtin_code() as i32);
        if builtin != fb::BuiltinOperator::DEQUANTIZE.0 {
            continue;
        }
        let t = tensors.get(op.inputs().unwrap().get(0) as usize);
        let float = tensors.get(op.outputs().unwrap().get(0) as usize);
        let data = buffers.get(t.buffer() as usize).data().unwrap().bytes();
        let shape: Vec<usize> = t.shape().unwrap().iter().map(|d| d as usize).collect();
        let n: usize = shape.iter().product();
        let values: Vec<f64> = if t.type_() == fb::TensorType::FLOAT16 {
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect()
        } else {
            let q = t.quantization().unwrap();
            let scales: Vec<f32> = q.scale().unwrap().iter().collect();
            let zps: Vec<i64> = q.zero_point().unwrap().iter().collect();
            let axis = q.quantized_dimension() as usize;
            let inner: usize = shape[axis + 1..].iter().product();
            let code = |i: usize| -> i64 {
                match t.type_() {
                    fb::TensorType::INT8 => data[i] as i8 as i64,
                    fb::TensorType::INT4 => {
                        let nib = (data[i / 2] >> (4 * (i % 2))) & 0xF;
                        ((nib << 4) as i8 >> 4) as i64
                    }
                    fb::TensorType::INT2 => {
                        let two = (data[i / 4] >> (2 * (i % 4))) & 3;
                        ((two << 6) as i8 >> 6) as i64
                    }
                    other => panic!("unexpected stored type {other:?}"),
                }
            };
            (0..n)
                .map(|i| {
                    let c = if scales.len() == 1 {
                        0
                    } else {
                        (i / inner) % shape[axis]
                    };
                    (code(i) - zps[c]) as f64 * scales[c] as f64
                })
                .collect()
        };
        out.push((float.name().unwrap().to_owned(), t.type_(), values));
    }
    out
}

/// Float32 values of the tensor `name` of subgraph 0 of `path`.
fn float_values(path: &Path, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let m = fb::root_as_model(&bytes).unwrap();
    let sg = m.subgraphs().unwrap().get(0);
    let t = sg
        .tensors()
        .unwrap()
        .iter()
        .find(|t| t.name() == Some(name))
        .unwrap();
    let data = m
        .buffers()
        .unwrap()
        .get(t.buffer() as usize)
        .data()
        .unwrap();
    data.bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect()
}

fn sqnr(x: &[f64], y: &[f64]) -> f64 {
    let signal: f64 = x.iter().map(|v| v * v).sum();
    let noise: f64 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
    10.0 * (signal / noise).log10()
}

/// Asymmetric min-max int4 per output channel (axis 0), computed here: the SQNR a smaller
/// choice would have had.
fn int4_per_channel_sqnr(x: &[f64], channels: usize) -> f64 {
    let inner = x.len() / channels;
    let mut y = vec![0.0; x.len()];
    for c in 0..channels {
        let part = &x[c * inner..(c + 1) * inner];
        let lo = part.iter().copied().fold(0.0f64, f64::min);
        let hi = part.iter().copied().fold(0.0f64, f64::max);
        let scale = (hi - lo) / 15.0;
        let zp = (-8.0 - lo / scale).round();
        for (k, v) in part.iter().enumerate() {
            let q = (v / scale + zp).round().clamp(-8.0, 7.0);
            y[c * inner + k] = (q - zp) * scale;
        }
    }
    sqnr(x, &y)
}

#[test]
fn target_sqnr_stores_each_weight_at_the_target_in_the_fewest_bytes() {
    let dir = tmp();
    for (model, db) in [
        ("cnn.tflite", 20.0),
        ("dwsep_bn.tflite", 20.0),
        ("mlp.tflite", 45.0),
    ] {
        let input = fixture(model);
        let out = dir.path().join(model);
        let s = run_ok(&[
            os("quantize"),
            os(&input),
            os("-o"),
            os(&out),
            os("--json"),
            os("--target-sqnr"),
            os(&db.to_string()),
        ]);
        let s = json(&s.stdout);
        let weights = decoded(&out);
        assert_eq!(
            weights.len(),
            s["quantized"].as_array().unwrap().len(),
            "{model}"
        );
        let mut kinds = std::collections::BTreeSet::new();
        for (name, stored, y) in &weights {
            let x = float_values(&input, name);
            let got = sqnr(&x, y);
            assert!(got >= db - 1e-6, "{model} {name}: {got} dB < {db}");
            kinds.insert(stored.0);
            // An int8 or float16 choice: int4 per channel would not have met the target.
            if *stored == fb::TensorType::INT8 || *stored == fb::TensorType::FLOAT16 {
                let bytes = std::fs::read(&input).unwrap();
                let m = fb::root_as_model(&bytes).unwrap();
                let t = m
                    .subgraphs()
                    .unwrap()
                    .get(0)
                    .tensors()
                    .unwrap()
                    .iter()
                    .find(|t| t.name() == Some(name.as_str()))
                    .unwrap();
                let channels = t.shape().unwrap().get(0) as usize;
                let smaller = int4_per_channel_sqnr(&x, channels);
                assert!(
                    smaller < db + 0.5,
                    "{model} {name}: int4 per-channel has {smaller} dB"
                );
            }
        }
        let total: u64 = s["by_encoding"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["tensors"].as_u64().unwrap())
            .sum();
        assert_eq!(total as usize, weights.len(), "{model}: {s}");
        if model == "cnn.tflite" {
            // Three take int4, the fully connected layer needs int8.
            assert!(kinds.len() >= 2, "{model}: one encoding only: {s}");
        }
    }
}
