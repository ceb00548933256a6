//! The quantization flags shared by `quantize` and `report`, turned into library options.

use crate::{Granularity, LayoutPolicy, Mode, Named, Options, RangeMethod, Target, WeightType};
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
    #[arg(long, value_enum, default_value_t = Mode::WeightOnly)]
    mode: Mode,
    /// `per-tensor`: one scale per tensor. `per-channel`: one per output channel on the axis
    /// each op expects, falling back to per-tensor where the op or runtime cannot take it.
    /// `block` (int4/int2): one float16 scale per block of `--block-size` elements, for
    /// kernels that read blocks (dynamic FULLY_CONNECTED, EMBEDDING_LOOKUP); per-channel
    /// elsewhere, with the reason in the summary.
    #[arg(long, value_enum, default_value_t = Granularity::PerTensor)]
    granularity: Granularity,
    /// Elements per block with `--granularity block`: 32, 64, 128 or 256.
    #[arg(long, value_name = "N")]
    block_size: Option<usize>,
    /// Symmetric int8 (zero point 0, codes in [-127, 127]) in weight-only mode too.
    #[arg(long)]
    symmetric: bool,
    /// Storage type of quantized weights: `int8`, `int4` (two per byte), `int2` (four per
    /// byte), or `float16` (behind DEQUANTIZE; values beyond ±65504 are clamped, with a
    /// warning). Where a kernel cannot take int4/int2 the weight keeps int8 (the summary
    /// says why).
    #[arg(long = "type", value_enum, default_value_t = WeightType::Int8)]
    weight_type: WeightType,
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
    #[arg(long, value_enum, default_value_t = LayoutPolicy::Auto)]
    layout: LayoutPolicy,
    /// How int8 clipping ranges are chosen: `minmax` (the smallest range holding every
    /// value) or `mse` (per tensor or channel, the range with the least squared error of the
    /// weights, which may clip a few outliers).
    #[arg(long, value_enum, default_value_t = RangeMethod::Minmax)]
    range: RangeMethod,
    /// No cross-layer equalization (on by default for per-tensor int8: channels of
    /// consecutive layers rescaled so that their ranges match; the model's function is
    /// unchanged). Equalizing costs about 0.3 s of CPU time per GiB of weights (a second
    /// read of the layers in the middle of a chain, and a rescaling of every value).
    #[arg(long)]
    no_equalize: bool,
    /// Equalize only and write the float model (to check that equalization keeps outputs).
    #[arg(long)]
    equalize_only: bool,
    /// The runtime the model must compute right on: `litert` (LiteRT / TensorFlow Lite, every
    /// option) or `micro` (TensorFlow Lite Micro: per-tensor int8 behind DEQUANTIZE only;
    /// --mode dynamic, --granularity per-channel and --type float16 are refused).
    #[arg(long, value_enum, default_value_t = Target::Litert)]
    target: Target,
    /// Apply the plan in FILE exactly (JSON, `{"tflq_plan": 1, "tensors": [...]}`, as
    /// --write-plan or `report --format plan` write it): each listed tensor gets its
    /// encoding, unlisted ones stay float32; a tensor whose readers cannot take its encoding
    /// is an error.
    #[arg(long, value_name = "FILE", conflicts_with = "target_sqnr")]
    plan: Option<std::path::PathBuf>,
    /// Data-free target: each weight gets the smallest encoding its readers take in this mode
    /// (int2/int4 per-channel, int4 blocks, int8 per-tensor or per-channel, float16) whose
    /// weight SQNR is at least DB; float32 if none.
    #[arg(long, value_name = "DB")]
    target_sqnr: Option<f64>,
}

// The library's option types are the flags' values, by the names the library gives them
// (`Named`), which the Python package reads too.
macro_rules! named_values {
    ($($t:ty),*) => {$(
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                static VALUES: std::sync::OnceLock<Vec<$t>> = std::sync::OnceLock::new();
                VALUES.get_or_init(|| <$t as Named>::NAMES.iter().map(|&(_, v)| v).collect())
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    )*};
}

named_values!(
    RangeMethod,
    Target,
    Mode,
    Granularity,
    WeightType,
    LayoutPolicy
);

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
        let (mode, weight_type, granularity) = (self.mode, self.weight_type, self.granularity);
        let block_size = match self.block_size {
            Some(n) if granularity != Granularity::Block => {
                bail!("--block-size {n} needs --granularity block")
            }
            Some(n) => n,
            None => 32,
        };
        let exclude_tensors = match &self.exclude_tensors {
            None => None,
            Some(p) => Some(regex::Regex::new(p).map_err(|e| {
                anyhow::anyhow!("--exclude-tensors: invalid regular expression: {e}")
            })?),
        };
        let options = Options {
            min_elements: self.min_elements,
            layout: self.layout,
            mode,
            granularity,
            block_size,
            symmetric: self.symmetric,
            weight_type,
            include_ops: op_codes(&self.include_ops, "--include-ops")?,
            exclude_ops: op_codes(&self.exclude_ops, "--exclude-ops")?,
            exclude_tensors,
            quantize_biases: self.quantize_biases,
            range: self.range,
            equalize: !self.no_equalize,
            equalize_only: self.equalize_only,
            target: self.target,
            assignment: match &self.plan {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("--plan {}: {e}", path.display()))?;
                    let a = crate::plan::assign::Assignment::parse(&text)
                        .map_err(|e| anyhow::anyhow!("--plan {}: {e}", path.display()))?;
                    Some(std::sync::Arc::new(a))
                }
            },
            target_sqnr: match self.target_sqnr {
                Some(db) if !db.is_finite() => {
                    bail!("--target-sqnr {db}: must be a finite number of dB")
                }
                other => other,
            },
        };
        if let Some(why) = options.conflict() {
            bail!("{why}");
        }
        Ok(options)
    }
}
