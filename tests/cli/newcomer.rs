//! The rough edges of issue 11 ("a newcomer's day"), each tried as a first-time user would.

use crate::*;

/// Runs `tflq ARGS`; returns (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = tflq().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses "truncated: the file has N bytes, the model refers to byte M" out of `stderr`.
fn truncated_numbers(stderr: &str) -> Option<(usize, usize)> {
    let rest = stderr.split("truncated: the file has ").nth(1)?;
    let (n, rest) = rest.split_once(" bytes, the model refers to byte ")?;
    let m: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// Item 1: a model cut short (any fixture, several cut points) is called truncated, with the
/// file's length and a byte past it that the whole model does hold; in every subcommand.
#[test]
fn a_half_downloaded_model_is_called_truncated() {
    let dir = tmp();
    for model in all_fixtures() {
        let bytes = std::fs::read(&model).unwrap();
        for cut in [5, bytes.len() / 7, bytes.len() / 2, bytes.len() - 1000] {
            let part = dir.path().join("part.tflite");
            std::fs::write(&part, &bytes[..cut]).unwrap();
            for command in ["quantize", "inspect", "report"] {
                let out = dir.path().join("out.tflite");
                let mut args = vec![command.as_ref(), part.as_os_str()];
                if command == "quantize" {
                    args.extend(["-o".as_ref(), out.as_os_str()]);
                }
                let (code, _, stderr) = run(&args);
                let what = format!("{} cut at {cut}, {command}: {stderr}", model.display());
                // Some cuts fall where every offset still lands inside (a model whose
                // external buffers were cut, say); those are not this test's concern.
                if stderr.contains("lies outside") {
                    continue;
                }
                assert_eq!(code, 1, "{what}");
                let (n, m) = truncated_numbers(&stderr).unwrap_or_else(|| panic!("{what}"));
                assert_eq!(n, cut, "{what}");
                assert!(m > cut && m <= bytes.len(), "{what}");
                assert!(stderr.contains(&*part.to_string_lossy()), "{what}");
                assert!(!out.exists(), "{what}");
            }
        }
    }
}

/// Item 1 and 10: a text file given as a model is "not a TFLite model: no TFL3 identifier",
/// never "truncated", however short; an empty file says it is empty.
#[test]
fn a_text_file_is_not_a_model_and_not_truncated() {
    let dir = tmp();
    for text in [&b"hi\n"[..], b"abcd", b"# README\n\nThese are my models.\n"] {
        let path = dir.path().join("notes.tflite");
        std::fs::write(&path, text).unwrap();
        for command in ["inspect", "report"] {
            let (code, _, stderr) = run(&[command.as_ref(), path.as_os_str()]);
            assert_eq!(code, 1, "{stderr}");
            assert!(
                stderr.contains("not a TFLite model: no TFL3 identifier"),
                "{stderr}"
            );
            assert!(!stderr.contains("truncated"), "{stderr}");
        }
    }
    let empty = dir.path().join("empty.tflite");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, stderr) = run(&["inspect".as_ref(), empty.as_os_str()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the file is empty"), "{stderr}");
}

/// Item 2: a gate with nothing measured fails with exit 4 and says why; a real gate still
/// passes (exit 0) or fails (exit 3).
#[test]
fn a_gate_that_measured_nothing_fails() {
    let dir = tmp();
    let mlp = fixture("mlp.tflite");
    // A different model, and the float model itself: nothing of either matches mlp's int8.
    for other in [fixture("cnn.tflite"), mlp.clone()] {
        let (code, stdout, stderr) = run(&[
            "report".as_ref(),
            mlp.as_os_str(),
            "--against".as_ref(),
            other.as_os_str(),
            "--fail-below-sqnr".as_ref(),
            "30".as_ref(),
        ]);
        assert_eq!(code, 4, "{}: {stderr}", other.display());
        assert!(stdout.contains("0 measured"), "{stdout}");
        assert!(
            stderr.contains("no tensor of") && stderr.contains("was measured"),
            "{stderr}"
        );
        assert!(stderr.contains(&*mlp.to_string_lossy()), "{stderr}");
    }
    // A model with nothing to quantize, in memory.
    let (code, _, stderr) = run(&[
        "report".as_ref(),
        fixture("int8.tflite").as_os_str(),
        "--fail-below-sqnr".as_ref(),
        "30".as_ref(),
    ]);
    assert_eq!(code, 4, "{stderr}");
    // The real thing: mlp against its own int8 output passes a low gate, fails a high one.
    let q = dir.path().join("mlp.int8.tflite");
    tflq()
        .args([
            "quantize".as_ref(),
            mlp.as_os_str(),
            "-o".as_ref(),
            q.as_os_str(),
        ])
        .assert()
        .success();
    for (db, want) in [("10", 0), ("200", 3)] {
        let (code, _, stderr) = run(&[
            "report".as_ref(),
            mlp.as_os_str(),
            "--against".as_ref(),
            q.as_os_str(),
            "--fail-below-sqnr".as_ref(),
            db.as_ref(),
        ]);
        assert_eq!(code, want, "{db}: {stderr}");
    }
    // Documented in --help.
    tflq()
        .args(["report", "--help"])
        .assert()
        .stdout(predicates::str::contains(
            "4    a quality gate was asked for",
        ));
}
