//! tflq: quantize the float32 weights of TensorFlow Lite models to int8.
//!
//! The library reads a `.tflite` flatbuffer from a byte slice (the caller maps the file),
//! chooses the constant float32 tensors worth quantizing, and writes a model in which each
//! of them is stored as int8 with a per-tensor scale and zero point, turned back into float
//! by a `DEQUANTIZE` operator, so every operator of the model keeps working.
//!
//! ```no_run
//! let input = std::fs::read("model.tflite")?;
//! let out = tflq::quantize(&input, &tflq::Options::default())?;
//! std::fs::write("model.int8.tflite", &out.bytes)?;
//! println!("{} tensors quantized", out.summary.quantized.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`quantize_file`] does the same from path to path, reading the input (memory-mapping it
//! above [`io::READ_LIMIT`]) and writing the output atomically, and [`batch::quantize_all`] does it for every model under a set of
//! folders, in parallel. [`report`] measures what int8 costs each weight tensor (of the
//! quantization `quantize` would do, or of a model quantized by any tool), and [`inspect`]
//! describes what a model holds.
//!
//! Work on files stops when the [`Cancel`] token of its options is cancelled (no partial
//! output is left). The `tflq` command is `cli::main_with_args`, behind the `cli` feature
//! (on by default); `default-features = false` gives the library without the command line's
//! crates (clap, anyhow, indicatif, ctrlc, terminal_size).

pub mod batch;
pub mod cancel;
#[cfg(feature = "cli")]
pub mod cli;
pub mod encoding;
pub mod equalize;
pub mod error;
pub mod inspect;
pub mod io;
pub mod micro;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod quant;
pub mod range;
pub mod report;
pub mod rewrite;
mod simd;
pub mod summary;
pub mod text;

use std::io::Write;

pub use cancel::Cancel;
pub use error::{Error, ModelError, Result};
pub use model::Model;
pub use pipeline::{FileOptions, against_files, quantize_file, read_model, report_file};
pub use plan::{
    Granularity, LayoutPolicy, Mode, Named, Options, RangeMethod, SkipReason, Target, WeightType,
};
pub use report::{Report, ReportOptions};
pub use rewrite::Layout;
pub use summary::Summary;

/// A quantized model in memory, with what was done to it.
#[derive(Debug, Clone)]
pub struct Output {
    /// The rewritten model (the input's bytes unchanged when there was nothing to do).
    pub bytes: Vec<u8>,
    /// What was quantized, what was skipped and why, sizes before and after.
    pub summary: Summary,
}

/// Quantizes the model in `input` and returns the new model's bytes.
pub fn quantize(input: &[u8], opts: &Options) -> Result<Output> {
    let mut bytes = Vec::new();
    let summary = quantize_to(input, opts, &mut bytes)?;
    Ok(Output { bytes, summary })
}

/// Quantizes the model in `input` and streams the new model to `out`.
///
/// When no tensor qualifies, the input is written unchanged and
/// [`Summary::changed`] is false, so running the tool twice gives the same model as once.
/// The threads of rayon's pool write `out` in turn, between the blocks they encode: hence
/// `Send`.
pub fn quantize_to<W: Write + Send>(input: &[u8], opts: &Options, mut out: W) -> Result<Summary> {
    let model = Model::parse(input)?;
    let plan = plan::plan(&model, opts);
    if !plan.conflicts().is_empty() {
        return Err(Error::Plan {
            conflicts: plan.conflicts().to_vec(),
        });
    }
    if plan.jobs().is_empty() && plan.rescaled().is_empty() {
        out.write_all(input)
            .and_then(|()| out.flush())
            .map_err(Error::Write)?;
        return Ok(Summary::new(&plan, None));
    }
    let written = rewrite::write_model(&plan, opts.layout, out)?;
    Ok(Summary::new(&plan, Some(&written)))
}
