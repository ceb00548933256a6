//! Quantization math: slices in, codes and statistics out.
//!
//! Nothing here knows about files or flatbuffers. The per-tensor asymmetric int8 scheme:
//!
//! ```text
//! lo = min(x_min, 0)            hi = max(x_max, 0)          (so 0.0 is exact)
//! scale = (hi - lo) / 255       zero_point = clamp(round(-128 - lo / scale), -128, 127)
//! q = clamp(round(x / scale) + zero_point, -128, 127)       x' = scale * (q - zero_point)
//! ```
//!
//! `round` is round-half-away-from-zero (`f32::round`). The kernels below compute exactly
//! that, in a form the compiler can vectorise (see [`round_half_away`]).

/// Elements per parallel work item: big enough to amortise scheduling, small enough to
/// spread a single large tensor over every core.
pub const CHUNK: usize = 1 << 16;

/// Scale and zero point of one per-tensor int8 quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    /// Positive, finite step between two adjacent codes.
    pub scale: f32,
    /// Code that represents 0.0 exactly, in [-128, 127] (0 when symmetric).
    pub zero_point: i32,
    /// Smallest code used: -128, or -127 for symmetric (narrow range) weights, which the
    /// runtime's hybrid kernels require.
    pub qmin: i32,
    /// Largest code used: 127 for int8.
    pub qmax: i32,
}

/// What a single pass over a tensor learns: its range and whether it can be quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Smallest finite value (`+inf` for an empty slice).
    pub min: f32,
    /// Largest finite value (`-inf` for an empty slice).
    pub max: f32,
    /// Number of NaN or infinite values.
    pub non_finite: u64,
}

impl Range {
    /// The range of no values.
    pub const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        non_finite: 0,
    };

    /// The range of the union of two sets of values.
    pub fn merge(self, other: Range) -> Range {
        Range {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            non_finite: self.non_finite + other.non_finite,
        }
    }
}

const LANES: usize = 16;

/// Scans `values` once for min, max and non-finite values.
///
/// The pass is a tight loop over lanes of packed min/max instructions
/// ([`crate::simd::lanes16`]): a NaN compares false and so never becomes a bound, and is
/// only flagged. Only when a NaN or an infinity shows up is the slice scanned again, by
/// [`scan_range_exact`], to count them and keep them out of the range: the common,
/// all-finite case reads the data once.
pub fn scan_range(values: &[f32]) -> Range {
    let mut mins = [f32::INFINITY; LANES];
    let mut maxs = [f32::NEG_INFINITY; LANES];
    let rest = &values[values.len() / LANES * LANES..];
    let mut any_nan = crate::simd::lanes16(values, &mut mins, &mut maxs);
    let mut min = f32::INFINITY;
    let mut max = f32::NEG_INFINITY;
    for i in 0..LANES {
        min = min.min(mins[i]);
        max = max.max(maxs[i]);
    }
    for &x in rest {
        min = if x < min { x } else { min };
        max = if x > max { x } else { max };
        any_nan |= x.is_nan();
    }
    if any_nan || min.is_infinite() || max.is_infinite() {
        // Also when the slice is empty: the exact scan then returns the empty range.
        return scan_range_exact(values);
    }
    Range {
        min,
        max,
        non_finite: 0,
    }
}

/// [`scan_range`] for slices with non-finite values: counts them by their bits and keeps
/// them out of min/max.
fn scan_range_exact(values: &[f32]) -> Range {
    let mut range = Range::EMPTY;
    for &x in values {
        if x.is_finite() {
            range.min = range.min.min(x);
            range.max = range.max.max(x);
        } else {
            range.non_finite += 1;
        }
    }
    range
}

/// [`scan_range`] over all cores, in chunks of [`CHUNK`] elements.
pub fn scan_range_par(values: &[f32]) -> Range {
    use rayon::prelude::*;
    if values.len() <= CHUNK {
        return scan_range(values);
    }
    values
        .par_chunks(CHUNK)
        .map(scan_range)
        .reduce(|| Range::EMPTY, Range::merge)
}

/// Asymmetric per-tensor parameters for finite `min..=max` (as from [`scan_range`]).
///
/// The range is widened to include 0, so 0.0 is always exact. A constant tensor
/// (`min == max`) gets `scale = |c|` and the zero point next to its code, so that its one
/// value and 0.0 both reconstruct exactly (`c / 255 * 255` need not equal `c` in f32).
pub fn asymmetric_params(min: f32, max: f32) -> QuantParams {
    asymmetric_params_bits(min, max, 8)
}

/// Symmetric (zero point 0, codes in [-127, 127]) parameters for finite `min..=max`:
/// `scale = max(|min|, |max|) / 127`. A constant tensor gets `scale = |c|` (code ±1), so it
/// reconstructs exactly.
pub fn symmetric_params(min: f32, max: f32) -> QuantParams {
    symmetric_params_bits(min, max, 8)
}

/// Asymmetric parameters for `bits`-bit codes in `[-2^(bits-1), 2^(bits-1) - 1]`: the int8
/// scheme of [`asymmetric_params`] with `2^bits - 1` steps. For 8 bits it is that function.
pub fn asymmetric_params_bits(min: f32, max: f32, bits: u32) -> QuantParams {
    let (qmin, qmax) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
    let p = |scale: f32, zero_point: i32| QuantParams {
        scale,
        zero_point,
        qmin,
        qmax,
    };
    if min == max {
        return match min {
            c if c > 0.0 => p(c, qmin),
            c if c < 0.0 => p(-c, qmax),
            _ => p(1.0, qmin),
        };
    }
    let lo = f64::from(min.min(0.0));
    let hi = f64::from(max.max(0.0));
    let mut scale = ((hi - lo) / f64::from(qmax - qmin)) as f32;
    if !scale.is_normal() {
        // A span near the smallest floats would give a subnormal (or zero) scale.
        scale = f32::MIN_POSITIVE;
    }
    let zero_point = (f64::from(qmin) - lo / f64::from(scale))
        .round()
        .clamp(f64::from(qmin), f64::from(qmax)) as i32;
    p(scale, zero_point)
}

/// Symmetric parameters for `bits`-bit codes in `[-(2^(bits-1) - 1), 2^(bits-1) - 1]`
/// (zero point 0): the scheme of [`symmetric_params`], which it is for 8 bits.
pub fn symmetric_params_bits(min: f32, max: f32, bits: u32) -> QuantParams {
    let qmax = (1i32 << (bits - 1)) - 1;
    let m = f64::from(min.abs().max(max.abs()));
    let mut scale = if min == max {
        m as f32
    } else {
        (m / f64::from(qmax)) as f32
    };
    if scale == 0.0 {
        scale = 1.0;
    } else if !scale.is_normal() && min != max {
        scale = f32::MIN_POSITIVE;
    }
    QuantParams {
        scale,
        zero_point: 0,
        qmin: -qmax,
        qmax,
    }
}

/// Smallest normal float16.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// The scale of one block of symmetric `bits`-bit codes whose largest magnitude is `amax`,
/// as the kernels that read blocks need it: stored as float16, and read by XNNPACK as
/// bfloat16, so it must be exact in both; normal and positive (one zero or subnormal scale
/// makes XNNPACK refuse the model). `amax / qmax` is rounded **up** to the next such value,
/// so that no value needs a code beyond `qmax`. `None` when the block needs a scale beyond
/// the float16 range.
pub fn block_scale(amax: f32, bits: u32) -> Option<f32> {
    let qmax = (1i32 << (bits - 1)) - 1;
    if amax == 0.0 {
        return Some(1.0);
    }
    let s = (f64::from(amax) / f64::from(qmax)) as f32;
    let s = if f64::from(s) * f64::from(qmax) < f64::from(amax) {
        f32::from_bits(s.to_bits() + 1)
    } else {
        s
    };
    // Round up to 8 significant bits (bfloat16): clear the low 16 bits, carrying upwards.
    let bits16 = s.to_bits();
    let up = if bits16 & 0xFFFF == 0 {
        bits16
    } else {
        (bits16 & !0xFFFF) + 0x1_0000
    };
    let s = f32::from_bits(up).max(F16_MIN_NORMAL);
    (s <= 65504.0).then_some(s)
}

/// Rounds half away from zero, exactly like `f32::round`, for |v| <= 2^22 (not NaN).
///
/// `f32::round` calls into libm, and a float-to-int `as` cast saturates (and maps NaN to 0),
/// which takes a compare and two blends per vector: both keep the loop slow. Instead: adding
/// the float just below one half, with the sign of `v`, carries `v` past the next integer
/// exactly when `v` is at least halfway there (a tie included: its sum rounds up to the
/// integer), so truncating the sum rounds half away. Adding one half instead would carry
/// 0.49999997 to 1. The truncation is one instruction per vector because the value is known
/// to fit, which is the caller's promise ([`Stepper::step`] clamps first).
///
/// # Safety
/// `v` is not NaN and |v| <= 2^22.
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn round_half_away(v: f32) -> i32 {
    const BELOW_HALF: f32 = 0.499_999_97;
    let half = f32::from_bits((v.to_bits() & 0x8000_0000) | BELOW_HALF.to_bits());
    // SAFETY: |v + half| < 2^22 + 1, far inside i32, and not NaN: the caller's promise.
    unsafe { (v + half).to_int_unchecked::<i32>() }
}

crate::simd::vectorized! {
    /// Quantizes `values` into `out` (same length) with `p`. Non-finite inputs must have been
    /// ruled out by the caller; a NaN would come out as -128.
    pub fn quantize_into(values: &[f32], p: QuantParams, out: &mut [i8]) {
        debug_assert_eq!(values.len(), out.len());
        let step = Stepper::new(p);
        for (o, &x) in out.iter_mut().zip(values) {
            *o = (step.step(x) + p.zero_point) as i8;
        }
    }
}

/// `x` to its rounded, clamped step `round(x / scale)` (the code less the zero point).
#[derive(Clone, Copy)]
struct Stepper {
    scale: f32,
    lo: f32,
    hi: f32,
}

impl Stepper {
    fn new(p: QuantParams) -> Stepper {
        // Bounded so that every clamped step is one `round_half_away` takes (int8 and int4
        // steps lie far inside; the bound only matters for nonsensical parameters).
        const BOUND: f32 = (1 << 22) as f32;
        let bound = |q: i32| {
            ((q as f32) - p.zero_point as f32)
                .clamp(-BOUND, BOUND)
                .round()
        };
        Stepper {
            scale: p.scale,
            lo: bound(p.qmin),
            hi: bound(p.qmax),
        }
    }

    #[inline(always)]
    fn step(self, x: f32) -> i32 {
        // Clamping before rounding is the same as after, since both bounds are integers.
        // The compare-and-select form is one packed max or min each (and sends NaN to `lo`).
        let v = x / self.scale;
        let v = if v > self.lo { v } else { self.lo };
        let v = if v < self.hi { v } else { self.hi };
        // SAFETY: `v` lies in [lo, hi], within 2^22 of zero, so it is not NaN either.
        #[allow(unsafe_code)]
        unsafe {
            round_half_away(v)
        }
    }
}

/// The value a code stands for.
#[inline]
pub fn dequantize(q: i8, p: QuantParams) -> f32 {
    p.scale * (i32::from(q) - p.zero_point) as f32
}

/// Error of a quantized tensor against its float original, accumulated in f64.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    /// Number of elements compared.
    pub count: u64,
    /// Sum of x².
    pub signal: f64,
    /// Sum of (x - x')².
    pub noise: f64,
    /// Largest |x - x'|.
    pub max_abs: f64,
    /// Sum of x · x' (for cosine similarity).
    pub dot: f64,
    /// Sum of x'².
    pub recon: f64,
}

impl ErrorStats {
    /// Combines the statistics of two disjoint parts of a tensor.
    pub fn merge(self, o: ErrorStats) -> ErrorStats {
        ErrorStats {
            count: self.count + o.count,
            signal: self.signal + o.signal,
            noise: self.noise + o.noise,
            max_abs: self.max_abs.max(o.max_abs),
            dot: self.dot + o.dot,
            recon: self.recon + o.recon,
        }
    }

    /// Signal-to-quantization-noise ratio in dB: 10·log10(Σx² / Σ(x-x')²).
    /// Infinite when the reconstruction is exact; NaN-free.
    pub fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            f64::INFINITY
        } else if self.signal == 0.0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (self.signal / self.noise).log10()
        }
    }

    /// Root mean square of x - x'.
    pub fn rmse(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.noise / self.count as f64).sqrt()
        }
    }

    /// Σx·x' / (|x|·|x'|); 1 when both are all zero.
    ///
    /// Computed as (Σx² + Σx'² - Σ(x-x')²) / (2·|x|·|x'|), which equals it: the rounding of
    /// the f32 partial sums of Σx² and Σx'² then cancels between numerator and denominator,
    /// whereas Σx·x' / (|x|·|x'|) loses the digits that tell 0.99996 from 0.99997.
    pub fn cosine(&self) -> f64 {
        let d = (self.signal * self.recon).sqrt();
        if d == 0.0 {
            if self.signal == self.recon { 1.0 } else { 0.0 }
        } else {
            ((self.signal + self.recon - self.noise) / (2.0 * d)).clamp(-1.0, 1.0)
        }
    }
}

/// Measures the error of `codes` (quantized with `p`) against `values`.
pub fn error_stats(values: &[f32], codes: &[i8], p: QuantParams) -> ErrorStats {
    let mut recon = [0f32; RUN];
    let mut total = ErrorStats::default();
    for (xs, qs) in values.chunks(RUN).zip(codes.chunks(RUN)) {
        let n = xs.len().min(qs.len());
        total = total.merge(run_stats(xs, qs, p, &mut recon[..n]));
    }
    total
}

/// Elements summed in f32 before the partial sums go into the f64 totals.
pub(crate) const RUN: usize = 1024;

/// Lanes of the error accumulators.
const L: usize = 8;

/// The error statistics of one run of at most [`RUN`] elements.
///
/// In two simple loops rather than one, because each then vectorises: the reconstructions
/// (widening bytes to floats), then the sums in lanes ([`lane_sums`]). The run stays in L1
/// cache between the two.
#[inline(always)]
fn run_stats(xs: &[f32], qs: &[i8], p: QuantParams, ys: &mut [f32]) -> ErrorStats {
    for (y, &q) in ys.iter_mut().zip(qs) {
        *y = dequantize(q, p);
    }
    sums(xs, ys)
}

/// The error statistics of values `xs` reconstructed as `ys`.
#[inline(always)]
pub(crate) fn sums(xs: &[f32], ys: &[f32]) -> ErrorStats {
    let [mut s, mut n, mut m, mut r] = lane_sums(xs, ys);
    let tail = xs.len().min(ys.len()) / L * L;
    for (&x, &y) in xs[tail..].iter().zip(&ys[tail..]) {
        let e = x - y;
        s[0] += x * x;
        n[0] += e * e;
        m[0] = m[0].max(e.abs());
        r[0] += y * y;
    }
    let sum = |a: [f32; L]| a.iter().map(|&v| f64::from(v)).sum::<f64>();
    let (signal, noise, recon) = (sum(s), sum(n), sum(r));
    let stats = ErrorStats {
        count: xs.len().min(ys.len()) as u64,
        signal,
        noise,
        max_abs: f64::from(m.iter().fold(0f32, |a, &b| a.max(b))),
        // Σxy = (Σx² + Σy² - Σ(x-y)²) / 2 exactly; the noise is tiny next to the other two,
        // so nothing cancels, and a fifth accumulator costs a fifth of the sums' time.
        dot: (signal + recon - noise) / 2.0,
        recon,
    };
    let finite = [
        stats.signal,
        stats.noise,
        stats.max_abs,
        stats.dot,
        stats.recon,
    ]
    .iter()
    .all(|v| v.is_finite());
    if finite { stats } else { sums_f64(xs, ys) }
}

/// [`sums`] in f64, for the rare run whose squares overflow f32 (values beyond ~1.8e19).
#[cold]
fn sums_f64(xs: &[f32], ys: &[f32]) -> ErrorStats {
    let mut t = ErrorStats {
        count: xs.len().min(ys.len()) as u64,
        ..ErrorStats::default()
    };
    for (&x, &y) in xs.iter().zip(ys) {
        let (x, y) = (f64::from(x), f64::from(y));
        let e = x - y;
        t.signal += x * x;
        t.noise += e * e;
        t.max_abs = t.max_abs.max(e.abs());
        t.dot += x * y;
        t.recon += y * y;
    }
    t
}

crate::simd::vectorized! {
    /// Σx², Σ(x-y)², max|x-y| and Σy² over whole groups of [`L`] elements, each in [`L`]
    /// independent lanes: float addition is not associative, so a single running sum would be
    /// a serial chain that the compiler must keep scalar. Kept out of line: inlined into a
    /// larger loop nest, the same code was vectorised badly (lanes shuffled).
    #[inline(never)]
    fn lane_sums(xs: &[f32], ys: &[f32]) -> [[f32; L]; 4] {
        let (mut s, mut n, mut m, mut r) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
        for (x8, y8) in xs.chunks_exact(L).zip(ys.chunks_exact(L)) {
            for i in 0..L {
                let (x, y) = (x8[i], y8[i]);
                let e = x - y;
                let a = e.abs();
                s[i] += x * x;
                n[i] += e * e;
                m[i] = if a > m[i] { a } else { m[i] };
                r[i] += y * y;
            }
        }
        [s, n, m, r]
    }
}

crate::simd::vectorized! {
    /// [`quantize_into`] and [`error_stats`], run by run, so that each run is read from memory
    /// once and measured while it is in cache. The reconstructions come from the rounded steps
    /// (`k as f32` is exact and equals `dequantize`'s `(q - zero_point) as f32`), so that the
    /// codes are not read back.
    /// `recon` is room for the reconstructions of a run, the caller's so that it is not
    /// zeroed at every call (4 KiB for every 4 KiB of values, when called run by run).
    pub(crate) fn quantize_measured(
        values: &[f32],
        p: QuantParams,
        out: &mut [i8],
        recon: &mut [f32; RUN],
    ) -> ErrorStats {
        let mut total = ErrorStats::default();
        for (xs, qs) in values.chunks(RUN).zip(out.chunks_mut(RUN)) {
            let ys = &mut recon[..xs.len().min(qs.len())];
            recon_into(xs, p, qs, ys);
            total = total.merge(sums(xs, ys));
        }
        total
    }
}

crate::simd::vectorized! {
    /// Quantizes `values` into `out` and writes the reconstructions into `recon` (all of one
    /// length), for callers that measure many short runs at once with [`sums`].
    #[inline]
    pub(crate) fn quantize_recon(values: &[f32], p: QuantParams, out: &mut [i8], recon: &mut [f32]) {
        recon_into(values, p, out, recon);
    }
}

/// The loop of [`quantize_recon`] and [`quantize_measured`], inlined into each so that it is
/// compiled with the features of each of their versions.
#[inline(always)]
fn recon_into(values: &[f32], p: QuantParams, out: &mut [i8], recon: &mut [f32]) {
    let step = Stepper::new(p);
    for ((o, y), &x) in out.iter_mut().zip(recon.iter_mut()).zip(values) {
        let k = step.step(x);
        *o = (k + p.zero_point) as i8;
        *y = p.scale * k as f32;
    }
}

/// Quantizes `values` into `out` over all cores and returns the error statistics.
pub fn quantize_par(values: &[f32], p: QuantParams, out: &mut [i8]) -> ErrorStats {
    use rayon::prelude::*;
    values
        .par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .map_init(
            || [0f32; RUN],
            |recon, (xs, qs)| quantize_measured(xs, p, qs, recon),
        )
        .reduce(ErrorStats::default, ErrorStats::merge)
}

/// Reads little-endian f32 values from raw tensor bytes into `out`.
///
/// Model data is little-endian by definition; on little-endian targets with aligned data the
/// caller can borrow instead (see [`as_f32`]).
pub fn f32_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

/// Borrows raw tensor bytes as f32 when they are aligned and the target is little-endian.
pub fn as_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(bytes).ok()
    } else {
        None
    }
}

/// Runs `f` over little-endian f32 data, borrowing it when aligned and copying otherwise.
pub fn with_f32<R>(bytes: &[u8], f: impl FnOnce(&[f32]) -> R) -> R {
    match as_f32(bytes) {
        Some(values) => f(values),
        None => {
            let mut v = Vec::new();
            f32_from_le(bytes, &mut v);
            f(&v)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Report statistics: how a tensor's codes use the int8 range, and errors per channel.
// Used by `report` (and nothing else); kept apart so that the schemes above can change
// without touching it.
// ---------------------------------------------------------------------------------------

/// How often each code occurs: index `code + 128`.
pub fn code_histogram(codes: &[i8]) -> [u64; 256] {
    use rayon::prelude::*;
    // `report` counts each block of codes between two parallel passes: count it in parallel
    // too, or this serial pass takes a third of the report's time.
    const PART: usize = 1 << 18;
    if codes.len() <= PART {
        return code_histogram_serial(codes);
    }
    codes.par_chunks(PART).map(code_histogram_serial).reduce(
        || [0u64; 256],
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        },
    )
}

/// [`code_histogram`] on one thread.
fn code_histogram_serial(codes: &[i8]) -> [u64; 256] {
    // Four tables, one per position mod 4: runs of equal codes (common: weights cluster
    // around the zero point) would otherwise wait on each other's increment of one counter.
    let mut tables = [[0u64; 256]; 4];
    let quads = codes.chunks_exact(4);
    for &q in quads.remainder() {
        tables[0][(i16::from(q) + 128) as usize] += 1;
    }
    for quad in quads {
        for (table, &q) in tables.iter_mut().zip(quad) {
            table[(i16::from(q) + 128) as usize] += 1;
        }
    }
    let mut h = [0u64; 256];
    for table in &tables {
        for (a, &b) in h.iter_mut().zip(table) {
            *a += b;
        }
    }
    h
}

/// How a tensor's codes use the 256 int8 levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeUse {
    /// Number of distinct codes that occur (of 256).
    pub levels: u32,
    /// Number of values whose code is an end of the range the scheme allows.
    pub at_edges: u64,
    /// Number of values.
    pub count: u64,
}

impl CodeUse {
    /// Reads a [`code_histogram`]. The edges are -128 and 127, except for a symmetric scheme
    /// (`symmetric`: every zero point is 0) that never uses -128: its range is -127..=127,
    /// as written by converters that keep the range symmetric.
    pub fn from_histogram(h: &[u64; 256], symmetric: bool) -> CodeUse {
        let lo = if symmetric && h[0] == 0 { 1 } else { 0 };
        CodeUse {
            levels: h.iter().filter(|&&n| n > 0).count() as u32,
            at_edges: h[lo] + h[255],
            count: h.iter().sum(),
        }
    }

    /// [`CodeUse::from_histogram`] for `width`-bit codes (edges at -2^(w-1), or one above
    /// when symmetric and unused, and 2^(w-1) - 1).
    pub fn from_histogram_bits(h: &[u64; 256], symmetric: bool, width: u32) -> CodeUse {
        if width >= 8 {
            return CodeUse::from_histogram(h, symmetric);
        }
        let half = 1usize << (width - 1);
        let low = 128 - half;
        let lo = if symmetric && h[low] == 0 {
            low + 1
        } else {
            low
        };
        CodeUse {
            levels: h.iter().filter(|&&n| n > 0).count() as u32,
            at_edges: h[lo] + h[128 + half - 1],
            count: h.iter().sum(),
        }
    }

    /// Share of values at the edges, in [0, 1] (0 for an empty tensor).
    pub fn edge_share(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.at_edges as f64 / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quantize(values: &[f32]) -> (QuantParams, Vec<i8>) {
        let r = scan_range(values);
        let p = asymmetric_params(r.min, r.max);
        let mut q = vec![0i8; values.len()];
        quantize_into(values, p, &mut q);
        (p, q)
    }

    /// The reference: the documented formula with `f32::round`, clamping after rounding.
    fn reference_code(x: f32, p: QuantParams) -> i8 {
        ((x / p.scale).round() as i32 + p.zero_point).clamp(-128, 127) as i8
    }

    /// [`round_half_away`] where its promise is checked first.
    fn rounded(v: f32) -> i32 {
        assert!(v.abs() <= (1 << 22) as f32, "outside the domain: {v:e}");
        #[allow(unsafe_code)]
        // SAFETY: checked just above (and a NaN fails it).
        unsafe {
            round_half_away(v)
        }
    }

    #[test]
    fn fast_rounding_matches_f32_round_at_halves_and_neighbours() {
        // Every half in the kernels' range, and the last ones of the domain (spacing 0.25).
        let top = (1 << 22) - 2;
        for k in (-300..=300).chain([top - 1, top, -top - 1, -top]) {
            let base = k as f32 + 0.5;
            let mut v = base;
            for _ in 0..4 {
                v = f32::from_bits(v.to_bits() - 1);
            }
            for _ in 0..9 {
                assert_eq!(rounded(v), v.round() as i32, "v = {v:e}");
                v = f32::from_bits(v.to_bits() + 1);
            }
        }
        for v in [
            0.0f32,
            -0.0,
            0.49999997,
            -0.49999997,
            0.5,
            -0.5,
            1e-30,
            -1e-30,
            (1 << 22) as f32,
            -((1 << 22) as f32),
        ] {
            assert_eq!(rounded(v), v.round() as i32, "v = {v:e}");
        }
    }

    #[test]
    fn fast_rounding_matches_f32_round_across_the_range() {
        // Every 1009th float in [-300, 300] (the kernel sees at most [-255, 255]).
        let top = 300f32.to_bits();
        for bits in (0..=top).step_by(1009) {
            for v in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(rounded(v), v.round() as i32, "v = {v:e}");
            }
        }
    }

    #[test]
    fn top_of_range_lands_on_127_not_128() {
        // The notebook's bug: dividing by 256 without a clamp put the maximum on 128.
        let (p, q) = quantize(&[0.0, 0.5, 1.0]);
        assert_eq!((p.zero_point, q[0], q[2]), (-128, -128, 127));
        assert_eq!(p.scale, 1.0 / 255.0);
        let (p, q) = quantize(&[-1.0, -0.25, 0.0]);
        assert_eq!((p.zero_point, q[0], q[2]), (127, -128, 127));
        // A range straddling zero: both ends within half a step, codes within int8.
        let values = [-1.0f32, 0.0, 0.25, 1.0];
        let (p, q) = quantize(&values);
        assert_eq!(q[0], -128);
        for (&x, &c) in values.iter().zip(&q) {
            assert!((x - dequantize(c, p)).abs() <= p.scale / 2.0 * 1.0001);
        }
    }

    #[test]
    fn constant_tensors_reconstruct_exactly() {
        for c in [0.0f32, 1.5, -3.25, 1e-20, -7e30] {
            let values = vec![c; 100];
            let (p, q) = quantize(&values);
            assert!(p.scale > 0.0 && p.scale.is_finite());
            for &code in &q {
                assert_eq!(dequantize(code, p), c, "constant {c}");
            }
        }
    }

    #[test]
    fn non_finite_values_are_counted_not_ranged() {
        let r = scan_range(&[1.0, f32::NAN, -2.0, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!((r.min, r.max, r.non_finite), (-2.0, 1.0, 3));
        let long: Vec<f32> = (0..100)
            .map(|i| if i == 37 { f32::NAN } else { i as f32 })
            .collect();
        let r = scan_range(&long);
        assert_eq!((r.min, r.max, r.non_finite), (0.0, 99.0, 1));
    }

    #[test]
    fn sqnr_of_exact_reconstruction_is_infinite() {
        let (p, q) = quantize(&[0.0; 8]);
        let s = error_stats(&[0.0; 8], &q, p);
        assert_eq!(s.sqnr_db(), f64::INFINITY);
        assert_eq!(s.cosine(), 1.0);
    }

    #[test]
    fn code_use_counts_levels_and_edges() {
        let h = code_histogram(&[-128, -128, 0, 5, 127, 5]);
        assert_eq!((h[0], h[128], h[133], h[255]), (2, 1, 2, 1));
        let u = CodeUse::from_histogram(&h, false);
        assert_eq!((u.levels, u.at_edges, u.count), (4, 3, 6));
        assert_eq!(u.edge_share(), 0.5);
        // Symmetric and never -128: the range is -127..=127.
        let u = CodeUse::from_histogram(&code_histogram(&[-127, 0, 127, 3]), true);
        assert_eq!((u.levels, u.at_edges), (4, 2));
        // Symmetric but -128 used: the full range.
        let u = CodeUse::from_histogram(&code_histogram(&[-128, -127, 127]), true);
        assert_eq!(u.at_edges, 2);
        assert_eq!(CodeUse::from_histogram(&[0; 256], false).edge_share(), 0.0);
    }

    proptest! {
        #[test]
        fn every_value_comes_back_within_half_a_step(
            values in prop::collection::vec(-1e6f32..1e6, 1..400),
        ) {
            let (p, q) = quantize(&values);
            prop_assert!(p.scale > 0.0 && p.scale.is_finite());
            prop_assert!((-128..=127).contains(&p.zero_point));
            for (&x, &code) in values.iter().zip(&q) {
                let err = (x - dequantize(code, p)).abs();
                // Half a step, plus the float rounding of the scale and the product.
                prop_assert!(err <= p.scale * 0.5 * (1.0 + 1e-4), "x={x} err={err} scale={}", p.scale);
                prop_assert_eq!(code, reference_code(x, p));
            }
        }

        #[test]
        fn scan_range_agrees_with_the_exact_scan(
            values in prop::collection::vec(
                prop_oneof![8 => -1e3f32..1e3, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY),
                    1 => Just(f32::NEG_INFINITY)],
                0..200,
            ),
            clean in any::<bool>(),
        ) {
            let values: Vec<f32> = if clean {
                values.into_iter().filter(|x| x.is_finite()).collect()
            } else {
                values
            };
            prop_assert_eq!(scan_range(&values), scan_range_exact(&values));
        }

        #[test]
        fn error_stats_match_a_direct_f64_sum(
            values in prop::collection::vec(
                prop_oneof![8 => -1e3f32..1e3, 1 => -3e38f32..3e38], 1..3000),
        ) {
            let (p, q) = quantize(&values);
            let got = error_stats(&values, &q, p);
            let (mut s, mut n, mut m, mut d, mut r) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (&x, &c) in values.iter().zip(&q) {
                let (x, y) = (f64::from(x), f64::from(dequantize(c, p)));
                s += x * x;
                n += (x - y) * (x - y);
                m = m.max((x - y).abs());
                d += x * y;
                r += y * y;
            }
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-30);
            prop_assert_eq!(got.count, values.len() as u64);
            prop_assert!(close(got.signal, s) && close(got.dot, d) && close(got.recon, r));
            // The noise is a sum of small squares, each exact to f32 rounding of the error.
            prop_assert!((got.noise - n).abs() <= 1e-4 * n.max(1e-30), "{} vs {n}", got.noise);
            prop_assert!((got.max_abs - m).abs() <= 1e-6 * m.max(1e-30));
        }

        #[test]
        fn code_histogram_counts_every_code(codes in prop::collection::vec(any::<i8>(), 0..300)) {
            let mut want = [0u64; 256];
            for &q in &codes {
                want[(i16::from(q) + 128) as usize] += 1;
            }
            prop_assert_eq!(code_histogram(&codes), want);
            // Long enough to be counted in parallel parts.
            let long: Vec<i8> = codes.iter().copied().cycle().take(codes.len() * 3000).collect();
            let want: Vec<u64> = want.iter().map(|&c| c * 3000).collect();
            prop_assert_eq!(&code_histogram(&long)[..], &want[..]);
        }

        #[test]
        fn zero_is_exact(values in prop::collection::vec(-1e3f32..1e3, 1..200)) {
            let (p, _) = quantize(&values);
            let mut q = [0i8];
            quantize_into(&[0.0], p, &mut q);
            prop_assert_eq!(dequantize(q[0], p), 0.0);
        }

    }

    proptest! {
        // Inputs up to three chunks long: fewer cases keep the debug-mode run short.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parallel_kernels_agree_with_serial(
            values in prop::collection::vec(-10f32..10.0, 0..(3 * CHUNK)),
        ) {
            prop_assert_eq!(scan_range_par(&values), scan_range(&values));
            let (p, q) = quantize(&values);
            let mut qp = vec![0i8; values.len()];
            let stats = quantize_par(&values, p, &mut qp);
            prop_assert_eq!(&q, &qp);
            // The fused pass measures what the separate one measures (up to summation order).
            let direct = error_stats(&values, &q, p);
            prop_assert_eq!(stats.count, direct.count);
            prop_assert_eq!(stats.max_abs, direct.max_abs);
            for (a, b) in [(stats.signal, direct.signal), (stats.noise, direct.noise),
                (stats.dot, direct.dot), (stats.recon, direct.recon)] {
                prop_assert!((a - b).abs() <= 1e-5 * b.abs(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn symmetric_codes_stay_within_127() {
        let values = [-3.0f32, -1.0, 0.0, 2.0, 2.9];
        let r = scan_range(&values);
        let p = symmetric_params(r.min, r.max);
        assert_eq!((p.zero_point, p.qmin), (0, -127));
        let mut q = [0i8; 5];
        quantize_into(&values, p, &mut q);
        assert_eq!(q[0], -127);
        assert!(q.iter().all(|&c| c >= -127));
        let c = symmetric_params(-2.5, -2.5);
        assert_eq!(dequantize(-1, c), -2.5);
    }
}
