//! `tflq quantize`: one model in, one model out; or folders of models in, a folder out.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchOptions, Shard};
use crate::io::Durability;
use crate::{Cancel, FileOptions, Summary};
use anyhow::Result;
use serde::Serialize;

use super::options::QuantArgs;

use super::exit;

const BATCH: &str = "Batch (folders or several inputs)";

/// Quantize the float32 weight tensors of models to int8 behind DEQUANTIZE operators.
///
/// Every constant FLOAT32 tensor with at least --min-elements elements gets a per-tensor
/// asymmetric int8 copy (scale = range/255, zero point so that 0.0 is exact) and a DEQUANTIZE
/// operator that restores the float tensor, so every operator keeps working on every runtime.
/// Biases and per-channel vectors of elementwise ops stay float (--quantize-biases), and
/// consecutive layers are equalized first (cross-layer equalization, --no-equalize). Tensors
/// that are variable, sparse, too small, non-finite or share a buffer with a tensor that
/// cannot be quantized are left as they are; the summary says which and why.
///
/// With one input file, OUT is the quantized model. With a folder or several inputs, every
/// .tflite file found under them (following links, never looping) is quantized in parallel to
/// the same relative path under the folder OUT, relative to the deepest folder holding all the
/// inputs (with one folder input: that folder). A model that fails is reported and the others
/// go on. Outputs are written atomically: complete or not at all, also when interrupted.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Models to quantize: .tflite files, and folders searched recursively for them.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// The output model (one input file: its folders are created if needed; an existing
    /// folder gets FOLDER/<input name>, as with cp; `-` is standard output), or the output
    /// folder (batch; created if needed).
    #[arg(short, long, value_name = "OUT", required_unless_present = "in_place")]
    output: Option<PathBuf>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Allow outputs to replace their inputs; without -o, quantize the inputs in place.
    #[arg(long)]
    in_place: bool,
    /// Name each output as soon as it is complete instead of once it is on disk: faster
    /// where the disk is slow (a 48 MiB model on a 520 MB/s disk: 29 ms instead of 49), as
    /// `cp` is. A failure or kill of tflq still leaves no partial output, but a crash of the
    /// machine or a power loss soon after may leave a named output that is empty or partial
    /// (which --skip-existing would then take as done).
    #[arg(long)]
    no_fsync: bool,
    /// Print the summary as JSON on stdout (batch: one object per line, then the totals).
    #[arg(long)]
    json: bool,
    /// Print nothing but errors and warnings (no progress bar, no summary).
    #[arg(short, long)]
    quiet: bool,
    /// Also write the quantization-error report of the written model to FILE (one input
    /// file only; `-` is standard output, and the summary then goes to standard error).
    #[arg(long, value_name = "FILE", conflicts_with = "in_place")]
    report: Option<PathBuf>,
    /// Format of --report [default: from its extension, else table].
    #[arg(long, value_name = "FORMAT", value_parser = crate::report::Format::NAMES, requires = "report")]
    report_format: Option<String>,
    /// Also write the plan this run used to FILE (JSON, as --plan reads it: every quantized
    /// tensor's encoding; one input file only).
    #[arg(long, value_name = "FILE")]
    write_plan: Option<PathBuf>,
    /// Models processed at once [default: twice the number of cores].
    #[arg(short, long, value_name = "N", help_heading = BATCH)]
    jobs: Option<NonZeroUsize>,
    /// Skip files whose output exists and is at least as new as the input.
    #[arg(long)]
    skip_existing: bool,
    /// Show what would be done; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also copy the files that are not models, so OUT is a complete copy of the inputs.
    #[arg(long, help_heading = BATCH)]
    copy_others: bool,
    /// Process only share K of N (1 <= K <= N), chosen by a stable hash of each file's
    /// relative path: N jobs given the same inputs and K = 1..N cover every file once.
    #[arg(long, value_name = "K/N", help_heading = BATCH)]
    shard: Option<Shard>,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    input: &'a Path,
    output: &'a Path,
    #[serde(flatten)]
    summary: &'a Summary,
}

pub fn run(args: Args, cancel: &Cancel) -> Result<i32> {
    let mut file = FileOptions {
        quant: match args.quant.to_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("tflq: error: {e}");
                return Ok(exit::USAGE);
            }
        },
        in_place: args.in_place,
        cancel: cancel.clone(),
        durability: Durability::from_fsync(!args.no_fsync),
    };
    let single = match args.inputs.as_slice() {
        [input] => !input.is_dir() && args.shard.is_none(),
        _ => false,
    };
    if single {
        return run_single(&args, &file);
    }
    if args.report.is_some() {
        eprintln!(
            "tflq: error: --report writes the report of one model: it needs exactly one input file"
        );
        return Ok(exit::USAGE);
    }
    if args.write_plan.is_some() {
        eprintln!(
            "tflq: error: --write-plan writes the plan of one model: it needs exactly one input file"
        );
        return Ok(exit::USAGE);
    }
    // One plan serves a batch of models of one architecture: names alone decide.
    if let Some(a) = &mut file.quant.assignment {
        std::sync::Arc::make_mut(a).check_buffers = false;
    }
    if is_stdout(args.output.as_deref()) {
        eprintln!(
            "tflq: error: -o - writes one model to standard output; batch mode needs an output folder"
        );
        return Ok(exit::USAGE);
    }
    let output = match &args.output {
        Some(o) => o.clone(),
        None => batch::discover::root(&args.inputs),
    };
    let opts = BatchOptions {
        file,
        jobs: args.jobs.map_or(0, NonZeroUsize::get),
        skip_existing: args.skip_existing,
        dry_run: args.dry_run,
        copy_others: args.copy_others,
        shard: args.shard,
    };
    super::batch::run(&args.inputs, &output, &opts, args.json, args.quiet)
}

/// One model: `OUT` is the output file.
fn run_single(args: &Args, opts: &FileOptions) -> Result<i32> {
    let input = &args.inputs[0];
    if is_stdout(args.output.as_deref()) {
        return run_to_stdout(args, opts);
    }
    let mut output = args.output.clone().unwrap_or_else(|| input.clone());
    // `-o DIR` with one input file: `DIR/<input name>`, as `cp` does.
    if args.output.is_some() && output.is_dir() {
        if let Some(name) = input.file_name() {
            output = output.join(name);
        }
    }
    // The output is the input: a usage error (exit 2), as for a folder in batch mode.
    if !args.in_place && crate::io::same_file(input, &output) {
        let e = crate::Error::SameFile { path: output };
        eprintln!("tflq: error: {e}");
        return Ok(exit::USAGE);
    }
    let skip = args.skip_existing
        && !crate::io::same_file(input, &output)
        && batch::up_to_date(input, &output);
    if skip || args.dry_run {
        // A dry run reads and plans the model (nothing is written): what would happen.
        let tensors = if skip {
            0
        } else {
            crate::pipeline::plan_file(input, &opts.quant)?
        };
        let (status, what) = match (skip, tensors) {
            (true, _) => ("up_to_date", "up to date".to_owned()),
            (false, 0) => (
                "would_be_unchanged",
                "would copy unchanged (nothing to quantize)".to_owned(),
            ),
            (false, n) => (
                "would_quantize",
                format!(
                    "would quantize {}",
                    crate::text::count(n, "tensor", "tensors")
                ),
            ),
        };
        if args.json {
            let line = serde_json::json!({
                "input": input, "output": output, "status": status, "tensors_quantized": tensors,
            });
            println!("{}", serde_json::to_string_pretty(&line)?);
        } else if !args.quiet {
            println!("{what}: {} -> {}", input.display(), output.display());
        }
        return Ok(exit::OK);
    }
    // `-o new/folders/m.tflite`: create the folders (removed again if nothing is written).
    let created = create_parents(&output)?;
    let summary = match crate::quantize_file(input, &output, opts) {
        Ok(s) => s,
        Err(e) => {
            if let Some(top) = created {
                remove_empty(output.parent(), &top);
            }
            return Err(e.into());
        }
    };
    if let Some(path) = &args.write_plan {
        let text = serde_json::to_string_pretty(&summary.plan)? + "\n";
        std::fs::write(path, text).map_err(|e| crate::Error::io(path, "write the plan", e))?;
    }
    // The model is written: its summary is printed even if the report then fails.
    let reported = args.report.as_ref().map(|report| {
        let format = args.report_format.as_deref();
        super::report::after_quantize(input, &output, opts, report, format)
    });
    for w in &summary.warnings {
        eprintln!("tflq: warning: {}: {w}", input.display());
    }
    // `--report -` has standard output: the summary goes to standard error.
    let text = if args.json {
        let json = JsonSummary {
            input,
            output: &output,
            summary: &summary,
        };
        format!("{}\n", serde_json::to_string_pretty(&json)?)
    } else if !args.quiet {
        format!("{} -> {}\n{summary}", input.display(), output.display())
    } else {
        String::new()
    };
    if is_stdout(args.report.as_deref()) {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    if let Some(Err(e)) = reported {
        eprintln!(
            "tflq: the model was written to {}; only the report failed",
            output.display()
        );
        return Err(e);
    }
    Ok(exit::OK)
}

/// `-` names standard output.
fn is_stdout(path: Option<&Path>) -> bool {
    path == Some(Path::new("-"))
}

/// Creates the missing folders above `output`; returns the topmost one created.
fn create_parents(output: &Path) -> Result<Option<PathBuf>> {
    let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let mut top = None;
    let mut p = Some(parent);
    while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        top = Some(dir.to_path_buf());
        p = dir.parent();
    }
    if top.is_some() {
        std::fs::create_dir_all(parent).map_err(|e| {
            anyhow::anyhow!("{}: cannot create the output folder: {e}", parent.display())
        })?;
    }
    Ok(top)
}

/// Removes the empty folders from `dir` up to `top` (those [`create_parents`] made).
fn remove_empty(dir: Option<&Path>, top: &Path) {
    let mut d = dir;
    while let Some(dir) = d {
        if std::fs::remove_dir(dir).is_err() || dir == top {
            break;
        }
        d = dir.parent();
    }
}

/// `-o -`: the model on standard output, the summary (and any message) on standard error.
fn run_to_stdout(args: &Args, opts: &FileOptions) -> Result<i32> {
    use std::io::{IsTerminal, Write};
    let input = &args.inputs[0];
    if std::io::stdout().is_terminal() {
        eprintln!(
            "tflq: error: -o - would write a binary model to the terminal; redirect standard output"
        );
        return Ok(exit::USAGE);
    }
    if is_stdout(args.report.as_deref()) {
        eprintln!("tflq: error: -o - and --report - cannot both use standard output");
        return Ok(exit::USAGE);
    }
    if args.in_place || args.skip_existing {
        eprintln!("tflq: error: -o - cannot be combined with --in-place or --skip-existing");
        return Ok(exit::USAGE);
    }
    if args.dry_run {
        if !args.quiet {
            eprintln!("would quantize: {} -> standard output", input.display());
        }
        return Ok(exit::OK);
    }
    let data = crate::pipeline::ModelFile::open(input)?;
    let out = crate::quantize(data.bytes(), &opts.quant).map_err(|e| match e {
        crate::Error::Invalid(source) => crate::Error::model(input, source),
        other => other,
    })?;
    data.check_unchanged()?;
    if let Some(report) = &args.report {
        let format = super::report::pick(args.report_format.as_deref(), Some(report));
        let ropts = crate::ReportOptions {
            quant: opts.quant.clone(),
            histograms: format == crate::report::Format::Html,
        };
        let float = data.parse()?;
        let quantized = crate::Model::parse(&out.bytes).map_err(crate::Error::from)?;
        let mut r = crate::report::against(&float, &quantized, &ropts);
        r.model = Some(input.display().to_string());
        r.against = Some("standard output".into());
        super::report::emit_report(&r, format, Some(report), &opts.cancel)?;
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out.bytes)?;
    stdout.flush()?;
    for w in &out.summary.warnings {
        eprintln!("tflq: warning: {}: {w}", input.display());
    }
    if args.json {
        let json = JsonSummary {
            input,
            output: Path::new("-"),
            summary: &out.summary,
        };
        eprintln!("{}", serde_json::to_string_pretty(&json)?);
    } else if !args.quiet {
        eprintln!("{} -> standard output", input.display());
        eprint!("{}", out.summary);
    }
    Ok(exit::OK)
}
