//! End-to-end tests of the `tflq` command, one module per subcommand or concern.
//!
//! Each test gets its own temporary folder; fixtures are read from `fixtures/` and never
//! written (a test copies a fixture first when it needs to change it).

mod batch;
mod docs;
mod hostile;
mod inspect;
mod int4;
mod modes;
mod newcomer;
mod plan;
mod quantize;
mod report;

// Shared with the in-process mutation tests (`tests/mutate`): the named attacks, the PRNG and
// the structural diff of a weight-only rewrite.
#[path = "../mutate/attacks.rs"]
mod attacks;
#[path = "../mutate/rng.rs"]
mod rng;
#[path = "../mutate/structure.rs"]
mod structure;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Path of fixture `name` (e.g. "mlp.tflite").
pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Every `.tflite` fixture, sorted.
pub fn all_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tflite"))
        .collect();
    v.sort();
    v
}

/// The `tflq` binary under test.
pub fn tflq() -> Command {
    Command::cargo_bin("tflq").unwrap()
}

/// A fresh temporary folder, removed when dropped.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Names of the entries of `dir`, sorted (to prove no partial file was left).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Parses stdout as JSON.
pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}
