//! Every `tflq ...` and `cargo run ...` command in the code blocks of README.md and docs/*.md
//! runs as written (issue 11, item 11), in a temporary folder that holds `fixtures/` and the
//! `models/` folder the batch examples use.
//!
//! A comment on the line before a block steers it: `<!-- docs-test: skip REASON -->` (a
//! command that needs a model store, a scheduler or the network), `<!-- docs-test: exit N -->`
//! (the example shows a failure on purpose).

use std::path::{Path, PathBuf};

use crate::*;

/// One command of the docs: file, line, text, expected exit code (None: skipped).
#[derive(Debug)]
struct DocCommand {
    file: String,
    line: usize,
    text: String,
    exit: Option<i32>,
}

/// The commands of one Markdown text.
fn commands(file: &str, markdown: &str) -> Vec<DocCommand> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut exit = Some(0);
    let mut previous = "";
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            if in_block {
                let marker = previous.trim();
                exit = match marker.strip_prefix("<!-- docs-test:") {
                    Some(m) if m.trim_start().starts_with("skip") => None,
                    Some(m) => {
                        let n = m.trim_start().strip_prefix("exit ").unwrap_or_else(|| {
                            panic!("{file}:{}: unknown docs-test marker {marker:?}", i)
                        });
                        Some(n.split_whitespace().next().unwrap().parse().unwrap())
                    }
                    None => Some(0),
                };
            }
            previous = line;
            continue;
        }
        if !line.trim().is_empty() {
            previous = line;
        }
        if !in_block {
            continue;
        }
        let text = line.trim();
        let (start, mut joined) = match pending.take() {
            Some((start, before)) => (start, format!("{before} {text}")),
            None => (i + 1, text.strip_prefix("$ ").unwrap_or(text).to_owned()),
        };
        if let Some(head) = joined.strip_suffix('\\') {
            joined = head.trim_end().to_owned();
            pending = Some((start, joined));
            continue;
        }
        if joined.starts_with("tflq ") || joined.starts_with("cargo run") {
            out.push(DocCommand {
                file: file.to_owned(),
                line: start,
                text: joined,
                exit,
            });
        }
    }
    out
}

/// The folder the batch examples of docs/batch.md work on: two speech models (one cut
/// short), an LSTM below them, a float and an int8 vision model, and a README.
fn example_models(root: &Path) {
    let models = root.join("models");
    for dir in ["speech/v2", "vision"] {
        std::fs::create_dir_all(models.join(dir)).unwrap();
    }
    for (from, to) in [
        ("mlp.tflite", "speech/mlp.tflite"),
        ("lstm.tflite", "speech/v2/lstm.tflite"),
        ("cnn.tflite", "vision/cnn.tflite"),
        ("int8.tflite", "vision/cnn_int8.tflite"),
    ] {
        std::fs::copy(fixture(from), models.join(to)).unwrap();
    }
    let mlp = std::fs::read(fixture("mlp.tflite")).unwrap();
    std::fs::write(models.join("speech/old.tflite"), &mlp[..9000]).unwrap();
    std::fs::write(models.join("README.txt"), "Our models.\n").unwrap();
}

#[test]
fn every_command_in_the_docs_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, repo.join("README.md"));
    let mut all = Vec::new();
    for f in &files {
        let name = f.strip_prefix(repo).unwrap().display().to_string();
        all.extend(commands(&name, &std::fs::read_to_string(f).unwrap()));
    }
    let bin = assert_cmd::cargo::cargo_bin("tflq");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for c in &all {
        let Some(want) = c.exit else { continue };
        if c.text.contains("| jq") && which("jq").is_none() {
            eprintln!("{}:{}: skipped, jq is not installed", c.file, c.line);
            continue;
        }
        // `cargo run [--release] --` is the binary built for the tests.
        let text = match c.text.split_once(" -- ") {
            Some((head, tail)) if head.starts_with("cargo run") => format!("tflq {tail}"),
            _ => c.text.clone(),
        };
        let dir = tmp();
        std::os::unix::fs::symlink(fixtures(), dir.path().join("fixtures")).unwrap();
        example_models(dir.path());
        let out = std::process::Command::new("bash")
            .args(["-o", "pipefail", "-c", &text])
            .current_dir(dir.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{}:{}: {text}\n{stderr}", c.file, c.line);
        assert_eq!(out.status.code(), Some(want), "{what}");
        assert!(!stderr.contains("panicked"), "{what}");
        ran += 1;
    }
    // README's two, the batch examples: the extractor found what it should.
    assert!(ran >= 3, "only {ran} commands ran: {all:#?}");
    assert!(
        all.iter()
            .any(|c| c.file == "README.md" && c.text.starts_with("cargo run")),
        "{all:#?}"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[test]
fn the_extractor_joins_lines_and_honours_its_markers() {
    let md = "text\n\n```sh\n$ tflq a \\\n    b\ncargo bench\n```\n\
              <!-- docs-test: exit 1 -->\n```\ntflq c\n```\n\
              <!-- docs-test: skip needs a store -->\n```\ntflq d\n```\n";
    let got: Vec<(usize, String, Option<i32>)> = commands("x.md", md)
        .into_iter()
        .map(|c| (c.line, c.text, c.exit))
        .collect();
    assert_eq!(
        got,
        [
            (4, "tflq a b".to_owned(), Some(0)),
            (10, "tflq c".to_owned(), Some(1)),
            (14, "tflq d".to_owned(), None),
        ]
    );
}

/// Item 14: the oracle tests run the binary `cargo test` built for these tests (the one
/// scripts/test.sh points TFLQ_BIN at), and the script builds nothing after `cargo test`.
#[test]
fn the_test_script_uses_the_binary_cargo_test_built() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        let bin = assert_cmd::cargo::cargo_bin("tflq");
        assert_eq!(
            bin.canonicalize().unwrap(),
            repo.join("target/debug/tflq").canonicalize().unwrap()
        );
    }
    let script = std::fs::read_to_string(repo.join("scripts/test.sh")).unwrap();
    let steps: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo ") || l.contains("pytest"))
        .collect();
    let test = steps
        .iter()
        .position(|l| l.starts_with("cargo test"))
        .unwrap();
    assert!(
        steps[test + 1..].iter().all(|l| !l.starts_with("cargo ")),
        "{steps:#?}"
    );
    assert!(script.contains("target/debug/tflq"), "{script}");
}
