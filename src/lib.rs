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
//! [`quantize_file`] does the same from path to path, memory-mapping the input and writing
//! the output atomically, and [`batch::quantize_all`] does it for every model under a set of
//! folders, in parallel. [`report`] measures what int8 costs each weight tensor (of the
//! quantization `quantize` would do, or of a model quantized by any tool), and [`inspect`]
//! describes what a model holds.

pub mod batch;
pub mod equalize;
pub mod error;
pub mod files;
pub mod inspect;
pub mod model;
pub mod ops;
pub mod plan;
pub mod quant;
pub mod range;
pub mod report;
pub mod rewrite;
pub mod summary;

use std::io::Write;

pub use error::{Error, ModelError, Result};
pub use files::{FileOptions, quantize_file};
pub use model::Model;
pub use plan::{Granularity, LayoutPolicy, Mode, Options, SkipReason, WeightType};
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
pub fn quantize_to<W: Write>(input: &[u8], opts: &Options, mut out: W) -> Result<Summary> {
    let model = Model::parse(input)?;
    let plan = plan::plan(&model, opts);
    if plan.jobs.is_empty() {
        out.write_all(input)
            .and_then(|()| out.flush())
            .map_err(Error::Write)?;
        return Ok(Summary::new(&model, &plan, None));
    }
    let written = rewrite::write_model(&model, &plan, opts.layout, out)?;
    Ok(Summary::new(&model, &plan, Some(&written)))
}
