//! `tflq report` and `quantize --report`: the numbers are checked against an independent
//! computation from the bytes of the models (float values from the original, int8 codes and
//! their scale/zero point from the quantized model, dequantized here in f64), never against
//! the tool's own output.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;
use tflq::Model;
use tflq::model::details::details;

use crate::*;

/// Per-tensor figures computed here, in f64, from float values and dequantized codes.
#[derive(Debug)]
struct Expected {
    sqnr_db: f64,
    max_abs: f64,
    rmse: f64,
    cosine: f64,
    levels: usize,
}

fn f32s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect()
}

/// Dequantizes tensor `t` of subgraph `s` of `q` (per-tensor or per-channel) and compares it
/// with `x`.
fn expected(q: &Model<'_>, s: usize, t: usize, x: &[f64]) -> Expected {
    let d = details(q);
    let qp = d
        .quantization(s, t)
        .expect("quantized tensor has parameters");
    let tensor = &q.subgraphs()[s].tensors[t];
    let codes: Vec<i8> = q
        .buffer_data(tensor.buffer)
        .iter()
        .map(|&b| b as i8)
        .collect();
    assert_eq!(codes.len(), x.len());
    let axis = qp.axis as usize;
    let inner: usize = tensor.shape[axis + 1..]
        .iter()
        .map(|&d| d as usize)
        .product();
    let (mut signal, mut noise, mut max_abs, mut dot, mut recon) = (0.0, 0.0, 0.0f64, 0.0, 0.0);
    for (i, (&xi, &c)) in x.iter().zip(&codes).enumerate() {
        let ch = if qp.scale.len() == 1 {
            0
        } else {
            (i / inner) % qp.scale.len()
        };
        let zp = qp.zero_point.get(ch).copied().unwrap_or(0) as f64;
        let y = f64::from(qp.scale[ch]) * (f64::from(c) - zp);
        signal += xi * xi;
        noise += (xi - y) * (xi - y);
        max_abs = max_abs.max((xi - y).abs());
        dot += xi * y;
        recon += y * y;
    }
    Expected {
        sqnr_db: 10.0 * (signal / noise).log10(),
        max_abs,
        rmse: (noise / x.len() as f64).sqrt(),
        cosine: dot / (signal * recon).sqrt(),
        levels: codes.iter().collect::<HashSet<_>>().len(),
    }
}

fn close(got: &Value, want: f64, rel: f64, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is no number"));
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-12),
        "{what}: report says {got}, computed {want}"
    );
}

/// Checks every row of a JSON report against the models: the float original `f`, and `q`,
/// which holds the int8 tensor at `qtensor(row)`.
fn check_rows(rows: &[Value], f: &Model<'_>, q: &Model<'_>, qtensor: impl Fn(&Value) -> usize) {
    assert!(!rows.is_empty());
    let mut last = f64::NEG_INFINITY;
    for r in rows {
        let (s, t) = (
            r["subgraph"].as_u64().unwrap() as usize,
            r["tensor"].as_u64().unwrap() as usize,
        );
        let name = r["name"].as_str().unwrap();
        let ft = &f.subgraphs()[s].tensors[t];
        assert_eq!(ft.name, name);
        let x = f32s(f.buffer_data(ft.buffer));
        let e = expected(q, s, qtensor(r), &x);
        close(&r["sqnr_db"], e.sqnr_db, 1e-5, name);
        close(&r["max_abs_error"], e.max_abs, 1e-4, name);
        close(&r["rmse"], e.rmse, 1e-5, name);
        close(&r["cosine"], e.cosine, 1e-9, name);
        assert_eq!(
            r["levels_used"].as_u64().unwrap() as usize,
            e.levels,
            "{name}"
        );
        assert_eq!(r["elements"].as_u64().unwrap() as usize, x.len());
        let min = x.iter().copied().fold(f64::INFINITY, f64::min);
        close(&r["min"], min, 1e-7, name);
        let sqnr = r["sqnr_db"].as_f64().unwrap();
        assert!(sqnr >= last, "rows are not sorted worst first");
        last = sqnr;
    }
}

fn report_json(args: &[&str]) -> Value {
    let out = tflq()
        .arg("report")
        .args(args)
        .args(["--format", "json", "--no-equalize"])
        .assert()
        .success();
    json(&out.get_output().stdout)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn planned_report_matches_the_written_model_tensor_by_tensor() {
    for name in [
        "mlp.tflite",
        "cnn.tflite",
        "control_flow.tflite",
        "external_buffers.tflite",
    ] {
        let dir = tmp();
        let out = dir.path().join("q.tflite");
        tflq()
            .args(["quantize", "-q", "--no-equalize"])
            .arg(fixture(name))
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let report = report_json(&[p(&fixture(name))]);
        let fbytes = std::fs::read(fixture(name)).unwrap();
        let qbytes = std::fs::read(&out).unwrap();
        let (f, q) = (
            Model::parse(&fbytes).unwrap(),
            Model::parse(&qbytes).unwrap(),
        );
        // The written model keeps the float tensor's index as DEQUANTIZE output; its input is
        // the int8 tensor.
        let int8_of = |r: &Value| {
            let (s, t) = (
                r["subgraph"].as_u64().unwrap() as usize,
                r["tensor"].as_i64().unwrap() as i32,
            );
            let op = q.subgraphs()[s]
                .ops
                .iter()
                .find(|o| o.op == tflq::ops::Op::Dequantize && o.outputs == [t])
                .expect("a DEQUANTIZE writes the tensor");
            op.inputs[0] as usize
        };
        let rows = report["tensors"].as_array().unwrap();
        check_rows(rows, &f, &q, int8_of);
        let summary = &report["summary"];
        assert_eq!(summary["tensors"].as_u64().unwrap() as usize, rows.len());
        assert_eq!(summary["worst"]["name"], rows[0]["name"]);
        // Element-weighted mean, over distinct buffers.
        let mut seen = HashSet::new();
        let (mut num, mut den) = (0.0, 0.0);
        for r in rows {
            if seen.insert(r["buffer"].as_u64()) {
                let n = r["elements"].as_f64().unwrap();
                num += n * r["sqnr_db"].as_f64().unwrap();
                den += n;
            }
        }
        close(&summary["mean_sqnr_db"], num / den, 1e-9, "mean");
        assert_eq!(
            summary["bytes_after"].as_f64().unwrap() * 4.0,
            summary["bytes_before"].as_f64().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn against_the_converters_dynamic_range_models() {
    for (float, quant, layers) in [
        ("mlp.tflite", "mlp_dynamic_range.tflite", 2),
        ("cnn.tflite", "cnn_dynamic_range.tflite", 4),
    ] {
        let report = report_json(&[p(&fixture(float)), "--against", p(&fixture(quant))]);
        let rows = report["tensors"].as_array().unwrap();
        assert_eq!(rows.len(), layers, "{quant}");
        assert_eq!(report["unmatched"].as_array().unwrap().len(), 0);
        let fbytes = std::fs::read(fixture(float)).unwrap();
        let qbytes = std::fs::read(fixture(quant)).unwrap();
        let (f, q) = (
            Model::parse(&fbytes).unwrap(),
            Model::parse(&qbytes).unwrap(),
        );
        check_rows(rows, &f, &q, |r| {
            r["quantized"]["tensor"].as_u64().unwrap() as usize
        });
        for r in rows {
            // No DEQUANTIZE: the hybrid kernels read the int8 weights directly.
            assert_eq!(r["quantized"]["matched_by"], "input_slot");
            let s = &r["scheme"];
            assert_eq!(s["granularity"], "per_channel");
            assert_eq!(s["symmetric"], true);
            assert_eq!(r["bytes_before"], 4 * r["bytes_after"].as_u64().unwrap());
        }
        if quant.starts_with("cnn") {
            let dw = rows
                .iter()
                .find(|r| r["name"] == "cnn/dwconv/depthwise")
                .unwrap();
            assert_eq!(dw["scheme"]["axis"], 3);
            assert_eq!(dw["scheme"]["channels"], 48);
        }
    }
}

#[test]
fn against_this_tools_output_gives_the_planned_numbers() {
    let dir = tmp();
    let out = dir.path().join("cnn.q.tflite");
    tflq()
        .args(["quantize", "-q", "--no-equalize"])
        .arg(fixture("cnn.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let planned = report_json(&[p(&fixture("cnn.tflite"))]);
    let measured = report_json(&[p(&fixture("cnn.tflite")), "--against", p(&out)]);
    let (a, b) = (
        planned["tensors"].as_array().unwrap(),
        measured["tensors"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["name"], y["name"]);
        assert_eq!(x["sqnr_db"], y["sqnr_db"]);
        assert_eq!(x["levels_used"], y["levels_used"]);
        assert_eq!(x["clamp_share"], y["clamp_share"]);
        assert_eq!(y["quantized"]["matched_by"], "dequantize");
        assert_eq!(
            y["quantized"]["name"],
            format!("{}_int8", x["name"].as_str().unwrap())
        );
    }
}

#[test]
fn tensors_that_match_nothing_are_listed_not_guessed() {
    let report = report_json(&[
        p(&fixture("mlp.tflite")),
        "--against",
        p(&fixture("cnn_dynamic_range.tflite")),
    ]);
    assert_eq!(report["tensors"].as_array().unwrap().len(), 0);
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched.len(), 4);
    for u in unmatched {
        assert_eq!(u["dtype"], "INT8");
        assert!(
            u["reason"]
                .as_str()
                .unwrap()
                .contains("no float32 constant"),
            "{u}"
        );
    }
}

#[test]
fn skipped_tensors_are_listed_with_their_reason() {
    let report = report_json(&[p(&fixture("int8.tflite"))]);
    assert_eq!(report["tensors"].as_array().unwrap().len(), 0);
    let skipped = report["skipped"].as_array().unwrap();
    assert!(!skipped.is_empty());
    assert!(skipped.iter().all(|s| s["reason"] == "not_float32"));
    let report = report_json(&[p(&fixture("lstm.tflite")), "--min-elements", "0"]);
    let reasons: HashSet<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(!reasons.contains("too_small"), "{reasons:?}");
}

#[test]
fn the_gate_fails_after_printing_the_report() {
    let out = tflq()
        .args(["report", "--fail-below-sqnr", "100"])
        .arg(fixture("mlp.tflite"))
        .assert()
        .code(3);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stdout.contains("mlp/dense_1/MatMul"), "{stdout}");
    assert!(stderr.contains("2 of 2 tensors below 100 dB"), "{stderr}");
    tflq()
        .args(["report", "--fail-below-sqnr", "20"])
        .arg(fixture("mlp.tflite"))
        .assert()
        .code(0);
}

#[test]
fn csv_has_the_documented_columns() {
    let out = tflq()
        .args(["report", "--format", "csv"])
        .arg(fixture("cnn.tflite"))
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header, tflq::report::format::CSV_COLUMNS);
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.md"))
            .unwrap();
    assert!(
        docs.contains(&header.join(",")),
        "docs/report.md lists other columns"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{r:?}");
        assert!(r[0].ends_with("cnn.tflite"));
        let sqnr: f64 = r[20].parse().unwrap();
        assert!(sqnr > 30.0);
    }
}

#[test]
fn markdown_and_table_fit_their_shapes() {
    let out = tflq()
        .args(["report", "--format", "markdown"])
        .arg(fixture("cnn.tflite"))
        .assert()
        .success();
    let md = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 + 4, "{md}");
    let cols = table[0].matches('|').count();
    assert!(table.iter().all(|l| l.matches('|').count() == cols));
    for width in [80usize, 100, 200] {
        let out = tflq()
            .env("COLUMNS", width.to_string())
            .arg("report")
            .arg(fixture("control_flow.tflite"))
            .assert()
            .success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        let head = text.lines().find(|l| l.starts_with("SQNR dB")).unwrap();
        let start = text.lines().position(|l| l.starts_with("SQNR dB")).unwrap();
        for l in text.lines().skip(start).take_while(|l| !l.is_empty()) {
            assert!(l.chars().count() <= width, "{width}: {l:?}");
        }
        assert!(head.contains("tensor"));
    }
}

#[test]
fn html_is_one_self_contained_page_with_a_plot_per_listed_tensor() {
    let dir = tmp();
    for (plots, expect) in [(2usize, 2usize), (12, 4)] {
        let path = dir.path().join(format!("r{plots}.html"));
        tflq()
            .args(["report", "--plots", &plots.to_string(), "-o"])
            .arg(&path)
            .arg(fixture("cnn.tflite"))
            .assert()
            .success();
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert_eq!(html.matches("<table").count(), 1);
        assert_eq!(html.matches("<tbody>").count(), 1);
        let body = &html[html.find("<tbody>").unwrap()..html.find("</tbody>").unwrap()];
        assert_eq!(body.matches("<tr>").count(), 4);
        let figures: Vec<&str> = html.split("<figure class=\"plot\"").skip(1).collect();
        assert_eq!(figures.len(), expect);
        for f in &figures {
            let f = &f[..f.find("</figure>").unwrap()];
            assert_eq!(f.matches("<svg").count(), 1);
            assert!(f.matches("<rect").count() > 20, "histogram bars");
        }
        // Self-contained: no external scripts, styles, images or fonts.
        for bad in ["<script src", "<link", "<img", "@import", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
        let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    }
}

#[test]
fn quantize_writes_the_report_of_the_model_it_wrote() {
    let dir = tmp();
    let out = dir.path().join("cnn.q.tflite");
    let report = dir.path().join("cnn.report.json");
    let summary = tflq()
        .args(["quantize", "--json", "--no-equalize"])
        .arg(fixture("cnn.tflite"))
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .assert()
        .success();
    let summary = json(&summary.get_output().stdout);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rows = r["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), summary["quantized"].as_array().unwrap().len());
    for row in rows {
        let q = summary["quantized"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["tensor"] == row["tensor"])
            .unwrap();
        close(
            &row["sqnr_db"],
            q["sqnr_db"].as_f64().unwrap(),
            1e-9,
            "sqnr",
        );
        assert_eq!(row["quantized"]["matched_by"], "dequantize");
    }
    assert_eq!(entries(dir.path()), ["cnn.q.tflite", "cnn.report.json"]);
    // --report-format wins over the extension.
    let csv = dir.path().join("r.txt");
    tflq()
        .args(["quantize", "-q", "--report-format", "csv"])
        .arg(fixture("mlp.tflite"))
        .arg("-o")
        .arg(dir.path().join("mlp.q.tflite"))
        .arg("--report")
        .arg(&csv)
        .assert()
        .success();
    assert!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .starts_with("model,subgraph,")
    );
}

#[test]
fn a_missing_model_names_the_file() {
    tflq()
        .args(["report", "--against"])
        .arg(fixture("no-such.tflite"))
        .arg(fixture("mlp.tflite"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("no-such.tflite"));
}

/// Every scheme: the planned report of a mode gives exactly the numbers measured on the model
/// that `quantize` writes in that mode (hybrid weights matched through the op's input slot).
#[test]
fn each_mode_reports_the_error_its_written_model_has() {
    let modes: [&[&str]; 4] = [
        &["--granularity", "per-channel"],
        &["--symmetric"],
        &["--mode", "dynamic"],
        &["--mode", "dynamic", "--granularity", "per-channel"],
    ];
    for name in ["cnn.tflite", "mlp.tflite", "lstm.tflite"] {
        let model = fixture(name);
        let per_tensor = report_json(&[p(&model)]);
        for flags in modes {
            let dir = tmp();
            let out = dir.path().join("q.tflite");
            tflq()
                .args(["quantize", "-q", "--no-equalize"])
                .args(flags)
                .arg(fixture(name))
                .arg("-o")
                .arg(&out)
                .assert()
                .success();
            let mut args = vec![p(&model)];
            args.extend_from_slice(flags);
            let planned = report_json(&args);
            let measured = report_json(&[p(&fixture(name)), "--against", p(&out)]);
            let key = |v: &Value| {
                let mut rows: Vec<(String, String)> = v["tensors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap().to_owned(),
                            r["sqnr_db"].to_string(),
                        )
                    })
                    .collect();
                rows.sort();
                rows
            };
            assert_eq!(key(&planned), key(&measured), "{name} {flags:?}");
            if flags.contains(&"per-channel") && name != "lstm.tflite" {
                let mean = |v: &Value| v["summary"]["mean_sqnr_db"].as_f64().unwrap();
                assert!(
                    mean(&planned) > mean(&per_tensor),
                    "{name}: per-channel is no better"
                );
            }
        }
    }
}

/// `report DIR... --format csv`: one table for every model below the inputs, a `model`
/// column telling them apart; a broken model is named on stderr and makes the exit code 1.
#[test]
fn report_of_a_folder_is_one_csv_table_with_a_model_column() {
    let dir = tmp();
    let tree = dir.path().join("store");
    std::fs::create_dir_all(tree.join("vision")).unwrap();
    std::fs::copy(fixture("mlp.tflite"), tree.join("mlp.tflite")).unwrap();
    std::fs::copy(fixture("cnn.tflite"), tree.join("vision/cnn.tflite")).unwrap();
    std::fs::write(tree.join("vision/broken.tflite"), b"not a model at all").unwrap();
    std::fs::write(tree.join("notes.txt"), b"ignored").unwrap();
    let assert = tflq()
        .arg("report")
        .arg(&tree)
        .args(["--format", "csv"])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(
        err.contains("broken.tflite") && err.contains("not a TFLite model"),
        "{err}"
    );
    let text = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("model,"));
    let mut per_model = std::collections::BTreeMap::new();
    for l in lines {
        *per_model
            .entry(l.split(',').next().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    let single = |name: &str| {
        report_json(&[p(&fixture(name))])["tensors"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(per_model.get("mlp.tflite"), Some(&single("mlp.tflite")));
    assert_eq!(
        per_model.get("vision/cnn.tflite"),
        Some(&single("cnn.tflite"))
    );
    assert_eq!(per_model.len(), 2);
    tflq()
        .arg("report")
        .arg(&tree)
        .args(["--format", "html"])
        .assert()
        .code(2);
}

/// `--type float16`: the report's SQNR is the one computed in f64 from the float16 values
/// the quantizer writes.
#[test]
fn float16_report_matches_the_written_half_floats() {
    let dir = tmp();
    let out = dir.path().join("h.tflite");
    tflq()
        .args(["quantize", "-q", "--type", "float16"])
        .arg(fixture("cnn.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let report = report_json(&[p(&fixture("cnn.tflite")), "--type", "float16"]);
    let rows = report["tensors"].as_array().unwrap();
    assert!(!rows.is_empty());
    let (fbytes, qbytes) = (
        std::fs::read(fixture("cnn.tflite")).unwrap(),
        std::fs::read(&out).unwrap(),
    );
    let (f, q) = (
        Model::parse(&fbytes).unwrap(),
        Model::parse(&qbytes).unwrap(),
    );
    for r in rows {
        assert_eq!(r["scheme"]["granularity"], "float16");
        let (s, t) = (
            r["subgraph"].as_u64().unwrap() as usize,
            r["tensor"].as_u64().unwrap() as usize,
        );
        let x = f32s(f.buffer_data(f.subgraphs()[s].tensors[t].buffer));
        let twin = q.subgraphs()[s]
            .tensors
            .iter()
            .find(|w| w.name == format!("{}_fp16", r["name"].as_str().unwrap()))
            .unwrap();
        let h = q.buffer_data(twin.buffer);
        let y: Vec<f64> = h
            .chunks_exact(2)
            .map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect();
        assert_eq!(x.len(), y.len());
        let signal: f64 = x.iter().map(|v| v * v).sum();
        let noise: f64 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        close(
            &r["sqnr_db"],
            10.0 * (signal / noise).log10(),
            1e-6,
            "float16 sqnr",
        );
        assert_eq!(
            r["bytes_after"].as_u64().unwrap() * 2,
            r["bytes_before"].as_u64().unwrap()
        );
    }
}

/// A weight quantized here, independently of tflq: per-tensor asymmetric int8 over
/// [min(lo, 0), max(hi, 0)], codes = round(x / scale) + zero point, clamped.
struct Quantized {
    codes: Vec<u8>,
    scale: f32,
    zero_point: i64,
    /// SQNR of the dequantized codes against `x`, in dB, computed in f64.
    sqnr_db: f64,
}

fn quantize_here(x: &[f64]) -> Quantized {
    let lo = x.iter().copied().fold(0.0, f64::min);
    let hi = x.iter().copied().fold(0.0, f64::max);
    let scale = ((hi - lo) / 255.0) as f32;
    let s = f64::from(scale);
    let zero_point = (-128.0 - lo / s).round().clamp(-128.0, 127.0) as i64;
    let codes: Vec<i8> = x
        .iter()
        .map(|&v| ((v / s).round() + zero_point as f64).clamp(-128.0, 127.0) as i8)
        .collect();
    let (signal, noise) = x.iter().zip(&codes).fold((0.0, 0.0), |(a, b), (&v, &c)| {
        let y = s * (f64::from(c) - zero_point as f64);
        (a + v * v, b + (v - y) * (v - y))
    });
    Quantized {
        codes: codes.iter().map(|&c| c as u8).collect(),
        scale,
        zero_point,
        sqnr_db: 10.0 * (signal / noise).log10(),
    }
}

/// The float weights (FLOAT32 constants of >= 1024 elements) of subgraph 0 of `m`.
fn big_float_constants(m: &tflq_schema::ModelT) -> Vec<usize> {
    let bufs = m.buffers.as_ref().unwrap();
    let sg = &m.subgraphs.as_ref().unwrap()[0];
    (0..sg.tensors.as_ref().unwrap().len())
        .filter(|&i| {
            let t = &sg.tensors.as_ref().unwrap()[i];
            let n = bufs[t.buffer as usize].data.as_ref().map_or(0, Vec::len);
            t.type_ == tflq_schema::TensorType::FLOAT32 && n >= 4 * 1024
        })
        .collect()
}

/// A "quantized" mlp made here as another tool might write it: each float weight becomes an
/// INT8 tensor (codes and parameters from [`quantize_here`]) renamed by `rename`; the
/// operators are dropped, so nothing lines up and only the buffer or the name can match;
/// with `renumber`, the buffers are stored in reverse order (plus one empty buffer, so that
/// the counts differ). Returns the model and, per weight tensor index: (name, SQNR).
fn foreign_mlp(rename: impl Fn(&str) -> String, renumber: bool) -> (Vec<u8>, Vec<(usize, f64)>) {
    use tflq_schema as fb;
    let mut m = attacks::unpack(&std::fs::read(fixture("mlp.tflite")).unwrap());
    let weights = big_float_constants(&m);
    assert!(weights.len() >= 2, "mlp has weights");
    let mut expected = Vec::new();
    let bufs = m.buffers.as_mut().unwrap();
    let sg = &mut m.subgraphs.as_mut().unwrap()[0];
    for &w in &weights {
        let t = &mut sg.tensors.as_mut().unwrap()[w];
        let x = f32s(bufs[t.buffer as usize].data.as_ref().unwrap());
        let q = quantize_here(&x);
        bufs[t.buffer as usize].data = Some(q.codes);
        t.type_ = fb::TensorType::INT8;
        t.name = Some(rename(t.name.as_deref().unwrap_or_default()));
        let mut qp = fb::QuantizationParametersT::default();
        qp.scale = Some(vec![q.scale]);
        qp.zero_point = Some(vec![q.zero_point]);
        t.quantization = Some(Box::new(qp));
        expected.push((w, q.sqnr_db));
    }
    sg.operators = Some(Vec::new());
    if renumber {
        let n = bufs.len();
        let new_index = |b: u32| if b == 0 { 0 } else { (n as u32) - b };
        for t in sg.tensors.as_mut().unwrap() {
            t.buffer = new_index(t.buffer);
        }
        let mut reordered = vec![fb::BufferT::default(); n];
        for (i, b) in bufs.iter().enumerate() {
            reordered[new_index(i as u32) as usize] = b.clone();
        }
        reordered.push(fb::BufferT::default());
        *bufs = reordered;
    }
    (attacks::pack(&m), expected)
}

/// Checks the report of mlp.tflite against `quant`: exactly the weights are measured, each
/// matched `by` the rule named, to the tensor of the same index, with the SQNR computed here.
fn check_foreign(quant: &[u8], expected: &[(usize, f64)], by: &str) {
    let dir = tmp();
    let q = dir.path().join("foreign.tflite");
    std::fs::write(&q, quant).unwrap();
    let report = report_json(&[p(&fixture("mlp.tflite")), "--against", p(&q)]);
    assert_eq!(report["unmatched"].as_array().unwrap().len(), 0, "{report}");
    let rows = report["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "one row per weight");
    for &(w, sqnr) in expected {
        let r = rows
            .iter()
            .find(|r| r["tensor"] == w)
            .unwrap_or_else(|| panic!("weight {w} is not measured"));
        assert_eq!(r["quantized"]["matched_by"], by, "{r}");
        assert_eq!(r["quantized"]["tensor"], w, "matched to its own tensor");
        close(&r["sqnr_db"], sqnr, 1e-6, &format!("tensor {w}"));
        assert!(
            sqnr > 30.0 && sqnr < 60.0,
            "{sqnr}: a plausible int8 figure"
        );
    }
}

#[test]
fn against_matches_by_buffer_when_names_differ() {
    let (q, expected) = foreign_mlp(|n| format!("w{}", n.len()), false);
    check_foreign(&q, &expected, "buffer");
}

#[test]
fn against_matches_by_name_when_buffers_are_renumbered() {
    let (q, expected) = foreign_mlp(|n| n.to_owned(), true);
    check_foreign(&q, &expected, "name");
    // A suffix a converter adds is taken off.
    let (q, expected) = foreign_mlp(|n| format!("{n}_int8"), true);
    check_foreign(&q, &expected, "name");
}

#[test]
fn against_lists_as_unmatched_what_neither_buffer_nor_name_finds() {
    let (q, expected) = foreign_mlp(|n| format!("{n}_other"), true);
    let dir = tmp();
    let path = dir.path().join("foreign.tflite");
    std::fs::write(&path, q).unwrap();
    let report = report_json(&[p(&fixture("mlp.tflite")), "--against", p(&path)]);
    assert_eq!(report["tensors"].as_array().unwrap().len(), 0);
    let unmatched = report["unmatched"].as_array().unwrap();
    let mut listed: Vec<u64> = unmatched
        .iter()
        .map(|u| u["tensor"].as_u64().unwrap())
        .collect();
    listed.sort_unstable();
    let mut want: Vec<u64> = expected.iter().map(|&(w, _)| w as u64).collect();
    want.sort_unstable();
    assert_eq!(listed, want);
}

/// tflq's default output (equalized, then quantized) measured with `--against` the float
/// model gives the planned report's numbers: the equalized tensors are compared with the
/// equalized weights their codes stand for, and the report says so.
#[test]
fn against_an_equalized_output_measures_the_equalized_weights() {
    let dir = tmp();
    let out = dir.path().join("dwsep.q.tflite");
    let summary = json(
        &tflq()
            .args(["quantize", "--json"])
            .arg(fixture("dwsep_bn.tflite"))
            .arg("-o")
            .arg(&out)
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    assert!(
        summary["equalized_pairs"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let planned = json(
        &tflq()
            .args(["report", "--format", "json"])
            .arg(fixture("dwsep_bn.tflite"))
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let measured = json(
        &tflq()
            .args(["report", "--format", "json"])
            .arg(fixture("dwsep_bn.tflite"))
            .arg("--against")
            .arg(&out)
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let (a, b) = (
        planned["tensors"].as_array().unwrap(),
        measured["tensors"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["name"], y["name"]);
        close(&y["sqnr_db"], x["sqnr_db"].as_f64().unwrap(), 1e-9, "sqnr");
        assert_eq!(x["levels_used"], y["levels_used"]);
    }
    let warnings = measured["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("after cross-layer equalization")),
        "{warnings:?}"
    );
}

/// `--format model-explorer`: one value per tensor name, the lowest SQNR of that name as the
/// JSON report gives it (1000 for exact), and ascending colour thresholds.
#[test]
fn model_explorer_node_data_holds_each_weight_s_sqnr() {
    let run = |format: &str| {
        json(
            &tflq()
                .args(["report", "--format", format])
                .arg(fixture("two_signatures.tflite"))
                .assert()
                .success()
                .get_output()
                .stdout,
        )
    };
    let (rows, data) = (run("json"), run("model-explorer"));
    let mut want = std::collections::BTreeMap::new();
    for t in rows["tensors"].as_array().unwrap() {
        let v = t["sqnr_db"].as_f64().unwrap_or(1000.0);
        let e = want
            .entry(t["name"].as_str().unwrap().to_owned())
            .or_insert(v);
        *e = e.min(v);
    }
    let results = data["results"].as_object().unwrap();
    assert_eq!(results.len(), want.len());
    for (name, v) in &want {
        assert_eq!(results[name]["value"].as_f64(), Some(*v), "{name}");
    }
    let t: Vec<f64> = data["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["value"].as_f64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    assert_eq!(data["name"], "tflq weight SQNR (dB)");
}
