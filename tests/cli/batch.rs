//! `tflq quantize DIR... -o OUT`: batch conversion of a tree of models.
//!
//! Every test builds its own tree (see [`store`]) in a temporary folder: nested folders,
//! models, a corrupt model, a file named .tflite that is not one, files that are not models,
//! a link to a model and a link loop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::*;

/// The models of [`store`] that quantize, by relative path, with the fixture they copy.
const GOOD: [(&str, &str); 5] = [
    ("a.tflite", "mlp.tflite"),
    ("links/cnn-link.tflite", "cnn.tflite"),
    ("nlp/lstm.tflite", "lstm.tflite"),
    ("vision/cnn.tflite", "cnn.tflite"),
    ("vision/deep/er/embedding.tflite", "embedding.tflite"),
];
/// The model with nothing to quantize.
const UNCHANGED: &str = "nlp/int8.tflite";
/// The models that fail.
const BAD: [&str; 2] = ["broken/corrupt.tflite", "broken/not-a-model.tflite"];
/// The files that are not models.
const OTHERS: [&str; 2] = ["docs/README.md", "labels.txt"];

/// Builds the test tree under `dir/store` and returns that path.
fn store(dir: &Path) -> PathBuf {
    let s = dir.join("store");
    for (rel, fixture_name) in GOOD {
        if !rel.starts_with("links/") {
            put(&s.join(rel), &std::fs::read(fixture(fixture_name)).unwrap());
        }
    }
    put(
        &s.join(UNCHANGED),
        &std::fs::read(fixture("int8.tflite")).unwrap(),
    );
    let mlp = std::fs::read(fixture("mlp.tflite")).unwrap();
    put(&s.join(BAD[0]), &mlp[..mlp.len() / 2]);
    put(
        &s.join(BAD[1]),
        b"this is not a model, only its name says so\n",
    );
    put(&s.join(OTHERS[0]), b"# models\n");
    put(&s.join(OTHERS[1]), b"cat\ndog\n");
    std::fs::create_dir_all(s.join("links")).unwrap();
    std::os::unix::fs::symlink("../vision/cnn.tflite", s.join("links/cnn-link.tflite")).unwrap();
    std::os::unix::fs::symlink("..", s.join("links/loop")).unwrap();
    s
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Every file below `dir` (not following links), as relative paths.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), base, out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().to_owned();
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What the library makes of the model at `input`.
fn expected(input: &Path) -> Vec<u8> {
    let bytes = std::fs::read(input).unwrap();
    tflq::quantize(&bytes, &tflq::Options::default())
        .unwrap()
        .bytes
}

/// Parses JSON lines; returns (file and problem lines, totals line).
fn json_lines(out: &[u8]) -> (Vec<Value>, Value) {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let totals = lines.pop().expect("a totals line");
    assert_eq!(totals["kind"], "totals", "{text}");
    (lines, totals)
}

fn by_path(lines: &[Value]) -> std::collections::BTreeMap<String, &Value> {
    lines
        .iter()
        .filter(|l| l["kind"] != "problem")
        .map(|l| (l["path"].as_str().unwrap().to_owned(), l))
        .collect()
}

#[test]
fn a_tree_is_mirrored_and_failures_do_not_stop_it() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let assert = tflq()
        .args(["quantize", "--json", "-j", "3"])
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let (lines, totals) = json_lines(&assert.get_output().stdout);

    // Outputs: every good model at its relative path, nothing for the bad ones, no others.
    let mut want: Vec<&str> = GOOD.iter().map(|(rel, _)| *rel).collect();
    want.push(UNCHANGED);
    assert_eq!(tree(&out), set(&want));
    for (rel, _) in GOOD {
        let got = std::fs::read(out.join(rel)).unwrap();
        assert_eq!(got, expected(&store.join(rel)), "{rel}");
    }
    assert_eq!(
        std::fs::read(out.join(UNCHANGED)).unwrap(),
        std::fs::read(store.join(UNCHANGED)).unwrap()
    );

    // One line per model, sorted by path, then the loop, then the totals.
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let mut models: Vec<&str> = want.clone();
    models.extend(BAD);
    models.sort();
    assert_eq!(paths[..models.len()], models[..]);
    let lines_by_path = by_path(&lines);
    for (rel, _) in GOOD {
        let l = lines_by_path[rel];
        assert_eq!(l["kind"], "model");
        assert_eq!(l["status"], "quantized", "{l}");
        let written = std::fs::metadata(out.join(rel)).unwrap().len();
        assert_eq!(l["output_bytes"], written);
        assert!(l["tensors_quantized"].as_u64().unwrap() > 0);
        assert!(l["worst_sqnr_db"].as_f64().unwrap() > 30.0, "{l}");
        assert_eq!(l["output"], out.join(rel).to_str().unwrap());
    }
    assert_eq!(lines_by_path[UNCHANGED]["status"], "unchanged");
    let corrupt = lines_by_path[BAD[0]];
    assert_eq!(corrupt["status"], "failed");
    assert!(
        corrupt["error"]
            .as_str()
            .unwrap()
            .contains("truncated: the file has 35406 bytes, the model refers to byte "),
        "{corrupt}"
    );
    assert!(corrupt["output_bytes"].is_null());
    let not_model = lines_by_path[BAD[1]];
    assert!(
        not_model["error"]
            .as_str()
            .unwrap()
            .contains("not a TFLite model"),
        "{not_model}"
    );
    let problem = &lines[models.len()];
    assert_eq!(problem["kind"], "problem");
    assert_eq!(problem["status"], "skipped");
    assert_eq!(problem["path"], store.join("links/loop").to_str().unwrap());
    assert!(problem["error"].as_str().unwrap().contains("loop"));
    assert_eq!(lines.len(), models.len() + 1);

    assert_eq!(totals["models"], 8);
    assert_eq!(totals["quantized"], 5);
    assert_eq!(totals["unchanged"], 1);
    assert_eq!(totals["failed"], 2);
    assert_eq!(totals["errors"], 2);
    assert_eq!(totals["others"], 2);
    assert_eq!(totals["ignored"], 2);
    assert_eq!(totals["stopped"], false);
    assert_eq!(totals["root"], store.to_str().unwrap());
    let sum: u64 = want
        .iter()
        .map(|rel| std::fs::metadata(out.join(rel)).unwrap().len())
        .sum();
    assert_eq!(totals["output_bytes"], sum);

    // The errors also go to stderr as they happen, with the input's path.
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    let corrupt_path = store.join(BAD[0]);
    assert!(
        stderr.contains(&format!("tflq: error: {}: ", corrupt_path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 8 models failed"), "{stderr}");
}

#[test]
fn the_summary_has_a_line_per_model_and_totals() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let assert = tflq()
        .arg("quantize")
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let rows: Vec<&str> = stdout.lines().take(8).collect();
    let row = |rel: &str| {
        *rows
            .iter()
            .find(|r| r.split_whitespace().any(|w| w == rel))
            .unwrap_or_else(|| panic!("no row for {rel}:\n{stdout}"))
    };
    let cnn = row("vision/cnn.tflite");
    assert!(cnn.starts_with("quantized "), "{cnn}");
    assert!(cnn.contains("155.1 KiB ->"), "{cnn}");
    assert!(cnn.contains("4 tensors  worst "), "{cnn}");
    assert!(cnn.contains(" dB "), "{cnn}");
    assert!(row(UNCHANGED).starts_with("unchanged "));
    assert!(row(UNCHANGED).contains("100.0%"));
    let corrupt = row(BAD[0]);
    assert!(corrupt.starts_with("FAILED "), "{corrupt}");
    assert!(
        corrupt.contains("truncated: the file has 35406 bytes, the model refers to byte "),
        "{corrupt}"
    );
    assert!(
        stdout.contains(&format!(
            "models:   8 in {}: 5 quantized, 1 unchanged (nothing to quantize), 2 failed\n",
            store.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("others:   2 files that are not models: ignored (--copy-others copies them)"),
        "{stdout}"
    );
    assert!(stdout.contains("warning: "), "{stdout}");
    assert!(stdout.contains("symbolic link loop"), "{stdout}");
    assert!(stdout.contains("errors:   2 "), "{stdout}");
    assert!(stdout.contains("tensors:  "), "{stdout}");
}

#[test]
fn every_good_model_gives_exit_code_0() {
    let dir = tmp();
    let store = dir.path().join("store");
    put(
        &store.join("x/mlp.tflite"),
        &std::fs::read(fixture("mlp.tflite")).unwrap(),
    );
    put(
        &store.join("int8.tflite"),
        &std::fs::read(fixture("int8.tflite")).unwrap(),
    );
    tflq()
        .args(["quantize", "-q"])
        .arg(&store)
        .arg("-o")
        .arg(dir.path().join("out"))
        .assert()
        .success()
        .stdout("")
        .stderr("");
    assert_eq!(
        tree(&dir.path().join("out")),
        set(&["int8.tflite", "x/mlp.tflite"])
    );
}

#[test]
fn an_empty_folder_is_a_batch_of_nothing() {
    let dir = tmp();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let assert = tflq()
        .arg("quantize")
        .arg(&empty)
        .arg("-o")
        .arg(dir.path().join("out"))
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout);
    assert!(stdout.starts_with("models:   0 in "), "{stdout}");
}

#[test]
fn an_output_folder_inside_the_input_is_never_read_back() {
    let dir = tmp();
    let store = store(dir.path());
    let out = store.join("quantized");
    let mut want: Vec<&str> = GOOD.iter().map(|(rel, _)| *rel).collect();
    want.push(UNCHANGED);
    for _ in 0..2 {
        let assert = tflq()
            .args(["quantize", "--json"])
            .arg(&store)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1);
        let (_, totals) = json_lines(&assert.get_output().stdout);
        assert_eq!(totals["models"], 8, "{totals}");
        assert_eq!(tree(&out), set(&want));
    }
    // Also when named through a link.
    std::os::unix::fs::symlink(&out, dir.path().join("out-link")).unwrap();
    tflq()
        .args(["quantize", "-q"])
        .arg(&store)
        .arg("-o")
        .arg(dir.path().join("out-link"))
        .assert()
        .code(1);
    assert_eq!(tree(&out), set(&want));
}

#[test]
fn an_output_folder_equal_to_the_input_needs_in_place() {
    let dir = tmp();
    let store = store(dir.path());
    let before = tree(&store);
    let cnn_before = std::fs::read(store.join("vision/cnn.tflite")).unwrap();
    let assert = tflq()
        .arg("quantize")
        .arg(&store)
        .arg("-o")
        .arg(store.join("."))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(
        stderr.contains("the output folder is the input folder"),
        "{stderr}"
    );
    assert!(stderr.contains("--in-place"), "{stderr}");
    assert_eq!(tree(&store), before);
    assert_eq!(
        std::fs::read(store.join("vision/cnn.tflite")).unwrap(),
        cnn_before
    );

    // --in-place without -o: every model is replaced by its quantized self.
    tflq()
        .args(["quantize", "--in-place", "-q"])
        .arg(&store)
        .assert()
        .code(1);
    assert_eq!(tree(&store), before, "no file added or removed");
    assert_eq!(
        std::fs::read(store.join("vision/cnn.tflite")).unwrap(),
        expected(&fixture("cnn.tflite"))
    );
    // A second pass finds nothing left to quantize.
    let assert = tflq()
        .args(["quantize", "--in-place", "--json"])
        .arg(&store)
        .assert()
        .code(1);
    let (_, totals) = json_lines(&assert.get_output().stdout);
    assert_eq!(totals["quantized"], 0, "{totals}");
    assert_eq!(totals["unchanged"], 6, "{totals}");
}

#[test]
fn an_output_folder_that_is_one_of_the_inputs_is_refused() {
    let dir = tmp();
    let store = store(dir.path());
    let assert = tflq()
        .arg("quantize")
        .arg(store.join("vision"))
        .arg(store.join("nlp"))
        .arg("-o")
        .arg(store.join("nlp"))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("one of the input folders"), "{stderr}");
}

#[test]
fn an_output_that_is_a_file_is_refused() {
    let dir = tmp();
    let store = store(dir.path());
    let assert = tflq()
        .arg("quantize")
        .arg(&store)
        .arg("-o")
        .arg(store.join("labels.txt"))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("must be a folder"), "{stderr}");
}

#[test]
fn inputs_mix_files_and_folders_below_their_common_folder() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    tflq()
        .arg("quantize")
        .arg(store.join("vision"))
        .arg(store.join("a.tflite"))
        .arg(store.join("vision/cnn.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        tree(&out),
        set(&[
            "a.tflite",
            "vision/cnn.tflite",
            "vision/deep/er/embedding.tflite"
        ])
    );
}

#[test]
fn a_missing_input_is_reported_and_the_rest_go_on() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let missing = dir.path().join("no-such-folder");
    let assert = tflq()
        .args(["quantize", "--json"])
        .arg(store.join("vision"))
        .arg(&missing)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let (lines, totals) = json_lines(&assert.get_output().stdout);
    let problem = lines.iter().find(|l| l["kind"] == "problem").unwrap();
    assert_eq!(problem["status"], "failed");
    assert_eq!(problem["path"], missing.to_str().unwrap());
    assert_eq!(totals["errors"], 1);
    assert_eq!(totals["quantized"], 2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(
        stderr.contains(&format!("{}: cannot read", missing.display())),
        "{stderr}"
    );
    // The missing input still counts for the layout: it does not shift the others' paths.
    assert_eq!(
        tree(&out),
        set(&[
            "store/vision/cnn.tflite",
            "store/vision/deep/er/embedding.tflite"
        ])
    );
}

#[test]
fn skip_existing_redoes_only_what_changed() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let assert = tflq()
            .args(["quantize", "--json", "--skip-existing", "--copy-others"])
            .args(extra)
            .arg(&store)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1);
        json_lines(&assert.get_output().stdout)
    };
    let (_, first) = run(&[]);
    assert_eq!(first["quantized"], 5);
    assert_eq!(first["copied"], 2);

    // Make one input newer than its output (by its time stamp, as an edit would).
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    let touched = std::fs::File::options()
        .append(true)
        .open(store.join("vision/cnn.tflite"))
        .unwrap();
    touched.set_modified(later).unwrap();
    drop(touched);

    let (lines, second) = run(&[]);
    let lines = by_path(&lines);
    assert_eq!(lines["vision/cnn.tflite"]["status"], "quantized");
    // The link reads the edited file, so its output is stale too.
    assert_eq!(lines["links/cnn-link.tflite"]["status"], "quantized");
    assert_eq!(lines["a.tflite"]["status"], "up_to_date");
    assert_eq!(lines["labels.txt"]["status"], "up_to_date");
    // The failed models have no output, so they are tried again.
    assert_eq!(lines[BAD[0]]["status"], "failed");
    assert_eq!(second["quantized"], 2, "{second}");
    assert_eq!(second["up_to_date"], 4, "{second}");
    assert_eq!(second["others_up_to_date"], 2, "{second}");
}

#[test]
fn dry_run_lists_the_work_and_writes_nothing() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let assert = tflq()
        .args(["quantize", "--json", "--dry-run", "--copy-others"])
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    assert!(!out.exists());
    let (lines, totals) = json_lines(&assert.get_output().stdout);
    let lines = by_path(&lines);
    assert_eq!(lines.len(), 10);
    // The models are read and planned: the broken ones fail, as they would for real.
    assert_eq!(lines[BAD[0]]["status"], "failed");
    assert_eq!(lines[BAD[1]]["status"], "failed");
    assert_eq!(lines[UNCHANGED]["status"], "would_be_unchanged");
    assert_eq!(lines["docs/README.md"]["status"], "would_copy");
    assert_eq!(
        lines["vision/cnn.tflite"]["output"],
        out.join("vision/cnn.tflite").to_str().unwrap()
    );
    assert_eq!(totals["would_quantize"], 5);
    assert_eq!(totals["would_be_unchanged"], 1);
    assert_eq!(totals["would_copy"], 2);
    assert_eq!(totals["dry_run"], true);

    let assert = tflq()
        .args(["quantize", "--dry-run"])
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("would quantize ") && l.contains(" vision/cnn.tflite ")),
        "{stdout}"
    );
    assert!(!out.exists());
}

#[test]
fn copy_others_makes_a_complete_copy() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let assert = tflq()
        .args(["quantize", "--copy-others"])
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    for rel in OTHERS {
        assert_eq!(
            std::fs::read(out.join(rel)).unwrap(),
            std::fs::read(store.join(rel)).unwrap()
        );
    }
    let mut want: Vec<&str> = GOOD.iter().map(|(rel, _)| *rel).collect();
    want.push(UNCHANGED);
    want.extend(OTHERS);
    assert_eq!(tree(&out), set(&want));
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout);
    assert!(
        stdout.contains("others:   2 files that are not models: 2 copied"),
        "{stdout}"
    );
}

#[test]
fn shards_cover_every_file_exactly_once() {
    let dir = tmp();
    let store = store(dir.path());
    // More files, so that every shard gets some.
    let mlp = std::fs::read(fixture("metadata.tflite")).unwrap();
    for i in 0..24 {
        put(&store.join(format!("many/m{i:02}.tflite")), &mlp);
    }
    let all: BTreeSet<String> = {
        let assert = tflq()
            .args(["quantize", "--json", "--dry-run", "--copy-others"])
            .arg(&store)
            .arg("-o")
            .arg(dir.path().join("unused"))
            .assert()
            // The two broken models fail in the dry run as they would for real.
            .code(1);
        by_path(&json_lines(&assert.get_output().stdout).0)
            .into_keys()
            .collect()
    };
    assert_eq!(all.len(), 34);
    for n in 1..=4u32 {
        let out = dir.path().join(format!("out{n}"));
        let mut seen = BTreeSet::new();
        for k in 1..=n {
            let assert = tflq()
                .args(["quantize", "--json", "--copy-others", "--shard"])
                .arg(format!("{k}/{n}"))
                .arg(&store)
                .arg("-o")
                .arg(&out)
                .assert();
            let (lines, totals) = json_lines(&assert.get_output().stdout);
            let paths = by_path(&lines);
            assert_eq!(totals["shard"], format!("{k}/{n}"));
            assert_eq!(
                totals["outside_shard"].as_u64().unwrap() as usize,
                all.len() - paths.len()
            );
            for p in paths.into_keys() {
                assert!(seen.insert(p.clone()), "{p} in two shards of {n}");
            }
        }
        assert_eq!(seen, all, "shards of {n}");
        // Together the shards wrote what one run writes.
        let written = tree(&out);
        let failed: BTreeSet<String> = set(&BAD);
        assert_eq!(
            written,
            all.difference(&failed).cloned().collect::<BTreeSet<_>>()
        );
    }
}

#[test]
fn a_bad_shard_is_a_usage_error() {
    for bad in ["0/3", "4/3", "3", "x/y"] {
        let assert = tflq()
            .args(["quantize", "--shard", bad, "in", "-o", "out"])
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
        assert!(stderr.contains("1 <= K <= N"), "{bad}: {stderr}");
    }
}

/// A valid model with one FULLY_CONNECTED layer of `rows` x `cols` float32 weights.
fn big_model(rows: i32, cols: i32) -> Vec<u8> {
    use tflq_schema as fb;
    let weights: Vec<u8> = (0..rows as u32 * cols as u32)
        .flat_map(|i| {
            let x = i.wrapping_mul(2_654_435_761) >> 8;
            (x as f32 / (1 << 24) as f32 - 0.5).to_le_bytes()
        })
        .collect();
    // The object-API types are non-exhaustive: build them by assignment.
    let tensor = |name: &str, shape: Vec<i32>, buffer: u32| {
        let mut t = fb::TensorT::default();
        t.shape = Some(shape);
        t.type_ = fb::TensorType::FLOAT32;
        t.buffer = buffer;
        t.name = Some(name.to_owned());
        t
    };
    let mut code = fb::OperatorCodeT::default();
    code.deprecated_builtin_code = 9;
    code.builtin_code = fb::BuiltinOperator::FULLY_CONNECTED;
    let mut op = fb::OperatorT::default();
    op.inputs = Some(vec![0, 1, -1]);
    op.outputs = Some(vec![2]);
    let mut graph = fb::SubGraphT::default();
    graph.tensors = Some(vec![
        tensor("input", vec![1, cols], 0),
        tensor("weights", vec![rows, cols], 1),
        tensor("output", vec![1, rows], 0),
    ]);
    graph.inputs = Some(vec![0]);
    graph.outputs = Some(vec![2]);
    graph.operators = Some(vec![op]);
    let mut data = fb::BufferT::default();
    data.data = Some(weights);
    let mut model = fb::ModelT::default();
    model.version = 3;
    model.operator_codes = Some(vec![code]);
    model.subgraphs = Some(vec![graph]);
    model.buffers = Some(vec![fb::BufferT::default(), data]);
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = model.pack(&mut fbb);
    fb::finish_model_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn big_model_helper_makes_a_model_tflq_quantizes() {
    let bytes = big_model(64, 32);
    let out = tflq::quantize(&bytes, &tflq::Options::default()).unwrap();
    assert_eq!(out.summary.quantized.len(), 1);
    assert_eq!(out.summary.quantized[0].name, "weights");
}

/// Ctrl-C in the middle of a batch: exit 130, no file started after it, no partial file,
/// and every output that exists is complete.
#[test]
fn an_interrupted_batch_leaves_only_complete_outputs() {
    let dir = tmp();
    let store = dir.path().join("store");
    let big = big_model(2048, 2048); // 16 MiB of weights
    let cnn = std::fs::read(fixture("cnn.tflite")).unwrap();
    for attempt in 0..4 {
        // Each attempt doubles the work, in case the previous one finished before the signal.
        for i in 0..4 << attempt {
            put(&store.join(format!("big/b{attempt}-{i}.tflite")), &big);
        }
        for i in 0..20 << attempt {
            put(&store.join(format!("small/{attempt}/c{i}.tflite")), &cnn);
        }
        let out = dir.path().join(format!("out{attempt}"));
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tflq"))
            .args(["quantize", "--json", "-j", "2"])
            .arg(&store)
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the first temporary or finished output: the handler is installed by then.
        while tree(&out).is_empty() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The shell's own `kill`: no dependency on a signal crate or on procps.
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -INT {}", child.id())])
            .status()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.code() == Some(0) {
            continue;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("tflq: interrupted"), "{stderr}");

        let written = tree(&out);
        for rel in &written {
            assert!(!rel.contains(".partial"), "partial file left: {rel}");
            let got = std::fs::read(out.join(rel)).unwrap();
            tflq::Model::parse(&got).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!(got, expected(&store.join(rel)), "{rel}");
        }
        let (lines, totals) = json_lines(&output.stdout);
        assert_eq!(totals["stopped"], true);
        let done = lines.iter().filter(|l| l["status"] == "quantized").count();
        assert_eq!(done, written.len(), "every reported output exists");
        let models = totals["models"].as_u64().unwrap();
        let not_started = totals["not_started"].as_u64().unwrap();
        let interrupted = totals["interrupted"].as_u64().unwrap();
        assert_eq!(done as u64 + interrupted + not_started, models);
        assert!(not_started > 0, "{totals}");
        return;
    }
    panic!("the batch always finished before the interrupt arrived");
}

#[test]
fn the_quantization_flags_apply_to_every_model() {
    let dir = tmp();
    let store = store(dir.path());
    let out = dir.path().join("out");
    let flags = ["--granularity", "per-channel", "--min-elements", "0"];
    tflq()
        .args(["quantize", "-q"])
        .args(flags)
        .arg(&store)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1);
    for (rel, _) in GOOD {
        let single = dir.path().join("single.tflite");
        tflq()
            .args(["quantize", "-q"])
            .args(flags)
            .arg(store.join(rel))
            .arg("-o")
            .arg(&single)
            .assert()
            .success();
        assert_eq!(
            std::fs::read(out.join(rel)).unwrap(),
            std::fs::read(&single).unwrap(),
            "{rel}"
        );
        assert_ne!(std::fs::read(&single).unwrap(), expected(&store.join(rel)));
    }
}

#[test]
fn report_is_for_one_model_only() {
    let dir = tmp();
    let store = store(dir.path());
    let assert = tflq()
        .arg("quantize")
        .arg(&store)
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg("--report")
        .arg(dir.path().join("r.json"))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr);
    assert!(stderr.contains("exactly one input file"), "{stderr}");
    assert!(!dir.path().join("out").exists());
}

/// Whether `strace` is installed here and may trace a child.
fn strace_works() -> bool {
    std::process::Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The calls that wait for the disk (`fsync`, `fdatasync`, `sync_file_range`) that
/// `tflq ARGS` makes, by name, as `strace` records them.
fn disk_waits(args: &[&std::ffi::OsStr]) -> Vec<String> {
    let dir = tmp();
    let log = dir.path().join("strace.log");
    std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,sync_file_range",
            "-o",
        ])
        .arg(&log)
        .arg(assert_cmd::cargo::cargo_bin("tflq"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    // Lines are "PID name(args) = result"; a batch's failing model changes only the status.
    let text = std::fs::read_to_string(&log).unwrap();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('(').next())
        .map(str::to_owned)
        .collect()
}

/// `--no-fsync` writes the same outputs, named at once, without waiting for the disk: the
/// default makes every output durable first (a single model: `fsync`; a batch's groups:
/// `sync_file_range`, then `fsync`), `--no-fsync` calls none of them (checked with `strace`
/// where it is installed and may trace).
#[test]
fn no_fsync_writes_the_same_outputs_without_waiting_for_the_disk() {
    let dir = tmp();
    let store = store(dir.path());
    let (synced, unsynced) = (dir.path().join("synced"), dir.path().join("unsynced"));
    for (out, extra) in [(&synced, &[][..]), (&unsynced, &["--no-fsync"][..])] {
        tflq()
            .args(["quantize", "-q", "--copy-others"])
            .args(extra)
            .arg(&store)
            .arg("-o")
            .arg(out)
            .assert()
            .code(1);
    }
    assert_eq!(tree(&synced), tree(&unsynced));
    assert!(tree(&synced).len() >= 7, "{:?}", tree(&synced));
    for f in tree(&synced) {
        let (a, b) = (synced.join(&f), unsynced.join(&f));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{f}"
        );
    }
    if !strace_works() {
        eprintln!("strace cannot trace here: the system calls are not checked");
        return;
    }
    let input = fixture("mlp.tflite");
    let calls = |extra: &[&str], input: &Path, out: &str| {
        let out = dir.path().join(out);
        let mut args: Vec<&std::ffi::OsStr> = vec!["quantize".as_ref(), "-q".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        args.extend([input.as_os_str(), "-o".as_ref(), out.as_os_str()]);
        disk_waits(&args)
    };
    let single = calls(&[], &input, "a.tflite");
    assert!(single.iter().any(|c| c == "fsync"), "{single:?}");
    assert_eq!(
        calls(&["--no-fsync"], &input, "b.tflite"),
        Vec::<String>::new()
    );
    let a = std::fs::read(dir.path().join("a.tflite")).unwrap();
    assert!(a == std::fs::read(dir.path().join("b.tflite")).unwrap());
    let batch = calls(&[], &store, "batch");
    for call in ["sync_file_range", "fsync"] {
        assert!(batch.iter().any(|c| c == call), "{call}: {batch:?}");
    }
    let unsynced_batch = calls(&["--no-fsync"], &store, "batch-unsynced");
    assert_eq!(unsynced_batch, Vec::<String>::new());
    assert_eq!(
        tree(&dir.path().join("batch-unsynced")),
        tree(&dir.path().join("batch"))
    );
}
