//! Helpers shared by the K-quant reference quantizers and kernels (ggml-quants.c, "Helper
//! functions" section, and the scale unpacking of ggml-cpu/quants.c).
//!
//! Every function mirrors its C counterpart operation for operation, in f32, in the same order:
//! the reference quantizers built on them must reproduce ggml's bytes exactly, and a single
//! reassociated sum or a fused multiply-add would change a rounding and, through `nearest_int`,
//! a quant. The C is compiled as ISO C without contraction (`-ffp-contract=off`, or a target
//! without FMA); that is the arithmetic mirrored here.

// Index loops mirror the C they reproduce, operation for operation.
#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::QK_K;

/// Magic constant of `nearest_int`: 1.5 · 2^23. Adding it to |x| < 2^22 leaves round(x) in the
/// low mantissa bits.
const MAGIC: f32 = 12582912.0;

/// `nearest_int` (ggml-quants.c): round to nearest, ties to even, by adding 1.5 · 2^23 and
/// reading the mantissa bits.
///
/// ggml asserts |x| <= 4194303 in debug builds only; in release builds an out-of-range or
/// non-finite input yields whatever the bit trick gives. This function reproduces those bits
/// (with wrapping integer ops), so it never panics and agrees with ggml on every input.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + MAGIC;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff).wrapping_sub(0x0040_0000)
}

/// Groups whose largest magnitude is below this are treated as all zero (`GROUP_MAX_EPS`,
/// ggml-quants.c).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// `make_qx_quants` (ggml-quants.c): symmetric quantization of `x` to `L[i] = l + nmax` with
/// `l` in `-nmax..nmax`, returning the scale. `n = x.len()`; `l` must be at least as long.
///
/// `rmse_type` and `qw` select the weighting exactly as in the C: `qw` if given, else
/// `x²` (1), `1` (2), `|x|` (3) or `sqrt|x|` (other); `rmse_type == 0` is plain rounding and a
/// negative value returns early after the first fit.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let l_out = &mut l_out[..n];
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    // `-nmax / max`: int negation, then int -> float for the division.
    let mut iscale = (-nmax) as f32 / max;
    if rmse_type == 0 {
        for (li, &v) in l_out.iter_mut().zip(x) {
            let l = nearest_int(iscale * v);
            *li = (nmax + (-nmax).max((nmax - 1).min(l))) as i8;
        }
        return 1.0 / iscale;
    }
    let mut rmse_type = rmse_type;
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    // The weight of element i, as the C's nested conditional picks it.
    let weight = |i: usize| -> f32 {
        let xi = x[i];
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => xi * xi,
                2 => 1.0,
                3 => xi.abs(),
                _ => xi.abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let mut l = nearest_int(iscale * x[i]);
        l = (-nmax).max((nmax - 1).min(l));
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        // `-(nmax + 0.1f*is) / max`: 0.1f*is and the sum are f32.
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let mut l = nearest_int(iscale * x[i]);
            l = (-nmax).max((nmax - 1).min(l));
            let w = weight(i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + (-nmax).max((nmax - 1).min(l))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_qkx2_quants` (ggml-quants.c): asymmetric quantization `x ≈ scale · L - the_min` with
/// `L` in `0..=nmax`, searching `nstep + 1` candidate scales around the min-max one and keeping
/// the fit with the least weighted error (squared, or absolute with `use_mad`).
///
/// `n = x.len()` (at least 1); `weights`, `l_out` and `laux` must be at least as long.
/// Returns `(scale, the_min)`, where `the_min` is the C's `*the_min` (the negated offset).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let weights = &weights[..n];
    let l_out = &mut l_out[..n];
    let laux = &mut laux[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = 0.max(nmax.min(l)) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        // `(rmin + rdelta*is + nmax)/(max - min)`, left to right in f32.
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..n {
            let mut l = nearest_int(iscale * (x[i] - min));
            l = 0.max(nmax.min(l));
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The part `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` share (ggml-quants.c): per
/// 32-element sub-block of the super-block `x` (`QK_K` values) a weighted `make_qkx2_quants`
/// fit (weights `sqrt(mean x²) + |x|`, levels `0..=nmax`, search `rmin`, rdelta 0.1, `nstep`
/// steps), the scales and mins quantized to 6 bits against their maxima and packed, the
/// super-block scales rounded to f16, then every element re-quantized into `l` against the
/// rounded scales. Returns `(scales, d, dmin)`.
pub(crate) fn quantize_scales_mins_k(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 12], f16, f16) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)` keeps the low byte before MIN(63, ...).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = 0.max(nmax.min(q)) as u8;
        }
    }
    (packed, d, dmin)
}

/// `get_scale_min_k4` (ggml-quants.c): the 6-bit scale and min of sub-block `j` (0..8) from
/// the 12 packed bytes of a Q4_K / Q5_K block.
#[inline(always)]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Pack the 6-bit scales `ls` and mins `lm` of 8 sub-blocks into the 12-byte layout that
/// [`get_scale_min_k4`] reads (the packing loop of `quantize_row_q4_K_ref`, ggml-quants.c).
/// Values must be below 64.
#[inline]
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// The 8 scales and 8 mins of a Q4_K / Q5_K block unpacked to one byte each, as the `utmp`
/// shuffle of `ggml_vec_dot_q4_K_q8_K` (kmask1/2/3) produces them: bytes 0..8 are the scales,
/// bytes 8..16 the mins. Equal to [`get_scale_min_k4`] for each `j`.
#[inline(always)]
pub(crate) fn unpack_scales_mins_k4(scales: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let w = |i: usize| u32::from_le_bytes([scales[4 * i], scales[4 * i + 1], scales[4 * i + 2], scales[4 * i + 3]]);
    let (u0, u1, u2) = (w(0), w(1), w(2));
    let t3 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let t2 = u1 & KMASK1;
    let t1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let t0 = u0 & KMASK1;
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&t0.to_le_bytes());
    out[4..8].copy_from_slice(&t1.to_le_bytes());
    out[8..12].copy_from_slice(&t2.to_le_bytes());
    out[12..16].copy_from_slice(&t3.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::{q4_k::BlockQ4_K, q5_k::BlockQ5_K, q6_k::BlockQ6_K, q8_k::BlockQ8_K};
    use crate::{QK_K, QuantizeRef};

    /// xorshift64 and the block shapes of the C program that produced [`GOLDEN`]: every value
    /// is built from exact integer arithmetic and single f32 operations in a fixed order, so C
    /// and Rust see the same floats.
    fn golden_input(nblk: usize) -> Vec<f32> {
        const SCALES: [f32; 8] = [1e-6, 1e-3, 0.01, 0.5, 1.0, 3.0, 100.0, 1e4];
        let mut st = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st
        };
        let mut x = vec![0f32; nblk * QK_K];
        for (b, xb) in x.chunks_exact_mut(QK_K).enumerate() {
            let kind = b % 10;
            let scale = SCALES[(rnd() % 8) as usize];
            let off = ((rnd() >> 40) as f32 * (1.0 / 16777216.0) - 0.5) * 4.0;
            for (i, v) in xb.iter_mut().enumerate() {
                let mut u = || (rnd() >> 40) as f32 * (1.0 / 16777216.0);
                let (a1, a2, a3, a4) = (u(), u(), u(), u());
                let g = a1 + a2 + a3 + a4 - 2.0;
                *v = match kind {
                    0 => g * scale,
                    1 => (g + off) * scale,
                    2 => {
                        if i % 53 == 7 {
                            g * scale * 40.0
                        } else {
                            g * scale
                        }
                    }
                    3 => 0.0,
                    4 => off * scale,
                    5 => {
                        if rnd() % 7 == 0 {
                            g * scale
                        } else {
                            0.0
                        }
                    }
                    6 => g.abs() * scale,
                    7 => -g.abs() * scale,
                    8 => ((rnd() % 9) as i32 - 4) as f32 * 0.25,
                    _ => {
                        if i < 32 {
                            0.0
                        } else {
                            g * scale
                        }
                    }
                };
            }
        }
        x
    }

    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// FNV-1a hashes of ggml's own output for `golden_input(40)`: the input, then per type the
    /// quantized blocks and their dequantization. Produced with ggml-quants.c's
    /// `quantize_row_q{4,5,6,8}_K_ref` and `dequantize_row_q{4,5,6,8}_K` built by GCC 12
    /// with `-O2 -mf16c -ffp-contract=off` (no FMA contraction), all-zero Q8_K `bsums`
    /// cleared as [`BlockQ8_K`]'s quantizer does. 4096 further blocks of the same kinds (plus
    /// random-exponent values) were compared byte for byte when the quantizers were written.
    const GOLDEN: [(&str, u64); 9] = [
        ("input", 0x1280e714bee134e9),
        ("q4_K", 0x42d24eb7f5842c93),
        ("q5_K", 0x943fb600445b0b16),
        ("q6_K", 0x9e58c87eb7f1c224),
        ("q8_K", 0x8457eeea8d8eba9f),
        ("dq4_K", 0x2fed0ba5c93ed994),
        ("dq5_K", 0x0f5e26cfe5c12b8b),
        ("dq6_K", 0x7fe76fb07f0496bd),
        ("dq8_K", 0xa246f0df4b9bf86b),
    ];

    fn golden_hashes<B: QuantizeRef>(x: &[f32]) -> (u64, u64) {
        let mut q = vec![B::zeroed(); x.len() / B::QK];
        B::quantize_row_ref(x, &mut q);
        let mut back = vec![0f32; x.len()];
        B::dequantize_row(&q, &mut back);
        (fnv(bytemuck::cast_slice(&q)), fnv(bytemuck::cast_slice(&back)))
    }

    #[test]
    fn quantizers_reproduce_ggml_bit_for_bit() {
        let x = golden_input(40);
        let mut got = vec![("input", fnv(bytemuck::cast_slice(&x)))];
        let (q4, d4) = golden_hashes::<BlockQ4_K>(&x);
        let (q5, d5) = golden_hashes::<BlockQ5_K>(&x);
        let (q6, d6) = golden_hashes::<BlockQ6_K>(&x);
        let (q8, d8) = golden_hashes::<BlockQ8_K>(&x);
        got.extend([("q4_K", q4), ("q5_K", q5), ("q6_K", q6), ("q8_K", q8)]);
        got.extend([("dq4_K", d4), ("dq5_K", d5), ("dq6_K", d6), ("dq8_K", d8)]);
        for ((name, want), (_, got)) in GOLDEN.iter().zip(&got) {
            assert_eq!(*got, *want, "{name}: {got:#018x} vs ggml {want:#018x}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.0, 0),
            (0.4, 0),
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.6, -3),
            (7.49, 7),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        // Out of range and non-finite inputs must not panic.
        let _ = nearest_int(f32::NAN);
        let _ = nearest_int(f32::INFINITY);
        let _ = nearest_int(-1e30);
    }

    #[test]
    fn scale_min_pack_roundtrip_and_unpack_agree() {
        let mut seed = 12345u32;
        for _ in 0..1000 {
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for j in 0..8 {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                ls[j] = (seed >> 10) as u8 & 63;
                lm[j] = (seed >> 20) as u8 & 63;
            }
            let packed = pack_scale_min_k4(&ls, &lm);
            let un = unpack_scales_mins_k4(&packed);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &packed), (ls[j], lm[j]));
                assert_eq!((un[j], un[8 + j]), (ls[j], lm[j]));
            }
        }
        // Arbitrary bytes: the unpacking must agree with get_scale_min_k4 too.
        for b in 0..=255u8 {
            let s: [u8; 12] = std::array::from_fn(|i| b.wrapping_mul(31).wrapping_add((i as u8).wrapping_mul(57)));
            let un = unpack_scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &s), (un[j], un[8 + j]));
            }
        }
    }
}

/// Shared proptest strategies and checks for the K-quant kernels against Q8_K activations.
#[cfg(test)]
pub(crate) mod testutil {
    use half::f16;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use crate::k_quants::q8_k::{BlockQ8_K, fill_bsums};
    use crate::{Block, QK_K, SimdLevel, VecDot};

    /// A finite f16 scale of sane size, either sign (including zero and subnormals).
    pub fn f16_scale() -> impl Strategy<Value = f16> {
        prop_oneof![
            8 => (-2.0f32..2.0).prop_map(f16::from_f32),
            1 => Just(f16::ZERO),
            1 => (-1e-6f32..1e-6).prop_map(f16::from_f32),
        ]
    }

    /// `1..=5` weight blocks of `B` built from random bytes, with `fix(block, d, dmin)` writing
    /// sane f16 scales over the random ones, and as many Q8_K blocks with random quants, a
    /// random scale and consistent `bsums`.
    pub fn blocks_and_act<B: bytemuck::Pod + std::fmt::Debug>(
        fix: fn(&mut B, f16, f16),
    ) -> impl Strategy<Value = (Vec<B>, Vec<BlockQ8_K>)> {
        (1usize..=5).prop_flat_map(move |n| {
            (
                proptest::collection::vec(any::<u8>(), n * std::mem::size_of::<B>()),
                proptest::collection::vec((f16_scale(), f16_scale()), n),
                proptest::collection::vec(any::<i8>(), n * QK_K),
                proptest::collection::vec(-4.0f32..4.0, n),
            )
                .prop_map(move |(bytes, scales, q8, dy)| {
                    let mut xs: Vec<B> = bytemuck::pod_collect_to_vec(&bytes);
                    for (b, (d, m)) in xs.iter_mut().zip(scales) {
                        fix(b, d, m);
                    }
                    let ys = act_blocks(&q8, &dy);
                    (xs, ys)
                })
        })
    }

    /// Q8_K blocks with the given quants and scales and consistent `bsums`.
    pub fn act_blocks(q8: &[i8], d: &[f32]) -> Vec<BlockQ8_K> {
        q8.chunks_exact(QK_K)
            .zip(d)
            .map(|(q, &d)| {
                let mut b = BlockQ8_K {
                    d,
                    qs: [0; QK_K],
                    bsums: [0; 16],
                };
                for (o, &v) in b.qs.iter_mut().zip(q) {
                    *o = v;
                }
                fill_bsums(&mut b);
                b
            })
            .collect()
    }

    /// Every available level agrees with `scalar` within `1e-5 · magnitude` (summation order
    /// differs between kernels), and `scalar` agrees with the f64 dot of the dequantized rows.
    /// `magnitude` bounds the sum of the absolute values of the terms the kernels add.
    pub fn check_vec_dot<B: VecDot<Act = BlockQ8_K>>(
        x: &[B],
        y: &[BlockQ8_K],
        scalar: fn(&[B], &[BlockQ8_K]) -> f32,
        magnitude: f64,
    ) -> Result<(), TestCaseError> {
        let want = scalar(x, y);
        let tol = 1e-5 * magnitude + 1e-30;
        for level in SimdLevel::available() {
            let got = B::vec_dot(level, x, y);
            prop_assert!(
                ((got as f64) - (want as f64)).abs() <= tol,
                "{level:?}: got {got}, scalar {want}, tol {tol}"
            );
        }
        let mut xf = vec![0f32; x.len() * B::QK];
        B::dequantize_row(x, &mut xf);
        let mut yf = vec![0f32; y.len() * QK_K];
        BlockQ8_K::dequantize_row(y, &mut yf);
        let dot: f64 = xf.iter().zip(&yf).map(|(&a, &b)| a as f64 * b as f64).sum();
        prop_assert!(
            ((want as f64) - dot).abs() <= tol,
            "scalar {want} vs dequantized dot {dot}, tol {tol}"
        );
        Ok(())
    }

    /// Q8_K activations for `n` elements, quantized from a fixed pattern in -1..1.
    pub fn act_for(n: usize) -> Vec<BlockQ8_K> {
        use crate::QuantizeRef;
        let a: Vec<f32> = (0..n).map(|i| ((i * 7919 + 13) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut y = vec![
            BlockQ8_K {
                d: 0.0,
                qs: [0; QK_K],
                bsums: [0; 16]
            };
            n / QK_K
        ];
        BlockQ8_K::quantize_row_ref(&a, &mut y);
        y
    }

    /// Inputs for the quantizer round-trip tests: 1..=4 super-blocks of one of several shapes
    /// (uniform, offset so every value has one sign, tiny, with an outlier, or all equal).
    pub fn quant_input() -> impl Strategy<Value = Vec<f32>> {
        (1usize..=4, 0u8..6, -3.0f32..3.0, 0.001f32..10.0).prop_flat_map(|(n, shape, offset, scale)| {
            proptest::collection::vec(-1.0f32..1.0, n * QK_K).prop_map(move |mut v| {
                for (i, x) in v.iter_mut().enumerate() {
                    *x = match shape {
                        0 => *x * scale,
                        1 => (*x + offset) * scale,
                        2 => *x * 1e-20,
                        3 => {
                            if i % 97 == 5 {
                                *x * scale * 50.0
                            } else {
                                *x * scale
                            }
                        }
                        4 => offset * scale,
                        _ => (*x).abs() * scale,
                    };
                }
                v
            })
        })
    }
}
