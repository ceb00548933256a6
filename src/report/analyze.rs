//! Measuring one tensor: its codes against its float values, block by block.
//!
//! The codes come from the quantizer itself ([`quantize_job`], the call the rewriter makes)
//! or from a model written by any tool; either way the error statistics come from
//! [`quant::error_stats`] and its per-channel form, the one place the math lives.

use crate::encoding::Codes;
use crate::plan::BufferJob;
use crate::quant::{self, CodeUse, ErrorStats};

/// Bins of the weight histogram in the HTML report.
pub const VALUE_BINS: usize = 80;
/// Bins of the error histogram in the HTML report.
pub const ERROR_BINS: usize = 60;

/// The int8 codes of a plan job (`None` for float16, which has no codes to measure).
pub fn job_codes(job: &BufferJob) -> Option<&Codes> {
    job.encoding.codes()
}

/// Quantizes `values`, the block of the job's buffer starting at element `first`, into
/// `codes` exactly as the rewriter does ([`crate::encoding::Encoding::encode_par`]), and
/// returns the error statistics of the block.
pub fn quantize_job(values: &[f32], first: usize, job: &BufferJob, codes: &mut [i8]) -> ErrorStats {
    match job.encoding.codes().map(|c| c.bits) {
        Some(bits) if bits != crate::encoding::Bits::Eight => {
            // Packed codes: encode as the rewriter does, then unpack for the meter.
            let mut packed = vec![0u8; bits.bytes_for(values.len() as u64) as usize];
            let stats = job.encoding.encode_par(values, first, &mut packed);
            for (i, c) in codes.iter_mut().enumerate() {
                *c = bits.code(&packed, i);
            }
            stats
        }
        _ => job
            .encoding
            .encode_par(values, first, bytemuck::cast_slice_mut(codes)),
    }
}

/// Histograms of one tensor for the HTML report.
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    /// Range of the value histogram.
    pub value_range: (f32, f32),
    /// Counts of the float values in [`VALUE_BINS`] equal bins.
    pub values: Vec<u64>,
    /// Values the int8 codes stand for inside the value range (of the widest channel).
    pub grid: Vec<f32>,
    /// Channel whose grid is shown, for per-channel schemes.
    pub grid_channel: Option<usize>,
    /// Half a quantization step of the widest channel: the error histogram spans ±this.
    pub half_step: f64,
    /// Counts of x - x' in [`ERROR_BINS`] equal bins over ±`half_step`.
    pub errors: Vec<u64>,
    /// Errors larger than half a step (values clamped by the scheme's range).
    pub errors_outside: u64,
}

/// Everything measured about one tensor.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Error statistics.
    pub stats: ErrorStats,
    /// How the codes use the int8 range.
    pub code_use: CodeUse,
    /// Histograms, when asked for.
    pub histograms: Option<Histograms>,
}

/// Accumulates the measurements of one tensor over its blocks, in order.
pub struct Meter<'s> {
    scheme: &'s Codes,
    stats: ErrorStats,
    codes: [u64; 256],
    histograms: Option<Histograms>,
    /// Elements seen so far (the index of the next block's first element).
    seen: usize,
}

impl<'s> Meter<'s> {
    /// A meter for a tensor whose finite values span `min..=max`.
    pub fn new(scheme: &'s Codes, min: f32, max: f32, histograms: bool) -> Meter<'s> {
        let histograms = histograms.then(|| {
            let (c, p) = scheme.widest();
            let half = 1i16 << (scheme.bits.width() - 1);
            let grid = (-half..half)
                .map(|q| q as i8)
                .map(|q| quant::dequantize(q, p))
                .filter(|&v| v >= min && v <= max)
                .collect();
            Histograms {
                value_range: (min, max),
                values: vec![0; VALUE_BINS],
                grid,
                grid_channel: (scheme.params.len() > 1).then_some(c),
                half_step: f64::from(p.scale) / 2.0,
                errors: vec![0; ERROR_BINS],
                errors_outside: 0,
            }
        });
        Meter {
            scheme,
            stats: ErrorStats::default(),
            codes: [0; 256],
            histograms,
            seen: 0,
        }
    }

    /// Adds the next block. `stats` are the block's statistics when the quantizer already
    /// computed them; otherwise they are computed here.
    pub fn add(&mut self, values: &[f32], codes: &[i8], stats: Option<ErrorStats>) {
        let stats = stats.unwrap_or_else(|| self.scheme.error_stats(values, codes, self.seen));
        self.stats = self.stats.merge(stats);
        let h = quant::code_histogram(codes);
        for (a, b) in self.codes.iter_mut().zip(h) {
            *a += b;
        }
        if let Some(hist) = &mut self.histograms {
            let (lo, hi) = hist.value_range;
            let width = f64::from(hi) - f64::from(lo);
            for (i, (&x, &q)) in values.iter().zip(codes).enumerate() {
                hist.values[bin(f64::from(x) - f64::from(lo), width, VALUE_BINS)] += 1;
                let p = self.scheme.params[self.scheme.geometry.group_of(self.seen + i)];
                let e = f64::from(x) - f64::from(quant::dequantize(q, p));
                // A hair over half a step is float rounding, not clamping.
                if e.abs() > hist.half_step * 1.001 {
                    hist.errors_outside += 1;
                } else {
                    let b = bin(e + hist.half_step, 2.0 * hist.half_step, ERROR_BINS);
                    hist.errors[b] += 1;
                }
            }
        }
        self.seen += values.len();
    }

    /// The measurements of the whole tensor.
    pub fn finish(self) -> Measured {
        Measured {
            stats: self.stats,
            code_use: CodeUse::from_histogram_bits(
                &self.codes,
                self.scheme.symmetric(),
                self.scheme.bits.width(),
            ),
            histograms: self.histograms,
        }
    }
}

/// Bin of `offset` in `bins` equal bins over `0..width` (ends clamped, empty width: bin 0).
fn bin(offset: f64, width: f64, bins: usize) -> usize {
    if width.is_nan() || width <= 0.0 {
        return 0;
    }
    let b = (offset / width * bins as f64).floor();
    if b.is_nan() || b < 0.0 {
        0
    } else {
        (b as usize).min(bins - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bits, Geometry};
    use crate::quant::QuantParams;

    fn p(scale: f32, zero_point: i32) -> QuantParams {
        QuantParams {
            scale,
            zero_point,
            qmin: -128,
            qmax: 127,
        }
    }

    #[test]
    fn bins_clamp_the_ends() {
        assert_eq!(bin(0.0, 1.0, 10), 0);
        assert_eq!(bin(1.0, 1.0, 10), 9);
        assert_eq!(bin(0.55, 1.0, 10), 5);
        assert_eq!(bin(-3.0, 1.0, 10), 0);
        assert_eq!(bin(0.5, 0.0, 10), 0);
    }

    #[test]
    fn blocks_add_up_to_the_whole_tensor() {
        // Per-channel along the last axis of a [4, 3] tensor: block boundaries cut runs.
        let scheme = Codes {
            bits: Bits::Eight,
            params: vec![p(0.1, 0), p(0.2, 0), p(0.05, 0)],
            geometry: Geometry::channels(&[4, 3], 1),
        };
        let values: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) * 0.11).collect();
        let codes: Vec<i8> = values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                (x / scheme.params[i % 3].scale)
                    .round()
                    .clamp(-127.0, 127.0) as i8
            })
            .collect();
        let mut whole = Meter::new(&scheme, -0.66, 0.55, true);
        whole.add(&values, &codes, None);
        let whole = whole.finish();
        let mut parts = Meter::new(&scheme, -0.66, 0.55, true);
        parts.add(&values[..5], &codes[..5], None);
        parts.add(&values[5..], &codes[5..], None);
        let parts = parts.finish();
        assert_eq!(whole.stats.count, 12);
        assert!((whole.stats.noise - parts.stats.noise).abs() < 1e-9);
        assert_eq!(whole.stats.max_abs, parts.stats.max_abs);
        assert_eq!(whole.code_use, parts.code_use);
        assert_eq!(whole.histograms, parts.histograms);
        let h = whole.histograms.unwrap();
        assert_eq!(h.values.iter().sum::<u64>(), 12);
        assert_eq!(h.errors.iter().sum::<u64>() + h.errors_outside, 12);
        // The widest channel (scale 0.2) sets the grid and the error span.
        assert_eq!(
            (h.grid_channel, h.half_step),
            (Some(1), f64::from(0.2f32) / 2.0)
        );
    }
}
