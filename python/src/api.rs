//! Every use of the `tflq` library's API by the Python module, in one place.
//!
//! The rest of the crate (`lib.rs`) converts Python values to the plain types here and these
//! results and errors back; when the library's API changes, this file is what changes.
//!
//! Cancellation: each call takes the [`Cancel`] token that the caller cancels on Ctrl-C.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tflq::batch::{BatchOptions, FileReport, Found, Observer, Shard};
use tflq::io::Durability;
use tflq::report::format::{Format, FormatOptions};
use tflq::{Cancel, FileOptions, Options, ReportOptions};

/// The quantization options, as the keyword arguments give them (CLI flag values).
#[derive(Debug, Clone)]
pub struct QuantArgs {
    pub min_elements: u64,
    pub mode: String,
    pub granularity: String,
    pub symmetric: bool,
    pub weight_type: String,
    pub include_ops: Vec<String>,
    pub exclude_ops: Vec<String>,
    pub exclude_tensors: Option<String>,
    pub quantize_biases: bool,
    pub range: String,
    pub equalize: bool,
    pub block_size: usize,
    pub target: String,
    pub layout: String,
    /// A plan document (JSON text), as `--plan` reads it.
    pub plan: Option<String>,
}

/// What went wrong, sorted by the Python exception it becomes.
#[derive(Debug)]
pub enum Failure {
    /// A bad model (`tflq.ModelError`).
    Model(String),
    /// A file could not be read or written (`OSError` of the io kind).
    Io {
        message: String,
        path: Option<PathBuf>,
        /// The `std::io::ErrorKind` name, or `NotAFile`, `Changed`, `SameFile`.
        kind: Option<String>,
        errno: Option<i32>,
    },
    /// An option's value is wrong (`tflq.OptionError`, a `ValueError`).
    Usage(String),
    /// A batch cannot start (`tflq.Error`).
    Batch(String),
}

fn io_failure(message: String, path: &Path, source: &std::io::Error) -> Failure {
    Failure::Io {
        message,
        path: Some(path.to_owned()),
        kind: Some(format!("{:?}", source.kind())),
        errno: source.raw_os_error(),
    }
}

fn file_failure(message: String, path: &Path, kind: &str) -> Failure {
    Failure::Io {
        message,
        path: Some(path.to_owned()),
        kind: Some(kind.to_owned()),
        errno: None,
    }
}

impl From<tflq::Error> for Failure {
    fn from(e: tflq::Error) -> Failure {
        let message = e.to_string();
        match &e {
            tflq::Error::Model { .. } | tflq::Error::Invalid(_) => Failure::Model(message),
            tflq::Error::Io { path, source, .. } => io_failure(message, path, source),
            tflq::Error::NotAFile { path } => file_failure(message, path, "NotAFile"),
            tflq::Error::Changed { path, .. } => file_failure(message, path, "Changed"),
            tflq::Error::SameFile { path } => file_failure(message, path, "SameFile"),
            tflq::Error::Plan { .. } => Failure::Usage(message),
            tflq::Error::Write(source) => Failure::Io {
                kind: Some(format!("{:?}", source.kind())),
                errno: source.raw_os_error(),
                message,
                path: None,
            },
            _ => Failure::Io {
                message,
                path: None,
                kind: None,
                errno: None,
            },
        }
    }
}

type Res<T> = Result<T, Failure>;

fn op_codes(names: &[String], what: &str) -> Res<Vec<tflq::ops::Op>> {
    names
        .iter()
        .flat_map(|n| n.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            tflq::ops::Op::by_name(n).ok_or_else(|| {
                Failure::Usage(format!(
                    "{what}: unknown operator {n:?} (use builtin names such as FULLY_CONNECTED)"
                ))
            })
        })
        .collect()
}

/// The value named `value` of the option the Python API calls `what`.
fn pick<T: tflq::Named>(what: &str, value: &str) -> Res<T> {
    T::from_name(value).map_err(|why| Failure::Usage(format!("{what}: {why}")))
}

/// The library's options, checked as the command line checks its flags.
pub fn options(a: &QuantArgs) -> Res<Options> {
    let mode = pick("mode", &a.mode)?;
    let weight_type = pick("weight_type", &a.weight_type)?;
    let exclude_tensors = match &a.exclude_tensors {
        None => None,
        Some(p) => Some(regex::Regex::new(p).map_err(|e| {
            Failure::Usage(format!("exclude_tensors: invalid regular expression: {e}"))
        })?),
    };
    let options = Options {
        min_elements: a.min_elements,
        layout: pick("layout", &a.layout)?,
        mode,
        granularity: pick("granularity", &a.granularity)?,
        block_size: a.block_size,
        symmetric: a.symmetric,
        weight_type,
        include_ops: op_codes(&a.include_ops, "include_ops")?,
        exclude_ops: op_codes(&a.exclude_ops, "exclude_ops")?,
        exclude_tensors,
        quantize_biases: a.quantize_biases,
        range: pick("range", &a.range)?,
        equalize: a.equalize,
        assignment: match &a.plan {
            None => None,
            Some(text) => Some(std::sync::Arc::new(
                tflq::plan::assign::Assignment::parse(text)
                    .map_err(|e| Failure::Usage(format!("plan: {e}")))?,
            )),
        },
        target: pick("target", &a.target)?,
        // Options the Python API does not name keep the library's defaults.
        ..Options::default()
    };
    // The same check as the command line's, in its words (flags named as the options).
    match options.conflict() {
        Some(why) => Err(Failure::Usage(why)),
        None => Ok(options),
    }
}

/// The command's `--json` object of one model: input, output and the summary.
#[derive(Serialize)]
struct JsonSummary<'a> {
    input: &'a Path,
    output: &'a Path,
    #[serde(flatten)]
    summary: &'a tflq::Summary,
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("the library's types serialise to JSON")
}

/// `tflq quantize INPUT -o OUTPUT --json`: the summary as the command prints it.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    quant: &QuantArgs,
    in_place: bool,
    fsync: bool,
    cancel: &Cancel,
) -> Res<String> {
    let opts = FileOptions {
        quant: options(quant)?,
        in_place,
        cancel: cancel.clone(),
        durability: Durability::from_fsync(fsync),
    };
    let summary = tflq::quantize_file(input, output, &opts)?;
    Ok(json(&JsonSummary {
        input,
        output,
        summary: &summary,
    }))
}

/// `tflq::quantize` of bytes in memory: the new model and the summary's JSON.
pub fn quantize_bytes(data: &[u8], quant: &QuantArgs, stop: &Cancel) -> Res<(Vec<u8>, String)> {
    let opts = options(quant)?;
    let mut bytes = Vec::new();
    let summary = tflq::quantize_to(data, &opts, tflq::io::Stoppable(&mut bytes, stop))?;
    Ok((bytes, json(&summary)))
}

/// Options of a batch besides the quantization ones.
pub struct BatchArgs {
    pub jobs: usize,
    pub in_place: bool,
    pub fsync: bool,
    pub skip_existing: bool,
    pub dry_run: bool,
    pub copy_others: bool,
    pub shard: Option<String>,
}

/// One event of a batch, for a progress display.
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub path: PathBuf,
    pub status: &'static str,
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

struct Forward<'a> {
    total: usize,
    done: usize,
    send: &'a dyn Fn(Progress),
}

impl Observer for Forward<'_> {
    fn planned(&mut self, files: usize, _bytes: u64) {
        self.total = files;
    }
    fn finished(&mut self, found: &Found, report: &FileReport) {
        self.done += 1;
        (self.send)(Progress {
            done: self.done,
            total: self.total,
            path: found.path.clone(),
            status: report.status.label(),
            error: report.error.clone().filter(|_| report.is_error()),
            warnings: report.warnings.clone(),
        });
    }
}

/// `tflq quantize DIR... -o OUT --json`: the JSON lines of the batch.
pub fn quantize_dir(
    inputs: &[PathBuf],
    output: &Path,
    quant: &QuantArgs,
    batch: &BatchArgs,
    send: &dyn Fn(Progress),
    cancel: &Cancel,
) -> Res<String> {
    let shard = match &batch.shard {
        None => None,
        Some(s) => Some(
            s.parse::<Shard>()
                .map_err(|e| Failure::Usage(format!("shard: {e}")))?,
        ),
    };
    let opts = BatchOptions {
        file: FileOptions {
            quant: options(quant)?,
            in_place: batch.in_place,
            cancel: cancel.clone(),
            durability: Durability::from_fsync(batch.fsync),
        },
        jobs: batch.jobs,
        skip_existing: batch.skip_existing,
        dry_run: batch.dry_run,
        copy_others: batch.copy_others,
        shard,
    };
    let mut observer = Forward {
        total: 0,
        done: 0,
        send,
    };
    let summary =
        tflq::batch::quantize_all(inputs, output, &opts, &mut observer).map_err(|e| match e {
            tflq::batch::BatchError::CreateOutput {
                ref path,
                ref source,
            } => io_failure(e.to_string(), path, source),
            other => Failure::Batch(other.to_string()),
        })?;
    let mut lines = Vec::new();
    summary
        .write_json_lines(&mut lines)
        .expect("writing to memory does not fail");
    Ok(String::from_utf8_lossy(&lines).into_owned())
}

/// A report, kept so that it can be written in any of the library's formats.
pub struct Report(tflq::Report);

/// `tflq report MODEL [--against QUANTIZED]`.
pub fn report(
    model: &Path,
    against: Option<&Path>,
    quant: &QuantArgs,
    histograms: bool,
) -> Res<Report> {
    let opts = ReportOptions {
        quant: options(quant)?,
        histograms,
    };
    let r = match against {
        Some(q) => tflq::against_files(model, q, &opts)?,
        None => tflq::report_file(model, &opts)?,
    };
    Ok(Report(r))
}

impl Report {
    /// The `--format json` document.
    pub fn json(&self) -> String {
        json(&self.0)
    }

    /// The report in `format` (a `--format` name), `width` columns wide (table), with
    /// `plots` plotted tensors (html).
    pub fn render(&self, format: &str, width: usize, plots: usize) -> Res<String> {
        let format = Format::from_name(format).ok_or_else(|| {
            Failure::Usage(format!(
                "format: invalid value {format:?} (choose {})",
                Format::NAMES.join(", ")
            ))
        })?;
        let mut out = Vec::new();
        tflq::report::write_report(&self.0, format, &FormatOptions { width, plots }, &mut out)
            .map_err(|e| Failure::Usage(format!("cannot write the report: {e}")))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// `tflq inspect MODEL --json`.
pub fn inspect(model: &Path) -> Res<String> {
    let inspection = tflq::read_model(model, tflq::inspect::inspect)?;
    Ok(json(&inspection))
}

/// The library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
