//! Batch conversion: every model under a set of files and folders, in parallel, one report
//! per model, and a failure in one model never stops the others.
//!
//! [`discover()`] finds the files and where each one's output goes; [`run`] processes them;
//! [`quantize_all`] does both, keeping the output folder out of the inputs.
//!
//! Threads: `jobs` plain worker threads each take the next file, largest first (so a large
//! model never starts last and the batch ends soon after its largest models), quantize it
//! (`quantize_file` up to the commit of its output) and send the result back over a
//! channel; the calling thread collects the results and tells the [`Observer`]. Outputs of
//! small models are committed (made durable, then named) in groups ([`GROUPED_BELOW`]), and
//! each file is reported once its output has its name. The data-parallel loops inside one
//! model (range scans, quantization) run on rayon's global pool, shared by all workers:
//! those loops use one thread per core whatever `jobs` is, and a large model left alone at
//! the end of a batch still gets every core. A small model with enough others left to fill
//! the cores runs on its worker's own single thread instead ([`ALONE_BELOW`]). A worker
//! holds only the model it works on, mapped and streamed to its output, so memory grows
//! with the models in flight, not with the batch.
//!
//! Once the cancel token of the options ([`crate::FileOptions::cancel`]) is cancelled, no
//! file is started; the writes in progress stop at their next block and remove their
//! temporary files, and [`run`] returns what was done.

pub mod discover;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Serialize, Serializer};

pub use discover::{DiscoverOptions, Discovery, Found, Kind, Problem, Shard, ShardError, discover};

use crate::error::Error;
use crate::io::{same_file, write_unnamed};
use crate::pipeline::{FileOptions, quantize_unnamed};
use crate::summary::Summary;
use crate::text::{Align, Column, Cut, Table, human, ratio};

/// Options of a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// What to quantize, whether an output may replace its input, and the cancel token
    /// that stops the batch.
    pub file: FileOptions,
    /// Files processed at once (0: two per core).
    pub jobs: usize,
    /// Leave files whose output is at least as new as the input.
    pub skip_existing: bool,
    /// Decide what would be done, write nothing.
    pub dry_run: bool,
    /// Copy the files that are not models, so the output folder is a complete copy.
    pub copy_others: bool,
    /// Process only this share of the files.
    pub shard: Option<Shard>,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The model was quantized and written.
    Quantized,
    /// Nothing in the model qualified; the output is a copy of the input.
    Unchanged,
    /// The (non-model) file was copied.
    Copied,
    /// The output is at least as new as the input (`skip_existing`); nothing was done.
    UpToDate,
    /// Dry run: the model would be quantized.
    WouldQuantize,
    /// Dry run: nothing in the model qualifies; it would be copied unchanged.
    WouldBeUnchanged,
    /// Dry run: the file would be copied.
    WouldCopy,
    /// The model could not be read or written; see the error. No output was written.
    Failed,
    /// Stopped by an interruption while being written; no output was written.
    Interrupted,
}

impl Status {
    /// How the status reads in the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Quantized => "quantized",
            Status::Unchanged => "unchanged",
            Status::Copied => "copied",
            Status::UpToDate => "up to date",
            Status::WouldQuantize => "would quantize",
            Status::WouldBeUnchanged => "would be unchanged",
            Status::WouldCopy => "would copy",
            Status::Failed => "FAILED",
            Status::Interrupted => "interrupted",
        }
    }
}

fn lossy<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn lossy_opt<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => lossy(p, s),
        None => s.serialize_none(),
    }
}

/// The outcome for one file: a line of the table, an object of the JSON lines.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Model or other file.
    pub kind: Kind,
    /// The file's place below the root, which is also its place below the output folder.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// Where it was read.
    #[serde(serialize_with = "lossy")]
    pub input: PathBuf,
    /// Where its output goes.
    #[serde(serialize_with = "lossy")]
    pub output: PathBuf,
    /// What happened.
    pub status: Status,
    /// Size of the input.
    pub input_bytes: u64,
    /// Size of the output written (`None` when nothing was written).
    pub output_bytes: Option<u64>,
    /// Tensors quantized.
    pub tensors_quantized: usize,
    /// Constant tensors left as they were.
    pub tensors_skipped: usize,
    /// SQNR of the worst quantized tensor in dB (`None`: none quantized, or all exact).
    pub worst_sqnr_db: Option<f64>,
    /// Name of the worst quantized tensor.
    pub worst_tensor: Option<String>,
    /// Time spent on the file.
    pub seconds: f64,
    /// Things the user should know about the model.
    pub warnings: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl FileReport {
    fn new(found: &Found, output: PathBuf, status: Status) -> FileReport {
        FileReport {
            kind: found.kind,
            path: found.relative.clone(),
            input: found.path.clone(),
            output,
            status,
            input_bytes: found.bytes,
            output_bytes: None,
            tensors_quantized: 0,
            tensors_skipped: 0,
            worst_sqnr_db: None,
            worst_tensor: None,
            seconds: 0.0,
            warnings: Vec::new(),
            error: None,
        }
    }

    fn done(mut self, s: &Summary) -> FileReport {
        self.status = if s.changed {
            Status::Quantized
        } else {
            Status::Unchanged
        };
        self.input_bytes = s.input_bytes;
        self.output_bytes = Some(s.output_bytes);
        self.tensors_quantized = s.quantized.len();
        self.tensors_skipped = s.skipped.len();
        if let Some(w) = s.worst() {
            self.worst_sqnr_db = w.sqnr_db;
            self.worst_tensor = Some(w.name.clone());
        }
        self.warnings = s.warnings.clone();
        self
    }

    fn failed(mut self, err: &Error, cancelled: bool) -> FileReport {
        if cancelled {
            self.status = Status::Interrupted;
            self.error = Some("interrupted".to_owned());
            return self;
        }
        self.status = Status::Failed;
        // The table already names the file: drop the path the message starts with. Keep it
        // on one line (the flatbuffers verifier's messages span several).
        let msg = err.to_string();
        let prefix = format!("{}: ", self.input.display());
        let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
        let lines: Vec<&str> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        self.error = Some(lines.join(" "));
        self
    }

    /// Whether the file counts as an error of the batch.
    pub fn is_error(&self) -> bool {
        self.status == Status::Failed
    }
}

/// Told about the progress of [`run`], on the thread that called it.
pub trait Observer {
    /// The batch is about to start `files` files holding `bytes` bytes in all.
    fn planned(&mut self, files: usize, bytes: u64) {
        let _ = (files, bytes);
    }
    /// A worker has started on `found`.
    fn started(&mut self, found: &Found) {
        let _ = found;
    }
    /// A worker is done with `found`.
    fn finished(&mut self, found: &Found, report: &FileReport) {
        let _ = (found, report);
    }
}

/// An observer that ignores everything.
impl Observer for () {}

/// Why a batch cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The output folder is the folder the inputs are read from, and in-place was not asked.
    #[error(
        "{}: the output folder is the input folder, so every model would be replaced; pass --in-place to do that, or choose another output folder",
        path.display()
    )]
    OutputIsInput {
        /// The output folder.
        path: PathBuf,
    },
    /// The output folder is one of several input folders: outputs would land among inputs.
    #[error(
        "{}: the output folder is one of the input folders; choose a folder outside the inputs (or a new one inside them)",
        path.display()
    )]
    OutputAmongInputs {
        /// The output folder.
        path: PathBuf,
    },
    /// The output path exists and is not a folder.
    #[error("{}: the output must be a folder when the inputs are folders or several files", path.display())]
    OutputNotAFolder {
        /// The output path.
        path: PathBuf,
    },
    /// The output folder cannot be created.
    #[error("{}: cannot create the output folder: {source}", path.display())]
    CreateOutput {
        /// The output folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Counts over a batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Models in this batch (this shard).
    pub models: usize,
    /// Models quantized.
    pub quantized: usize,
    /// Models with nothing to quantize (written unchanged).
    pub unchanged: usize,
    /// Models skipped because their output is up to date.
    pub up_to_date: usize,
    /// Dry run: models that would be quantized.
    pub would_quantize: usize,
    /// Dry run: models with nothing to quantize (they would be copied unchanged).
    pub would_be_unchanged: usize,
    /// Models that failed.
    pub failed: usize,
    /// Models and files stopped by an interruption while being written.
    pub interrupted: usize,
    /// Models and files never started because of an interruption.
    pub not_started: usize,
    /// Files that are not models.
    pub others: usize,
    /// Other files copied.
    pub copied: usize,
    /// Dry run: other files that would be copied.
    pub would_copy: usize,
    /// Other files whose copy is up to date.
    pub others_up_to_date: usize,
    /// Other files that could not be copied.
    pub copy_failed: usize,
    /// Other files neither copied nor failed (no `copy_others`, or in place).
    pub ignored: usize,
    /// Everything that went wrong: failed models, failed copies, unreadable folders.
    pub errors: usize,
    /// Files of other shards.
    pub outside_shard: usize,
    /// Bytes of the models written (quantized or unchanged).
    pub input_bytes: u64,
    /// Bytes of their outputs.
    pub output_bytes: u64,
    /// Tensors quantized in all models.
    pub tensors_quantized: usize,
    /// The lowest SQNR of any quantized tensor, in dB.
    pub worst_sqnr_db: Option<f64>,
    /// The model it is in.
    #[serde(serialize_with = "lossy_opt")]
    pub worst_model: Option<PathBuf>,
    /// Wall time of the batch.
    pub seconds: f64,
}

/// What a batch did.
#[derive(Debug)]
pub struct BatchSummary {
    /// The folder the relative paths start from.
    pub root: PathBuf,
    /// The output folder.
    pub output: PathBuf,
    /// The share processed.
    pub shard: Option<Shard>,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One report per file started (or decided on), sorted by relative path. Other files
    /// appear only when they were to be copied.
    pub files: Vec<FileReport>,
    /// Inputs and folders that could not be read, link loops.
    pub problems: Vec<Problem>,
    /// Counts.
    pub totals: Totals,
    /// Whether a stop was requested before the batch ended.
    pub interrupted: bool,
}

/// Finds the files under `inputs` (never entering `output`) and processes them.
pub fn quantize_all(
    inputs: &[PathBuf],
    output: &Path,
    opts: &BatchOptions,
    observer: &mut dyn Observer,
) -> Result<BatchSummary, BatchError> {
    let found = discover(
        inputs,
        &DiscoverOptions {
            exclude: vec![output.to_owned()],
            shard: opts.shard,
        },
    );
    run(found, output, opts, observer)
}

/// Quantizes the models of `discovery` (and copies its other files with
/// [`BatchOptions::copy_others`]) to their relative paths below `output`.
///
/// Fails only when the batch cannot start (see [`BatchError`]); a file that fails is
/// reported in its [`FileReport`] and the others go on. The discovery should have excluded
/// `output` (as [`quantize_all`] does), or a second run reads the first one's outputs.
pub fn run(
    discovery: Discovery,
    output: &Path,
    opts: &BatchOptions,
    observer: &mut dyn Observer,
) -> Result<BatchSummary, BatchError> {
    let start = Instant::now();
    let in_place = check_output(&discovery, output, opts.file.in_place)?;
    if !opts.dry_run {
        std::fs::create_dir_all(output).map_err(|source| BatchError::CreateOutput {
            path: output.to_owned(),
            source,
        })?;
    }
    let files = &discovery.files;
    let wanted = |f: &Found| f.kind == Kind::Model || (opts.copy_others && !in_place);
    let mut queue: Vec<usize> = (0..files.len()).filter(|&i| wanted(&files[i])).collect();
    // Largest first: the batch then ends soon after its largest model.
    queue.sort_by(|&a, &b| files[b].bytes.cmp(&files[a].bytes).then(a.cmp(&b)));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = match opts.jobs {
        // Two per core: a job waiting for its output to reach the disk (`fsync`, a few ms
        // per model) leaves its core to another instead of idle (100 small models: 0.34 s
        // with one per core, 0.27 s with two; more gave nothing).
        0 => 2 * cores,
        n => n,
    };

    observer.planned(queue.len(), queue.iter().map(|&i| files[i].bytes).sum());
    let mut reports: Vec<Option<FileReport>> = vec![None; files.len()];
    let next = AtomicUsize::new(0);
    let waiting = Waiting::default();
    // Groups only share the wait for the disk: without it, each output is named at once.
    let synced = opts.file.durability == crate::io::Durability::Synced;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(queue.len()) {
            let (tx, next, queue, waiting) = (tx.clone(), &next, &queue, &waiting);
            scope.spawn(move || {
                let mut own = OwnThread::default();
                while !opts.file.cancel.is_cancelled() {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = queue.get(k) else {
                        break;
                    };
                    let _ = tx.send(Event::Started(i));
                    let process = || process_guarded(&files[i], output, opts);
                    // Enough files left to keep every core busy: a small one on its own.
                    let alone = queue.len() - k >= cores && files[i].bytes < ALONE_BELOW;
                    let (report, written) = own.run_if(alone, process);
                    let done = match written {
                        Some(w) if files[i].bytes < GROUPED_BELOW && synced => {
                            waiting.add((i, report, w))
                        }
                        Some(w) => vec![(i, report, w)],
                        None => {
                            let _ = tx.send(Event::Finished(i, Box::new(report)));
                            continue;
                        }
                    };
                    commit(done, &opts.file.cancel, &tx);
                }
                // Whatever still waits is committed by the last worker out.
                commit(waiting.take(), &opts.file.cancel, &tx);
            });
        }
        drop(tx);
        for event in rx {
            match event {
                Event::Started(i) => observer.started(&files[i]),
                Event::Finished(i, report) => {
                    observer.finished(&files[i], &report);
                    reports[i] = Some(*report);
                }
            }
        }
    });

    let interrupted = opts.file.cancel.is_cancelled();
    let mut totals = Totals {
        models: discovery.models().count(),
        others: files.len() - discovery.models().count(),
        outside_shard: discovery.outside_shard,
        not_started: queue.iter().filter(|&&i| reports[i].is_none()).count(),
        ignored: files.iter().filter(|f| !wanted(f)).count(),
        errors: discovery.problems.iter().filter(|p| p.is_error()).count(),
        ..Totals::default()
    };
    let reports: Vec<FileReport> = reports.into_iter().flatten().collect();
    for r in &reports {
        totals.add(r);
    }
    totals.seconds = start.elapsed().as_secs_f64();
    Ok(BatchSummary {
        root: discovery.root,
        output: output.to_owned(),
        shard: opts.shard,
        dry_run: opts.dry_run,
        files: reports,
        problems: discovery.problems,
        totals,
        interrupted,
    })
}

/// Models smaller than this are quantized on their worker's own thread while at least one
/// file per core is left: the other workers keep the cores busy, and the model is spared
/// the hand-overs between threads that its parallel loops would make (100 small models:
/// 14% less CPU time, 0.26 s down to 0.21 s, `docs/bench.md`).
const ALONE_BELOW: u64 = 64 << 20;

/// Outputs of models smaller than this are committed in groups of [`GROUP`]: making each
/// durable on its own waits for a journal commit of the file system per file (100 models
/// of 4.4 MiB: 0.17-0.20 s one by one, 0.15-0.17 s in groups, `docs/bench.md`). Larger
/// outputs, whose own writing dwarfs that wait, are committed at once.
const GROUPED_BELOW: u64 = 64 << 20;

/// Outputs committed at once, at most: they appear in groups of this many, and that many
/// temporary files stay open meanwhile.
const GROUP: usize = 16;

/// A file done, its output written but not yet committed.
type Written = (usize, FileReport, crate::io::Unnamed);

/// The written outputs that wait for their group to fill.
#[derive(Default)]
struct Waiting(std::sync::Mutex<Vec<Written>>);

impl Waiting {
    /// Adds one; returns the whole group once it is full (else nothing).
    fn add(&self, w: Written) -> Vec<Written> {
        let mut group = self.0.lock().unwrap_or_else(|e| e.into_inner());
        group.push(w);
        if group.len() >= GROUP {
            std::mem::take(&mut *group)
        } else {
            Vec::new()
        }
    }

    fn take(&self) -> Vec<Written> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Commits the outputs of `done` together and reports each file: a failed commit makes it
/// a failure (no output).
fn commit(done: Vec<Written>, cancel: &crate::Cancel, tx: &mpsc::Sender<Event>) {
    if done.is_empty() {
        return;
    }
    let (reports, outputs): (Vec<_>, Vec<_>) =
        done.into_iter().map(|(i, r, w)| ((i, r), w)).unzip();
    let results = crate::io::commit_all(outputs);
    for ((i, report), result) in reports.into_iter().zip(results) {
        let report = match result {
            Ok(()) => report,
            Err(e) => FileReport {
                output_bytes: None,
                ..report
            }
            .failed(&e, cancel.is_cancelled()),
        };
        let _ = tx.send(Event::Finished(i, Box::new(report)));
    }
}

/// A worker's own single-thread rayon pool, made on first use: the data-parallel loops of a
/// model run there in sequence instead of on the shared pool.
#[derive(Default)]
struct OwnThread(Option<Option<rayon::ThreadPool>>);

impl OwnThread {
    /// Runs `f` on the own thread when `alone` (on the caller's when that thread cannot be
    /// made), else on the shared pool.
    fn run_if<T: Send>(&mut self, alone: bool, f: impl FnOnce() -> T + Send) -> T {
        if !alone {
            return f();
        }
        let pool = self
            .0
            .get_or_insert_with(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().ok());
        match pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

enum Event {
    Started(usize),
    Finished(usize, Box<FileReport>),
}

/// Refuses outputs that would mix with the inputs; returns whether the batch is in place
/// (output folder = root).
fn check_output(discovery: &Discovery, output: &Path, in_place: bool) -> Result<bool, BatchError> {
    let path = output.to_owned();
    match std::fs::metadata(output) {
        Ok(m) if !m.is_dir() => return Err(BatchError::OutputNotAFolder { path }),
        Ok(_) => {}
        Err(_) => return Ok(false),
    }
    if same_file(output, &discovery.root) {
        return if in_place {
            Ok(true)
        } else {
            Err(BatchError::OutputIsInput { path })
        };
    }
    if discovery.folders.iter().any(|f| same_file(f, output)) {
        return Err(BatchError::OutputAmongInputs { path });
    }
    Ok(false)
}

/// Whether `output` exists and was modified no earlier than `input`.
pub fn up_to_date(input: &Path, output: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    match (modified(input), modified(output)) {
        (Ok(i), Ok(o)) => o >= i,
        _ => false,
    }
}

/// [`process`], with a panic (a bug of tflq's, which a strange model might reveal) turned
/// into a failure of that one file, so that the rest of a long batch still gets done. The
/// unwinding drops the temporary output, which removes it.
fn process_guarded(
    found: &Found,
    out_root: &Path,
    opts: &BatchOptions,
) -> (FileReport, Option<crate::io::Unnamed>) {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process(found, out_root, opts)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let report = FileReport {
            error: Some(format!(
                "internal error, please report it: tflq panicked on this file: {what}"
            )),
            ..FileReport::new(found, out_root.join(&found.relative), Status::Failed)
        };
        (report, None)
    })
}

/// Does one file and reports; a bad file is a failed report, never an error. A quantized
/// model's output is returned written but not committed, for the caller to commit (with
/// others); until then the report's `Quantized` holds only if the commit succeeds.
fn process(
    found: &Found,
    out_root: &Path,
    opts: &BatchOptions,
) -> (FileReport, Option<crate::io::Unnamed>) {
    let start = Instant::now();
    let output = out_root.join(&found.relative);
    let model = found.kind == Kind::Model;
    let report = FileReport::new(found, output.clone(), Status::Failed);
    let replaces_input = same_file(&found.path, &output);
    let mut written = None;
    let mut report = if opts.skip_existing && !replaces_input && up_to_date(&found.path, &output) {
        FileReport {
            status: Status::UpToDate,
            ..report
        }
    } else if opts.dry_run && !model {
        FileReport {
            status: Status::WouldCopy,
            ..report
        }
    } else if opts.dry_run {
        // Read and planned, not written: a model that would fail fails here too.
        match crate::pipeline::plan_file(&found.path, &opts.file.quant) {
            Ok(0) => FileReport {
                status: Status::WouldBeUnchanged,
                ..report
            },
            Ok(n) => FileReport {
                status: Status::WouldQuantize,
                tensors_quantized: n,
                ..report
            },
            Err(e) => report.failed(&e, false),
        }
    } else {
        let result = match output.parent() {
            Some(dir) => std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(dir, "create the output folder", e)),
            None => Ok(()),
        };
        match result.and_then(|()| {
            if model {
                quantize_unnamed(&found.path, &output, &opts.file).map(|(summary, w)| {
                    written = Some(w);
                    Some(summary)
                })
            } else {
                copy_file(&found.path, &output, &opts.file).map(|()| None)
            }
        }) {
            Ok(Some(summary)) => report.done(&summary),
            Ok(None) => FileReport {
                status: Status::Copied,
                output_bytes: Some(found.bytes),
                ..report
            },
            Err(e) => report.failed(&e, opts.file.cancel.is_cancelled()),
        }
    };
    report.seconds = start.elapsed().as_secs_f64();
    (report, written)
}

/// Copies a file that is not a model, atomically, keeping its permissions (and made
/// durable as the models' outputs are).
fn copy_file(input: &Path, output: &Path, opts: &FileOptions) -> crate::Result<()> {
    if same_file(input, output) {
        return Err(Error::SameFile {
            path: output.to_owned(),
        });
    }
    let mut file = File::open(input).map_err(|e| Error::io(input, "open", e))?;
    let permissions = file.metadata().ok().map(|m| m.permissions());
    let ((), copied) = write_unnamed(output, permissions, &opts.cancel, opts.durability, |w| {
        std::io::copy(&mut file, w)
            .map(drop)
            .map_err(|e| Error::io(output, "write", e))
    })?;
    copied.commit()
}

impl Totals {
    fn add(&mut self, r: &FileReport) {
        let model = r.kind == Kind::Model;
        let count = match (r.status, model) {
            (Status::Quantized, _) => &mut self.quantized,
            (Status::Unchanged, _) => &mut self.unchanged,
            (Status::Copied, _) => &mut self.copied,
            (Status::UpToDate, true) => &mut self.up_to_date,
            (Status::UpToDate, false) => &mut self.others_up_to_date,
            (Status::WouldQuantize, _) => &mut self.would_quantize,
            (Status::WouldBeUnchanged, _) => &mut self.would_be_unchanged,
            (Status::WouldCopy, _) => &mut self.would_copy,
            (Status::Failed, true) => &mut self.failed,
            (Status::Failed, false) => &mut self.copy_failed,
            (Status::Interrupted, _) => &mut self.interrupted,
        };
        *count += 1;
        if r.is_error() {
            self.errors += 1;
        }
        let Some(out) = r.output_bytes.filter(|_| model) else {
            return;
        };
        self.input_bytes += r.input_bytes;
        self.output_bytes += out;
        self.tensors_quantized += r.tensors_quantized;
        match r.worst_sqnr_db {
            Some(db) if self.worst_sqnr_db.is_none_or(|w| db < w) => {
                self.worst_sqnr_db = Some(db);
                self.worst_model = Some(r.path.clone());
            }
            _ => {}
        }
    }
}

impl BatchSummary {
    /// Writes one JSON object per file (sorted by path), one per problem, then the totals,
    /// each on its own line; every object has a `kind`: `model`, `other`, `problem` or
    /// `totals`.
    pub fn write_json_lines(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        for f in &self.files {
            serde_json::to_writer(&mut w, f)?;
            writeln!(w)?;
        }
        #[derive(Serialize)]
        struct ProblemLine<'a> {
            kind: &'static str,
            #[serde(serialize_with = "lossy")]
            path: &'a Path,
            status: &'static str,
            error: String,
        }
        for p in &self.problems {
            let line = ProblemLine {
                kind: "problem",
                path: p.path(),
                status: if p.is_error() { "failed" } else { "skipped" },
                error: p.to_string(),
            };
            serde_json::to_writer(&mut w, &line)?;
            writeln!(w)?;
        }
        #[derive(Serialize)]
        struct TotalsLine<'a> {
            kind: &'static str,
            #[serde(serialize_with = "lossy")]
            root: &'a Path,
            #[serde(serialize_with = "lossy")]
            output: &'a Path,
            shard: Option<String>,
            dry_run: bool,
            /// The batch was interrupted before every file was done (`interrupted` counts
            /// the files stopped mid-write).
            stopped: bool,
            #[serde(flatten)]
            totals: &'a Totals,
        }
        let line = TotalsLine {
            kind: "totals",
            root: &self.root,
            output: &self.output,
            shard: self.shard.map(|s| s.to_string()),
            dry_run: self.dry_run,
            stopped: self.interrupted,
            totals: &self.totals,
        };
        serde_json::to_writer(&mut w, &line)?;
        writeln!(w)
    }
}

fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1} s")
    }
}

/// What a line of the table says after the status and the path: sizes, ratio, tensors,
/// worst SQNR and time, or the error.
fn row_rest(r: &FileReport) -> String {
    match (&r.error, r.output_bytes) {
        (Some(e), _) => format!("  {e}"),
        (None, Some(out)) if r.kind == Kind::Model => {
            let worst = match (r.tensors_quantized, r.worst_sqnr_db) {
                (0, _) => String::new(),
                (_, Some(db)) => format!("worst {db:.1} dB"),
                (_, None) => "exact".to_owned(),
            };
            format!(
                "  {:>10} -> {:>10} {:>7}  {:>4} {:<7}  {worst:<14} {}",
                human(r.input_bytes),
                human(out),
                ratio(out, r.input_bytes),
                r.tensors_quantized,
                if r.tensors_quantized == 1 {
                    "tensor"
                } else {
                    "tensors"
                },
                duration(r.seconds)
            )
        }
        _ => format!("  {:>10}", human(r.input_bytes)),
    }
}

impl fmt::Display for BatchSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<&FileReport> = self
            .files
            .iter()
            .filter(|r| r.kind == Kind::Model || r.status != Status::Copied)
            .collect();
        // Status, path (padded to the longest up to 60 characters, never cut), the rest.
        let mut table = Table::new(vec![
            Column::new("", Align::Left).gap(0).min(14),
            Column::new("", Align::Left).gap(1).max(60, Cut::Keep),
            Column::new("", Align::Left).gap(0),
        ]);
        for r in &shown {
            let path = r.path.to_string_lossy().into_owned();
            table.row(vec![r.status.label().to_owned(), path, row_rest(r)]);
        }
        for line in table.lines(false) {
            writeln!(f, "{line}")?;
        }
        for p in &self.problems {
            let what = if p.is_error() { "error" } else { "warning" };
            writeln!(f, "{what}: {p}")?;
        }
        if !shown.is_empty() || !self.problems.is_empty() {
            writeln!(f)?;
        }
        let t = &self.totals;
        let mut parts = Vec::new();
        for (n, what) in [
            (t.quantized, "quantized"),
            (t.unchanged, "unchanged (nothing to quantize)"),
            (t.up_to_date, "up to date"),
            (t.would_quantize, "would be quantized"),
            (
                t.would_be_unchanged,
                "would be unchanged (nothing to quantize)",
            ),
            (t.failed, "failed"),
            (t.interrupted, "interrupted"),
            (t.not_started, "not started"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let shard = match self.shard {
            Some(s) => format!(
                " (shard {s}; {} in other shards)",
                crate::text::count(self.totals.outside_shard, "file", "files")
            ),
            None => String::new(),
        };
        writeln!(
            f,
            "models:   {} in {}{shard}{}{}",
            t.models,
            self.root.display(),
            if parts.is_empty() { "" } else { ": " },
            parts.join(", ")
        )?;
        writeln!(f, "output:   {}", self.output.display())?;
        if t.others > 0 {
            let mut what = Vec::new();
            for (n, how) in [
                (t.copied, "copied"),
                (t.would_copy, "would be copied"),
                (t.others_up_to_date, "up to date"),
                (t.copy_failed, "failed"),
            ] {
                if n > 0 {
                    what.push(format!("{n} {how}"));
                }
            }
            if t.ignored == t.others {
                what.push("ignored (--copy-others copies them)".to_owned());
            } else if t.ignored > 0 {
                what.push(format!("{} ignored", t.ignored));
            }
            writeln!(
                f,
                "others:   {}: {}",
                crate::text::count(
                    t.others,
                    "file that is not a model",
                    "files that are not models"
                ),
                what.join(", ")
            )?;
        }
        if t.input_bytes > 0 {
            writeln!(
                f,
                "size:     {} -> {} ({})",
                human(t.input_bytes),
                human(t.output_bytes),
                ratio(t.output_bytes, t.input_bytes)
            )?;
        }
        if t.tensors_quantized > 0 {
            let worst = match (t.worst_sqnr_db, &t.worst_model) {
                (Some(db), Some(m)) => format!("; worst SQNR {db:.1} dB in {}", m.display()),
                _ => String::new(),
            };
            writeln!(f, "tensors:  {} quantized{worst}", t.tensors_quantized)?;
        }
        if t.errors > 0 {
            writeln!(
                f,
                "errors:   {} (listed above; the other files were processed)",
                t.errors
            )?;
        }
        if self.interrupted {
            writeln!(
                f,
                "stopped:  interrupted; files in progress were abandoned and no partial output is left"
            )?;
        }
        writeln!(f, "time:     {}", duration(t.seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_alone_runs_its_loops_on_one_thread_of_its_own() {
        let mut own = OwnThread::default();
        let (threads, on_pool) = own.run_if(true, || {
            (rayon::current_num_threads(), rayon::current_thread_index())
        });
        assert_eq!((threads, on_pool), (1, Some(0)));
        let shared = rayon::current_num_threads();
        let (threads, on_pool) = own.run_if(false, || {
            (rayon::current_num_threads(), rayon::current_thread_index())
        });
        assert_eq!((threads, on_pool), (shared, None));
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(name),
        )
        .unwrap()
    }

    #[derive(Default)]
    struct Record {
        planned: (usize, u64),
        started: Vec<PathBuf>,
        finished: Vec<(PathBuf, Status)>,
        /// Whether each output reported quantized had its name by then.
        named: Vec<bool>,
    }

    impl Observer for Record {
        fn planned(&mut self, files: usize, bytes: u64) {
            self.planned = (files, bytes);
        }
        fn started(&mut self, found: &Found) {
            self.started.push(found.relative.clone());
        }
        fn finished(&mut self, found: &Found, report: &FileReport) {
            self.finished.push((found.relative.clone(), report.status));
            if report.status == Status::Quantized {
                self.named.push(report.output.is_file());
            }
        }
    }

    #[test]
    fn one_job_starts_the_largest_model_first_and_reports_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("sub")).unwrap();
        let names = [
            ("a.tflite", "metadata.tflite"),
            ("sub/b.tflite", "cnn.tflite"),
            ("c.tflite", "mlp.tflite"),
        ];
        for (rel, fx) in names {
            std::fs::write(store.join(rel), fixture(fx)).unwrap();
        }
        std::fs::write(store.join("bad.tflite"), b"nope").unwrap();
        std::fs::write(store.join("notes.txt"), b"x").unwrap();
        let out = dir.path().join("out");
        let opts = BatchOptions {
            jobs: 1,
            ..BatchOptions::default()
        };
        let mut record = Record::default();
        let summary = quantize_all(std::slice::from_ref(&store), &out, &opts, &mut record).unwrap();

        let sizes: u64 = ["metadata.tflite", "cnn.tflite", "mlp.tflite"]
            .iter()
            .map(|f| fixture(f).len() as u64)
            .sum();
        assert_eq!(record.planned, (4, sizes + 4));
        let started: Vec<&str> = record.started.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            started,
            ["sub/b.tflite", "c.tflite", "a.tflite", "bad.tflite"]
        );
        // The failure is told at once; the three outputs once committed together, when
        // the only job runs out of files.
        let quantized = (Status::Quantized, Status::Quantized, Status::Quantized);
        let finished: Vec<(&str, Status)> = record
            .finished
            .iter()
            .map(|(p, s)| (p.to_str().unwrap(), *s))
            .collect();
        assert_eq!(
            finished,
            [
                ("bad.tflite", Status::Failed),
                ("sub/b.tflite", quantized.0),
                ("c.tflite", quantized.1),
                ("a.tflite", quantized.2),
            ]
        );
        assert_eq!(record.named, [true; 3]);

        // The summary is sorted by path, whatever the order of work.
        let paths: Vec<&str> = summary
            .files
            .iter()
            .map(|r| r.path.to_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["a.tflite", "bad.tflite", "c.tflite", "sub/b.tflite"]
        );
        assert_eq!(summary.root, store);
        assert_eq!(summary.totals.quantized, 3);
        assert_eq!(summary.totals.failed, 1);
        assert_eq!(summary.totals.ignored, 1);
        let bad = &summary.files[1];
        assert_eq!(
            bad.error.as_deref(),
            Some("not a TFLite model: no TFL3 identifier (the file has only 4 bytes)")
        );
        for r in summary
            .files
            .iter()
            .filter(|r| r.status == Status::Quantized)
        {
            let written = std::fs::read(out.join(&r.path)).unwrap();
            assert_eq!(r.output_bytes, Some(written.len() as u64));
        }
    }

    /// More small models than a group holds: each is reported only once its output has its
    /// name, every output is the one `quantize_file` writes alone, and no temporary file is
    /// left.
    #[test]
    fn outputs_committed_in_groups_are_named_before_they_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let n = 2 * GROUP + 3;
        let model = fixture("mlp.tflite");
        for k in 0..n {
            std::fs::write(store.join(format!("m{k:02}.tflite")), &model).unwrap();
        }
        let alone = dir.path().join("alone.tflite");
        crate::pipeline::quantize_file(&store.join("m00.tflite"), &alone, &FileOptions::default())
            .unwrap();
        let want = std::fs::read(&alone).unwrap();
        for jobs in [1, 3] {
            let out = dir.path().join(format!("out{jobs}"));
            let opts = BatchOptions {
                jobs,
                ..BatchOptions::default()
            };
            let mut record = Record::default();
            let summary =
                quantize_all(std::slice::from_ref(&store), &out, &opts, &mut record).unwrap();
            assert_eq!(summary.totals.quantized, n, "jobs {jobs}");
            assert_eq!(record.named, vec![true; n], "jobs {jobs}");
            let mut names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let expected: Vec<String> = (0..n).map(|k| format!("m{k:02}.tflite")).collect();
            assert_eq!(names, expected, "jobs {jobs}: nothing else left");
            for name in &names {
                assert!(std::fs::read(out.join(name)).unwrap() == want, "{name}");
            }
        }
    }

    #[test]
    fn totals_keep_the_worst_sqnr_and_its_model() {
        let mut t = Totals::default();
        let found = Found {
            path: PathBuf::from("in/x.tflite"),
            relative: PathBuf::from("x.tflite"),
            kind: Kind::Model,
            bytes: 100,
        };
        for (rel, db) in [("a", 41.0), ("b", 33.5), ("c", 38.0)] {
            let r = FileReport {
                path: PathBuf::from(rel),
                status: Status::Quantized,
                output_bytes: Some(30),
                tensors_quantized: 2,
                worst_sqnr_db: Some(db),
                ..FileReport::new(&found, PathBuf::from("out"), Status::Failed)
            };
            t.add(&r);
        }
        assert_eq!(t.worst_sqnr_db, Some(33.5));
        assert_eq!(t.worst_model, Some(PathBuf::from("b")));
        assert_eq!((t.input_bytes, t.output_bytes), (300, 90));
        assert_eq!((t.quantized, t.tensors_quantized, t.errors), (3, 6, 0));
    }
}
