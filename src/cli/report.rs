//! `tflq report`: what int8 costs each weight tensor, as a table, JSON, CSV, Markdown or HTML.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::report::format::{Format, FormatOptions};
use crate::{Cancel, FileOptions, Report, ReportOptions};
use anyhow::{Context, Result};

use super::exit;
use super::options::QuantArgs;

/// Report the quantization error of every weight tensor, worst first.
///
/// Without --against: for each tensor that `tflq quantize` would quantize with the same
/// options, quantize it in memory (nothing is written) and measure it. With --against: measure
/// a model quantized by any tool (this one, the TFLite converter, ai-edge-quantizer...) from its
/// real int8 data, each tensor matched with its float original in MODEL.
///
/// Columns: max |x - x'|, RMSE, SQNR = 10 log10(sum x^2 / sum (x - x')^2) dB, cosine
/// similarity, distinct int8 levels used (of 256), share of values at the ends of the code
/// range, bytes before and after.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The float .tflite model; or several models and folders (every .tflite below them is
    /// reported, in one table with a `model` column for csv).
    #[arg(required = true, value_name = "MODEL")]
    models: Vec<PathBuf>,
    /// Measure this quantized model of MODEL instead of quantizing MODEL in memory (one
    /// MODEL only).
    #[arg(long, value_name = "QUANTIZED")]
    against: Option<PathBuf>,
    /// The same choice of tensors and scheme as `quantize` (ignored with --against).
    #[command(flatten)]
    quant: QuantArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Exit with code 3 (after printing the report) if any tensor's SQNR is below DB; with
    /// code 4 if a model had no measured tensor (nothing to judge it by).
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    fail_below_sqnr: Option<f64>,
}

/// Where and how the report is written; shared with `quantize --report`.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Output format [default: from the --output extension (.json .csv .md .html), else table].
    #[arg(long, value_parser = Format::NAMES)]
    format: Option<String>,
    /// Write the report to FILE (atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Number of worst tensors that get plots in the HTML report.
    #[arg(long, value_name = "N", default_value_t = 12)]
    plots: usize,
}

/// The format named, else the one the output file's extension suggests, else a table.
pub(super) fn pick(name: Option<&str>, output: Option<&Path>) -> Format {
    name.and_then(Format::from_name)
        .or_else(|| output.and_then(Format::from_path))
        .unwrap_or(Format::Table)
}

/// Width of the table: the terminal's when printing to one, `COLUMNS`, or unlimited.
fn width(to_stdout: bool) -> usize {
    if to_stdout && std::io::stdout().is_terminal() {
        if let Some((w, _)) = terminal_size::terminal_size() {
            return usize::from(w.0);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Writes `report` to `path` (atomically) or to standard output.
fn emit(
    report: &Report,
    format: Format,
    path: Option<&Path>,
    plots: usize,
    cancel: &Cancel,
) -> Result<()> {
    let opts = FormatOptions {
        width: width(path.is_none()),
        plots,
    };
    match path {
        Some(p) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o644);
            crate::io::write_atomic(p, Some(mode), cancel, |w| {
                crate::report::write_report(report, format, &opts, w)
                    .map_err(|e| crate::Error::io(p, "write the report", e))
            })?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            crate::report::write_report(report, format, &opts, &mut stdout)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

pub fn run(args: Args, cancel: &Cancel) -> Result<i32> {
    let format = pick(args.out.format.as_deref(), args.out.output.as_deref());
    let quant = match args.quant.to_options() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("tflq: error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let opts = ReportOptions {
        quant,
        histograms: format == Format::Html,
    };
    let single = args.models.len() == 1 && !args.models[0].is_dir();
    if !single {
        if args.against.is_some() {
            eprintln!("tflq: error: --against takes exactly one MODEL file");
            return Ok(exit::USAGE);
        }
        return run_many(&args, format, &opts, cancel);
    }
    let model = &args.models[0];
    let report = match &args.against {
        Some(q) => crate::against_files(model, q, &opts)?,
        None => crate::report_file(model, &opts)?,
    };
    emit(
        &report,
        format,
        args.out.output.as_deref(),
        args.out.plots,
        cancel,
    )?;
    let name = model.display().to_string();
    Ok(gate(
        std::slice::from_ref(&report),
        &[name],
        args.fail_below_sqnr,
    ))
}

/// Reports every model under several inputs: one document, a line on stderr per model that
/// could not be read (exit 1 after the rest is reported).
fn run_many(args: &Args, format: Format, opts: &ReportOptions, cancel: &Cancel) -> Result<i32> {
    if format == Format::Html {
        eprintln!(
            "tflq: error: the HTML report takes one model; use --format csv, json, markdown or table"
        );
        return Ok(exit::USAGE);
    }
    let exclude = args.out.output.iter().cloned().collect();
    let found = crate::batch::discover::discover(
        &args.models,
        &crate::batch::discover::DiscoverOptions {
            exclude,
            shard: None,
        },
    );
    let mut failed = found.problems.len();
    for p in &found.problems {
        eprintln!("tflq: error: {p}");
    }
    if found.models().next().is_none() {
        let names: Vec<String> = args
            .models
            .iter()
            .map(|m| m.display().to_string())
            .collect();
        eprintln!(
            "tflq: error: no .tflite model found in {}: nothing to report",
            names.join(", ")
        );
        return Ok(exit::FAILED);
    }
    let mut reports = Vec::new();
    let mut names = Vec::new();
    for f in found.models() {
        match crate::report_file(&f.path, opts) {
            Ok(mut r) => {
                r.model = Some(f.relative.display().to_string());
                reports.push(r);
                names.push(f.path.display().to_string());
            }
            Err(e) => {
                eprintln!("tflq: error: {e}");
                failed += 1;
            }
        }
    }
    let fopts = FormatOptions {
        width: width(args.out.output.is_none()),
        plots: args.out.plots,
    };
    match &args.out.output {
        Some(p) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o644);
            crate::io::write_atomic(p, Some(mode), cancel, |w| {
                crate::report::format::write_reports(&reports, format, &fopts, w)
                    .map_err(|e| crate::Error::io(p, "write the report", e))
            })?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            crate::report::format::write_reports(&reports, format, &fopts, &mut stdout)?;
            stdout.flush()?;
        }
    }
    let code = gate(&reports, &names, args.fail_below_sqnr);
    Ok(if failed > 0 { exit::FAILED } else { code })
}

/// `--fail-below-sqnr`: names the worst tensor below the bound, and picks the exit code. A
/// model with no measured tensor fails the gate too (exit 4 unless another is below it): a
/// gate that measured nothing has proven nothing.
fn gate(reports: &[Report], names: &[String], bound: Option<f64>) -> i32 {
    let Some(db) = bound else {
        return exit::OK;
    };
    let mut failing = 0;
    let mut unmeasured = 0;
    for (report, name) in reports.iter().zip(names) {
        if report.tensors.is_empty() {
            let why = match &report.against {
                Some(q) => format!("no quantized tensor of {q} matches a float tensor of it"),
                None => "it has no tensor that would be quantized".to_string(),
            };
            eprintln!(
                "tflq: error: --fail-below-sqnr {db}: no tensor of {name} was measured ({why}); the gate fails"
            );
            unmeasured += 1;
            continue;
        }
        let below = report.below(db);
        if let Some(worst) = below.first() {
            eprintln!(
                "tflq: {} of {} below {db} dB SQNR; worst {} dB: subgraph {} tensor {} ({})",
                below.len(),
                crate::text::count(report.tensors.len(), "tensor", "tensors"),
                crate::report::format::sqnr_text(worst),
                worst.subgraph,
                worst.tensor,
                worst.name
            );
            failing += 1;
        }
    }
    if failing > 0 {
        exit::GATE
    } else if unmeasured > 0 {
        exit::GATE_UNMEASURED
    } else {
        exit::OK
    }
}

/// `quantize --report FILE`: measures the model just written against its input.
pub fn after_quantize(
    input: &Path,
    output: &Path,
    file: &FileOptions,
    report: &Path,
    format: Option<&str>,
) -> Result<()> {
    let format = pick(format, Some(report));
    let opts = ReportOptions {
        quant: file.quant.clone(),
        histograms: format == Format::Html,
    };
    let r = crate::against_files(input, output, &opts)
        .with_context(|| format!("cannot report on {}", output.display()))?;
    emit_report(&r, format, Some(report), &file.cancel)
}

/// Writes the report of `quantize --report`: to FILE, or to standard output for `-`.
pub(super) fn emit_report(
    r: &Report,
    format: Format,
    report: Option<&Path>,
    cancel: &Cancel,
) -> Result<()> {
    let to = report.filter(|p| *p != Path::new("-"));
    emit(r, format, to, FormatOptions::default().plots, cancel)
}
