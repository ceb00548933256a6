//! `tflq inspect`: what a model holds, for people or (`--json`) for machines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::exit;

/// Show what a model holds: file size and buffer layout, schema version, description,
/// metadata, signatures, each subgraph's operators, and every constant tensor with its type,
/// shape, size, quantization and the operators that read it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .tflite model to inspect.
    model: PathBuf,
    /// Print the whole description as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let inspection = crate::read_model(&args.model, crate::inspect::inspect)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &inspection)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", args.model.display())?;
        write!(out, "{inspection}")?;
    }
    out.flush()?;
    Ok(exit::OK)
}
