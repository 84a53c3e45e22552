//! Dequantize and matvec throughput per weight type, at n_in = n_out = 2048.
//!
//! Throughput is the bytes of weights read, so criterion reports GB/s of weight bandwidth.
//! `matvec` runs with the detected SIMD level (rayon over output rows), `matvec_scalar` with
//! the scalar reference on the same data, `dequantize` converts the whole matrix to f32, one
//! thread. Run: `cargo bench -p quant --bench quant` (add a filter such as `Q4_K` to narrow).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quant::matmul::matmul_at;
use quant::{GgmlType, QMatrix, QuantError, SimdLevel};

const N: usize = 2048;

const TYPES: [GgmlType; 14] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// splitmix64: deterministic data without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u32 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), good enough for benchmark data.
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
}

/// Byte offsets of the f16 scale fields of a block (the rest is quants / packed sub-scales).
fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// A valid `[N, N]` weight matrix of `ty`: random floats through `quantize_row` where the
/// crate has a quantizer, otherwise random bytes with small finite f16 scales.
fn weights(ty: GgmlType, rng: &mut Rng) -> Vec<u8> {
    let row_bytes = ty.row_bytes(N).unwrap();
    let mut data = vec![0u8; row_bytes * N];
    let x: Vec<f32> = (0..N).map(|_| rng.normal() * 0.05).collect();
    match quant::quantize_row(ty, &x, &mut data[..row_bytes]) {
        Ok(()) => {
            for r in 1..N {
                let x: Vec<f32> = (0..N).map(|_| rng.normal() * 0.05).collect();
                quant::quantize_row(ty, &x, &mut data[r * row_bytes..][..row_bytes]).unwrap();
            }
        }
        Err(QuantError::UnsupportedType { .. }) => {
            for b in data.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            for block in data.chunks_exact_mut(ty.type_size()) {
                for &off in f16_scale_offsets(ty) {
                    let s = half::f16::from_f32(rng.normal() * 1e-3);
                    block[off..off + 2].copy_from_slice(&s.to_le_bytes());
                }
            }
        }
        Err(e) => panic!("quantize_row({ty}): {e}"),
    }
    data
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(2048);
    let x: Vec<f32> = (0..N).map(|_| rng.normal()).collect();
    let level = SimdLevel::detect();
    eprintln!(
        "quant bench: SIMD level {level:?}, {} rayon threads",
        rayon::current_num_threads()
    );

    for ty in TYPES {
        let data = weights(ty, &mut rng);
        let w = QMatrix::new(ty, &data, N, N).unwrap();
        let row_bytes = ty.row_bytes(N).unwrap();

        let mut g = c.benchmark_group(ty.name());
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Bytes(data.len() as u64));

        let mut out = vec![0f32; N * N];
        g.bench_function(BenchmarkId::new("dequantize", format!("{N}x{N}")), |b| {
            b.iter(|| {
                for (r, o) in out.chunks_exact_mut(N).enumerate() {
                    quant::dequantize_row(ty, black_box(&data[r * row_bytes..][..row_bytes]), o).unwrap();
                }
                black_box(&out);
            })
        });

        let mut y = vec![0f32; N];
        g.bench_function(BenchmarkId::new("matvec", format!("{N}x{N}")), |b| {
            b.iter(|| {
                quant::matvec(black_box(&w), black_box(&x), &mut y).unwrap();
                black_box(&y);
            })
        });
        if level != SimdLevel::Scalar {
            g.bench_function(BenchmarkId::new("matvec_scalar", format!("{N}x{N}")), |b| {
                b.iter(|| {
                    matmul_at(SimdLevel::Scalar, black_box(&w), black_box(&x), 1, &mut y).unwrap();
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
