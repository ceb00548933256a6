//! Hostile input, in process: damaged and ill-formed models must be refused cleanly.
//!
//! For any bytes, every entry point of the library either refuses with an error, or accepts
//! and writes a model that re-reads and that a second run leaves unchanged; it never panics,
//! never hangs, and accepts exactly what [`tflq::Model::parse`] accepts. The cases come from
//! every fixture (and their quantized outputs, and generated models): bit flips, overwrites,
//! truncations, offsets aimed out of range or at other objects, inflated vector lengths,
//! broken vtables, wild indices and buffer offsets, and semantic damage built with the
//! object API. See `docs/robustness.md`.
//!
//! * `cargo test --test mutate`: a short run (`TFLQ_MUTATIONS_SHORT`, default 3000 cases),
//!   the named attacks with their messages, and the property tests.
//! * `TFLQ_MUTATIONS=1000000 cargo test --release --test mutate -- --ignored --nocapture`:
//!   the long run. `TFLQ_MUTATION_SEED` picks another stream of cases.

mod attacks;
mod damage;
mod generator;
mod harness;
mod memory;
mod property;
mod rng;
mod slots;
mod structure;

use std::time::Duration;

use harness::{ENTRIES, Outcome, config, env_u64, finish, run};

#[test]
fn mutations_short_run() {
    let cases = env_u64("TFLQ_MUTATIONS_SHORT", 3000);
    let report = run(&config(cases, None));
    finish(&report);
    assert_eq!(report.cases, cases);
    // The cases must reach past the verifier: many accepted, many kinds of refusal.
    assert!(
        report.tally.accepted * 20 > cases,
        "only {} of {cases} cases accepted: the mutations are too blunt",
        report.tally.accepted
    );
    assert!(
        report.tally.refused.len() >= 8,
        "refusals of only {} kinds: {:?}",
        report.tally.refused.len(),
        report.tally.refused
    );
}

#[test]
#[ignore = "long: TFLQ_MUTATIONS cases (default 1e6); run in release with --ignored"]
fn mutations_long_run() {
    let cases = env_u64("TFLQ_MUTATIONS", 1_000_000);
    let report = run(&config(cases, Some(Duration::from_secs(30))));
    finish(&report);
}

/// Reruns one case, to debug a failure: `TFLQ_MUTATION_CASE=i` (of run
/// `TFLQ_MUTATION_SEED`), or `TFLQ_MUTATION_FILE=path` (a saved case: the stream of cases
/// changes when the seed models do).
#[test]
fn mutation_case_from_env() {
    let (what, bytes) = if let Ok(path) = std::env::var("TFLQ_MUTATION_FILE") {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "TFLQ_MUTATION_FILE={path}: cannot read it ({e}); a mutation run saves each \
                 failing case under target/tmp/mutate-failures/ (none is there until a run \
                 fails), or rerun a case by number with TFLQ_MUTATION_SEED and TFLQ_MUTATION_CASE"
            )
        });
        (path.clone(), bytes)
    } else if let Ok(i) = std::env::var("TFLQ_MUTATION_CASE") {
        let seed = env_u64("TFLQ_MUTATION_SEED", 1);
        let i = i.parse().unwrap_or_else(|_| {
            panic!("TFLQ_MUTATION_CASE={i}: not a case number (a whole number from 0)")
        });
        harness::case(seed, i)
    } else {
        return;
    };
    eprintln!("case {what} ({} bytes)", bytes.len());
    let mut tally = harness::Tally::default();
    if let Err(e) = harness::check(&bytes, &mut tally) {
        panic!("{e}");
    }
}

#[test]
fn every_attack_is_refused_with_a_message_that_says_what_is_wrong() {
    for attack in attacks::ATTACKS {
        let bytes = (attack.make)();
        for entry in ENTRIES {
            match (entry.run)(&bytes) {
                Outcome::Refused { message, .. } => {
                    for needle in attack.expect {
                        assert!(
                            message.contains(needle),
                            "{}: {}: message {message:?} lacks {needle:?}",
                            attack.name,
                            entry.name
                        );
                    }
                }
                _ => panic!("{}: {} accepted it", attack.name, entry.name),
            }
        }
    }
}

/// The seeds themselves are accepted; otherwise every case would be refused for nothing.
#[test]
fn every_seed_is_accepted() {
    for s in harness::seeds() {
        let mut tally = harness::Tally::default();
        harness::check(&s.bytes, &mut tally).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert_eq!(tally.accepted, 1, "{}", s.name);
        assert!(!s.slots.all.is_empty(), "{}", s.name);
    }
}

/// Writes the cases the library accepts, with their quantized outputs (default options, and
/// dynamic per-channel), for checks outside Rust (the LiteRT runtime):
/// `TFLQ_MUTATION_DUMP=dir`, `TFLQ_MUTATIONS` cases looked at.
#[test]
#[ignore = "a tool: TFLQ_MUTATION_DUMP=dir writes accepted cases and their outputs"]
fn dump_accepted_cases() {
    let dir = std::path::PathBuf::from(
        std::env::var("TFLQ_MUTATION_DUMP").expect("set TFLQ_MUTATION_DUMP"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let seed = env_u64("TFLQ_MUTATION_SEED", 1);
    let dynamic = tflq::Options {
        mode: tflq::plan::Mode::Dynamic,
        granularity: tflq::plan::Granularity::PerChannel,
        ..tflq::Options::default()
    };
    let mut index = String::new();
    for i in 0..env_u64("TFLQ_MUTATIONS", 2000) {
        let (what, bytes) = harness::case(seed, i);
        let Ok(out) = tflq::quantize(&bytes, &tflq::Options::default()) else {
            continue;
        };
        std::fs::write(dir.join(format!("{i}.in.tflite")), &bytes).unwrap();
        std::fs::write(dir.join(format!("{i}.out.tflite")), &out.bytes).unwrap();
        let dynamic = tflq::quantize(&bytes, &dynamic).expect("accepted like the default");
        std::fs::write(dir.join(format!("{i}.dyn.tflite")), &dynamic.bytes).unwrap();
        index.push_str(&format!("{i}\t{}\t{what}\n", out.summary.changed));
    }
    std::fs::write(dir.join("index.tsv"), index).unwrap();
}

/// Found by the long mutation run: an offset in the buffer table aimed at a weight buffer
/// gave the sentinel buffer 0 data, and every tensor the rewrite had moved to buffer 0 then
/// seemed to hold it. The runtime gives tensors with buffer 0 no data, whatever it holds.
#[test]
fn the_sentinel_buffer_is_never_tensor_data() {
    let mut m = attacks::unpack(&attacks::read_fixture("mlp.tflite"));
    let weights = m.buffers.as_ref().unwrap()[4].clone();
    m.buffers.as_mut().unwrap()[0] = weights.clone();
    let bytes = attacks::pack(&m);
    let model = tflq::Model::parse(&bytes).unwrap();
    assert!(model.buffer_data(0).is_empty());
    let out = tflq::quantize(&bytes, &tflq::Options::default()).unwrap();
    let mut tally = harness::Tally::default();
    harness::check(&bytes, &mut tally).unwrap();
    let q = attacks::unpack(&out.bytes);
    // The quantized tensors point at buffer 0, which keeps its bytes (a metadata entry may
    // name it) but is no tensor's data.
    assert_eq!(q.buffers.as_ref().unwrap()[0].data, weights.data);
    let model = tflq::Model::parse(&out.bytes).unwrap();
    assert!(model.subgraphs()[0].tensors.iter().any(|t| t.buffer == 0));
    assert!(model.buffer_data(0).is_empty());
}

/// Found by the long mutation run: one buffer read by two tensors of the same size but
/// different shapes ([64, 128] and [128, 64]; the converter shares equal constants) got
/// per-channel scales that fit only the first, and the output did not re-read.
#[test]
fn a_buffer_shared_by_different_shapes_gets_scales_that_fit_all() {
    let mut m = attacks::unpack(&attacks::read_fixture("mlp.tflite"));
    m.subgraphs.as_mut().unwrap()[0].tensors.as_mut().unwrap()[4].buffer = 6;
    let bytes = attacks::pack(&m);
    for mode in [tflq::plan::Mode::WeightOnly, tflq::plan::Mode::Dynamic] {
        let opts = tflq::Options {
            mode,
            granularity: tflq::plan::Granularity::PerChannel,
            ..tflq::Options::default()
        };
        let out = tflq::quantize(&bytes, &opts).unwrap();
        let shared: Vec<_> = out
            .summary
            .quantized
            .iter()
            .filter(|q| q.buffer == 6)
            .collect();
        assert_eq!(shared.len(), 2, "{mode:?}: both readers quantized");
        tflq::Model::parse(&out.bytes).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
}
