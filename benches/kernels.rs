//! Throughput of the quantization kernels, in bytes of f32 input per second.
//!
//! Run with `cargo bench --bench kernels` (add `-- scan` to pick some). The input is 64 MiB
//! of seeded pseudo-random floats: far larger than the caches, so the numbers are those of
//! the streaming passes over a big tensor that dominate a whole run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tflq::quant;

/// Elements of the input: 16 Mi floats, 64 MiB.
const N: usize = 1 << 24;

/// Seeded values spread like weights (a sum of uniforms, roughly normal, std ~0.06).
fn data() -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..N)
        .map(|_| {
            let r = next();
            let a = (r & 0xffff) as f32 + ((r >> 16) & 0xffff) as f32 + ((r >> 32) & 0xffff) as f32;
            (a / 65536.0 - 1.5) * 0.1
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let values = data();
    let range = quant::scan_range(&values);
    let p = quant::asymmetric_params(range.min, range.max);
    let mut codes = vec![0i8; N];
    quant::quantize_into(&values, p, &mut codes);
    let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();

    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Bytes((N * 4) as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    g.bench_function("scan_range", |b| {
        b.iter(|| quant::scan_range(black_box(&values)))
    });
    g.bench_function("scan_range_par", |b| {
        b.iter(|| quant::scan_range_par(black_box(&values)))
    });
    g.bench_function("quantize_into", |b| {
        b.iter(|| quant::quantize_into(black_box(&values), p, &mut codes))
    });
    g.bench_function("error_stats", |b| {
        b.iter(|| quant::error_stats(black_box(&values), black_box(&codes), p))
    });
    g.bench_function("quantize_par", |b| {
        b.iter(|| quant::quantize_par(black_box(&values), p, &mut codes))
    });
    // The float16 scheme (`--type float16`), all threads.
    let mut halves = vec![0u8; 2 * N];
    g.bench_function("encode_par_float16", |b| {
        b.iter(|| tflq::encoding::Encoding::Float16.encode_par(black_box(&values), 0, &mut halves))
    });
    // int8 and int4 through the same encoder the rewriter calls (`--type int8|int4`, per
    // tensor, all threads): int4 packs two codes per byte and should run at int8's speed.
    use tflq::encoding::{Bits, Encoding, Geometry};
    let int8 = Encoding::int(Bits::Eight, Geometry::Tensor, vec![p]);
    let mut out8 = vec![0u8; N];
    g.bench_function("encode_par_int8", |b| {
        b.iter(|| int8.encode_par(black_box(&values), 0, &mut out8))
    });
    let int4 = Encoding::int(
        Bits::Four,
        Geometry::Tensor,
        vec![quant::asymmetric_params_bits(range.min, range.max, 4)],
    );
    let mut out4 = vec![0u8; N / 2];
    g.bench_function("encode_par_int4", |b| {
        b.iter(|| int4.encode_par(black_box(&values), 0, &mut out4))
    });
    // Blockwise int4 (blocks of 32, float16-exact scales), as dynamic FULLY_CONNECTED gets.
    let blocks = Geometry::blocks(&[N / 4096, 4096], 32).unwrap();
    let params = blocks
        .ranges(&values)
        .iter()
        .map(|r| quant::QuantParams {
            scale: quant::block_scale(r.min.abs().max(r.max.abs()), 4).unwrap(),
            zero_point: 0,
            qmin: -7,
            qmax: 7,
        })
        .collect();
    let block4 = Encoding::int(Bits::Four, blocks, params);
    g.bench_function("encode_par_int4_blockwise", |b| {
        b.iter(|| block4.encode_par(black_box(&values), 0, &mut out4))
    });
    // `report`'s pass over the codes (throughput in bytes of codes).
    g.throughput(Throughput::Bytes(N as u64));
    g.bench_function("code_histogram", |b| {
        b.iter(|| quant::code_histogram(black_box(&codes)))
    });
    g.throughput(Throughput::Bytes((N * 4) as u64));
    // The copy taken when tensor data is not 4-byte aligned in the file.
    let mut out = Vec::with_capacity(N);
    g.bench_function("f32_from_le", |b| {
        b.iter(|| quant::f32_from_le(black_box(&bytes[..]), &mut out))
    });
    // The floor of every pass: reading the input once (an XOR fold vectorises fully).
    g.bench_function("read_floor", |b| {
        b.iter(|| {
            black_box(&values)
                .iter()
                .fold(0u32, |acc, x| acc ^ x.to_bits())
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
