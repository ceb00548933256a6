//! `tflq quantize` on single models: outputs, summaries, skip reasons, errors.

use crate::*;

#[test]
fn quantizes_the_mlp_and_shrinks_it() {
    let dir = tmp();
    let out = dir.path().join("mlp.q.tflite");
    let assert = tflq()
        .args(["quantize", "--json"])
        .arg(fixture("mlp.tflite"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let j = json(&assert.get_output().stdout);
    assert_eq!(j["changed"], true);
    let before = std::fs::metadata(fixture("mlp.tflite")).unwrap().len();
    let after = std::fs::metadata(&out).unwrap().len();
    assert!(after * 100 < before * 35, "{before} -> {after}");
    assert_eq!(j["output_bytes"], after);
}
