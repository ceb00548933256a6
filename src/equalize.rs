//! Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization
//! and Bias Correction", ICCV 2019), data-free and exact up to float rounding.
//!
//! For two layers `y = W2 f(W1 x + b1) + b2` with `f` positively homogeneous per channel
//! (`f(s x) = s f(x)` for `s > 0`: none, RELU, PRELU whatever its alpha; not RELU6, whose clip
//! at 6 moves), dividing output channel `c` of layer 1 (weights and bias) by `s_c` and
//! multiplying input channel `c` of layer 2 by `s_c` leaves the function unchanged. With
//! `r1[c]` the range (max |w|) of layer 1's output channel `c` and `r2[c]` that of layer 2's
//! input channel `c`, `s_c = sqrt(r1 r2) / r2` makes both `sqrt(r1 r2)`: the channels of a
//! per-tensor grid stop differing by orders of magnitude.
//!
//! Layouts (TFLite): CONV_2D `[O, H, W, I]`, DEPTHWISE_CONV_2D `[1, H, W, C]` (channel `C`
//! is both in and out; multiplier 1 as layer 2), FULLY_CONNECTED `[O, I]`.
//!
//! [`find`] reads a parsed model (read only) and returns, for every buffer it changes, how:
//! a [`Rescale`] (factors per channel, not new values, so no weight is copied). The
//! rewriter applies them piece by piece as it encodes. [`scale_output`] and [`scale_input`]
//! do the same to one pair of materialized arrays; the tests hold the rest to them.

use std::collections::BTreeMap;

use ndarray::{ArrayViewD, ArrayViewMutD, Axis, IxDyn};
use tflq_schema as fb;

use crate::model::{DType, Model};
use crate::ops::Op;
use crate::quant::{CHUNK, Range, as_f32, f32_from_le, scan_range, with_f32};

/// Where a layer's channels run in its weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// CONV_2D `[O, H, W, I]`.
    Conv2d,
    /// DEPTHWISE_CONV_2D `[1, H, W, C]`.
    Depthwise,
    /// FULLY_CONNECTED `[O, I]`.
    FullyConnected,
}

impl Layout {
    /// The layout of an operator's weights, for the operators equalization handles.
    pub fn of(op: Op) -> Option<Layout> {
        match op {
            Op::Conv2d => Some(Layout::Conv2d),
            Op::DepthwiseConv2d => Some(Layout::Depthwise),
            Op::FullyConnected => Some(Layout::FullyConnected),
            _ => None,
        }
    }

    /// Axis of the output channels.
    pub fn output_axis(self) -> usize {
        match self {
            Layout::Conv2d | Layout::FullyConnected => 0,
            Layout::Depthwise => 3,
        }
    }

    /// Axis of the input channels.
    pub fn input_axis(self) -> usize {
        match self {
            Layout::Conv2d | Layout::Depthwise => 3,
            Layout::FullyConnected => 1,
        }
    }

    /// Rank of the weight tensor.
    pub fn rank(self) -> usize {
        match self {
            Layout::Conv2d | Layout::Depthwise => 4,
            Layout::FullyConnected => 2,
        }
    }
}

/// The activation between the two layers of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing (fused activation NONE).
    None,
    /// Fused RELU of layer 1.
    Relu,
    /// A PRELU operator (its op index) with a constant alpha.
    Prelu(usize),
}

/// Scale factors `s_c = sqrt(r1[c] r2[c]) / r2[c]`; 1 where either range is zero or not
/// finite (or the product over/underflows), so such a channel is left as it is.
pub fn scales(r1: &[f32], r2: &[f32]) -> Vec<f32> {
    r1.iter()
        .zip(r2)
        .map(|(&a, &b)| {
            let (a, b) = (f64::from(a), f64::from(b));
            let s = (a * b).sqrt() / b;
            let s32 = s as f32;
            if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() && s32.is_normal() {
                s32
            } else {
                1.0
            }
        })
        .collect()
}

/// Max |w| of each channel along `axis`.
pub fn channel_ranges(w: ArrayViewD<'_, f32>, axis: usize) -> Vec<f32> {
    let n = w.len_of(Axis(axis));
    match contiguous(&w.view(), axis) {
        // Every layout's channel axis is the first or the last: run over the data in memory
        // order instead of striding through a column per channel (measured 15x faster on a
        // 4096 x 4096 FULLY_CONNECTED weight).
        Some((data, Run::Slabs)) => data
            .chunks(data.len() / n.max(1))
            .map(|c| c.iter().fold(0.0f32, |m, &x| m.max(x.abs())))
            .collect(),
        Some((data, Run::Rows)) => {
            let mut r = vec![0.0f32; n];
            for row in data.chunks_exact(n) {
                for (m, &x) in r.iter_mut().zip(row) {
                    *m = m.max(x.abs());
                }
            }
            r
        }
        None => w
            .axis_iter(Axis(axis))
            .map(|c| c.iter().fold(0.0f32, |m, &x| m.max(x.abs())))
            .collect(),
    }
}

/// How the elements of one channel lie in memory.
enum Run {
    /// Channel `c` is the `c`-th of equal consecutive slabs (the first axis).
    Slabs,
    /// Channel `c` is element `c` of every row (the last axis).
    Rows,
}

/// The data in memory order when `w` is in standard layout and `axis` is its first or last.
fn contiguous<'a>(w: &'a ArrayViewD<'a, f32>, axis: usize) -> Option<(&'a [f32], Run)> {
    let data = w.as_slice()?;
    if w.ndim() == 0 || w.is_empty() {
        return None;
    }
    if axis + 1 == w.ndim() {
        Some((data, Run::Rows))
    } else if axis == 0 {
        Some((data, Run::Slabs))
    } else {
        None
    }
}

/// Multiplies each element of channel `c` along `axis` by `f(c)`.
fn scale_channels(mut w: ArrayViewMutD<'_, f32>, axis: usize, s: &[f32], divide: bool) {
    let n = w.len_of(Axis(axis));
    let last = axis + 1 == w.ndim();
    let apply = |x: &mut f32, sc: f32| {
        if divide { *x /= sc } else { *x *= sc }
    };
    if let Some(data) = w.as_slice_mut().filter(|d| !d.is_empty() && n > 0) {
        if last {
            for row in data.chunks_exact_mut(n) {
                for (x, &sc) in row.iter_mut().zip(s) {
                    apply(x, sc);
                }
            }
            return;
        }
        if axis == 0 {
            let len = data.len() / n;
            for (slab, &sc) in data.chunks_mut(len).zip(s) {
                for x in slab {
                    apply(x, sc);
                }
            }
            return;
        }
    }
    for (mut ch, &sc) in w.axis_iter_mut(Axis(axis)).zip(s) {
        ch.map_inplace(|x| apply(x, sc));
    }
}

/// Divides output channel `c` of a layer's weights by `s[c]`, and its bias too.
pub fn scale_output(w: ArrayViewMutD<'_, f32>, layout: Layout, s: &[f32], bias: &mut [f32]) {
    scale_channels(w, layout.output_axis(), s, true);
    for (b, &sc) in bias.iter_mut().zip(s) {
        *b /= sc;
    }
}

/// Multiplies input channel `c` of a layer's weights by `s[c]`.
pub fn scale_input(w: ArrayViewMutD<'_, f32>, layout: Layout, s: &[f32]) {
    scale_channels(w, layout.input_axis(), s, false);
}

/// Whether a PRELU alpha of shape `alpha` broadcasts onto an input of shape `input` without
/// enlarging it (so the PRELU is elementwise on its input and commutes with positive scaling
/// of each channel, whatever alpha's values).
pub fn alpha_broadcasts(alpha: &[i32], input: &[i32]) -> bool {
    alpha.len() <= input.len()
        && alpha
            .iter()
            .rev()
            .zip(input.iter().rev())
            .all(|(&a, &i)| a == 1 || a == i)
}

/// One equalized pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Subgraph index.
    pub subgraph: usize,
    /// Op index of layer 1.
    pub first: usize,
    /// Op index of layer 2.
    pub second: usize,
    /// What lies between.
    pub activation: Activation,
}

/// How equalization changes one buffer: steps applied in order to the model's values, each
/// multiplying (layer 2's input channels) or dividing (layer 1's output channels and bias)
/// every element of one channel by that channel's factor.
///
/// Kept as factors, not values, so that no weight is copied: the rewriter applies them to a
/// few thousand elements at a time as it encodes (a 1 GiB model would otherwise take 1 GiB
/// more memory and a pass to fill it). The same f32 operations in the same order as on a
/// materialized copy, so the values are the same bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescale {
    dims: Vec<usize>,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    axis: usize,
    factors: Vec<f32>,
    divide: bool,
}

/// A step's factor for a piece of one row of the last axis: one per element (a step along
/// the last axis), or one for the whole piece (any other axis: a row of the last axis lies
/// within one of its channels).
#[derive(Clone, Copy)]
enum Factor<'a> {
    Each(&'a [f32]),
    One(f32),
}

/// The two operations a step does to a value with its channel's factor; every loop below
/// takes them as they are (function items, so each loop is compiled for one of them).
#[inline(always)]
fn mul(x: f32, f: f32) -> f32 {
    x * f
}

#[inline(always)]
fn div(x: f32, f: f32) -> f32 {
    x / f
}

impl Step {
    fn one(&self, channel: usize, x: f32) -> f32 {
        let s = self.factors[channel];
        if self.divide { div(x, s) } else { mul(x, s) }
    }
}

/// Channels along `axis` of a tensor of shape `dims`, and how many consecutive elements
/// share a channel: element `e` is in channel `(e / stride) % channels`.
fn channel_geometry(dims: &[usize], axis: usize) -> (usize, usize) {
    (dims[axis], dims[axis + 1..].iter().product())
}

/// The factor of `step` (and whether it divides) for the piece `j..j + len` of a row of the
/// last axis that starts at element `e`.
fn piece_factor<'a>(
    dims: &[usize],
    step: &'a Step,
    j: usize,
    len: usize,
    e: usize,
) -> (Factor<'a>, bool) {
    let f = if step.axis + 1 == dims.len() {
        Factor::Each(&step.factors[j..j + len])
    } else {
        let (n, stride) = channel_geometry(dims, step.axis);
        Factor::One(step.factors[(e / stride) % n])
    };
    (f, step.divide)
}

crate::simd::vectorized! {
    /// `dst = op2(op1(src, a), b)` element by element: two steps in one pass, with the same
    /// operations in the same order as one pass per step.
    fn rescale_two(dst: &mut [f32], src: &[f32], a: (Factor<'_>, bool), b: (Factor<'_>, bool)) {
        // Inlined, so that they are compiled with the features of each version.
        #[inline(always)]
        fn go(
            dst: &mut [f32],
            src: &[f32],
            fa: impl Iterator<Item = f32>,
            fb: impl Iterator<Item = f32>,
            op1: impl Fn(f32, f32) -> f32,
            op2: impl Fn(f32, f32) -> f32,
        ) {
            for (((d, &x), fa), fb) in dst.iter_mut().zip(src).zip(fa).zip(fb) {
                *d = op2(op1(x, fa), fb);
            }
        }
        #[inline(always)]
        fn ops(
            dst: &mut [f32],
            src: &[f32],
            fa: impl Iterator<Item = f32>,
            fb: impl Iterator<Item = f32>,
            divide: (bool, bool),
        ) {
            match divide {
                (false, true) => go(dst, src, fa, fb, mul, div),
                (true, false) => go(dst, src, fa, fb, div, mul),
                (false, false) => go(dst, src, fa, fb, mul, mul),
                (true, true) => go(dst, src, fa, fb, div, div),
            }
        }
        let divide = (a.1, b.1);
        let one = std::iter::repeat;
        match (a.0, b.0) {
            (Factor::Each(x), Factor::Each(y)) => {
                ops(dst, src, x.iter().copied(), y.iter().copied(), divide)
            }
            (Factor::Each(x), Factor::One(c)) => ops(dst, src, x.iter().copied(), one(c), divide),
            (Factor::One(c), Factor::Each(y)) => ops(dst, src, one(c), y.iter().copied(), divide),
            (Factor::One(c), Factor::One(k)) => ops(dst, src, one(c), one(k), divide),
        }
    }
}

crate::simd::vectorized! {
    /// `dst = op(src, factor)` element by element, or `dst = op(dst, factor)` without `src`.
    fn rescale_piece(dst: &mut [f32], src: Option<&[f32]>, f: Factor<'_>, divide: bool) {
        // Inlined, so that it is compiled with the features of each version.
        #[inline(always)]
        fn go(dst: &mut [f32], src: Option<&[f32]>, f: Factor<'_>, op: impl Fn(f32, f32) -> f32) {
            match (src, f) {
                (Some(s), Factor::Each(f)) => {
                    for ((d, &x), &f) in dst.iter_mut().zip(s).zip(f) {
                        *d = op(x, f);
                    }
                }
                (Some(s), Factor::One(f)) => {
                    for (d, &x) in dst.iter_mut().zip(s) {
                        *d = op(x, f);
                    }
                }
                (None, Factor::Each(f)) => {
                    for (d, &f) in dst.iter_mut().zip(f) {
                        *d = op(*d, f);
                    }
                }
                (None, Factor::One(f)) => {
                    for d in dst.iter_mut() {
                        *d = op(*d, f);
                    }
                }
            }
        }
        if divide {
            go(dst, src, f, div);
        } else {
            go(dst, src, f, mul);
        }
    }
}

impl Rescale {
    /// No change yet, to a tensor of shape `dims`.
    pub fn new(dims: &[usize]) -> Rescale {
        Rescale {
            dims: dims.to_vec(),
            steps: Vec::new(),
        }
    }

    /// Then multiplies channel `c` along `axis` by `factors[c]`.
    ///
    /// # Panics
    /// When `axis` is not an axis of the shape or `factors` is not one per channel.
    pub fn multiply(self, axis: usize, factors: Vec<f32>) -> Rescale {
        self.then(axis, factors, false)
    }

    /// Then divides channel `c` along `axis` by `factors[c]` (see [`Rescale::multiply`]).
    pub fn divide(self, axis: usize, factors: Vec<f32>) -> Rescale {
        self.then(axis, factors, true)
    }

    fn then(mut self, axis: usize, factors: Vec<f32>, divide: bool) -> Rescale {
        assert_eq!(
            self.dims.get(axis),
            Some(&factors.len()),
            "one factor per channel"
        );
        self.steps.push(Step {
            axis,
            factors,
            divide,
        });
        self
    }

    /// The tensor's shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Equalizes `values`, elements `first..` of the tensor as the model stores them.
    pub fn apply(&self, first: usize, values: &mut [f32]) {
        self.apply_first(self.steps.len(), first, values);
    }

    /// [`Rescale::apply`] of the first `steps` steps only.
    fn apply_first(&self, steps: usize, first: usize, values: &mut [f32]) {
        self.rows(steps, first, None, values);
    }

    /// Writes `src` (elements `first..` of the tensor as the model stores them) equalized
    /// into `dst`, in one pass.
    pub fn apply_to(&self, first: usize, src: &[f32], dst: &mut Vec<f32>) {
        self.apply_into(self.steps.len(), first, src, dst);
    }

    /// Writes `src` (elements `first..`) after the first `steps` steps into `dst`.
    fn apply_into(&self, steps: usize, first: usize, src: &[f32], dst: &mut Vec<f32>) {
        dst.resize(src.len(), 0.0);
        self.rows(steps, first, Some(src), dst);
    }

    /// The first `steps` steps, row of the last axis by row, all steps on a row before the
    /// next: the row stays in cache, and the first step reads `src` (when given) so that
    /// no separate copy is made.
    fn rows(&self, steps: usize, first: usize, src: Option<&[f32]>, dst: &mut [f32]) {
        let steps = &self.steps[..steps];
        if steps.is_empty() {
            if let Some(s) = src {
                dst.copy_from_slice(s);
            }
            return;
        }
        // A step has an axis, so there is a last one; if it is empty, so is the tensor.
        let Some(&last) = self.dims.last().filter(|&&l| l > 0) else {
            return;
        };
        let (mut i, mut e) = (0, first);
        while i < dst.len() {
            let j = e % last;
            let len = (last - j).min(dst.len() - i);
            let d = &mut dst[i..i + len];
            let dims = &self.dims;
            let factor = |step| piece_factor(dims, step, j, len, e);
            match (steps, src) {
                // A weight in the middle of a chain: both steps in one loop.
                ([a, b], Some(s)) => rescale_two(d, &s[i..i + len], factor(a), factor(b)),
                _ => {
                    for (k, step) in steps.iter().enumerate() {
                        let from = if k == 0 {
                            src.map(|s| &s[i..i + len])
                        } else {
                            None
                        };
                        let (f, divide) = factor(step);
                        rescale_piece(d, from, f, divide);
                    }
                }
            }
            i += len;
            e += len;
        }
    }

    /// The whole tensor after equalization, from its little-endian bytes in the model.
    pub fn values(&self, bytes: &[u8]) -> Vec<f32> {
        let mut v = Vec::new();
        f32_from_le(bytes, &mut v);
        self.apply(0, &mut v);
        v
    }
}

/// The float32 values of a buffer as a plan sees them: the model's, or the model's after
/// equalization.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// Little-endian f32 bytes, as in the model.
    pub bytes: &'a [u8],
    /// What equalization does to them, if anything.
    pub rescale: Option<&'a Rescale>,
}

impl<'a> Values<'a> {
    /// The model's values, unchanged.
    pub fn of(bytes: &'a [u8]) -> Values<'a> {
        Values {
            bytes,
            rescale: None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with all the values (equalized ones are made for the call: only decisions
    /// that need the whole tensor at once, such as `--range mse`, use this).
    pub fn with<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        match self.rescale {
            None => with_f32(self.bytes, f),
            Some(r) => f(&r.values(self.bytes)),
        }
    }

    /// Calls `f(first, values)` for consecutive pieces of at most `block` elements, in order;
    /// memory stays at one piece.
    pub fn blocks(&self, block: usize, mut f: impl FnMut(usize, &[f32])) {
        let mut scratch = Vec::new();
        for (k, piece) in self.bytes.chunks(block.max(1) * 4).enumerate() {
            let first = k * block.max(1);
            match self.rescale {
                None => with_f32(piece, |v| f(first, v)),
                Some(r) => f(
                    first,
                    rescaled(r, r.steps.len(), first, piece, &mut scratch),
                ),
            }
        }
    }
}

/// The values of `piece` (little-endian f32, elements `first..`) after the first `steps`
/// steps of `rescale`: the model's own bytes when nothing changes them and they are aligned,
/// else made in `scratch`.
fn rescaled<'s>(
    rescale: &Rescale,
    steps: usize,
    first: usize,
    piece: &'s [u8],
    scratch: &'s mut Vec<f32>,
) -> &'s [f32] {
    match as_f32(piece) {
        Some(v) if steps == 0 => v,
        Some(v) => {
            rescale.apply_into(steps, first, v, scratch);
            scratch
        }
        None => {
            f32_from_le(piece, scratch);
            rescale.apply_first(steps, first, scratch);
            scratch
        }
    }
}

/// Per-channel min and max (of the finite values) along one axis of a buffer, after the
/// first `steps` steps of its [`Rescale`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRanges {
    axis: usize,
    steps: usize,
    ranges: Vec<Range>,
    /// No value was NaN or infinite (else the ranges are `-r..r`, `r` the channel's largest
    /// magnitude, infinities included: all that equalization reads of them).
    finite: bool,
}

impl ChannelRanges {
    /// Measures `bytes` (little-endian f32, shape `dims`) along `axis`, in one parallel pass.
    pub fn measure(bytes: &[u8], dims: &[usize], axis: usize) -> ChannelRanges {
        measure(bytes, &Rescale::new(dims), 0, axis)
    }

    /// The whole tensor's range: what [`crate::quant::scan_range_par`] finds; `None` when
    /// a value is NaN or infinite.
    pub fn range(&self) -> Option<Range> {
        self.finite
            .then(|| self.ranges.iter().fold(Range::EMPTY, |a, &b| a.merge(b)))
    }

    /// The largest magnitude of each channel (0 for an empty one).
    fn magnitudes(&self) -> Vec<f32> {
        self.ranges
            .iter()
            .map(|r| {
                if r.min > r.max {
                    0.0
                } else {
                    r.min.abs().max(r.max.abs())
                }
            })
            .collect()
    }

    /// The ranges after all the steps of `rescale` up to `steps`, without reading the data:
    /// when every later step is along this axis, each channel's values are all multiplied or
    /// divided by one positive factor, which keeps their order, so the new min and max are
    /// the old ones rescaled. `None` when a later step is along another axis, or when a value
    /// is not finite.
    fn advanced(&self, rescale: &Rescale, steps: usize) -> Option<ChannelRanges> {
        if !self.finite || steps < self.steps {
            return None;
        }
        let later = &rescale.steps[self.steps..steps];
        if later.iter().any(|s| s.axis != self.axis) {
            return None;
        }
        let ranges: Vec<Range> = self
            .ranges
            .iter()
            .enumerate()
            .map(|(c, r)| {
                if r.min > r.max {
                    return *r;
                }
                let (lo, hi) = later
                    .iter()
                    .fold((r.min, r.max), |(lo, hi), s| (s.one(c, lo), s.one(c, hi)));
                Range {
                    min: lo,
                    max: hi,
                    non_finite: 0,
                }
            })
            .collect();
        ranges
            .iter()
            .all(|r| r.min > r.max || (r.min.is_finite() && r.max.is_finite()))
            .then_some(ChannelRanges {
                axis: self.axis,
                steps,
                ranges,
                finite: true,
            })
    }
}

/// [`ChannelRanges`] of the values after the first `steps` steps of `rescale`, in one
/// parallel pass over pieces of [`CHUNK`] elements (rescaled in a small buffer).
fn measure(bytes: &[u8], rescale: &Rescale, steps: usize, axis: usize) -> ChannelRanges {
    use rayon::prelude::*;
    let (n, stride) = channel_geometry(&rescale.dims, axis);
    let fresh = || (Extremes::new(n), Vec::<f32>::new());
    let (seen, _) = bytes
        .par_chunks(CHUNK * 4)
        .enumerate()
        .fold(fresh, |(mut seen, mut scratch), (k, piece)| {
            let first = k * CHUNK;
            seen.add(
                stride,
                first,
                rescaled(rescale, steps, first, piece, &mut scratch),
            );
            (seen, scratch)
        })
        .reduce(fresh, |(a, s), (b, _)| (a.merge(b), s));
    let finite = seen.finite;
    let ranges = if finite {
        seen.min
            .iter()
            .zip(&seen.max)
            .map(|(&min, &max)| Range {
                min,
                max,
                non_finite: 0,
            })
            .collect()
    } else {
        // A NaN or an infinity: only the magnitudes matter (such a buffer is never
        // quantized), taken the way a materialized copy gives them.
        let mut values = Vec::new();
        f32_from_le(bytes, &mut values);
        rescale.apply_first(steps, 0, &mut values);
        ArrayViewD::from_shape(IxDyn(&rescale.dims), &values[..])
            .map(|w| channel_ranges(w, axis))
            .unwrap_or_else(|_| vec![0.0; n])
            .into_iter()
            .map(|r| Range {
                min: -r,
                max: r,
                non_finite: 0,
            })
            .collect()
    };
    ChannelRanges {
        axis,
        steps,
        ranges,
        finite,
    }
}

/// The smallest and largest value of each channel so far, and whether all were finite.
struct Extremes {
    min: Vec<f32>,
    max: Vec<f32>,
    finite: bool,
}

/// Up to this many channels, the extremes of a whole row fit in L1 (16 KiB) and rows are
/// measured one after the other, in memory order. Wider rows go by strips (below). By CPU
/// samples, strips were 4-5 times slower on `cnn-200m`'s 1,024 channels (64 rows per piece,
/// each strip taking one cache line from each row) and a third faster than whole rows on
/// `mlp-1g`'s 8,192.
const ROW_BY_ROW: usize = 2048;

/// Channels of the last axis measured together down the rows (two registers per extreme
/// with AVX2, four on SSE2).
const STRIP: usize = 16;

impl Extremes {
    fn new(n: usize) -> Extremes {
        Extremes {
            min: vec![f32::INFINITY; n],
            max: vec![f32::NEG_INFINITY; n],
            finite: true,
        }
    }

    fn merge(mut self, o: Extremes) -> Extremes {
        for (a, b) in self.min.iter_mut().zip(o.min) {
            *a = a.min(b);
        }
        for (a, b) in self.max.iter_mut().zip(o.max) {
            *a = a.max(b);
        }
        self.finite &= o.finite;
        self
    }

    /// Adds `values`, elements `first..` of a tensor whose channel of element `e` is
    /// `(e / stride) % n`.
    fn add(&mut self, stride: usize, first: usize, values: &[f32]) {
        let n = self.min.len();
        if n == 0 || stride == 0 {
            return;
        }
        if stride != 1 {
            // Runs of one channel: the lane-parallel scan of whole tensors, run by run.
            let mut e = first;
            let mut rest = values;
            while !rest.is_empty() {
                let run = (stride - e % stride).min(rest.len());
                let r = scan_range(&rest[..run]);
                self.finite &= r.non_finite == 0;
                let c = (e / stride) % n;
                self.min[c] = self.min[c].min(r.min);
                self.max[c] = self.max[c].max(r.max);
                rest = &rest[run..];
                e += run;
            }
            return;
        }
        // Stride 1: element i of a row is channel i. A part row at each end, whole rows
        // between, a tile of channels at a time.
        let c0 = first % n;
        let head = ((n - c0) % n).min(values.len());
        let (head, rest) = values.split_at(head);
        let whole = rest.len() / n * n;
        let (rows, tail) = rest.split_at(whole);
        self.row(c0, head);
        if n <= ROW_BY_ROW {
            for row in rows.chunks_exact(n) {
                self.row(0, row);
            }
        } else {
            self.strips(n, rows);
        }
        self.row(0, tail);
    }

    /// Whole rows of `n` channels, STRIP channels at a time down all the rows, with the
    /// strip's extremes in registers (not loaded and stored at every row).
    fn strips(&mut self, n: usize, rows: &[f32]) {
        let strips = n / STRIP * STRIP;
        let mut bad = false;
        for t in (0..strips).step_by(STRIP) {
            let mut mins: [f32; STRIP] = self.min[t..t + STRIP].try_into().unwrap_or([0.0; STRIP]);
            let mut maxs: [f32; STRIP] = self.max[t..t + STRIP].try_into().unwrap_or([0.0; STRIP]);
            bad |= crate::simd::column_extremes16(rows, n, t, &mut mins, &mut maxs);
            self.min[t..t + STRIP].copy_from_slice(&mins);
            self.max[t..t + STRIP].copy_from_slice(&maxs);
        }
        self.finite &= !bad;
        if strips < n {
            for row in rows.chunks_exact(n) {
                self.row(strips, &row[strips..]);
            }
        }
    }

    /// Adds `values` to channels `from..`.
    fn row(&mut self, from: usize, values: &[f32]) {
        let bad = crate::simd::row_extremes(&mut self.min[from..], &mut self.max[from..], values);
        // An infinity would be in min/max; the scan of whole tensors keeps them out, and
        // the measure is then taken again the slow way.
        self.finite &= !bad;
    }
}

/// What [`find`] decided: how each changed buffer is rescaled, and the pairs.
#[derive(Debug, Clone, Default)]
pub struct Equalization {
    /// Buffer index -> what equalization does to its values.
    pub buffers: BTreeMap<u32, Rescale>,
    /// Pairs equalized, in graph order.
    pub pairs: Vec<Pair>,
    /// The ranges measured on the way, newest per buffer, for [`Equalization::range`].
    measured: BTreeMap<u32, ChannelRanges>,
}

impl Equalization {
    /// The range of an equalized buffer's new values (what a scan of them finds), from the
    /// ranges measured while equalizing when they tell it, else by one pass over the data.
    pub fn range(&self, model: &Model<'_>, buffer: u32) -> Option<Range> {
        let rescale = self.buffers.get(&buffer)?;
        let known = self
            .measured
            .get(&buffer)
            .and_then(|m| m.advanced(rescale, rescale.steps.len()))
            .and_then(|m| m.range());
        Some(known.unwrap_or_else(|| {
            use rayon::prelude::*;
            let bytes = model.buffer_data(buffer);
            bytes
                .par_chunks(CHUNK * 4)
                .enumerate()
                .map_init(Vec::new, |scratch, (k, piece)| {
                    scan_range(rescaled(
                        rescale,
                        rescale.steps.len(),
                        k * CHUNK,
                        piece,
                        scratch,
                    ))
                })
                .reduce(|| Range::EMPTY, Range::merge)
        }))
    }

    /// The ranges of `w`'s current values along `axis`: from what is known when that tells
    /// them, else measured (one pass).
    fn ranges_of(&mut self, model: &Model<'_>, w: &Operand, axis: usize) -> ChannelRanges {
        let rescale = self
            .buffers
            .entry(w.buffer)
            .or_insert_with(|| Rescale::new(&w.shape));
        let steps = rescale.steps.len();
        let known = self
            .measured
            .get(&w.buffer)
            .filter(|m| m.axis == axis)
            .and_then(|m| m.advanced(rescale, steps));
        let ranges =
            known.unwrap_or_else(|| measure(model.buffer_data(w.buffer), rescale, steps, axis));
        self.measured.insert(w.buffer, ranges.clone());
        ranges
    }

    fn push(&mut self, w: &Operand, axis: usize, factors: &[f32], divide: bool) {
        let r = self.buffers.remove(&w.buffer);
        let r = r.unwrap_or_else(|| Rescale::new(&w.shape));
        let r = r.then(axis, factors.to_vec(), divide);
        self.buffers.insert(w.buffer, r);
    }
}

/// A constant float32 operand: its buffer and shape.
#[derive(Debug, Clone)]
struct Operand {
    buffer: u32,
    shape: Vec<usize>,
}

/// A pair that qualifies by the model's structure, with its operands.
struct Found {
    pair: Pair,
    layouts: (Layout, Layout),
    w1: Operand,
    b1: Operand,
    w2: Operand,
}

/// Finds the layer pairs of `model` that can be equalized exactly and equalizes them, in
/// graph order (a layer can be layer 2 of one pair and layer 1 of the next: the second pair
/// sees the first's result). A pair qualifies when:
/// - both ops are CONV_2D / DEPTHWISE_CONV_2D (in either order), or both FULLY_CONNECTED;
/// - layer 1's fused activation is NONE or RELU;
/// - the tensor between has one reader and is no subgraph output, or feeds a PRELU with a
///   constant alpha that broadcasts without enlarging, whose output has one reader and is no
///   subgraph output;
/// - both weights and layer 1's bias are float32 constants of the expected rank, not sparse or
///   quantized, whose buffers no other tensor uses and that no other op reads; layer 2 reads
///   the tensor as its input 0 and has exactly as many input channels as layer 1 has outputs.
pub fn find(model: &Model<'_>) -> Equalization {
    find_where(model, |_| true)
}

/// [`find`], equalizing only pairs whose two weight buffers satisfy `eligible`: the planner
/// passes the buffers it will quantize, since a pair that stays float gains nothing (and a
/// second run over the output would find it again).
pub fn find_where(model: &Model<'_>, eligible: impl Fn(u32) -> bool) -> Equalization {
    find_measured(model, eligible, BTreeMap::new())
}

/// [`find_where`], starting from ranges already measured on the model's values (as the
/// planner's first scan does along the axes [`first_axes`] names), so that those buffers are
/// not read again for them.
pub fn find_measured(
    model: &Model<'_>,
    eligible: impl Fn(u32) -> bool,
    known: BTreeMap<u32, ChannelRanges>,
) -> Equalization {
    let mut out = Equalization {
        measured: known.into_iter().filter(|(_, m)| m.steps == 0).collect(),
        ..Default::default()
    };
    for f in found(model) {
        if !eligible(f.w1.buffer) || !eligible(f.w2.buffer) {
            continue;
        }
        let (l1, l2) = f.layouts;
        let r1 = out.ranges_of(model, &f.w1, l1.output_axis()).magnitudes();
        let r2 = out.ranges_of(model, &f.w2, l2.input_axis()).magnitudes();
        let s = scales(&r1, &r2);
        out.push(&f.w1, l1.output_axis(), &s, true);
        out.push(&f.b1, 0, &s, true);
        out.push(&f.w2, l2.input_axis(), &s, false);
        out.pairs.push(f.pair);
    }
    // Buffers measured but never rescaled (their pair was not eligible) are not changed.
    out.buffers.retain(|_, r| !r.steps.is_empty());
    let buffers = &out.buffers;
    out.measured.retain(|b, _| buffers.contains_key(b));
    out
}

/// For every weight buffer some pair could rescale: its shape and the axis equalization first
/// measures it along (the output channels of a layer 1, the input channels of a layer 2).
/// Measuring a buffer's first scan per channel along it (with
/// [`ChannelRanges::measure`]) and handing the result to [`find_measured`] saves a pass.
pub fn first_axes(model: &Model<'_>) -> BTreeMap<u32, (Vec<usize>, usize)> {
    let mut axes = BTreeMap::new();
    for f in found(model) {
        let (l1, l2) = f.layouts;
        axes.entry(f.w1.buffer)
            .or_insert((f.w1.shape, l1.output_axis()));
        axes.entry(f.w2.buffer)
            .or_insert((f.w2.shape, l2.input_axis()));
    }
    axes
}

/// The pairs that qualify by structure (see [`find`]), in graph order.
fn found(model: &Model<'_>) -> Vec<Found> {
    let uses = buffer_uses(model);
    let mut out = Vec::new();
    for (si, sg) in model.subgraphs().iter().enumerate() {
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); sg.tensors.len()];
        for (oi, op) in sg.ops.iter().enumerate() {
            for &t in &op.inputs {
                if let Some(r) = usize::try_from(t).ok().and_then(|t| readers.get_mut(t)) {
                    if !r.contains(&oi) {
                        r.push(oi);
                    }
                }
            }
        }
        let input_reads = |t: usize| -> usize {
            sg.ops
                .iter()
                .flat_map(|o| &o.inputs)
                .filter(|&&i| i == t as i32)
                .count()
        };
        let is_output = |t: usize| sg.outputs.contains(&(t as i32));
        let only_reader = |t: usize| -> Option<usize> {
            match readers.get(t).map(Vec::as_slice) {
                Some([r]) if !is_output(t) && input_reads(t) == 1 => Some(*r),
                _ => None,
            }
        };
        let constant = |t: i32, rank: usize| -> Option<Operand> {
            let ti = sg.tensors.get(usize::try_from(t).ok()?)?;
            let ok = ti.dtype == DType::FLOAT32
                && ti.buffer != 0
                && !ti.is_variable
                && !ti.sparse
                && !ti.quantized
                && !ti.external_file
                && ti.shape.len() == rank
                && uses.get(&ti.buffer) == Some(&1)
                && input_reads(t as usize) == 1
                && model.buffer_data(ti.buffer).len() as u64 == ti.elements * 4;
            ok.then(|| Operand {
                buffer: ti.buffer,
                shape: ti.shape.iter().map(|&d| d.max(0) as usize).collect(),
            })
        };
        for (i1, op1) in sg.ops.iter().enumerate() {
            let Some(l1) = Layout::of(op1.op) else {
                continue;
            };
            match fused_activation(model, si, i1) {
                Some(fb::ActivationFunctionType::NONE) | Some(fb::ActivationFunctionType::RELU) => {
                }
                _ => continue,
            }
            let Some(&mid) = op1.outputs.first() else {
                continue;
            };
            let Some(mut next) = usize::try_from(mid).ok().and_then(only_reader) else {
                continue;
            };
            let mut activation = match fused_activation(model, si, i1) {
                Some(fb::ActivationFunctionType::RELU) => Activation::Relu,
                _ => Activation::None,
            };
            if sg.ops[next].op == Op::Prelu {
                let prelu = &sg.ops[next];
                if activation != Activation::None
                    || prelu.inputs.first() != Some(&mid)
                    || prelu.inputs.len() != 2
                {
                    continue;
                }
                let alpha = usize::try_from(prelu.inputs[1])
                    .ok()
                    .and_then(|a| sg.tensors.get(a));
                let Some(alpha) = alpha else { continue };
                let shape = &sg.tensors[mid as usize].shape;
                if alpha.dtype != DType::FLOAT32
                    || alpha.buffer == 0
                    || alpha.is_variable
                    || !alpha_broadcasts(&alpha.shape, shape)
                {
                    continue;
                }
                let Some(&after) = prelu.outputs.first() else {
                    continue;
                };
                let Some(n) = usize::try_from(after).ok().and_then(only_reader) else {
                    continue;
                };
                activation = Activation::Prelu(next);
                next = n;
                if sg.ops[next].inputs.first() != Some(&after) {
                    continue;
                }
            } else if op1.outputs.len() != 1 || sg.ops[next].inputs.first() != Some(&mid) {
                continue;
            }
            let op2 = &sg.ops[next];
            let Some(l2) = Layout::of(op2.op) else {
                continue;
            };
            if (l1 == Layout::FullyConnected) != (l2 == Layout::FullyConnected) {
                continue;
            }
            let (Some(w1), Some(b1), Some(w2)) = (
                op1.inputs.get(1).and_then(|&t| constant(t, l1.rank())),
                op1.inputs.get(2).and_then(|&t| constant(t, 1)),
                op2.inputs.get(1).and_then(|&t| constant(t, l2.rank())),
            ) else {
                continue;
            };
            let channels = w1.shape[l1.output_axis()];
            let whole = |o: &Operand| {
                o.shape.iter().product::<usize>() * 4 == model.buffer_data(o.buffer).len()
            };
            if b1.shape[0] != channels
                || w2.shape[l2.input_axis()] != channels
                || (l2 == Layout::Depthwise && w2.shape[3] != channels)
                || w1.buffer == w2.buffer
                || !whole(&w1)
                || !whole(&w2)
                || !whole(&b1)
            {
                continue;
            }
            out.push(Found {
                pair: Pair {
                    subgraph: si,
                    first: i1,
                    second: next,
                    activation,
                },
                layouts: (l1, l2),
                w1,
                b1,
                w2,
            });
        }
    }
    out
}

/// How many tensors, over all subgraphs, use each buffer.
fn buffer_uses(model: &Model<'_>) -> BTreeMap<u32, usize> {
    let mut uses = BTreeMap::new();
    for t in model.subgraphs().iter().flat_map(|s| &s.tensors) {
        *uses.entry(t.buffer).or_insert(0) += 1;
    }
    uses
}

/// The fused activation of op `op` of subgraph `subgraph`, for the three layer ops.
///
/// Read from the flatbuffer here because `OpInfo` does not carry it yet; when the planner is
/// wired to this module it belongs in `model::OpInfo`.
fn fused_activation(
    model: &Model<'_>,
    subgraph: usize,
    op: usize,
) -> Option<fb::ActivationFunctionType> {
    let o = model.root().subgraphs()?.get(subgraph).operators()?.get(op);
    o.builtin_options_as_conv_2_doptions()
        .map(|x| x.fused_activation_function())
        .or_else(|| {
            o.builtin_options_as_depthwise_conv_2_doptions()
                .map(|x| x.fused_activation_function())
        })
        .or_else(|| {
            o.builtin_options_as_fully_connected_options()
                .map(|x| x.fused_activation_function())
        })
        .or(Some(fb::ActivationFunctionType::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use proptest::prelude::*;

    /// Direct-loop reference: conv (stride 1, VALID) of x [H, W, I] with w [O, kh, kw, I].
    fn conv(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &[f32]) -> ArrayD<f32> {
        let (h, wd) = (x.shape()[0], x.shape()[1]);
        let (o, kh, kw, i) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let mut y = ArrayD::zeros(IxDyn(&[h - kh + 1, wd - kw + 1, o]));
        for r in 0..h - kh + 1 {
            for c in 0..wd - kw + 1 {
                for oc in 0..o {
                    let mut acc = f64::from(b[oc]);
                    for u in 0..kh {
                        for v in 0..kw {
                            for ic in 0..i {
                                acc +=
                                    f64::from(x[[r + u, c + v, ic]]) * f64::from(w[[oc, u, v, ic]]);
                            }
                        }
                    }
                    y[[r, c, oc]] = acc as f32;
                }
            }
        }
        y
    }

    /// Direct-loop reference: depthwise (multiplier 1, VALID) with w [1, kh, kw, C].
    fn depthwise(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &[f32]) -> ArrayD<f32> {
        let (h, wd, ch) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (kh, kw) = (w.shape()[1], w.shape()[2]);
        let mut y = ArrayD::zeros(IxDyn(&[h - kh + 1, wd - kw + 1, ch]));
        for r in 0..h - kh + 1 {
            for c in 0..wd - kw + 1 {
                for k in 0..ch {
                    let mut acc = f64::from(b[k]);
                    for u in 0..kh {
                        for v in 0..kw {
                            acc += f64::from(x[[r + u, c + v, k]]) * f64::from(w[[0, u, v, k]]);
                        }
                    }
                    y[[r, c, k]] = acc as f32;
                }
            }
        }
        y
    }

    fn fc(x: &[f32], w: &ArrayD<f32>, b: &[f32]) -> Vec<f32> {
        (0..w.shape()[0])
            .map(|o| {
                let acc: f64 = (0..w.shape()[1])
                    .map(|i| f64::from(x[i]) * f64::from(w[[o, i]]))
                    .sum();
                (acc + f64::from(b[o])) as f32
            })
            .collect()
    }

    /// PRELU with one alpha per channel (last axis).
    fn prelu(y: &mut ArrayD<f32>, alpha: &[f32]) {
        let c = alpha.len();
        for (k, v) in y.iter_mut().enumerate() {
            if *v < 0.0 {
                *v *= alpha[k % c];
            }
        }
    }

    fn layer(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &[f32], layout: Layout) -> ArrayD<f32> {
        match layout {
            Layout::Conv2d => conv(x, w, b),
            Layout::Depthwise => depthwise(x, w, b),
            Layout::FullyConnected => {
                ArrayD::from_shape_vec(IxDyn(&[w.shape()[0]]), fc(x.as_slice().unwrap(), w, b))
                    .unwrap()
            }
        }
    }

    /// Layer 1 -> activation -> layer 2, before and after equalization, by direct loops.
    fn two_layers(
        x: &ArrayD<f32>,
        (w1, b1, l1): (&ArrayD<f32>, &[f32], Layout),
        act: u8,
        alpha: &[f32],
        (w2, b2, l2): (&ArrayD<f32>, &[f32], Layout),
    ) -> ArrayD<f32> {
        let mut y = layer(x, w1, b1, l1);
        match act {
            1 => y.mapv_inplace(|v| v.max(0.0)),
            2 => prelu(&mut y, alpha),
            _ => {}
        }
        layer(&y, w2, b2, l2)
    }

    fn weights(shape: &[usize], vals: &[f32], spread: &[f32], axis: usize) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        let mut w =
            ArrayD::from_shape_vec(IxDyn(shape), vals.iter().cycle().take(n).copied().collect())
                .unwrap();
        for (mut ch, &m) in w.axis_iter_mut(Axis(axis)).zip(spread.iter().cycle()) {
            ch.mapv_inplace(|v| v * m);
        }
        w
    }

    #[test]
    fn scales_make_ranges_equal() {
        let s = scales(
            &[4.0, 1.0, 0.0, 2.0, f32::INFINITY],
            &[1.0, 9.0, 3.0, 0.0, 1.0],
        );
        assert_eq!(&s[2..], &[1.0, 1.0, 1.0]);
        // r1 / s == r2 * s == sqrt(r1 r2).
        assert!((4.0 / s[0] - 2.0).abs() < 1e-6 && (1.0 * s[0] - 2.0).abs() < 1e-6);
        assert!((1.0 / s[1] - 3.0).abs() < 1e-6 && (9.0 * s[1] - 3.0).abs() < 1e-6);
    }

    #[test]
    fn alpha_shapes() {
        assert!(alpha_broadcasts(&[1, 1, 8], &[1, 5, 5, 8]));
        assert!(alpha_broadcasts(&[8], &[1, 5, 5, 8]));
        assert!(alpha_broadcasts(&[5, 5, 8], &[1, 5, 5, 8]));
        assert!(!alpha_broadcasts(&[2, 5, 5, 8], &[1, 5, 5, 8]));
        assert!(!alpha_broadcasts(&[1, 1, 1, 1, 8], &[1, 5, 5, 8]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The two-layer function is unchanged, for every pair of layouts and activation, with
        /// channel magnitudes 1000x apart; and the ranges become equal.
        #[test]
        fn equalized_layers_compute_the_same(
            vals in prop::collection::vec(-1.0f32..1.0, 64),
            spread in prop::collection::vec(-3.0f32..3.0, 1..6),
            xs in prop::collection::vec(-2.0f32..2.0, 64),
            alpha in prop::collection::vec(0.0f32..0.5, 4),
            act in 0u8..3,
            kind in 0u8..4,
        ) {
            let spread: Vec<f32> = spread.iter().map(|e| 10f32.powf(*e / 2.0)).collect();
            let c = 4;
            let (l1, l2) = [
                (Layout::Conv2d, Layout::Depthwise),
                (Layout::Depthwise, Layout::Conv2d),
                (Layout::Conv2d, Layout::Conv2d),
                (Layout::FullyConnected, Layout::FullyConnected),
            ][kind as usize];
            let shape = |l: Layout, out: usize, inp: usize| -> Vec<usize> {
                match l {
                    Layout::Conv2d => vec![out, 2, 2, inp],
                    Layout::Depthwise => vec![1, 2, 2, out],
                    Layout::FullyConnected => vec![out, inp],
                }
            };
            let inp = if l1 == Layout::Depthwise { c } else { 3 };
            let x = if l1 == Layout::FullyConnected {
                ArrayD::from_shape_vec(IxDyn(&[inp]), xs[..inp].to_vec()).unwrap()
            } else {
                ArrayD::from_shape_vec(IxDyn(&[4, 4, inp]), xs.iter().cycle().take(16 * inp).copied().collect()).unwrap()
            };
            let out2 = if l2 == Layout::Depthwise { c } else { 5 };
            let w1 = weights(&shape(l1, c, inp), &vals, &spread, l1.output_axis());
            let w2 = weights(&shape(l2, out2, c), &vals[7..], &spread[1..].iter().chain(&spread[..1]).copied().collect::<Vec<_>>(), l2.input_axis());
            let b1: Vec<f32> = vals[..c].iter().zip(spread.iter().cycle()).map(|(v, m)| v * m).collect();
            let b2: Vec<f32> = vals[10..10 + out2].to_vec();
            let before = two_layers(&x, (&w1, &b1, l1), act, &alpha, (&w2, &b2, l2));

            let (mut e1, mut e2, mut eb) = (w1.clone(), w2.clone(), b1.clone());
            let s = scales(&channel_ranges(e1.view(), l1.output_axis()), &channel_ranges(e2.view(), l2.input_axis()));
            scale_output(e1.view_mut(), l1, &s, &mut eb);
            scale_input(e2.view_mut(), l2, &s);
            let after = two_layers(&x, (&e1, &eb, l1), act, &alpha, (&e2, &b2, l2));

            let scale = before.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (a, b) in before.iter().zip(after.iter()) {
                prop_assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
            }
            let r1 = channel_ranges(e1.view(), l1.output_axis());
            let r2 = channel_ranges(e2.view(), l2.input_axis());
            for (a, b) in r1.iter().zip(&r2) {
                prop_assert!((a - b).abs() <= 1e-5 * a.max(*b), "{a} vs {b}");
            }
        }
    }

    /// The reference: each step applied to a whole materialized tensor with ndarray.
    fn materialized(dims: &[usize], values: &[f32], steps: &[(usize, Vec<f32>, bool)]) -> Vec<f32> {
        let mut w = ArrayD::from_shape_vec(IxDyn(dims), values.to_vec()).unwrap();
        for (axis, f, divide) in steps {
            scale_channels(w.view_mut(), *axis, f, *divide);
        }
        w.into_raw_vec_and_offset().0
    }

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Per-channel (min, max) along `axis`, NaN left out, by ndarray's axis iterator.
    fn reference_ranges(dims: &[usize], values: &[f32], axis: usize) -> Vec<(f32, f32)> {
        let w = ArrayViewD::from_shape(IxDyn(dims), values).unwrap();
        w.axis_iter(Axis(axis))
            .map(|c| {
                c.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                        (if x < lo { x } else { lo }, if x > hi { x } else { hi })
                    })
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Steps as (axis, factors, divide).
    type Steps = Vec<(usize, Vec<f32>, bool)>;

    /// A shape, data and 1-3 steps along random axes with factors over many octaves.
    fn case() -> impl Strategy<Value = (Vec<usize>, Vec<f32>, Steps)> {
        // A last axis of up to 40 channels: the measure goes 16 channels at a time there.
        (prop::collection::vec(1usize..6, 0..4), 1usize..40)
            .prop_map(|(mut dims, last)| {
                dims.push(last);
                dims
            })
            .prop_flat_map(|dims| {
                let n: usize = dims.iter().product();
                let rank = dims.len();
                let step = (0..rank, any::<bool>(), any::<u64>());
                (
                    Just(dims),
                    prop::collection::vec(-1e3f32..1e3, n),
                    prop::collection::vec(step, 1..4),
                )
            })
            .prop_map(|(dims, values, steps)| {
                let steps = steps
                    .into_iter()
                    .map(|(axis, divide, seed)| {
                        let f = (0..dims[axis])
                            .map(|c| {
                                2f32.powf(((seed >> (c % 60)) % 41) as f32 / 2.0 - 10.0) * 1.37
                            })
                            .collect();
                        (axis, f, divide)
                    })
                    .collect();
                (dims, values, steps)
            })
    }

    fn rescale_of(dims: &[usize], steps: &[(usize, Vec<f32>, bool)]) -> Rescale {
        steps
            .iter()
            .fold(Rescale::new(dims), |r, (axis, f, divide)| {
                if *divide {
                    r.divide(*axis, f.clone())
                } else {
                    r.multiply(*axis, f.clone())
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Rescaling a piece at any offset, in place or into a buffer, or block by block,
        /// gives the bits of scaling the whole materialized tensor step by step.
        #[test]
        fn rescaled_pieces_are_the_materialized_tensor(
            (dims, values, steps) in case(),
            cut in any::<prop::sample::Index>(),
            block in 1usize..40,
        ) {
            let want = materialized(&dims, &values, &steps);
            let r = rescale_of(&dims, &steps);
            let bytes = le(&values);
            prop_assert_eq!(bits(&r.values(&bytes)), bits(&want));
            let at = cut.index(values.len());
            let mut piece = values[at..].to_vec();
            r.apply(at, &mut piece);
            prop_assert_eq!(bits(&piece), bits(&want[at..]));
            let mut into = vec![7.0; 3];
            r.apply_to(at, &values[at..], &mut into);
            prop_assert_eq!(bits(&into), bits(&want[at..]));
            let mut blocks = Vec::new();
            let v = Values { bytes: &bytes, rescale: Some(&r) };
            v.blocks(block, |first, xs| {
                assert_eq!(first, blocks.len());
                blocks.extend_from_slice(xs);
            });
            prop_assert_eq!(bits(&blocks), bits(&want));
        }

        /// Measured ranges are each channel's min and max; ranges carried over later steps
        /// along the same axis equal a new measure; the whole range is the scan's.
        #[test]
        fn measured_ranges_are_the_channels_extremes(
            (dims, values, steps) in case(),
            axis_pick in any::<prop::sample::Index>(),
        ) {
            let axis = axis_pick.index(dims.len());
            let r = rescale_of(&dims, &steps);
            let bytes = le(&values);
            for k in 0..=steps.len() {
                let m = measure(&bytes, &r, k, axis);
                let after = materialized(&dims, &values, &steps[..k]);
                let got: Vec<(f32, f32)> = m.ranges.iter().map(|x| (x.min, x.max)).collect();
                prop_assert_eq!(&got, &reference_ranges(&dims, &after, axis));
                prop_assert_eq!(m.range(), Some(scan_range_par_ref(&after)));
                for j in k..=steps.len() {
                    if let Some(a) = m.advanced(&r, j) {
                        prop_assert!(steps[k..j].iter().all(|s| s.0 == axis));
                        prop_assert_eq!(a, measure(&bytes, &r, j, axis));
                    } else {
                        prop_assert!(steps[k..j].iter().any(|s| s.0 != axis));
                    }
                }
            }
        }
    }

    fn scan_range_par_ref(values: &[f32]) -> Range {
        crate::quant::scan_range_par(values)
    }

    /// Rows wider than ROW_BY_ROW go by strips: the same extremes, with part rows at a
    /// piece's ends (the second piece of [40, 2077] starts mid-row) and a last part strip.
    #[test]
    fn wide_rows_are_measured_by_strips() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 100.0
        };
        for dims in [[5usize, 2077], [40, 2077], [3, 4096]] {
            assert!(dims[1] > ROW_BY_ROW);
            let values: Vec<f32> = (0..dims[0] * dims[1]).map(|_| next()).collect();
            let m = ChannelRanges::measure(&le(&values), &dims, 1);
            let got: Vec<(f32, f32)> = m.ranges.iter().map(|x| (x.min, x.max)).collect();
            assert_eq!(got, reference_ranges(&dims, &values, 1), "{dims:?}");
            assert_eq!(m.range(), Some(scan_range_par_ref(&values)));
            let mut with_nan = values.clone();
            with_nan[dims[1] * dims[0] / 2] = f32::NAN;
            assert_eq!(
                ChannelRanges::measure(&le(&with_nan), &dims, 1).range(),
                None
            );
        }
    }

    /// A NaN or an infinity: the magnitudes are those of the materialized tensor's channels
    /// (infinities included, NaN left out), and no range is claimed.
    #[test]
    fn non_finite_values_are_measured_the_slow_way() {
        let dims = [2, 3];
        let values = [1.0, f32::NAN, -2.0, 4.0, f32::INFINITY, -0.5];
        for axis in 0..2 {
            let m = ChannelRanges::measure(&le(&values), &dims, axis);
            assert_eq!(m.range(), None);
            let w = ArrayViewD::from_shape(IxDyn(&dims), &values[..]).unwrap();
            assert_eq!(m.magnitudes(), channel_ranges(w, axis));
        }
        let m = ChannelRanges::measure(&le(&values), &dims, 1);
        assert_eq!(m.magnitudes(), [4.0, f32::INFINITY, 2.0]);
    }

    /// The chain on real fixtures, checked against equalizing materialized copies pair by
    /// pair (what this module did before it kept factors): the same bits in every buffer,
    /// with or without ranges measured beforehand, and the same ranges as a scan.
    #[test]
    fn fixtures_equalize_as_materialized_copies() {
        for name in [
            "dwsep_bn.tflite",
            "mlp_bias.tflite",
            "mlp.tflite",
            "cnn.tflite",
        ] {
            let bytes = fixture(name);
            let model = Model::parse(&bytes).unwrap();
            let eq = find(&model);
            let known: BTreeMap<u32, ChannelRanges> = first_axes(&model)
                .into_iter()
                .map(|(b, (dims, axis))| {
                    (b, ChannelRanges::measure(model.buffer_data(b), &dims, axis))
                })
                .collect();
            let again = find_measured(&model, |_| true, known);
            assert_eq!(again.buffers, eq.buffers, "{name}");
            assert_eq!(again.pairs, eq.pairs, "{name}");

            let mut done: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
            let current = |b: u32, done: &BTreeMap<u32, Vec<f32>>| {
                done.get(&b).cloned().unwrap_or_else(|| {
                    let mut v = Vec::new();
                    f32_from_le(model.buffer_data(b), &mut v);
                    v
                })
            };
            for p in &eq.pairs {
                let sg = &model.subgraphs()[p.subgraph];
                let (o1, o2) = (&sg.ops[p.first], &sg.ops[p.second]);
                let (l1, l2) = (Layout::of(o1.op).unwrap(), Layout::of(o2.op).unwrap());
                let t = |i: i32| &sg.tensors[i as usize];
                let (w1, b1, w2) = (t(o1.inputs[1]), t(o1.inputs[2]), t(o2.inputs[1]));
                let dims = |t: &crate::model::TensorInfo| -> Vec<usize> {
                    t.shape.iter().map(|&d| d as usize).collect()
                };
                let (mut v1, mut vb, mut v2) = (
                    current(w1.buffer, &done),
                    current(b1.buffer, &done),
                    current(w2.buffer, &done),
                );
                let mut a1 = ArrayViewMutD::from_shape(IxDyn(&dims(w1)), &mut v1).unwrap();
                let mut a2 = ArrayViewMutD::from_shape(IxDyn(&dims(w2)), &mut v2).unwrap();
                let s = scales(
                    &channel_ranges(a1.view(), l1.output_axis()),
                    &channel_ranges(a2.view(), l2.input_axis()),
                );
                scale_output(a1.view_mut(), l1, &s, &mut vb);
                scale_input(a2.view_mut(), l2, &s);
                done.insert(w1.buffer, v1);
                done.insert(b1.buffer, vb);
                done.insert(w2.buffer, v2);
            }
            assert_eq!(done.len(), eq.buffers.len(), "{name}");
            assert!(!done.is_empty(), "{name}");
            for (b, want) in &done {
                let got = eq.buffers[b].values(model.buffer_data(*b));
                assert_eq!(bits(&got), bits(want), "{name} buffer {b}");
                assert_eq!(
                    eq.range(&model, *b),
                    Some(scan_range_par_ref(want)),
                    "{name} {b}"
                );
                assert_eq!(
                    again.range(&model, *b),
                    Some(scan_range_par_ref(want)),
                    "{name} {b}"
                );
            }
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(name),
        )
        .unwrap()
    }

    /// dwsep_bn.tflite (see fixtures/make_realistic.py): conv0 -PRELU-> dw1 -RELU-> pw1
    /// -PRELU-> dw2 -RELU-> pw2 -RELU6-> dw3 -PRELU-> pw3 -> MEAN -> FC. Five pairs; the
    /// RELU6 one and the MEAN one are left alone.
    #[test]
    fn pairs_of_the_depthwise_fixture() {
        let bytes = fixture("dwsep_bn.tflite");
        let model = Model::parse(&bytes).unwrap();
        let eq = find(&model);
        let ops = &model.subgraphs()[0].ops;
        let names: Vec<(String, String)> = eq
            .pairs
            .iter()
            .map(|p| (ops[p.first].name(), ops[p.second].name()))
            .collect();
        assert_eq!(eq.pairs.len(), 5, "{names:?}");
        let acts: Vec<bool> = eq
            .pairs
            .iter()
            .map(|p| matches!(p.activation, Activation::Prelu(_)))
            .collect();
        assert_eq!(acts, [true, false, true, false, true]);
        // The pair across RELU6 (pw2 -> dw3) is not there: pw2's weights are layer 2 of the
        // pair before and in no pair as layer 1.
        let relu6_first = eq.pairs.iter().any(|p| {
            matches!(
                fused_activation(&model, 0, p.first),
                Some(fb::ActivationFunctionType::RELU6)
            )
        });
        assert!(!relu6_first);
        // 3 buffers per pair, minus the ones shared by chained pairs.
        assert_eq!(eq.buffers.len(), 12);
        // Each changed buffer keeps its element count.
        for (b, r) in &eq.buffers {
            let v = r.values(model.buffer_data(*b));
            assert_eq!(v.len() * 4, model.buffer_data(*b).len());
        }
    }

    /// mlp_bias.tflite: FC1 -> MUL (not a layer) ... FC2 -RELU-> FC3 -RELU-> FC4: two pairs.
    #[test]
    fn pairs_of_the_mlp_fixture() {
        let bytes = fixture("mlp_bias.tflite");
        let model = Model::parse(&bytes).unwrap();
        let eq = find(&model);
        let pairs: Vec<(usize, usize)> = eq.pairs.iter().map(|p| (p.first, p.second)).collect();
        assert_eq!(pairs, [(3, 4), (4, 5)]);
        assert!(eq.pairs.iter().all(|p| p.activation == Activation::Relu));
    }

    /// mlp.tflite (Keras Dense 128 relu, 64 relu, 10 softmax): the two RELU pairs.
    #[test]
    fn pairs_of_the_keras_mlp() {
        let bytes = fixture("mlp.tflite");
        let model = Model::parse(&bytes).unwrap();
        let eq = find(&model);
        let pairs: Vec<(usize, usize)> = eq.pairs.iter().map(|p| (p.first, p.second)).collect();
        assert_eq!(pairs, [(0, 1), (1, 2)]);
    }
}
