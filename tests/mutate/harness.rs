//! The mutation run: seed models, cases made from them, and every entry point run on every
//! case under a panic catcher and a watchdog.
//!
//! A case is a pure function of (run seed, case index), so any failure can be rerun alone
//! (`TFLQ_MUTATION_SEED=s TFLQ_MUTATION_CASE=i`); its bytes are also saved under
//! `target/tmp/mutate-failures/`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use tflq::plan::{Granularity, Mode, WeightType};
use tflq::report::{self, Format, ReportOptions, format::FormatOptions};
use tflq::{LayoutPolicy, Options};
use tflq_schema as fb;

use crate::rng::Rng;
use crate::slots::{self, Slots};
use crate::{attacks, damage, generator};

/// What an entry point made of some bytes.
pub enum Outcome {
    /// Accepted and wrote this model: it must re-read, and a second run must keep it as is.
    Model(Vec<u8>),
    /// Accepted; nothing more to check than that it returned.
    Done,
    /// Refused, with the error's variant name and its message.
    Refused { kind: String, message: String },
}

/// One way into the library.
pub struct Entry {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
}

/// Every entry point the mutation run drives: parsing, quantizing in every mode, inspecting
/// and reporting (in every format). The first is the reference: every entry must accept
/// what `Model::parse` accepts (meaning is checked once, at the boundary) and refuse what it
/// refuses. To cover another command, add an entry here.
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "Model::parse",
        run: |b| match tflq::Model::parse(b) {
            Ok(_) => Outcome::Done,
            Err(e) => refused(&tflq::Error::from(e)),
        },
    },
    Entry {
        name: "quantize",
        run: |b| model(tflq::quantize(b, &Options::default())),
    },
    Entry {
        name: "quantize --min-elements 0",
        run: |b| {
            let opts = Options {
                min_elements: 0,
                ..Options::default()
            };
            model(tflq::quantize(b, &opts))
        },
    },
    Entry {
        name: "quantize --layout external",
        run: |b| {
            let opts = Options {
                layout: LayoutPolicy::External,
                ..Options::default()
            };
            model(tflq::quantize(b, &opts))
        },
    },
    Entry {
        name: "quantize --mode dynamic --per-channel --min-elements 0",
        run: |b| {
            let opts = Options {
                mode: Mode::Dynamic,
                granularity: Granularity::PerChannel,
                min_elements: 0,
                ..Options::default()
            };
            model(tflq::quantize(b, &opts))
        },
    },
    Entry {
        name: "quantize --symmetric --per-channel",
        run: |b| {
            let opts = Options {
                symmetric: true,
                granularity: Granularity::PerChannel,
                ..Options::default()
            };
            model(tflq::quantize(b, &opts))
        },
    },
    Entry {
        name: "quantize --weight-type float16 --min-elements 0",
        run: |b| {
            let opts = Options {
                weight_type: WeightType::Float16,
                min_elements: 0,
                ..Options::default()
            };
            model(tflq::quantize(b, &opts))
        },
    },
    Entry {
        name: "inspect (text and JSON)",
        run: |b| match tflq::Model::parse(b) {
            Ok(m) => {
                let inspection = tflq::inspect::inspect(&m);
                let text = inspection.to_string();
                let json = serde_json::to_string(&inspection).expect("serializes");
                assert!(!text.is_empty() && !json.is_empty());
                Outcome::Done
            }
            Err(e) => refused(&tflq::Error::from(e)),
        },
    },
    Entry {
        name: "report (every format) and report --against itself",
        run: |b| match tflq::Model::parse(b) {
            Ok(m) => {
                let opts = ReportOptions {
                    quant: Options {
                        min_elements: 0,
                        ..Options::default()
                    },
                    histograms: true,
                };
                let fmt = FormatOptions::default();
                for r in [report::report(&m, &opts), report::against(&m, &m, &opts)] {
                    for f in Format::NAMES {
                        let mut out = Vec::new();
                        let format = Format::from_name(f).expect("a format");
                        report::write_report(&r, format, &fmt, &mut out).expect("writes");
                    }
                }
                Outcome::Done
            }
            Err(e) => refused(&tflq::Error::from(e)),
        },
    },
];

fn model(r: tflq::Result<tflq::Output>) -> Outcome {
    match r {
        Ok(out) => Outcome::Model(out.bytes),
        Err(e) => refused(&e),
    }
}

/// The variant name of an error (of the model error inside, for model errors).
pub fn kind(e: &tflq::Error) -> String {
    let debug = match e {
        tflq::Error::Invalid(m) => format!("{m:?}"),
        other => format!("{other:?}"),
    };
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn refused(e: &tflq::Error) -> Outcome {
    Outcome::Refused {
        kind: kind(e),
        message: e.to_string(),
    }
}

/// A model the cases start from.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub slots: Slots,
    pub model: fb::ModelT,
}

/// Every fixture, the quantized output of each (in both layouts, with and without the size
/// threshold), and a few generated models.
pub fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut named: Vec<(String, Vec<u8>)> = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "tflite"))
            .collect();
        paths.sort();
        for p in paths {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            for (tag, opts) in [
                ("q", Options::default()),
                (
                    "q0",
                    Options {
                        min_elements: 0,
                        ..Options::default()
                    },
                ),
                (
                    "qx",
                    Options {
                        layout: LayoutPolicy::External,
                        ..Options::default()
                    },
                ),
            ] {
                let out = tflq::quantize(&bytes, &opts).expect("fixtures quantize");
                if out.summary.changed {
                    named.push((format!("{name}:{tag}"), out.bytes));
                }
            }
            named.push((name, bytes));
        }
        let mut rng = Rng::new(0x5eed);
        for i in 0..8 {
            named.push((format!("generated-{i}"), generator::model(&mut rng).bytes));
        }
        named
            .into_iter()
            .map(|(name, bytes)| Seed {
                slots: slots::find(&bytes),
                model: attacks::unpack(&bytes),
                name,
                bytes,
            })
            .collect()
    })
}

/// Case `index` of run `seed`: which seed model, what was done to it, the bytes.
pub fn case(seed: u64, index: u64) -> (String, Vec<u8>) {
    let seeds = seeds();
    let mut rng = Rng::new(seed.wrapping_mul(0x0000_0100_0000_01b3) ^ index);
    let s = &seeds[rng.below(seeds.len())];
    let mut what = Vec::new();
    let mut bytes;
    let mut slots = &s.slots;
    let packed;
    if rng.one_in(5) {
        let mut m = s.model.clone();
        for _ in 0..1 + rng.below(2) {
            what.push(attacks::random(&mut rng, &mut m));
        }
        bytes = if rng.one_in(4) {
            attacks::pack_external(&m, |_| {})
        } else {
            attacks::pack(&m)
        };
        packed = slots::find(&bytes);
        slots = &packed;
        if !rng.one_in(4) {
            return (format!("{}: {}", s.name, what.join("; ")), bytes);
        }
    } else {
        bytes = s.bytes.clone();
    }
    let n = if rng.one_in(3) { 1 + rng.below(4) } else { 1 };
    for _ in 0..n {
        what.push(damage::any(&mut rng, &mut bytes, slots));
    }
    (format!("{}: {}", s.name, what.join("; ")), bytes)
}

thread_local! {
    /// Set while a case runs on this thread: its panics are recorded, not printed.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                if let Some(slot) = c.as_mut() {
                    *slot = format!("{info}");
                    true
                } else {
                    false
                }
            });
            if !captured {
                default(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into an error that says where it happened.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    let msg = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    r.map_err(|_| format!("panicked: {msg}"))
}

/// Counts of what the entry points did with the cases.
#[derive(Debug, Default)]
pub struct Tally {
    /// Cases the reference entry accepted.
    pub accepted: u64,
    /// Cases refused, by error variant.
    pub refused: BTreeMap<String, u64>,
}

/// Runs every entry point on `bytes` and checks the property. `Err` says what broke.
pub fn check(bytes: &[u8], tally: &mut Tally) -> Result<(), String> {
    let mut reference: Option<Result<(), String>> = None;
    for e in ENTRIES {
        let outcome = guarded(|| (e.run)(bytes)).map_err(|m| format!("{}: {m}", e.name))?;
        let ok = !matches!(outcome, Outcome::Refused { .. });
        match (&reference, ok) {
            (None, _) => {}
            (Some(Ok(())), false) | (Some(Err(_)), true) => {
                let said = match &outcome {
                    Outcome::Refused { message, .. } => format!("refused: {message}"),
                    _ => "accepted".to_owned(),
                };
                return Err(format!(
                    "{} disagrees with {}: {said}; {} said {:?}",
                    e.name, ENTRIES[0].name, ENTRIES[0].name, reference
                ));
            }
            _ => {}
        }
        match outcome {
            Outcome::Refused { kind, message } => {
                if message.trim().is_empty() || kind.is_empty() {
                    return Err(format!("{}: empty error message", e.name));
                }
                if reference.is_none() {
                    *tally.refused.entry(kind).or_default() += 1;
                    reference = Some(Err(message));
                }
            }
            Outcome::Done => {
                if reference.is_none() {
                    tally.accepted += 1;
                    reference = Some(Ok(()));
                }
            }
            Outcome::Model(out) => {
                if reference.is_none() {
                    reference = Some(Ok(()));
                }
                if let Err(err) = tflq::Model::parse(&out) {
                    return Err(format!("{}: output does not re-read: {err}", e.name));
                }
                let again = guarded(|| (e.run)(&out))
                    .map_err(|m| format!("{} on its own output: {m}", e.name))?;
                match again {
                    Outcome::Model(twice) if twice == out => {}
                    Outcome::Model(_) => {
                        return Err(format!("{}: a second run changed the model", e.name));
                    }
                    Outcome::Refused { message, .. } => {
                        return Err(format!("{}: refuses its own output: {message}", e.name));
                    }
                    Outcome::Done => {}
                }
            }
        }
    }
    Ok(())
}

/// How to run.
pub struct Config {
    pub cases: u64,
    pub seed: u64,
    pub threads: usize,
    /// A case running longer than this is a hang (generous: this catches loops, not slowness).
    pub timeout: Duration,
    /// Print a line every this often (long runs).
    pub progress: Option<Duration>,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: u64,
    pub tally: Tally,
    pub failures: Vec<String>,
    pub slowest: Duration,
}

fn save(seed: u64, index: u64, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mutate-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("seed{seed}-case{index}.tflite"));
    let _ = std::fs::write(&path, bytes);
    path
}

/// The case a worker is running, and since when.
type Busy = Mutex<Option<(u64, Instant)>>;

/// Runs `cfg.cases` cases on `cfg.threads` threads while watching for hangs.
pub fn run(cfg: &Config) -> Report {
    install_panic_hook();
    seeds();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(Report::default()));
    let busy: Arc<Vec<Busy>> = Arc::new((0..cfg.threads).map(|_| Mutex::new(None)).collect());
    let mut workers = Vec::new();
    for w in 0..cfg.threads {
        let (next, stop, report, busy) = (next.clone(), stop.clone(), report.clone(), busy.clone());
        let (cases, seed) = (cfg.cases, cfg.seed);
        workers.push(std::thread::spawn(move || {
            let mut tally = Tally::default();
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cases {
                    break;
                }
                let start = Instant::now();
                *busy[w].lock().unwrap() = Some((i, start));
                let (what, bytes) = case(seed, i);
                if let Err(e) = check(&bytes, &mut tally) {
                    let path = save(seed, i, &bytes);
                    failures.push(format!(
                        "case {i} ({what}): {e}\n    saved as {}",
                        path.display()
                    ));
                }
                *busy[w].lock().unwrap() = None;
                slowest = slowest.max(start.elapsed());
                done += 1;
            }
            let mut r = report.lock().unwrap();
            r.cases += done;
            r.tally.accepted += tally.accepted;
            for (k, n) in tally.refused {
                *r.tally.refused.entry(k).or_default() += n;
            }
            r.failures.extend(failures);
            r.slowest = r.slowest.max(slowest);
        }));
    }
    let started = Instant::now();
    let mut last = Instant::now();
    let mut hung = Vec::new();
    while !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        for b in busy.iter() {
            if let Some((i, since)) = *b.lock().unwrap() {
                if since.elapsed() > cfg.timeout && !hung.contains(&i) {
                    let (what, bytes) = case(cfg.seed, i);
                    let path = save(cfg.seed, i, &bytes);
                    hung.push(i);
                    report.lock().unwrap().failures.push(format!(
                        "case {i} ({what}): still running after {:?}\n    saved as {}",
                        cfg.timeout,
                        path.display()
                    ));
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        if !hung.is_empty() && workers.iter().filter(|w| !w.is_finished()).count() <= hung.len() {
            break; // Only hung workers are left; they cannot be joined.
        }
        if let Some(every) = cfg.progress {
            if last.elapsed() >= every {
                last = Instant::now();
                let done = next.load(Ordering::Relaxed).min(cfg.cases);
                eprintln!(
                    "mutate: {done}/{} cases, {:.0} s, {:.0} cases/s",
                    cfg.cases,
                    started.elapsed().as_secs_f64(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    for w in workers {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    let mut r = report.lock().unwrap();
    std::mem::take(&mut *r)
}

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The run's settings from the environment (`TFLQ_MUTATION_SEED`, `TFLQ_MUTATION_THREADS`,
/// `TFLQ_MUTATION_TIMEOUT` in seconds).
pub fn config(cases: u64, progress: Option<Duration>) -> Config {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    Config {
        cases,
        seed: env_u64("TFLQ_MUTATION_SEED", 1),
        threads: env_u64("TFLQ_MUTATION_THREADS", threads as u64) as usize,
        timeout: Duration::from_secs(env_u64("TFLQ_MUTATION_TIMEOUT", 60)),
        progress,
    }
}

/// Prints a summary and fails on any failure.
pub fn finish(report: &Report) {
    eprintln!(
        "mutate: {} cases, {} accepted, refused: {:?}, slowest case {:?}",
        report.cases, report.tally.accepted, report.tally.refused, report.slowest
    );
    assert!(
        report.failures.is_empty(),
        "{} failing cases:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}
