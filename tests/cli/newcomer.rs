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

/// The bytes `tflq quantize` writes for `input` with default options (through a file: the
/// reference the other outputs are compared with).
fn reference(input: &Path) -> Vec<u8> {
    let dir = tmp();
    let out = dir.path().join("ref.tflite");
    tflq()
        .args([
            "quantize".as_ref(),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ])
        .assert()
        .success();
    std::fs::read(out).unwrap()
}

/// Item 3: `-o DIR` (existing) writes DIR/<input name>; `-o new/a/b/m.tflite` creates the
/// folders; a failure removes the folders it created and names the folder it cannot create.
#[test]
fn output_into_a_folder_or_new_folders() {
    let dir = tmp();
    let mlp = fixture("mlp.tflite");
    let want = reference(&mlp);
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    tflq()
        .args([
            "quantize".as_ref(),
            mlp.as_os_str(),
            "-o".as_ref(),
            existing.as_os_str(),
        ])
        .assert()
        .success();
    assert_eq!(entries(&existing), ["mlp.tflite"]);
    assert_eq!(std::fs::read(existing.join("mlp.tflite")).unwrap(), want);
    let deep = dir.path().join("new/a/b/m.tflite");
    tflq()
        .args([
            "quantize".as_ref(),
            mlp.as_os_str(),
            "-o".as_ref(),
            deep.as_os_str(),
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(&deep).unwrap(), want);
    // A broken input: nothing, not even the folders, is left behind.
    let bad = dir.path().join("bad.tflite");
    std::fs::write(&bad, &std::fs::read(&mlp).unwrap()[..1000]).unwrap();
    let never = dir.path().join("never/x/m.tflite");
    let (code, _, _) = run(&[
        "quantize".as_ref(),
        bad.as_os_str(),
        "-o".as_ref(),
        never.as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(!dir.path().join("never").exists());
    // A folder that cannot be created (a file is in the way) is named.
    let blocked = bad.join("sub/m.tflite");
    let (code, _, stderr) = run(&[
        "quantize".as_ref(),
        mlp.as_os_str(),
        "-o".as_ref(),
        blocked.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&*bad.join("sub").to_string_lossy()),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot create the output folder"),
        "{stderr}"
    );
}

/// Item 4: `-o -` writes the model to standard output (the summary to stderr) and no file
/// named `-`; `--report -` prints the report; batch mode refuses `-o -`.
#[test]
fn a_dash_is_standard_output() {
    let dir = tmp();
    for name in ["mlp.tflite", "cnn.tflite"] {
        let input = fixture(name);
        let out = tflq()
            .current_dir(dir.path())
            .args([
                "quantize".as_ref(),
                input.as_os_str(),
                "-o".as_ref(),
                "-".as_ref(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, reference(&input), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("tensors"));
        assert!(!dir.path().join("-").exists());
    }
    let q = dir.path().join("m.tflite");
    let mlp = fixture("mlp.tflite");
    let out = tflq()
        .current_dir(dir.path())
        .args([
            "quantize".as_ref(),
            mlp.as_os_str(),
            "-o".as_ref(),
            q.as_os_str(),
        ])
        .args(["--report", "-", "--report-format", "csv"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.lines().count() > 1 && csv.contains(','), "{csv}");
    assert!(!dir.path().join("-").exists());
    assert_eq!(std::fs::read(&q).unwrap(), reference(&mlp));
    let (code, _, stderr) = run(&[
        "quantize".as_ref(),
        fixtures().as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("batch mode needs an output folder"),
        "{stderr}"
    );
}

/// Item 6: when the model is written and only the report fails, the summary is printed and
/// the message says the model was written, then gives the report's error.
#[test]
fn a_failed_report_does_not_hide_the_written_model() {
    let dir = tmp();
    let mlp = fixture("mlp.tflite");
    let q = dir.path().join("m.tflite");
    let report = dir.path().join("no/such/folder/r.csv");
    let out = tflq()
        .args([
            "quantize".as_ref(),
            mlp.as_os_str(),
            "-o".as_ref(),
            q.as_os_str(),
        ])
        .args(["--report".as_ref(), report.as_os_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("tensors"), "{stdout}");
    assert!(
        stderr.contains(&format!("the model was written to {}", q.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&*report.to_string_lossy()), "{stderr}");
    assert_eq!(std::fs::read(&q).unwrap(), reference(&mlp));
}

/// Item 5: per-channel fallbacks are counted, with their reason, in the text summary and in
/// `report`, matching the tensors the JSON summary marks.
#[test]
fn per_channel_fallbacks_are_said() {
    let dir = tmp();
    let mut seen = 0;
    for model in all_fixtures() {
        let out = dir.path().join("o.tflite");
        let pc = ["--granularity", "per-channel"];
        let json = tflq()
            .args([
                "quantize".as_ref(),
                model.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
                "--json".as_ref(),
            ])
            .args(pc)
            .output()
            .unwrap();
        if !json.status.success() {
            continue;
        }
        let v = crate::json(&json.stdout);
        let mut want: std::collections::BTreeMap<String, usize> = Default::default();
        for t in v["quantized"].as_array().unwrap() {
            if let Some(r) = t["per_channel_fallback"].as_str() {
                *want.entry(r.to_owned()).or_default() += 1;
            }
        }
        let text = tflq()
            .args([
                "quantize".as_ref(),
                model.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
            ])
            .args(pc)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        let report = tflq()
            .args(["report".as_ref(), model.as_os_str()])
            .args(pc)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&report.stdout).into_owned();
        for (reason, n) in &want {
            let noun = if *n == 1 { "tensor" } else { "tensors" };
            let line = format!("{n} {noun} per-tensor instead of per-channel: {reason}");
            assert!(
                text.contains(&line),
                "{}: {text} lacks {line}",
                model.display()
            );
            assert!(
                report.contains(&line),
                "{}: {report} lacks {line}",
                model.display()
            );
            seen += 1;
        }
        if want.is_empty() {
            assert!(!text.contains("instead of per-channel"), "{text}");
        }
    }
    assert!(seen > 0, "no fixture falls back: the test proves nothing");
}

/// Item 7: `report EMPTYDIR` says no model was found (exit 1); an HTML report with no tensor,
/// or of float16 weights (no plots), says why.
#[test]
fn empty_results_are_explained() {
    let dir = tmp();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("README.txt"), "not a model").unwrap();
    let (code, stdout, stderr) = run(&["report".as_ref(), empty.as_os_str()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("no .tflite model found in"), "{stderr}");
    assert!(stderr.contains(&*empty.to_string_lossy()), "{stderr}");
    let html = dir.path().join("r.html");
    // int8.tflite: nothing would be quantized.
    let (code, _, _) = run(&[
        "report".as_ref(),
        fixture("int8.tflite").as_os_str(),
        "-o".as_ref(),
        html.as_os_str(),
    ]);
    assert_eq!(code, 0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains(
            "id=\"no-tensors\">No tensor was measured: no tensor of this model would be quantized"
        ),
        "{page}"
    );
    // float16: measured, but no plots, and the page says why.
    let (code, _, _) = run(&[
        "report".as_ref(),
        fixture("mlp.tflite").as_os_str(),
        "--type".as_ref(),
        "float16".as_ref(),
        "-o".as_ref(),
        html.as_os_str(),
    ]);
    assert_eq!(code, 0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<svg"), "float16 has no plots");
    assert!(
        page.contains("No plots: float16 weights have no int8 codes to plot"),
        "{page}"
    );
    assert!(!page.contains("No tensor was measured"));
    // int8 still has its plots and no such note.
    let (code, _, _) = run(&[
        "report".as_ref(),
        fixture("mlp.tflite").as_os_str(),
        "-o".as_ref(),
        html.as_os_str(),
    ]);
    assert_eq!(code, 0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && !page.contains("No plots"));
}

/// Item 8: `--dry-run` reads and plans each model and says what would happen (as many
/// tensors as the real run quantizes, copied unchanged, or the real run's error), writing
/// nothing.
#[test]
fn a_dry_run_reads_and_plans_each_model() {
    let dir = tmp();
    let out = dir.path().join("o.tflite");
    for (name, n) in [
        ("mlp.tflite", None),
        ("int8.tflite", Some(0)),
        ("float16.tflite", Some(0)),
    ] {
        let input = fixture(name);
        // The count the real run reports.
        let real = tflq()
            .args([
                "quantize".as_ref(),
                input.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
                "--json".as_ref(),
            ])
            .output()
            .unwrap();
        let real = crate::json(&real.stdout)["quantized"]
            .as_array()
            .unwrap()
            .len();
        std::fs::remove_file(&out).unwrap();
        if let Some(n) = n {
            assert_eq!(real, n, "{name}");
        }
        let (code, stdout, stderr) = run(&[
            "quantize".as_ref(),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--dry-run".as_ref(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        let want = match real {
            0 => "would copy unchanged (nothing to quantize): ".to_owned(),
            1 => "would quantize 1 tensor: ".to_owned(),
            n => format!("would quantize {n} tensors: "),
        };
        assert!(stdout.starts_with(&want), "{name}: {stdout}");
        assert!(!out.exists());
    }
    let bad = dir.path().join("bad.tflite");
    std::fs::write(&bad, &std::fs::read(fixture("mlp.tflite")).unwrap()[..3000]).unwrap();
    let (code, stdout, stderr) = run(&[
        "quantize".as_ref(),
        bad.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--dry-run".as_ref(),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("truncated: the file has 3000 bytes"),
        "{stderr}"
    );
    assert!(!stdout.contains("would quantize"), "{stdout}");
    // Batch: the same three outcomes, each named.
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(fixture("mlp.tflite"), store.join("mlp.tflite")).unwrap();
    std::fs::copy(fixture("int8.tflite"), store.join("int8.tflite")).unwrap();
    std::fs::copy(&bad, store.join("bad.tflite")).unwrap();
    let outdir = dir.path().join("out");
    let (code, stdout, stderr) = run(&[
        "quantize".as_ref(),
        store.as_os_str(),
        "-o".as_ref(),
        outdir.as_os_str(),
        "--dry-run".as_ref(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!outdir.exists());
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(row("mlp.tflite").starts_with("would quantize"), "{stdout}");
    assert!(
        row("int8.tflite").starts_with("would be unchanged"),
        "{stdout}"
    );
    assert!(row("bad.tflite").starts_with("FAILED"), "{stdout}");
    assert!(row("bad.tflite").contains("truncated"), "{stdout}");
}

/// Item 12 (part): one tensor is "1 tensor" in the gate message and the per-channel lines.
#[test]
fn one_tensor_is_singular() {
    // mlp has two weights; with --min-elements above the smaller, one is measured.
    let (code, _, stderr) = run(&[
        "report".as_ref(),
        fixture("mlp.tflite").as_os_str(),
        "--fail-below-sqnr".as_ref(),
        "200".as_ref(),
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("of 2 tensors below 200 dB"), "{stderr}");
    assert!(!stderr.contains("1 tensors"), "{stderr}");
    for model in all_fixtures() {
        let (_, stdout, stderr) = run(&[
            "report".as_ref(),
            model.as_os_str(),
            "--granularity".as_ref(),
            "per-channel".as_ref(),
        ]);
        for text in [&stdout, &stderr] {
            assert!(
                !text.contains(" 1 tensors") && !text.contains("1 exact tensors"),
                "{}: {text}",
                model.display()
            );
        }
    }
}

/// Item 9: an output that is its input is one mistake with one exit code (2, a usage error),
/// for a file, a file through a link and a folder; every subcommand's `--help` says so.
#[test]
fn the_output_being_the_input_is_exit_2_for_files_and_folders() {
    let dir = tmp();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let model = models.join("m.tflite");
    std::fs::copy(fixture("mlp.tflite"), &model).unwrap();
    let link = dir.path().join("link.tflite");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let original = std::fs::read(&model).unwrap();
    let cases: [(&std::path::Path, &std::path::Path); 4] = [
        (&model, &model),
        (&model, &link),
        (&models, &models),
        (&model, &models), // -o DIR with one file: DIR/m.tflite, the input itself
    ];
    for (input, output) in cases {
        for extra in [&[][..], &["--dry-run"][..]] {
            let mut args = vec!["quantize".as_ref(), input.as_os_str(), "-o".as_ref()];
            args.push(output.as_os_str());
            args.extend(extra.iter().map(std::ffi::OsStr::new));
            let (code, _, stderr) = run(&args);
            let what = format!(
                "{} -o {} {extra:?}: {stderr}",
                input.display(),
                output.display()
            );
            assert_eq!(code, 2, "{what}");
            assert!(stderr.contains("--in-place"), "{what}");
            assert_eq!(std::fs::read(&model).unwrap(), original, "{what}");
        }
    }
    for command in [&[][..], &["quantize"], &["inspect"], &["report"]] {
        let mut args: Vec<&std::ffi::OsStr> = command.iter().map(|c| c.as_ref()).collect();
        args.push("--help".as_ref());
        let (code, stdout, _) = run(&args);
        assert_eq!(code, 0);
        let codes = stdout
            .split("Exit codes:")
            .nth(1)
            .unwrap_or_else(|| panic!("{stdout}"));
        for line in ["  0 ", "  1 ", "  2 ", "  3 ", "  4 ", "  130 "] {
            assert!(codes.contains(line), "{command:?} lacks {line:?}: {codes}");
        }
        let two = codes
            .split("  2 ")
            .nth(1)
            .unwrap()
            .split("  3 ")
            .next()
            .unwrap();
        let two = two.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            two.contains("an output that is its input, a file or a folder"),
            "{two}"
        );
    }
}

/// Counts of one that read as plurals ("1 tensors", "1 exact tensors left out", "1 of 1
/// models failed"): none in any text output of any subcommand.
fn no_plural_after_one(text: &str) {
    let re = regex::Regex::new(
        r"(^|[^0-9.,])1 (exact )?(tensors|models|files|bytes|elements|layer pairs|problems|operators|subgraphs|buffers|scales|zero points)\b",
    )
    .unwrap();
    assert!(re.find(text).is_none(), "{:?} in:\n{text}", re.find(text));
}

/// Item 12: a model where exactly one tensor is quantized (its largest float constant, from
/// `inspect --json`), in quantize, report (all text formats), inspect and a batch with one
/// broken model: every count of one is singular, and the plural stays for the others.
#[test]
fn a_count_of_one_is_singular_everywhere() {
    let dir = tmp();
    let model = fixture("cnn.tflite");
    let (_, json_text, _) = run(&["inspect".as_ref(), model.as_os_str(), "--json".as_ref()]);
    let inspected = json(json_text.as_bytes());
    let elements = |c: &serde_json::Value| -> u64 {
        c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .product()
    };
    let mut sizes: Vec<u64> = inspected["constants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["dtype"] == "FLOAT32")
        .map(elements)
        .collect();
    sizes.sort_unstable();
    let largest = *sizes.last().unwrap();
    assert!(sizes[sizes.len() - 2] < largest, "{sizes:?}");
    let min = largest.to_string();
    let mut all = String::new();
    let go = |all: &mut String, args: &[&std::ffi::OsStr]| -> String {
        let (_, stdout, stderr) = run(args);
        let text = format!("{stdout}{stderr}");
        all.push_str(&text);
        text
    };
    let out = dir.path().join("one.tflite");
    let summary = go(
        &mut all,
        &[
            "quantize".as_ref(),
            model.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--min-elements".as_ref(),
            min.as_ref(),
        ],
    );
    assert!(summary.contains("tensors:  1 quantized,"), "{summary}");
    for format in ["table", "markdown", "csv"] {
        go(
            &mut all,
            &[
                "report".as_ref(),
                model.as_os_str(),
                "--against".as_ref(),
                out.as_os_str(),
                "--format".as_ref(),
                format.as_ref(),
            ],
        );
    }
    let html = dir.path().join("r.html");
    go(
        &mut all,
        &[
            "report".as_ref(),
            model.as_os_str(),
            "--against".as_ref(),
            out.as_os_str(),
            "--format".as_ref(),
            "html".as_ref(),
            "-o".as_ref(),
            html.as_os_str(),
        ],
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("The worst tensor<"), "{page}");
    all.push_str(&page);
    go(&mut all, &["inspect".as_ref(), out.as_os_str()]);
    // A batch of one good model and one text file that calls itself a model.
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::copy(&model, models.join("a.tflite")).unwrap();
    std::fs::write(models.join("b.tflite"), b"x").unwrap();
    let outdir = dir.path().join("out");
    let batch = go(
        &mut all,
        &[
            "quantize".as_ref(),
            models.as_os_str(),
            "-o".as_ref(),
            outdir.as_os_str(),
            "--min-elements".as_ref(),
            min.as_ref(),
        ],
    );
    assert!(batch.contains(" 1 tensor "), "{batch}");
    assert!(batch.contains("1 of 2 models failed"), "{batch}");
    assert!(batch.contains("only 1 byte)"), "{batch}");
    no_plural_after_one(&all);
}

/// The JSON lines of a batch: (path, kind, status) per file, sorted, and the totals.
fn batch_lines(stdout: &str) -> (Vec<(String, String, String)>, serde_json::Value) {
    let mut files = Vec::new();
    let mut totals = serde_json::Value::Null;
    for line in stdout.lines() {
        let v = json(line.as_bytes());
        if v["kind"] == "totals" {
            totals = v;
        } else {
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            files.push((s("path"), s("kind"), s("status")));
        }
    }
    files.sort();
    (files, totals)
}

/// Item 10: `tflq quantize models/* -o out` (the shell names every file) does what
/// `tflq quantize models -o out` does: the README and a tiny file named among the models are
/// counted as files that are not models, never "truncated" nor failed; with --copy-others
/// they are copied. A model of another name, named explicitly, is still quantized.
#[test]
fn a_glob_of_a_models_folder_does_what_the_folder_does() {
    let dir = tmp();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("vision")).unwrap();
    std::fs::copy(fixture("mlp.tflite"), models.join("mlp.tflite")).unwrap();
    std::fs::copy(fixture("cnn.tflite"), models.join("vision/cnn.tflite")).unwrap();
    std::fs::write(models.join("README.txt"), "# My models\n\nmlp and cnn.\n").unwrap();
    std::fs::write(models.join("x"), "hi").unwrap();
    let mut glob: Vec<std::path::PathBuf> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    glob.sort();
    assert_eq!(glob.len(), 4);
    for extra in [&[][..], &["--copy-others"], &["--dry-run"]] {
        let mut results = Vec::new();
        for (i, inputs) in [vec![models.clone()], glob.clone()].into_iter().enumerate() {
            let out = dir.path().join(format!("out{i}{}", extra.len()));
            let mut args: Vec<&std::ffi::OsStr> = vec!["quantize".as_ref()];
            args.extend(inputs.iter().map(|p| p.as_os_str()));
            args.extend(["-o".as_ref(), out.as_os_str(), "--json".as_ref()]);
            args.extend(extra.iter().map(std::ffi::OsStr::new));
            let (code, stdout, stderr) = run(&args);
            assert_eq!(code, 0, "{args:?}: {stderr}");
            assert!(!stderr.contains("truncated"), "{stderr}");
            let (files, totals) = batch_lines(&stdout);
            assert_eq!(
                (totals["models"].as_u64(), totals["others"].as_u64()),
                (Some(2), Some(2))
            );
            assert_eq!(totals["failed"], 0, "{stdout}");
            if extra.is_empty() {
                assert!(out.join("mlp.tflite").exists() && out.join("vision/cnn.tflite").exists());
                assert!(!out.join("README.txt").exists());
            }
            if extra == ["--copy-others"] {
                assert_eq!(
                    std::fs::read(out.join("README.txt")).unwrap(),
                    std::fs::read(models.join("README.txt")).unwrap()
                );
            }
            // The table says the same: two files that are not models.
            args.retain(|a| *a != "--json");
            let (_, table, _) = run(&args);
            assert!(
                table.contains("others:   2 files that are not models"),
                "{table}"
            );
            results.push(files);
        }
        assert_eq!(results[0], results[1], "{extra:?}");
        // Listed only when copied; never as a model.
        let readme = results[1].iter().find(|f| f.0 == "README.txt");
        assert!(readme.is_none_or(|r| r.1 == "other"), "{readme:?}");
        assert_eq!(
            readme.is_some(),
            extra == ["--copy-others"],
            "{:?}",
            results[1]
        );
    }
    // A model whose name is not .tflite, named explicitly: a model (it holds TFL3).
    let bin = models.join("cnn.bin");
    std::fs::copy(fixture("cnn.tflite"), &bin).unwrap();
    let out = dir.path().join("out-bin");
    let readme = models.join("README.txt");
    let (code, stdout, stderr) = run(&[
        "quantize".as_ref(),
        bin.as_os_str(),
        readme.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (files, _) = batch_lines(&stdout);
    assert!(
        files.contains(&("cnn.bin".into(), "model".into(), "quantized".into())),
        "{files:?}"
    );
    let q = std::fs::read(out.join("cnn.bin")).unwrap();
    assert!(q.len() * 2 < std::fs::read(&bin).unwrap().len());
    // A text file named .tflite is a model that fails, and says why (not "truncated").
    let fake = models.join("notes.tflite");
    std::fs::write(&fake, "not a model at all\n").unwrap();
    let (code, _, stderr) = run(&[
        "quantize".as_ref(),
        fake.as_os_str(),
        readme.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not a TFLite model: no TFL3 identifier"),
        "{stderr}"
    );
    assert!(!stderr.contains("truncated"), "{stderr}");
}

/// Item 13: every plot of the HTML report names its axes (value, count, error in
/// quantization steps), has a legend for the bars and the int8 grid's ticks, and draws its
/// text at 12 pixels or more; the error axis spans half a step either side.
#[test]
fn the_html_plots_have_axis_names_a_legend_and_readable_labels() {
    let dir = tmp();
    let q = dir.path().join("q.tflite");
    let html = dir.path().join("r.html");
    let model = fixture("cnn.tflite");
    let (code, _, stderr) = run(&[
        "quantize".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        q.as_os_str(),
        "-q".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&[
        "report".as_ref(),
        model.as_os_str(),
        "--against".as_ref(),
        q.as_os_str(),
        "-o".as_ref(),
        html.as_os_str(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let page = std::fs::read_to_string(&html).unwrap();
    let svgs: Vec<&str> = page.split("<svg").skip(1).collect();
    assert!(!svgs.is_empty(), "{page}");
    let text = regex::Regex::new(r"<text[^>]*>\s*([^<]*?)\s*</text>").unwrap();
    let size = regex::Regex::new(r#"<text[^>]*font-size="([0-9.]+)""#).unwrap();
    for svg in svgs {
        let svg = svg.split("</svg>").next().unwrap();
        let texts: Vec<&str> = text
            .captures_iter(svg)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        let has = |s: &str| texts.iter().any(|t| t.contains(s));
        assert!(has("value"), "{texts:?}");
        assert_eq!(
            texts.iter().filter(|t| **t == "count").count(),
            2,
            "{texts:?}"
        );
        assert!(has("in quantization steps"), "{texts:?}");
        assert!(has("int8 grid: one tick per code"), "{texts:?}");
        assert!(has("float weights per bin"), "{texts:?}");
        // The error axis' ticks (the labels with a decimal point after its name) lie within
        // half a step either side of 0, on both sides.
        let at = texts
            .iter()
            .position(|t| t.contains("in quantization steps"))
            .unwrap();
        let ticks: Vec<f64> = texts[at..]
            .iter()
            .filter(|t| t.contains('.') && !t.contains(' '))
            .map(|t| t.parse().unwrap())
            .collect();
        assert!(ticks.iter().all(|t| t.abs() <= 0.5), "{ticks:?}");
        assert!(
            ticks.iter().any(|&t| t <= -0.2) && ticks.iter().any(|&t| t >= 0.2),
            "{ticks:?}"
        );
        for c in size.captures_iter(svg) {
            let px: f64 = c[1].parse().unwrap();
            assert!(px >= 12.0, "{px}-pixel text");
        }
    }
}
