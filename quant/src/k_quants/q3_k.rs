//! Q3_K: 256 3-bit weights in 16 sub-blocks with 6-bit scales (`block_q3_K`, ggml-common.h).
//!
//! Element `e` of a super-block: its low 2 bits sit in `qs[32·(e / 128) + e % 32]` at bit
//! `2·((e % 128) / 32)`, its high bit in `hmask[e % 32]` at bit `e / 32`; the quant is
//! `low − 4` when the high bit is clear and `low` when it is set (−4..=3). Sub-block
//! `j = e / 16` has a 6-bit scale packed into `scales` (low nibbles in bytes 0..8, high 2-bit
//! pairs in bytes 8..12) and stored offset by 32. x = d·(scale − 32)·q.

use half::f16;

use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, SimdLevel, VecDot};

/// `blockQ3_K` (Q3_K, ggml-common.h): 110 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3_K {
    /// High bits.
    pub hmask: [u8; 32],
    /// Low 2 bits.
    pub qs: [u8; 64],
    /// Scales, 6 bits each, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);

/// The 16 six-bit scales of a block, still offset by 32 (0..=63), in sub-block order: the
/// `kmask1` / `kmask2` shuffle of `dequantize_row_q3_K` (ggml-quants.c) on the 12 bytes read
/// as three little-endian u32.
#[inline(always)]
pub(crate) fn unpack_scales(scales: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let w = |i: usize| u32::from_le_bytes([scales[4 * i], scales[4 * i + 1], scales[4 * i + 2], scales[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, a) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&a.to_le_bytes());
    }
    out
}

/// The scales of a block minus 32 (−32..=31), as the kernels multiply by them.
#[inline(always)]
pub(crate) fn signed_scales(scales: &[u8; 12]) -> [i8; 16] {
    unpack_scales(scales).map(|s| s as i8 - 32)
}

impl Block for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q3_K`, ggml-quants.c: `dl = d·(scale − 32)` per 16-element sub-block,
    /// then `y = dl·q`. The high-bit mask `m` starts at bit 0 and moves up one bit per
    /// 32-element slice, across both 128-element halves (bits 0..4, then 4..8).
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d_all = b.d.to_f32();
            let scales = unpack_scales(&b.scales);
            let mut m = 1u8;
            let mut is = 0;
            for (q, y) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(128)) {
                for (shift_i, y) in y.chunks_exact_mut(32).enumerate() {
                    let shift = 2 * shift_i;
                    for (k, y) in y.chunks_exact_mut(16).enumerate() {
                        let dl = d_all * (scales[is] as i32 - 32) as f32;
                        is += 1;
                        let (q, hm) = (&q[16 * k..16 * k + 16], &b.hmask[16 * k..16 * k + 16]);
                        for ((y, &q), &h) in y.iter_mut().zip(q).zip(hm) {
                            let v = ((q >> shift) & 3) as i32 - if h & m != 0 { 0 } else { 4 };
                            *y = dl * v as f32;
                        }
                    }
                    m <<= 1;
                }
            }
        }
    }
}

impl VecDot for BlockQ3_K {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_q3_K_q8_K` (ggml-cpu/arch/x86/quants.c, arch/arm/quants.c).
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self::Act]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checked the CPU has the kernel's features.
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::vec_dot_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::vec_dot_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            SimdLevel::Neon if level.is_available() => unsafe { neon::vec_dot_neon(x, y) },
            _ => vec_dot_scalar(x, y),
        }
    }
}

/// Scalar reference of `ggml_vec_dot_q3_K_q8_K_generic` (ggml-cpu/quants.c).
///
/// As in the C: the block's quants are first expanded to signed bytes (`aux8`), then eight
/// i32 lanes accumulate `(scale − 32)·q8·q` (lane `l` takes elements `l mod 8`), each block
/// adds `d_x·d_y·lane` to eight f32 sums, and those are added in lane order at the end. The
/// Q8_K `bsums` are not used. Extra blocks in the longer slice are ignored.
pub fn vec_dot_scalar(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let mut aux8 = [0i8; QK_K];
        let mut m = 1u8;
        for (q3, a) in bx.qs.chunks_exact(32).zip(aux8.chunks_exact_mut(128)) {
            for (shift_i, a) in a.chunks_exact_mut(32).enumerate() {
                for ((a, &q), &h) in a.iter_mut().zip(q3).zip(&bx.hmask) {
                    *a = ((q >> (2 * shift_i)) & 3) as i8 - if h & m != 0 { 0 } else { 4 };
                }
                m <<= 1;
            }
        }
        let scales = unpack_scales(&bx.scales);
        let mut aux32 = [0i32; 8];
        for (j, (a, q8)) in aux8.chunks_exact(16).zip(by.qs.chunks_exact(16)).enumerate() {
            let sc = scales[j] as i32 - 32;
            for (a, q8) in a.chunks_exact(8).zip(q8.chunks_exact(8)) {
                for l in 0..8 {
                    // `aux16[l] = q8[l]·a[l]` fits i16 (|q8·a| ≤ 512).
                    aux32[l] += sc * (q8[l] as i32 * a[l] as i32);
                }
            }
        }
        let d = bx.d.to_f32() * by.d;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{BlockQ3_K, signed_scales};
    use crate::k_quants::q2_k::x86::{scale_index_4, scale_shuffle_q3k};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::hsum_float_8;
    use std::arch::x86_64::*;

    /// ggml's AVX2 kernel. The quant `low − 4·(high bit clear)` is split so both parts are
    /// unsigned and go through `maddubs`: `maddubs(low, q8) − maddubs(4·clear, q8)`; `madd`
    /// then applies the signed scales. (ggml extracts each high bit with variable shifts; a
    /// compare against the bit gives the same 0 / 4 bytes.)
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let four = _mm256_set1_epi8(4);
        let zero = _mm256_setzero_si256();
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();

            let sc = signed_scales(&bx.scales);
            // SAFETY: `sc` is 16 bytes, `hmask` 32; `loadu` needs no alignment.
            let scales128 = unsafe { _mm_loadu_si128(sc.as_ptr() as *const __m128i) };
            let all_scales = _mm256_cvtepi8_epi16(scales128);
            let l_scales = _mm256_castsi256_si128(all_scales);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                _mm256_set_m128i(l_scales, l_scales),
                _mm256_set_m128i(h_scales, h_scales),
            ];

            let hbits = unsafe { _mm256_loadu_si256(bx.hmask.as_ptr() as *const __m256i) };
            // 4 where bit `bit` of the mask byte is clear, 0 where set.
            let q3h = |bit: usize| {
                let sel = _mm256_set1_epi8((1u8 << bit) as i8);
                _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, sel), zero), four)
            };

            let mut sumi = _mm256_setzero_si256();
            for (j, (q3, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(128)).enumerate() {
                // SAFETY: `q3` is 32 bytes, `q8` 128 bytes; each load reads 32 in bounds.
                let q3bits = unsafe { _mm256_loadu_si256(q3.as_ptr() as *const __m256i) };
                let ld = |k: usize| unsafe { _mm256_loadu_si256(q8.as_ptr().add(32 * k) as *const __m256i) };
                let (q8_0, q8_1, q8_2, q8_3) = (ld(0), ld(1), ld(2), ld(3));

                let q3l_0 = _mm256_and_si256(q3bits, m3);
                let q3l_1 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 2), m3);
                let q3l_2 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 4), m3);
                let q3l_3 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 6), m3);
                let bit = 4 * j;

                // low·q8 − (4 where the high bit is clear)·q8, in i16 pair sums.
                let dot = |l: __m256i, h: __m256i, q8: __m256i| {
                    _mm256_sub_epi16(_mm256_maddubs_epi16(l, q8), _mm256_maddubs_epi16(h, q8))
                };
                let p16_0 = dot(q3l_0, q3h(bit), q8_0);
                let p16_1 = dot(q3l_1, q3h(bit + 1), q8_1);
                let p16_2 = dot(q3l_2, q3h(bit + 2), q8_2);
                let p16_3 = dot(q3l_3, q3h(bit + 3), q8_3);

                let p16_0 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(0)), p16_0);
                let p16_1 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(1)), p16_1);
                let p16_2 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(2)), p16_2);
                let p16_3 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(3)), p16_3);

                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_add_epi32(_mm256_add_epi32(p16_0, p16_1), _mm256_add_epi32(p16_2, p16_3)),
                );
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }

    /// AVX-512 with VNNI, 64 quants per step as in Q2_K's kernel: the 32 low-bit bytes of a
    /// half go to both 256-bit halves with two shifts (`vpsrlvw`) so they meet 64 contiguous
    /// Q8_K bytes; `vptestnmb` turns the two matching high bits into a byte mask selecting the
    /// 4s to subtract; VNNI `vpdpwssd` applies the scales and accumulates.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
        let m3 = _mm512_set1_epi8(3);
        let four = _mm512_set1_epi8(4);
        let mut acc = _mm512_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();

            let sc = signed_scales(&bx.scales);
            // SAFETY: `sc` is 16 bytes, `hmask` 32; `loadu` needs no alignment.
            let scales128 = unsafe { _mm_loadu_si128(sc.as_ptr() as *const __m128i) };
            let scales = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(scales128));
            let hm = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(bx.hmask.as_ptr() as *const __m256i) });

            let mut sumi = _mm512_setzero_si512();
            for t in 0..4usize {
                let half = t / 2;
                let s = 4 * (t % 2) as i16;
                // SAFETY: `qs` is 64 bytes, so 32 from 32·half ≤ 32 are in bounds.
                let q3 = unsafe { _mm256_loadu_si256(bx.qs.as_ptr().add(32 * half) as *const __m256i) };
                let q3 = _mm512_broadcast_i64x4(q3);
                let counts = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_set1_epi16(s)),
                    _mm256_set1_epi16(s + 2),
                    1,
                );
                let q3l = _mm512_and_si512(_mm512_srlv_epi16(q3, counts), m3);
                // Step t covers the 32-element slices 2t and 2t + 1: high bits 2t and 2t + 1.
                let sel = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_set1_epi8((1u8 << (2 * t)) as i8)),
                    _mm256_set1_epi8((1u8 << (2 * t + 1)) as i8),
                    1,
                );
                let clear = _mm512_testn_epi8_mask(hm, sel);
                let q3h = _mm512_maskz_mov_epi8(clear, four);
                // SAFETY: `qs` is 256 bytes, so 64 from 64·t ≤ 192 are in bounds.
                let q8 = unsafe { _mm512_loadu_epi8(by.qs.as_ptr().add(64 * t)) };
                let p16 = _mm512_sub_epi16(_mm512_maddubs_epi16(q3l, q8), _mm512_maddubs_epi16(q3h, q8));
                let sc = _mm512_permutexvar_epi16(scale_index_4(t as i64), scales);
                sumi = _mm512_dpwssd_epi32(sumi, p16, sc);
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::{BlockQ3_K, signed_scales};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// The signed 3-bit quants of 16 elements: bits `SHIFT..SHIFT+2` of `q` minus 4 where
    /// `hm & sel` is clear.
    #[inline]
    #[target_feature(enable = "neon")]
    fn quants<const SHIFT: i32>(q: uint8x16_t, hm: uint8x16_t, sel: uint8x16_t) -> int8x16_t {
        let low = vandq_u8(vshlq_u8(q, vdupq_n_s8(-(SHIFT as i8))), vdupq_n_u8(3));
        // vtst: 0xFF where the high bit is set; bic keeps the 4 only where it is clear.
        let sub = vbicq_u8(vdupq_n_u8(4), vtstq_u8(hm, sel));
        vsubq_s8(vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(sub))
    }

    /// ggml's NEON kernel: quants expanded to signed bytes, one integer dot product per
    /// 16-element sub-block, times its scale, summed exactly per block.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let sc = signed_scales(&bx.scales);
            // SAFETY: `hmask` is 32 bytes.
            let hm0 = unsafe { vld1q_u8(bx.hmask.as_ptr()) };
            let hm1 = unsafe { vld1q_u8(bx.hmask.as_ptr().add(16)) };
            let mut isum = 0i32;
            for (half, (q3, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(128)).enumerate() {
                // SAFETY: `q3` is 32 bytes, `q8` 128; every load reads 16 in bounds.
                let q3b0 = unsafe { vld1q_u8(q3.as_ptr()) };
                let q3b1 = unsafe { vld1q_u8(q3.as_ptr().add(16)) };
                let ld = |k: usize| unsafe { vld1q_s8(q8.as_ptr().add(16 * k)) };
                let sel = |k: usize| vdupq_n_u8(1u8 << (4 * half + k));
                let sc = &sc[8 * half..8 * half + 8];
                let pairs = [
                    (quants::<0>(q3b0, hm0, sel(0)), quants::<0>(q3b1, hm1, sel(0))),
                    (quants::<2>(q3b0, hm0, sel(1)), quants::<2>(q3b1, hm1, sel(1))),
                    (quants::<4>(q3b0, hm0, sel(2)), quants::<4>(q3b1, hm1, sel(2))),
                    (quants::<6>(q3b0, hm0, sel(3)), quants::<6>(q3b1, hm1, sel(3))),
                ];
                for (k, (a, b)) in pairs.into_iter().enumerate() {
                    isum += vaddvq_s32(dot_i8x16(a, ld(2 * k))) * sc[2 * k] as i32;
                    isum += vaddvq_s32(dot_i8x16(b, ld(2 * k + 1))) * sc[2 * k + 1] as i32;
                }
            }
            sum += d * isum as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::q8_k::fill_bsums;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    /// Random Q3_K blocks: any quant, mask and scale bytes, a finite f16 scale of sane size.
    fn q3k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ3_K>> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 108), -4.0f32..4.0).prop_map(|(bytes, d)| {
                let mut b = BlockQ3_K::zeroed();
                b.hmask.copy_from_slice(&bytes[..32]);
                b.qs.copy_from_slice(&bytes[32..96]);
                b.scales.copy_from_slice(&bytes[96..]);
                b.d = f16::from_f32(d);
                b
            }),
            n,
        )
    }

    /// Random Q8_K blocks with consistent `bsums` (any i8 quant, -128 included).
    fn q8k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ8_K>> {
        prop::collection::vec(
            (prop::collection::vec(any::<i8>(), QK_K), -2.0f32..2.0).prop_map(|(qs, d)| {
                let mut b = BlockQ8_K::zeroed();
                b.qs.copy_from_slice(&qs);
                b.d = d;
                fill_bsums(&mut b);
                b
            }),
            n,
        )
    }

    fn pair() -> impl Strategy<Value = (Vec<BlockQ3_K>, Vec<BlockQ8_K>)> {
        (1usize..=5).prop_flat_map(|n| (q3k_blocks(n), q8k_blocks(n)))
    }

    /// The 6-bit scale of sub-block `j` read the way `quantize_row_q3_K_ref` packs it (low
    /// nibble in byte `j` or `j − 8`, high pair in byte `8 + j % 4` at bit `2·(j / 4)`),
    /// independently of the kmask shuffle.
    fn scale(b: &BlockQ3_K, j: usize) -> i32 {
        let lo = if j < 8 { b.scales[j] & 0xF } else { b.scales[j - 8] >> 4 };
        let hi = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i32 - 32
    }

    /// Element `e` of `b` from the format description.
    fn element(b: &BlockQ3_K, e: usize) -> f32 {
        let low = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        let high = (b.hmask[e % 32] >> (e / 32)) & 1;
        let q = low as i32 - if high == 1 { 0 } else { 4 };
        let dl = b.d.to_f32() * scale(b, e / 16) as f32;
        dl * q as f32
    }

    fn magnitude(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f64 {
        let mut m = 0f64;
        for (bx, by) in x.iter().zip(y) {
            for e in 0..QK_K {
                m += (element(bx, e) as f64 * by.d as f64 * by.qs[e] as f64).abs();
            }
        }
        m
    }

    #[test]
    fn scale_unpacking_matches_packing_layout() {
        for seed in 0..=255u8 {
            let mut b = BlockQ3_K::zeroed();
            b.scales = std::array::from_fn(|i| seed.wrapping_mul(73).wrapping_add((i as u8).wrapping_mul(29)));
            let un = unpack_scales(&b.scales);
            for (j, &u) in un.iter().enumerate() {
                assert_eq!(u as i32 - 32, scale(&b, j), "seed {seed} j {j}");
            }
        }
    }

    #[test]
    fn known_block_dequantizes_as_described() {
        let mut b = BlockQ3_K::zeroed();
        b.d = f16::from_f32(0.5);
        // Sub-block 0: scale 0b01_0011 = 19 (low nibble 3, high pair 1), so 19 − 32 = −13.
        b.scales[0] = 0x03;
        b.scales[8] = 0x01;
        // Element 0: low bits 2, high bit (bit 0 of hmask[0]) clear → 2 − 4 = −2.
        b.qs[0] = 0b10;
        // Element 1: low bits 1, high bit set → 1.
        b.qs[1] = 0b01;
        b.hmask[1] = 1;
        // Element 33 (slice 1): bits 2..4 of qs[1] (= 0), high bit 1 of hmask[1] clear → −4.
        let mut out = vec![0f32; QK_K];
        BlockQ3_K::dequantize_row(&[b], &mut out);
        assert_eq!(out[0], 0.5 * -13.0 * -2.0);
        assert_eq!(out[1], 0.5 * -13.0 * 1.0);
        // Sub-block 2 has scale 0 − 32 = −32.
        assert_eq!(out[33], 0.5 * -32.0 * -4.0);
        for (e, &v) in out.iter().enumerate() {
            assert_eq!(v.to_bits(), element(&b, e).to_bits(), "element {e}");
        }
    }

    #[test]
    fn empty_input_is_zero() {
        for level in SimdLevel::available() {
            assert_eq!(BlockQ3_K::vec_dot(level, &[], &[]), 0.0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn dequantize_matches_element_formula(x in q3k_blocks(3)) {
            let mut out = vec![0f32; x.len() * QK_K];
            BlockQ3_K::dequantize_row(&x, &mut out);
            for (i, &v) in out.iter().enumerate() {
                prop_assert_eq!(v.to_bits(), element(&x[i / QK_K], i % QK_K).to_bits(), "element {}", i);
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in pair()) {
            let mut wx = vec![0f32; x.len() * QK_K];
            let mut wy = vec![0f32; y.len() * QK_K];
            BlockQ3_K::dequantize_row(&x, &mut wx);
            BlockQ8_K::dequantize_row(&y, &mut wy);
            let want: f64 = wx.iter().zip(&wy).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = vec_dot_scalar(&x, &y) as f64;
            let tol = 1e-5 * magnitude(&x, &y) + 1e-6;
            prop_assert!((got - want).abs() <= tol, "got {} want {} tol {}", got, want, tol);
        }

        #[test]
        fn every_level_matches_scalar((x, y) in pair()) {
            let want = vec_dot_scalar(&x, &y) as f64;
            let tol = 1e-5 * magnitude(&x, &y) + 1e-6;
            for level in SimdLevel::available() {
                let got = BlockQ3_K::vec_dot(level, &x, &y) as f64;
                prop_assert!((got - want).abs() <= tol, "{:?}: got {} want {} tol {}", level, got, want, tol);
            }
        }
    }
}
