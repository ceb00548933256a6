//! `tflq inspect`: what a model holds, for people or (`--json`) for machines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::exit;

/// Show what a model holds: file size and buffer layout, schema version, description,
/// metadata, signatures, each subgraph's operators, and every constant tensor with its type,
/// shape, size, quantization and the operators that read it.
///
/// With `--target micro`, also lists what TensorFlow Lite Micro would refuse (float16/int4
/// DEQUANTIZE inputs, hybrid ops reading int8 weights with float activations) or compute
/// wrongly (per-channel DEQUANTIZE inputs, data stored after the flatbuffer), in any model,
/// and exits with status 3 when it finds any.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .tflite model to inspect.
    model: PathBuf,
    /// Print the whole description as JSON.
    #[arg(long)]
    json: bool,
    /// Also check the model against a runtime's rules: `micro` lists what TensorFlow Lite
    /// Micro would refuse or compute wrongly, and exits 3 if anything is found.
    #[arg(long, value_enum)]
    target: Option<TargetArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    Litert,
    Micro,
}

#[derive(serde::Serialize)]
struct WithTarget<'a> {
    #[serde(flatten)]
    inspection: &'a crate::inspect::Inspection,
    target: &'static str,
    /// What the target would refuse or compute wrongly.
    target_issues: &'a [crate::micro::MicroIssue],
    /// TFLM's arena for the planned tensors (`null` for several subgraphs).
    arena_bytes: Option<u64>,
}

pub fn run(args: Args) -> Result<i32> {
    let (inspection, issues) = crate::read_model(&args.model, |m| {
        let issues = match args.target {
            Some(TargetArg::Micro) => {
                Some((crate::micro::check(m), crate::micro::planned_arena(m, &[])))
            }
            _ => None,
        };
        (crate::inspect::inspect(m), issues)
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        match &issues {
            Some((list, arena)) => serde_json::to_writer_pretty(
                &mut out,
                &WithTarget {
                    inspection: &inspection,
                    target: "micro",
                    target_issues: list,
                    arena_bytes: *arena,
                },
            )?,
            None => serde_json::to_writer_pretty(&mut out, &inspection)?,
        }
        writeln!(out)?;
    } else {
        writeln!(out, "{}", args.model.display())?;
        write!(out, "{inspection}")?;
        if let Some((list, arena)) = &issues {
            match arena {
                Some(a) => writeln!(
                    out,
                    "arena:       {} ({a} bytes) for TFLM's planned tensors (greedy, as TFLM plans them)",
                    crate::text::human(*a)
                )?,
                None => writeln!(
                    out,
                    "arena:       not computed (several subgraphs, or tensors of unknown size)"
                )?,
            }
            if list.is_empty() {
                writeln!(
                    out,
                    "micro:       nothing TensorFlow Lite Micro would refuse or compute wrongly"
                )?;
            } else {
                writeln!(
                    out,
                    "micro:       {} on TensorFlow Lite Micro:",
                    crate::text::count(list.len(), "problem", "problems")
                )?;
                for i in list {
                    writeln!(out, "  {i}")?;
                }
            }
        }
    }
    out.flush()?;
    Ok(match issues {
        Some((list, _)) if !list.is_empty() => exit::GATE,
        _ => exit::OK,
    })
}
