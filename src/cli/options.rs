//! The quantization flags shared by `quantize` and `report`, turned into library options.

use crate::{Granularity, LayoutPolicy, Mode, Options, Target, WeightType};
use anyhow::{Result, bail};

/// Which tensors to quantize, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct QuantArgs {
    /// Leave float32 tensors with fewer elements than this in float (0: quantize all).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    min_elements: u64,
    /// `weight-only`: every quantized weight goes through a DEQUANTIZE op (works for every
    /// op). `dynamic`: ops with hybrid int8 kernels (FULLY_CONNECTED, CONV_2D,
    /// DEPTHWISE_CONV_2D, BATCH_MATMUL, EMBEDDING_LOOKUP, LSTM, SVDF, RNN, ...) read the
    /// int8 weights directly: less memory and faster at run time; weights are symmetric.
    #[arg(long, value_enum, default_value_t = ModeArg::WeightOnly)]
    mode: ModeArg,
    /// `per-tensor`: one scale per tensor. `per-channel`: one per output channel on the axis
    /// each op expects, falling back to per-tensor where the op or runtime cannot take it.
    #[arg(long, value_enum, default_value_t = GranularityArg::PerTensor)]
    granularity: GranularityArg,
    /// Symmetric int8 (zero point 0, codes in [-127, 127]) in weight-only mode too.
    #[arg(long)]
    symmetric: bool,
    /// Storage type of quantized weights: `int8`, or `float16` (behind DEQUANTIZE; values
    /// beyond ±65504 are clamped, with a warning).
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Int8)]
    weight_type: TypeArg,
    /// Only quantize weights read solely by these ops (builtin names, comma-separated,
    /// e.g. FULLY_CONNECTED,CONV_2D).
    #[arg(long, value_name = "OPS", value_delimiter = ',')]
    include_ops: Vec<String>,
    /// Leave weights read by any of these ops in float (builtin names, comma-separated).
    #[arg(long, value_name = "OPS", value_delimiter = ',')]
    exclude_ops: Vec<String>,
    /// Leave weights whose tensor name matches this regular expression in float.
    #[arg(long, value_name = "REGEX")]
    exclude_tensors: Option<String>,
    /// Also quantize biases (of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV,
    /// CONV_3D) and per-channel vectors read by elementwise ops (ADD, MUL, SUB, PRELU, ...),
    /// which stay float by default: a fraction of a percent of the bytes, and often the most
    /// costly in accuracy.
    #[arg(long)]
    quantize_biases: bool,
    /// Where weight data goes: `auto` (inline, or after the flatbuffer with offset/size when
    /// the file would pass 2 GiB) or `external` (always after the flatbuffer).
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    layout: LayoutArg,
    /// The runtime the model must compute right on: `litert` (LiteRT / TensorFlow Lite, every
    /// option) or `micro` (TensorFlow Lite Micro: per-tensor int8 behind DEQUANTIZE only;
    /// --mode dynamic, --granularity per-channel and --type float16 are refused).
    #[arg(long, value_enum, default_value_t = TargetArg::Litert)]
    target: TargetArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TargetArg {
    Litert,
    Micro,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    WeightOnly,
    Dynamic,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GranularityArg {
    PerTensor,
    PerChannel,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TypeArg {
    Int8,
    Float16,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Auto,
    External,
}

fn op_codes(names: &[String], flag: &str) -> Result<Vec<crate::ops::Op>> {
    names
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| match crate::ops::Op::by_name(n.trim()) {
            Some(c) => Ok(c),
            None => {
                bail!("{flag}: unknown operator {n:?} (use builtin names such as FULLY_CONNECTED)")
            }
        })
        .collect()
}

impl QuantArgs {
    /// Checks the flags and builds the library options. Errors are usage errors.
    pub fn to_options(&self) -> Result<Options> {
        let mode = match self.mode {
            ModeArg::WeightOnly => Mode::WeightOnly,
            ModeArg::Dynamic => Mode::Dynamic,
        };
        let weight_type = match self.weight_type {
            TypeArg::Int8 => WeightType::Int8,
            TypeArg::Float16 => WeightType::Float16,
        };
        if mode == Mode::Dynamic && weight_type == WeightType::Float16 {
            bail!("--mode dynamic needs --type int8: hybrid kernels take int8 weights only");
        }
        let exclude_tensors = match &self.exclude_tensors {
            None => None,
            Some(p) => Some(regex::Regex::new(p).map_err(|e| {
                anyhow::anyhow!("--exclude-tensors: invalid regular expression: {e}")
            })?),
        };
        let options = Options {
            min_elements: self.min_elements,
            layout: match self.layout {
                LayoutArg::Auto => LayoutPolicy::Auto,
                LayoutArg::External => LayoutPolicy::External,
            },
            mode,
            granularity: match self.granularity {
                GranularityArg::PerTensor => Granularity::PerTensor,
                GranularityArg::PerChannel => Granularity::PerChannel,
            },
            symmetric: self.symmetric,
            weight_type,
            include_ops: op_codes(&self.include_ops, "--include-ops")?,
            exclude_ops: op_codes(&self.exclude_ops, "--exclude-ops")?,
            exclude_tensors,
            quantize_biases: self.quantize_biases,
            target: match self.target {
                TargetArg::Litert => Target::Litert,
                TargetArg::Micro => Target::Micro,
            },
        };
        if let Some(why) = options.target_conflict() {
            bail!("{why}");
        }
        Ok(options)
    }
}
