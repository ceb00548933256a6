//! The hot loops, compiled for wider vector units than the baseline and chosen at run time.
//!
//! The baseline x86-64 target has only SSE2: four lanes, no packed rounding. Two tools take
//! the loops further on the machine that runs them:
//! - [`vectorized!`] compiles the functions it wraps (in [`crate::quant`] and
//!   [`crate::equalize`]) again for AVX2 and AVX-512, and the first call picks the widest the
//!   CPU has (`multiversion`'s runtime detection, then one indirect call; its AVX-512
//!   version also asks for Ice Lake's extensions, so older parts, which slow down under
//!   AVX-512, run AVX2). The quantizing and rescaling loops vectorise well this way.
//! - The min/max scans do not: the compiler turns their compare-and-select lanes into
//!   shuffles of masks, slower on AVX-512 than on SSE2. They are written here once more with
//!   AVX2 intrinsics ([`lanes16`], [`row_extremes`], [`column_extremes16`]), and otherwise
//!   run the portable loops beside them.
//!
//! Only the width of the instructions changes, never the arithmetic: each version performs
//! the same IEEE-754 operations on the same lanes in the same order (Rust never fuses a
//! multiply and an add on its own; `x < m ? x : m` is exactly what `minps` computes, and
//! `x > m ? x : m` what `maxps` does), so every version gives the same bits. The tests here
//! run each kernel of this machine against its portable loop, and `scripts/same-bytes.sh`
//! compares whole outputs.

/// Wraps functions in `#[multiversion]` with the one list of targets the crate uses. Free
/// functions only (`multiversion` takes no `self`).
macro_rules! vectorized {
    ($($item:item)*) => {$(
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512vl+avx512dq",
            "x86_64+avx2",
        ))]
        $item
    )*};
}

pub(crate) use vectorized;

/// Whether the AVX2 kernels below can run (detected once, then a cached load).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Runs the AVX2 kernel `x86::$f` when the CPU has AVX2, else the portable loop of the
/// same name, with the same arguments.
macro_rules! avx2_or_portable {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            #[allow(unsafe_code)]
            return unsafe { x86::$f($($arg),*) };
        }
        portable::$f($($arg),*)
    }};
}

/// Per lane `i` of 16: the min and max of `mins[i]`/`maxs[i]` and of `values[i + 16k]`
/// (`x < m ? x : m`, so a NaN never becomes a bound), over whole groups of 16 values (a
/// remainder is left to the caller). Returns whether any of them was NaN.
pub(crate) fn lanes16(values: &[f32], mins: &mut [f32; 16], maxs: &mut [f32; 16]) -> bool {
    avx2_or_portable!(lanes16(values, mins, maxs))
}

/// `mins[j]`/`maxs[j]` take `values[j]` in (as [`lanes16`] does) for every `j` of the
/// shortest of the three. Returns whether any value was NaN or infinite.
pub(crate) fn row_extremes(mins: &mut [f32], maxs: &mut [f32], values: &[f32]) -> bool {
    avx2_or_portable!(row_extremes(mins, maxs, values))
}

/// [`row_extremes`] of the 16 channels `t..t + 16` of every row of `n` channels in `rows`
/// (whole rows), with the extremes kept in registers down the rows. Returns whether any
/// value was NaN or infinite.
pub(crate) fn column_extremes16(
    rows: &[f32],
    n: usize,
    t: usize,
    mins: &mut [f32; 16],
    maxs: &mut [f32; 16],
) -> bool {
    avx2_or_portable!(column_extremes16(rows, n, t, mins, maxs))
}

/// The loops every target runs without the kernels of [`x86`] (and the reference the tests
/// hold those to).
mod portable {
    pub(super) fn lanes16(values: &[f32], mins: &mut [f32; 16], maxs: &mut [f32; 16]) -> bool {
        let mut nan = [0u32; 16];
        for chunk in values.chunks_exact(16) {
            for i in 0..16 {
                let x = chunk[i];
                mins[i] = if x < mins[i] { x } else { mins[i] };
                maxs[i] = if x > maxs[i] { x } else { maxs[i] };
                nan[i] |= u32::from(x.is_nan());
            }
        }
        nan.iter().any(|&b| b != 0)
    }

    pub(super) fn row_extremes(mins: &mut [f32], maxs: &mut [f32], values: &[f32]) -> bool {
        let mut bad = false;
        for ((m, x), &v) in mins.iter_mut().zip(maxs.iter_mut()).zip(values) {
            *m = if v < *m { v } else { *m };
            *x = if v > *x { v } else { *x };
            bad |= !v.is_finite();
        }
        bad
    }

    pub(super) fn column_extremes16(
        rows: &[f32],
        n: usize,
        t: usize,
        mins: &mut [f32; 16],
        maxs: &mut [f32; 16],
    ) -> bool {
        let mut bad = [false; 16];
        for row in rows.chunks_exact(n) {
            let vs = &row[t..t + 16];
            for i in 0..16 {
                let v = vs[i];
                mins[i] = if v < mins[i] { v } else { mins[i] };
                maxs[i] = if v > maxs[i] { v } else { maxs[i] };
                bad[i] |= !v.is_finite();
            }
        }
        bad.iter().any(|&b| b)
    }
}

/// The AVX2 versions: two registers of eight lanes for every 16 of the portable loops.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, _CMP_NLT_UQ, _CMP_UNORD_Q, _mm256_and_ps, _mm256_castsi256_ps, _mm256_cmp_ps,
        _mm256_max_ps, _mm256_min_ps, _mm256_movemask_ps, _mm256_or_ps, _mm256_set1_epi32,
        _mm256_set1_ps, _mm256_setzero_ps,
    };

    /// Eight values, loaded without alignment (a plain copy the compiler makes one `vmovups`).
    #[inline(always)]
    fn load(v: &[f32]) -> __m256 {
        let a: [f32; 8] = v[..8].try_into().unwrap_or([0.0; 8]);
        bytemuck::cast(a)
    }

    #[inline(always)]
    fn store(r: __m256, to: &mut [f32]) {
        let a: [f32; 8] = bytemuck::cast(r);
        to[..8].copy_from_slice(&a);
    }

    /// The extremes of 16 lanes, two registers each, as the portable loops keep them in
    /// arrays of 16.
    struct Lanes16 {
        lo: [__m256; 2],
        hi: [__m256; 2],
    }

    impl Lanes16 {
        #[target_feature(enable = "avx2")]
        fn load(mins: &[f32; 16], maxs: &[f32; 16]) -> Lanes16 {
            Lanes16 {
                lo: [load(&mins[..8]), load(&mins[8..])],
                hi: [load(&maxs[..8]), load(&maxs[8..])],
            }
        }

        /// Takes 16 values in, lane `i` value `i`, and returns them as loaded.
        #[target_feature(enable = "avx2")]
        fn take(&mut self, vs: &[f32]) -> (__m256, __m256) {
            let (a, b) = (load(&vs[..8]), load(&vs[8..]));
            // minps(x, m) is `x < m ? x : m`, maxps(x, m) is `x > m ? x : m`.
            self.lo = [_mm256_min_ps(a, self.lo[0]), _mm256_min_ps(b, self.lo[1])];
            self.hi = [_mm256_max_ps(a, self.hi[0]), _mm256_max_ps(b, self.hi[1])];
            (a, b)
        }

        #[target_feature(enable = "avx2")]
        fn store(self, mins: &mut [f32; 16], maxs: &mut [f32; 16]) {
            store(self.lo[0], &mut mins[..8]);
            store(self.lo[1], &mut mins[8..]);
            store(self.hi[0], &mut maxs[..8]);
            store(self.hi[1], &mut maxs[8..]);
        }
    }

    /// All ones in the lanes that are NaN or infinite: `!(|v| < inf)`.
    #[target_feature(enable = "avx2")]
    fn not_finite(v: __m256) -> __m256 {
        let abs = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
        _mm256_cmp_ps::<_CMP_NLT_UQ>(abs, _mm256_set1_ps(f32::INFINITY))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn lanes16(values: &[f32], mins: &mut [f32; 16], maxs: &mut [f32; 16]) -> bool {
        let mut lanes = Lanes16::load(mins, maxs);
        let (mut nan0, mut nan1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in values.chunks_exact(16) {
            let (a, b) = lanes.take(c);
            nan0 = _mm256_or_ps(nan0, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a));
            nan1 = _mm256_or_ps(nan1, _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b));
        }
        lanes.store(mins, maxs);
        _mm256_movemask_ps(_mm256_or_ps(nan0, nan1)) != 0
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn row_extremes(mins: &mut [f32], maxs: &mut [f32], values: &[f32]) -> bool {
        let n = mins.len().min(maxs.len()).min(values.len());
        let whole = n / 8 * 8;
        let mut bad = _mm256_setzero_ps();
        for j in (0..whole).step_by(8) {
            let v = load(&values[j..]);
            store(_mm256_min_ps(v, load(&mins[j..])), &mut mins[j..]);
            store(_mm256_max_ps(v, load(&maxs[j..])), &mut maxs[j..]);
            bad = _mm256_or_ps(bad, not_finite(v));
        }
        let tail = super::portable::row_extremes(
            &mut mins[whole..n],
            &mut maxs[whole..n],
            &values[whole..n],
        );
        tail || _mm256_movemask_ps(bad) != 0
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn column_extremes16(
        rows: &[f32],
        n: usize,
        t: usize,
        mins: &mut [f32; 16],
        maxs: &mut [f32; 16],
    ) -> bool {
        let mut lanes = Lanes16::load(mins, maxs);
        let mut bad = _mm256_setzero_ps();
        for row in rows.chunks_exact(n) {
            let (a, b) = lanes.take(&row[t..t + 16]);
            bad = _mm256_or_ps(bad, _mm256_or_ps(not_finite(a), not_finite(b)));
        }
        lanes.store(mins, maxs);
        _mm256_movemask_ps(bad) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values with the cases that matter to a min/max: both zeros, NaN, both infinities,
    /// subnormals, ties.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -4.0f32..4.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::MIN_POSITIVE / 4.0),
            1 => Just(1.5f32),
        ]
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn start(seed: &[f32]) -> ([f32; 16], [f32; 16]) {
        let mut lo = [f32::INFINITY; 16];
        let mut hi = [f32::NEG_INFINITY; 16];
        for (i, &s) in seed.iter().take(16).enumerate() {
            // Lanes that start from a value, as a second call on a longer slice does.
            if !s.is_nan() {
                lo[i] = s;
                hi[i] = s;
            }
        }
        (lo, hi)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn lanes16_is_the_portable_loop(
            v in prop::collection::vec(value(), 0..200),
            seed in prop::collection::vec(value(), 0..16),
        ) {
            let (mut lo, mut hi) = start(&seed);
            let (mut lo2, mut hi2) = (lo, hi);
            let nan = lanes16(&v, &mut lo, &mut hi);
            let want = portable::lanes16(&v, &mut lo2, &mut hi2);
            prop_assert_eq!(nan, want);
            prop_assert_eq!(bits(&lo), bits(&lo2));
            prop_assert_eq!(bits(&hi), bits(&hi2));
        }

        #[test]
        fn row_extremes_is_the_portable_loop(
            v in prop::collection::vec(value(), 0..100),
            seed in prop::collection::vec(value(), 0..16),
        ) {
            let (lo, hi) = start(&seed);
            let n = v.len();
            let mut lo: Vec<f32> = lo.iter().cycle().take(n).copied().collect();
            let mut hi: Vec<f32> = hi.iter().cycle().take(n).copied().collect();
            let (mut lo2, mut hi2) = (lo.clone(), hi.clone());
            let bad = row_extremes(&mut lo, &mut hi, &v);
            let want = portable::row_extremes(&mut lo2, &mut hi2, &v);
            prop_assert_eq!(bad, want);
            prop_assert_eq!(bits(&lo), bits(&lo2));
            prop_assert_eq!(bits(&hi), bits(&hi2));
        }

        #[test]
        fn column_extremes16_is_the_portable_loop(
            rows in 0usize..12,
            extra in 0usize..20,
            t_pick in 0usize..100,
            v in prop::collection::vec(value(), 16 * 12 + 20 * 12),
        ) {
            let n = 16 + extra;
            let t = t_pick % (n - 15);
            let data = &v[..rows * n];
            let (mut lo, mut hi) = start(&v[..16]);
            let (mut lo2, mut hi2) = (lo, hi);
            let bad = column_extremes16(data, n, t, &mut lo, &mut hi);
            let want = portable::column_extremes16(data, n, t, &mut lo2, &mut hi2);
            prop_assert_eq!(bad, want);
            prop_assert_eq!(bits(&lo), bits(&lo2));
            prop_assert_eq!(bits(&hi), bits(&hi2));
        }
    }
}
