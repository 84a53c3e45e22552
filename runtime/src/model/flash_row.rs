//! Causal self-attention for batches of fewer than [`super::flash_tiled::TILE_Q`] queries
//! (decode steps, short prompts), computed as llama.cpp's CPU flash attention computes them
//! there (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`, ggml-cpu/ops.cpp), one query row
//! at a time over the positions it sees:
//! - q is rounded to f16 (`vec_dot_type` of an F16 cache);
//! - `s = dot(q, k)·scale` with `ggml_vec_dot_f16`'s form for the level ([`dot_ref`]);
//! - if `s > M`: `ms = expf(M − s)`, `M = s`, the accumulator becomes `f16(acc·ms)`
//!   (`ggml_vec_scale_f16`) and `vs = 1`; else `vs = expf(s − M)` (libm's `expf`);
//! - `acc = f16(fma(v, vs, acc))` element-wise (`ggml_vec_mad_f16`), an f16 accumulator;
//! - `S = fma(S, ms, vs)` (GCC contracts ggml's `S = S*ms + vs`);
//! - at the end `out = f32(acc) · (1/S)` (0 when `S` is 0).
//!
//! From 256 cached positions llama.cpp pads its key/value view to 512 or more and splits a
//! single query's positions across its threads (`use_split_kv_path`); that order depends on
//! its thread count, and this module keeps the whole-row order, which is llama.cpp's with one
//! thread.

use half::f16;
use quant::SimdLevel;
use rayon::prelude::*;

/// `[n_tok, n_head, head_dim_v]`: [`super::ops::attention`] in the one-row form, for a batch
/// of any size (llama.cpp takes it below [`super::flash_tiled::TILE_Q`] queries).
pub(crate) fn attention_rows(
    level: SimdLevel,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    shape: &super::ops::AttnShape,
) -> Vec<f32> {
    shape.check(q, k_cache, v_cache);
    let (n_head, dk, dv) = (shape.n_head, shape.head_dim, shape.head_dim_v);
    let mut out = vec![0f32; shape.n_tok * n_head * dv];
    out.par_chunks_mut(dv).enumerate().for_each(|(idx, o)| {
        let (t, h) = (idx / n_head, idx % n_head);
        let pos = shape.pos0 + t;
        let q16: Vec<f32> = q[(t * n_head + h) * dk..][..dk]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        let row = Row {
            k: k_cache,
            v: v_cache,
            stride: shape.n_head_kv,
            kvh: h / (n_head / shape.n_head_kv),
            dk,
            dv,
            positions: shape.first_seen(pos)..pos + 1,
            scale: shape.scale,
        };
        attend_row(level, &q16, &row, o);
    });
    out
}

/// What one query row attends to: positions `positions` of kv head `kvh` in caches laid out
/// `[pos][stride heads][dk or dv]`.
pub(crate) struct Row<'a> {
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub stride: usize,
    pub kvh: usize,
    pub dk: usize,
    pub dv: usize,
    pub positions: std::ops::Range<usize>,
    pub scale: f32,
}

impl Row<'_> {
    /// Key `p` (`dk` values). Panics past the cache.
    fn key(&self, p: usize) -> &[f16] {
        &self.k[(p * self.stride + self.kvh) * self.dk..][..self.dk]
    }

    /// Value `p` (`dv` values). Panics past the cache.
    fn value(&self, p: usize) -> &[f16] {
        &self.v[(p * self.stride + self.kvh) * self.dv..][..self.dv]
    }
}

/// One row into `o` (`dv` values), `q16` already rounded to f16: the level's vector form
/// where there is one, else [`attend_row_ref`] with ggml's scalar dot product.
fn attend_row(level: SimdLevel, q16: &[f32], row: &Row<'_>, o: &mut [f32]) {
    assert!(q16.len() == row.dk && o.len() == row.dv, "row sizes");
    if let Some(last) = row.positions.clone().last() {
        // The kernels read keys and values of these positions unchecked.
        let _ = (row.key(last), row.value(last));
    }
    #[cfg(target_arch = "x86_64")]
    {
        if level == SimdLevel::Avx512 && level.is_available() {
            // SAFETY: AVX-512 detected; sizes and the last position checked above.
            return unsafe { x86::avx512::attend_row(q16, row, o) };
        }
        if level == SimdLevel::Avx2 && level.is_available() {
            // SAFETY: AVX2, FMA and F16C detected; sizes checked above.
            return unsafe { x86::avx2::attend_row(q16, row, o) };
        }
    }
    let _ = level;
    attend_row_ref(DotForm::Sequential, q16, row, o);
}

/// How `ggml_vec_dot_f16` sums, per build (the vector forms' references, for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(any(not(test), not(target_arch = "x86_64")), allow(dead_code))]
pub(crate) enum DotForm {
    /// No SIMD: products in f32, summed in f64 in order.
    Sequential,
    /// AVX2 (`GGML_F32Cx8`): four accumulators of 8 lanes over steps of 32, `x0 + x2` and
    /// `x1 + x3` summed, the halves added, two `hadd`s ((l0 + l1) + (l2 + l3)); leftovers in f64.
    Lanes8,
    /// AVX-512 (`GGML_F32Cx16`): four accumulators of 16 lanes over steps of 64, reduced as
    /// `Lanes8`'s accumulators, then by halves (`_mm512_reduce_add_ps`); leftovers in f64.
    Lanes16,
}

/// `ggml_vec_dot_f16` of `a` and `b` (f16-valued) in `form`, one lane at a time.
pub(crate) fn dot_ref(form: DotForm, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let lanes = match form {
        DotForm::Sequential => return a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>() as f32,
        DotForm::Lanes8 => 8,
        DotForm::Lanes16 => 16,
    };
    let step = 4 * lanes;
    let body = n / step * step;
    let mut acc = vec![vec![0f32; lanes]; 4];
    for i in (0..body).step_by(step) {
        for (j, s) in acc.iter_mut().enumerate() {
            for (l, v) in s.iter_mut().enumerate() {
                *v = a[i + lanes * j + l].mul_add(b[i + lanes * j + l], *v);
            }
        }
    }
    let mut v: Vec<f32> = (0..lanes)
        .map(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]))
        .collect();
    while v.len() > 4 {
        let h = v.len() / 2;
        v = (0..h).map(|l| v[l] + v[l + h]).collect();
    }
    let total = if form == DotForm::Lanes8 {
        (v[0] + v[1]) + (v[2] + v[3])
    } else {
        (v[0] + v[2]) + (v[1] + v[3])
    };
    let mut sum = total as f64;
    for i in body..n {
        sum += (a[i] * b[i]) as f64;
    }
    sum as f32
}

/// One row one value at a time (the reference of the vector forms, and the form of other
/// levels), with `form`'s dot product.
pub(crate) fn attend_row_ref(form: DotForm, q16: &[f32], row: &Row<'_>, o: &mut [f32]) {
    let round = |x: f32| f16::from_f32(x).to_f32();
    let (mut m, mut s_sum) = (f32::NEG_INFINITY, 0f32);
    // The f16 accumulator, as f32 values that f16 holds exactly.
    let mut acc = vec![0f32; row.dv];
    let (mut kf, mut vf) = (vec![0f32; row.dk], vec![0f32; row.dv]);
    for p in row.positions.clone() {
        super::ops::f16_to_f32_slice(row.key(p), &mut kf);
        let s = dot_ref(form, q16, &kf) * row.scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            ms = (m - s).exp();
            m = s;
            acc.iter_mut().for_each(|a| *a = round(*a * ms));
        } else {
            vs = (s - m).exp();
        }
        super::ops::f16_to_f32_slice(row.value(p), &mut vf);
        for (a, &x) in acc.iter_mut().zip(&vf) {
            *a = round(x.mul_add(vs, *a));
        }
        s_sum = s_sum.mul_add(ms, vs);
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, &a) in o.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// The softmax bookkeeping of one position after its score `s`: the new maximum, and the
    /// factors `(ms, vs)` for the accumulator and the new value.
    #[inline(always)]
    fn step(m: &mut f32, s: f32) -> (f32, f32) {
        if s > *m {
            let ms = (*m - s).exp();
            *m = s;
            (ms, 1.0)
        } else {
            (1.0, (s - *m).exp())
        }
    }

    /// `attend_row` for one vector width ([`super::attend_row`]): keys and values widened from
    /// the cache in registers, the accumulator kept as f16. The level's module supplies
    /// `load_f16` / `store_f16` (LANES halves ↔ a vector) and `reduce` (one vector to a sum,
    /// in `ggml_vec_dot_f16`'s order for that build).
    macro_rules! row_kernel {
        ($feat:literal, lanes = $lanes:literal, $zero:ident, $load:ident, $set1:ident, $add:ident, $mul:ident, $fmadd:ident) => {
            /// # Safety
            /// Requires the level's features; `q16` is `dk` long, `o` `dv`, and the row's last
            /// position lies in both caches.
            #[target_feature(enable = $feat)]
            pub unsafe fn attend_row(q16: &[f32], row: &super::super::Row<'_>, o: &mut [f32]) {
                const LANES: usize = $lanes;
                let (dk, dv) = (row.dk, row.dv);
                let (body_k, body_v) = (dk / (4 * LANES) * (4 * LANES), dv / LANES * LANES);
                let mut acc = vec![half::f16::ZERO; dv];
                let (mut m, mut s_sum) = (f32::NEG_INFINITY, 0f32);
                for p in row.positions.clone() {
                    // SAFETY (all pointer reads below): position p is in range (checked by the
                    // caller), its key is dk and its value dv halves long; body_k ≤ dk,
                    // body_v ≤ dv.
                    let kp = unsafe { row.k.as_ptr().add((p * row.stride + row.kvh) * dk) };
                    let mut a = [$zero(); 4];
                    for i in (0..body_k).step_by(4 * LANES) {
                        for (j, a) in a.iter_mut().enumerate() {
                            unsafe {
                                let x = $load(q16.as_ptr().add(i + LANES * j));
                                *a = $fmadd(x, load_f16(kp.add(i + LANES * j)), *a);
                            }
                        }
                    }
                    let mut dot = reduce($add($add(a[0], a[2]), $add(a[1], a[3]))) as f64;
                    for i in body_k..dk {
                        dot += (q16[i] * unsafe { *kp.add(i) }.to_f32()) as f64;
                    }
                    let (ms, vs) = super::step(&mut m, dot as f32 * row.scale);
                    let vp = unsafe { row.v.as_ptr().add((p * row.stride + row.kvh) * dv) };
                    let (vms, vvs) = ($set1(ms), $set1(vs));
                    let ap = acc.as_mut_ptr();
                    for c in (0..body_v).step_by(LANES) {
                        unsafe {
                            let mut y = load_f16(ap.add(c));
                            if ms != 1.0 {
                                // ggml_vec_scale_f16 (ms = 1 changes nothing: y·1 = y exactly).
                                y = round_f16($mul(y, vms));
                            }
                            store_f16(ap.add(c), $fmadd(load_f16(vp.add(c)), vvs, y));
                        }
                    }
                    for c in body_v..dv {
                        let mut y = acc[c].to_f32();
                        if ms != 1.0 {
                            y = half::f16::from_f32(y * ms).to_f32();
                        }
                        acc[c] = half::f16::from_f32(unsafe { *vp.add(c) }.to_f32().mul_add(vs, y));
                    }
                    s_sum = s_sum.mul_add(ms, vs);
                }
                let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
                for (o, a) in o.iter_mut().zip(&acc) {
                    *o = a.to_f32() * inv;
                }
            }
        };
    }

    /// The AVX-512 build's forms ([`super::DotForm::Lanes16`]).
    pub(super) mod avx512 {
        use half::f16;
        use std::arch::x86_64::*;

        /// # Safety
        /// `p` points to 16 readable halves.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        unsafe fn load_f16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
        }

        /// # Safety
        /// `p` points to 16 writable halves.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        unsafe fn store_f16(p: *mut f16, x: __m512) {
            unsafe { _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x)) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        fn round_f16(x: __m512) -> __m512 {
            _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
        }

        // By halves, as `_mm512_reduce_add_ps` (the tiled form's sum).
        use crate::model::flash_tiled::x86::halves_512 as reduce;

        row_kernel!(
            "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
            lanes = 16,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_set1_ps,
            _mm512_add_ps,
            _mm512_mul_ps,
            _mm512_fmadd_ps
        );
    }

    /// The AVX2 build's forms ([`super::DotForm::Lanes8`]).
    pub(super) mod avx2 {
        use half::f16;
        use std::arch::x86_64::*;

        /// # Safety
        /// `p` points to 8 readable halves.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f16(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
        }

        /// # Safety
        /// `p` points to 8 writable halves.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn store_f16(p: *mut f16, x: __m256) {
            unsafe { _mm_storeu_si128(p as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x)) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn round_f16(x: __m256) -> __m256 {
            _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
        }

        /// `GGML_F32x8_REDUCE`'s tail: the halves added, then two `hadd`s.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn reduce(t: __m256) -> f32 {
            let h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
            let h = _mm_hadd_ps(h, h);
            _mm_cvtss_f32(_mm_hadd_ps(h, h))
        }

        row_kernel!(
            "avx2,fma,f16c",
            lanes = 8,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_set1_ps,
            _mm256_add_ps,
            _mm256_mul_ps,
            _mm256_fmadd_ps
        );
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Each level's row kernel against [`attend_row_ref`] with that level's dot form, bit for
    /// bit: head sizes with and without leftovers, windows starting mid-cache, one position.
    #[test]
    fn row_kernels_match_their_references() {
        let mut st = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move |amp: f32| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
        };
        let levels = SimdLevel::available();
        assert!(levels.contains(&SimdLevel::Avx2), "this test needs an AVX2 CPU");
        for (dk, dv) in [(64, 64), (256, 256), (128, 72), (80, 40), (16, 8)] {
            let (stride, n_pos) = (2, 90);
            let k: Vec<f16> = (0..n_pos * stride * dk).map(|_| f16::from_f32(rnd(6.0))).collect();
            let v: Vec<f16> = (0..n_pos * stride * dv).map(|_| f16::from_f32(rnd(4.0))).collect();
            let q16: Vec<f32> = (0..dk).map(|_| f16::from_f32(rnd(6.0)).to_f32()).collect();
            for positions in [0..n_pos, 37..n_pos, 5..6] {
                let row = Row {
                    k: &k,
                    v: &v,
                    stride,
                    kvh: 1,
                    dk,
                    dv,
                    positions: positions.clone(),
                    scale: 0.3,
                };
                for &level in &levels {
                    let form = match level {
                        SimdLevel::Avx512 => DotForm::Lanes16,
                        SimdLevel::Avx2 => DotForm::Lanes8,
                        _ => DotForm::Sequential,
                    };
                    let (mut got, mut want) = (vec![0f32; dv], vec![1f32; dv]);
                    attend_row(level, &q16, &row, &mut got);
                    attend_row_ref(form, &q16, &row, &mut want);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{level:?}, dims {dk}/{dv}, {positions:?}");
                }
            }
        }
    }

    /// The dot forms on lengths that are and are not whole steps: each against a plain f64
    /// sum (close), and the two vector forms apart on some input (they are different forms).
    #[test]
    fn dot_forms_are_dot_products() {
        let mut st = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            f16::from_f32(((st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0).to_f32()
        };
        let mut differ = false;
        for n in [64, 128, 256, 100, 31, 0] {
            let a: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            for form in [DotForm::Sequential, DotForm::Lanes8, DotForm::Lanes16] {
                let got = dot_ref(form, &a, &b) as f64;
                assert!(
                    (got - exact).abs() <= 1e-6 * scale + 1e-30,
                    "{form:?} n {n}: {got} vs {exact}"
                );
            }
            differ |= dot_ref(DotForm::Lanes8, &a, &b) != dot_ref(DotForm::Lanes16, &a, &b);
        }
        assert!(differ, "the 8- and 16-lane forms agreed on every input");
    }
}
