//! `tflq quantize`: one model in, one model out; or folders of models in, a folder out.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchOptions, Shard};
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
/// Tensors that are variable, sparse, too small, non-finite or share a buffer with a tensor
/// that cannot be quantized are left as they are; the summary says which and why.
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
    /// The output model (one input file) or output folder (created if needed).
    #[arg(short, long, value_name = "OUT", required_unless_present = "in_place")]
    output: Option<PathBuf>,
    #[command(flatten)]
    quant: QuantArgs,
    /// Allow outputs to replace their inputs; without -o, quantize the inputs in place.
    #[arg(long)]
    in_place: bool,
    /// Print the summary as JSON on stdout (batch: one object per line, then the totals).
    #[arg(long)]
    json: bool,
    /// Print nothing but errors and warnings (no progress bar, no summary).
    #[arg(short, long)]
    quiet: bool,
    /// Also write the quantization-error report of the written model to FILE (one input
    /// file only).
    #[arg(long, value_name = "FILE", conflicts_with = "in_place")]
    report: Option<PathBuf>,
    /// Format of --report [default: from its extension, else table].
    #[arg(long, value_name = "FORMAT", value_parser = crate::report::Format::NAMES, requires = "report")]
    report_format: Option<String>,
    /// Models processed at once [default: the number of cores].
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
    let file = FileOptions {
        quant: match args.quant.to_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("tflq: error: {e}");
                return Ok(exit::USAGE);
            }
        },
        in_place: args.in_place,
        cancel: cancel.clone(),
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
    let output = args.output.clone().unwrap_or_else(|| input.clone());
    let skip = args.skip_existing
        && !crate::io::same_file(input, &output)
        && batch::up_to_date(input, &output);
    if skip || args.dry_run {
        let status = if skip { "up_to_date" } else { "would_quantize" };
        if args.json {
            let line = serde_json::json!({"input": input, "output": output, "status": status});
            println!("{}", serde_json::to_string_pretty(&line)?);
        } else if !args.quiet {
            let what = if skip { "up to date" } else { "would quantize" };
            println!("{what}: {} -> {}", input.display(), output.display());
        }
        return Ok(exit::OK);
    }
    let summary = crate::quantize_file(input, &output, opts)?;
    if let Some(report) = &args.report {
        let format = args.report_format.as_deref();
        super::report::after_quantize(input, &output, opts, report, format)?;
    }
    for w in &summary.warnings {
        eprintln!("tflq: warning: {}: {w}", input.display());
    }
    if args.json {
        let json = JsonSummary {
            input,
            output: &output,
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !args.quiet {
        println!("{} -> {}", input.display(), output.display());
        print!("{summary}");
    }
    Ok(exit::OK)
}
