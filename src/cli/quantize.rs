//! `tflq quantize`: one model in, one model out.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use tflq::{FileOptions, Summary};

use super::options::QuantArgs;

use super::exit;

/// Quantize a model's float32 weight tensors to int8 behind DEQUANTIZE operators.
///
/// Every constant FLOAT32 tensor with at least --min-elements elements gets a per-tensor
/// asymmetric int8 copy (scale = range/255, zero point so that 0.0 is exact) and a DEQUANTIZE
/// operator that restores the float tensor, so every operator keeps working on every runtime.
/// Tensors that are variable, sparse, too small, non-finite or share a buffer with a tensor
/// that cannot be quantized are left as they are; the summary says which and why.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .tflite model to quantize.
    input: PathBuf,
    /// Where to write the quantized model (written atomically: complete or not at all).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    quant: QuantArgs,
    /// Allow OUT to be the input file, replacing it.
    #[arg(long)]
    in_place: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print nothing but errors and warnings.
    #[arg(short, long)]
    quiet: bool,
    /// Also write the quantization-error report of the written model to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "in_place")]
    report: Option<PathBuf>,
    /// Format of --report [default: from its extension, else table].
    #[arg(long, value_name = "FORMAT", value_parser = tflq::report::Format::NAMES, requires = "report")]
    report_format: Option<String>,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    input: &'a std::path::Path,
    output: &'a std::path::Path,
    #[serde(flatten)]
    summary: &'a Summary,
}

pub fn run(args: Args) -> Result<i32> {
    let opts = FileOptions {
        quant: match args.quant.to_options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("tflq: error: {e}");
                return Ok(exit::USAGE);
            }
        },
        in_place: args.in_place,
    };
    let summary = tflq::quantize_file(&args.input, &args.output, &opts)?;
    if let Some(report) = &args.report {
        let (input, format) = (&args.input, args.report_format.as_deref());
        super::report::after_quantize(input, &args.output, opts.quant.clone(), report, format)?;
    }
    for w in &summary.warnings {
        eprintln!("tflq: warning: {}: {w}", args.input.display());
    }
    if args.json {
        let json = JsonSummary {
            input: &args.input,
            output: &args.output,
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !args.quiet {
        println!("{} -> {}", args.input.display(), args.output.display());
        print!("{summary}");
    }
    Ok(exit::OK)
}
