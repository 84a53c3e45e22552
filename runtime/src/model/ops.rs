//! The element-wise and attention operations of the forward pass, computed as ggml computes
//! them on the CPU (ggml-cpu/ops.cpp, vec.h) so results agree with llama.cpp to the last bits
//! where that is cheap.

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use super::config::RopeType;

/// Below this many elements an element-wise op runs on the calling thread (a decode step's
/// rows); above it, in parallel chunks (prompt batches). Each element's arithmetic is the
/// same either way.
const PAR_MIN: usize = 1 << 15;

/// `f` on each `n`-element chunk of `x` (the last may be shorter), in parallel for a large `x`.
fn for_chunks(x: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let n = n.max(1);
    if x.len() < PAR_MIN {
        x.chunks_mut(n).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        x.par_chunks_mut(n).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Elements per parallel chunk of an element-wise op.
const CHUNK: usize = 4096;

/// In-place RMS norm of each `n`-element row of `x`, times `w` (`ggml_rms_norm` then
/// `ggml_mul`): the sum of squares in f64, mean and scale in f32.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for_chunks(x, n, |_, row| {
        if row.len() != n {
            return;
        }
        let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    });
}

/// [`rms_norm`] into a new buffer.
pub fn rms_norm_to(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    rms_norm(&mut y, w, eps);
    y
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for_chunks(x, CHUNK, |i, c| {
        for (a, b) in c.iter_mut().zip(&y[(i * CHUNK).min(y.len())..]) {
            *a += *b;
        }
    });
}

/// Add `bias` (one row) to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// The cubic coefficient of GELU's tanh approximation (ggml's `GELU_COEF_A`, PyTorch's kKappa).
const GELU_COEF_A: f32 = 0.044715;
/// √(2/π) (ggml's `SQRT_2_OVER_PI`, PyTorch's kBeta = √2 · (2/√π) · ½), as an f32.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU with the tanh approximation (`ggml_gelu_f32`, ggml-cpu/vec.h), as GCC compiles it
/// with FMA enabled: `1 + GELU_COEF_A·x·x` is one fused multiply-add, `(GELU_COEF_A·x)·x + 1`.
/// With every operation rounded on its own, one entry of ggml's f16 table would differ
/// (tested against ggml's own table, `tests/golden/gelu`).
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// ggml's GELU table over every f16 input (`ggml_table_gelu_f16`, used under GGML_GELU_FP16).
fn gelu_table() -> &'static [f16] {
    static T: OnceLock<Vec<f16>> = OnceLock::new();
    T.get_or_init(|| {
        (0..=u16::MAX)
            .map(|i| f16::from_f32(gelu_f32(f16::from_bits(i).to_f32())))
            .collect()
    })
}

/// `y = gelu(g) * u` element-wise over rows of `n`, as ggml's `ggml_vec_geglu_f32` (GELU
/// through the f16 table; x ≤ -10 gives 0, x ≥ 10 gives x).
pub fn geglu(g: &[f32], u: &[f32], y: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if f16c_available() {
        let t = gelu_table();
        // SAFETY: AVX2, FMA and F16C were detected.
        rows(g, u, y, n, |g, u, ys| unsafe { x86::geglu(g, u, ys, t) });
        return;
    }
    gated(g, u, y, n, geglu_one);
}

/// [`geglu`] in f32 throughout, as PyTorch's `gelu(approximate="tanh")` computes it:
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, no f16 table (the float reference path,
/// [`super::Model::float_reference`]).
pub fn geglu_f32(g: &[f32], u: &[f32], y: &mut [f32], n: usize) {
    gated(g, u, y, n, |x| {
        0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_COEF_A * (x * x * x))).tanh())
    });
}

/// GELU of one value as [`geglu`] computes it.
fn geglu_one(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `y = silu(g) * u` element-wise over rows of `n` (`ggml_vec_swiglu_f32`, ggml-cpu/vec.cpp):
/// silu(x) = x / (1 + e^-x). At this crate's [`quant::SimdLevel::Avx512`] each row's groups of
/// 16 take e^-x from ggml's vectorized `ggml_v_expf` (vec.h; Arm's optimized-routines
/// polynomial, within 1.5 ulp) in its AVX-512 form ([`expf_ggml_avx512`]), at
/// [`quant::SimdLevel::Avx2`] each row's groups of 8 from its AVX2 form ([`expf_ggml_avx2`]),
/// the rest of the row from libm's `expf`: what llama.cpp built for those levels computes.
/// Other levels use libm throughout (ggml has NEON and SSE2 forms of its own there, and uses
/// its AVX-512 form on AVX-512 CPUs without VNNI, which this crate runs at its AVX2 level).
pub fn swiglu(g: &[f32], u: &[f32], y: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use quant::SimdLevel;
        let level = SimdLevel::detect();
        if level == SimdLevel::Avx512 && level.is_available() {
            // SAFETY: AVX-512 (F and DQ among what the level stands for) was detected.
            return rows(g, u, y, n, |g, u, y| unsafe { x86::swiglu_avx512(g, u, y) });
        }
        if level == SimdLevel::Avx2 && level.is_available() {
            // SAFETY: AVX2 and FMA were detected.
            return rows(g, u, y, n, |g, u, y| unsafe { x86::swiglu_avx2(g, u, y) });
        }
    }
    gated(g, u, y, n, silu_libm);
}

/// silu(x) with libm's `expf` (`ggml_silu_f32`).
fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `kernel(g, u, y)` on each `n`-element row of the three, rows in parallel chunks for a
/// prompt batch.
fn rows(g: &[f32], u: &[f32], y: &mut [f32], n: usize, kernel: impl Fn(&[f32], &[f32], &mut [f32]) + Sync + Send) {
    let n = n.max(1);
    let per = (CHUNK / n).max(1) * n;
    for_chunks(y, per, |i, ys| {
        let o = i * per;
        for (r, yr) in ys.chunks_mut(n).enumerate() {
            let a = (o + r * n).min(g.len().min(u.len()));
            kernel(&g[a..], &u[a..], yr);
        }
    });
}

/// The three constants of ggml's vectorized expf: 1.5·2²³ (rounds to an integer), log2(e),
/// and ln 2 in two parts.
const EXPF_SHIFT: f32 = 12582912.0; // 0x1.8p23
const EXPF_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const EXPF_LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const EXPF_LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
/// The polynomial's coefficients, highest first.
const EXPF_C: [f32; 5] = [
    f32::from_bits(0x3c07_2010), // 0x1.0e4020p-7
    f32::from_bits(0x3d2b_9f17), // 0x1.573e2ep-5
    f32::from_bits(0x3e2a_af33), // 0x1.555e66p-3
    f32::from_bits(0x3eff_fedb), // 0x1.fffdb6p-2
    f32::from_bits(0x3f7f_fff6), // 0x1.ffffecp-1
];

/// The reduction shared by both forms: n = round(x·log2 e), b = x − n·ln 2 (two fused steps),
/// and the polynomial's p = (c0·b + c1)·u + (c2·b + c3) with u = b².
fn expf_ggml_reduce(x: f32) -> (f32, f32, f32, f32, f32) {
    let z = x.mul_add(EXPF_LOG2E, EXPF_SHIFT);
    let n = z - EXPF_SHIFT;
    let b = (-n).mul_add(EXPF_LN2_LO, (-n).mul_add(EXPF_LN2_HI, x));
    let u = b * b;
    let p = EXPF_C[0]
        .mul_add(b, EXPF_C[1])
        .mul_add(u, EXPF_C[2].mul_add(b, EXPF_C[3]));
    (z, n, b, u, p)
}

/// `ggml_v_expf` in its AVX-512 form, one lane (the scalar reference of
/// [`x86::swiglu_avx512`]): 2ⁿ·(1 + c4·b + p·u) through `vscalefps`; |n| > 192 gives +∞ or 0.
pub fn expf_ggml_avx512(x: f32) -> f32 {
    let (_, n, b, u, p) = expf_ggml_reduce(x);
    let j = p.mul_add(u, EXPF_C[4].mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // vscalefps: j·2ⁿ rounded once (exact in f64, then one rounding to f32); 2ⁿ built from
    // its exponent bits (|n| ≤ 192 is well inside f64's range).
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// `ggml_v_expf` in its AVX2 form, one lane (the scalar reference of [`x86::swiglu_avx2`]):
/// k = 2ⁿ built in the exponent bits, k + k·j with j = p·u + c4·b; for |n| > 126 the scale is
/// split in two factors, and |n| > 192 gives s1² (+∞ or 0).
pub fn expf_ggml_avx2(x: f32) -> f32 {
    let (z, n, b, u, p) = expf_ggml_reduce(x);
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let j = p.mul_add(u, EXPF_C[4] * b);
    // As the vector compares: a NaN n is not "big".
    let big = n.abs() > 126.0;
    if !big {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `y = act(g) * u` element-wise over rows of `n`, rows in parallel chunks for a prompt batch.
fn gated(g: &[f32], u: &[f32], y: &mut [f32], n: usize, act: impl Fn(f32) -> f32 + Sync + Send) {
    rows(g, u, y, n, |g, u, ys| {
        for ((y, &x), &u) in ys.iter_mut().zip(g).zip(u) {
            *y = act(x) * u;
        }
    });
}

/// Rope angles for one position: `(cos, sin)` for each of the `n_rot / 2` pairs, computed as
/// ggml's `ggml_rope_cache_init`: theta starts at `pos · freq_scale` and is multiplied by
/// `base^(-2/n_rot)` per pair, in f32; `freq_factors` (llama3's `rope_freqs`) divide it.
pub fn rope_cache(
    pos: usize,
    n_rot: usize,
    base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta_extrap = pos as f32;
    let mut out = Vec::with_capacity(n_rot / 2);
    for i in 0..n_rot / 2 {
        let ff = freq_factors.map_or(1.0, |f| f[i]);
        let theta = freq_scale * (theta_extrap / ff);
        out.push((theta.cos(), theta.sin()));
        theta_extrap *= theta_scale;
    }
    out
}

/// Rotate every head of `x` (`[n_head, head_dim]`) in place with the angles of `cache`
/// (from [`rope_cache`]), the first `2 · cache.len()` dimensions of each head.
pub fn rope(x: &mut [f32], head_dim: usize, cache: &[(f32, f32)], ty: RopeType) {
    let n_rot = cache.len() * 2;
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cache.iter().enumerate() {
            let (a, b) = match ty {
                RopeType::Norm => (2 * i, 2 * i + 1),
                RopeType::Neox => (i, i + n_rot / 2),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// Causal multi-head attention of `n_tok` new queries against a layer's f16 key/value cache,
/// computed as llama.cpp's CPU flash attention computes it, bit for bit (tested against ggml's
/// `ggml_flash_attn_ext`). Batches of fewer than [`super::flash_tiled::TILE_Q`] queries (decode
/// steps, short prompts) take its one-row path ([`super::flash_row`]): q rounded to f16, scores
/// as f16·f16 dot products, an online softmax, the weighted sum of values accumulated in f16.
/// Larger batches take its tiled path, in f32 throughout ([`super::flash_tiled`]).
///
/// - `q`: `[n_tok, n_head, head_dim]`, already scaled as the architecture wants,
/// - `k_cache`: `[n_past + n_tok, n_head_kv, head_dim]`, `v_cache`: `[.., n_head_kv, head_dim_v]`,
/// - the sizes and masks in `shape`,
/// - returns `[n_tok, n_head, head_dim_v]`.
///
/// Where the bits can differ from a llama.cpp build: from 256 cached positions llama.cpp pads
/// its key/value view to 512 and splits one query's positions across its threads, an order
/// that depends on its thread count (this follows its order with one thread); builds with
/// AVX512-FP16 accumulate the one-row path in f16 arithmetic; on AVX-512 CPUs without VNNI
/// this crate runs its AVX2 forms where a native build would use the AVX-512 ones.
///
/// Panics if the caches hold fewer than `pos0 + n_tok` positions, a head size is 0 or `n_head`
/// is not a multiple of `n_head_kv` (a model's configuration is checked at load,
/// [`super::ModelConfig::validate`]).
pub fn attention(q: &[f32], k_cache: &[f16], v_cache: &[f16], shape: &AttnShape) -> Vec<f32> {
    if shape.n_tok >= super::flash_tiled::TILE_Q {
        super::flash_tiled::attention_tiled(super::flash_tiled::Kernels::detect(), q, k_cache, v_cache, shape)
    } else {
        super::flash_row::attention_rows(quant::SimdLevel::detect(), q, k_cache, v_cache, shape)
    }
}

/// The sizes and masks of one [`attention`] call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// New queries, at positions `pos0..pos0 + n_tok`.
    pub n_tok: usize,
    /// Positions already in the cache before them.
    pub pos0: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; each serves `n_head / n_head_kv` query heads.
    pub n_head_kv: usize,
    /// Values per key (and per query) head.
    pub head_dim: usize,
    /// Values per value head (the output's per-head length).
    pub head_dim_v: usize,
    /// Factor on the scores before the softmax.
    pub scale: f32,
    /// Sliding window: the query at `pos` sees `p` only if `pos − p < window`.
    pub window: Option<usize>,
}

impl AttnShape {
    /// The first position the query at `pos` sees.
    pub fn first_seen(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    /// Checks the sizes against the inputs (panics on a mismatch, before any unchecked read).
    pub(crate) fn check<T>(&self, q: &[f32], k_cache: &[T], v_cache: &[T]) {
        let n_kv = self.pos0 + self.n_tok;
        assert!(self.head_dim > 0 && self.head_dim_v > 0, "empty heads");
        assert!(
            self.n_head_kv > 0 && self.n_head.is_multiple_of(self.n_head_kv),
            "{} query heads over {} key/value heads",
            self.n_head,
            self.n_head_kv
        );
        assert!(q.len() >= self.n_tok * self.n_head * self.head_dim, "queries");
        assert!(k_cache.len() >= n_kv * self.n_head_kv * self.head_dim, "key cache");
        assert!(v_cache.len() >= n_kv * self.n_head_kv * self.head_dim_v, "value cache");
    }
}

#[cfg(target_arch = "x86_64")]
fn f16c_available() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            STATE.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// [`super::swiglu`] over one row with `ggml_v_silu` in its AVX-512 form, sixteen at a
    /// time; the rest of the row with libm. Bit-identical to [`super::expf_ggml_avx512`] per
    /// lane.
    ///
    /// # Safety
    /// Requires the features of [`quant::SimdLevel::Avx512`] (AVX-512 F/BW/VL/DQ + VNNI).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn swiglu_avx512(g: &[f32], u: &[f32], y: &mut [f32]) {
        let n = y.len().min(g.len()).min(u.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, the length of all three slices at least.
            unsafe {
                let x = _mm512_loadu_ps(g.as_ptr().add(i));
                let silu = _mm512_div_ps(
                    x,
                    _mm512_add_ps(_mm512_set1_ps(1.0), expf_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))),
                );
                _mm512_storeu_ps(
                    y.as_mut_ptr().add(i),
                    _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr().add(i))),
                );
            }
            i += 16;
        }
        for ((y, &x), &u) in y[i..n].iter_mut().zip(&g[i..n]).zip(&u[i..n]) {
            *y = super::silu_libm(x) * u;
        }
    }

    /// `ggml_v_expf`, AVX-512 form (ggml-cpu/vec.h).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(crate) fn expf_avx512(x: __m512) -> __m512 {
        use super::{EXPF_C, EXPF_LN2_HI, EXPF_LN2_LO, EXPF_LOG2E, EXPF_SHIFT};
        let r = _mm512_set1_ps(EXPF_SHIFT);
        let z = _mm512_fmadd_ps(x, _mm512_set1_ps(EXPF_LOG2E), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(
            n,
            _mm512_set1_ps(EXPF_LN2_LO),
            _mm512_fnmadd_ps(n, _mm512_set1_ps(EXPF_LN2_HI), x),
        );
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let c = EXPF_C.map(|c| _mm512_set1_ps(c));
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(_mm512_fmadd_ps(c[0], b, c[1]), u, _mm512_fmadd_ps(c[2], b, c[3])),
            u,
            _mm512_fmadd_ps(c[4], b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
            _mm512_set1_ps(f32::INFINITY),
            zero,
        );
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// [`super::swiglu`] over one row with `ggml_v_silu` in its AVX2 form, eight at a time;
    /// the rest of the row with libm. Bit-identical to [`super::expf_ggml_avx2`] per lane.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn swiglu_avx2(g: &[f32], u: &[f32], y: &mut [f32]) {
        let n = y.len().min(g.len()).min(u.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, the length of all three slices at least.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr().add(i));
                let silu = _mm256_div_ps(
                    x,
                    _mm256_add_ps(_mm256_set1_ps(1.0), expf_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))),
                );
                _mm256_storeu_ps(
                    y.as_mut_ptr().add(i),
                    _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr().add(i))),
                );
            }
            i += 8;
        }
        for ((y, &x), &u) in y[i..n].iter_mut().zip(&g[i..n]).zip(&u[i..n]) {
            *y = super::silu_libm(x) * u;
        }
    }

    /// `ggml_v_expf`, AVX2 form (ggml-cpu/vec.h).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn expf_avx2(x: __m256) -> __m256 {
        use super::{EXPF_C, EXPF_LN2_HI, EXPF_LN2_LO, EXPF_LOG2E, EXPF_SHIFT};
        let r = _mm256_set1_ps(EXPF_SHIFT);
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(EXPF_LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(EXPF_LN2_LO),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(EXPF_LN2_HI), x),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0)));
        let u = _mm256_mul_ps(b, b);
        let cf = EXPF_C.map(|c| _mm256_set1_ps(c));
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(cf[0], b, cf[1]), u, _mm256_fmadd_ps(cf[2], b, cf[3])),
            u,
            _mm256_mul_ps(cf[4], b),
        );
        if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0)));
        _mm256_or_ps(
            _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                _mm256_castsi256_ps(d),
                _mm256_or_ps(
                    _mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// [`super::geglu`] eight at a time: the f16 conversions with F16C (round to nearest even,
    /// as `half` does), the table read per element; bit-identical to the scalar form.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn geglu(g: &[f32], u: &[f32], y: &mut [f32], table: &[half::f16]) {
        let n = y.len().min(g.len()).min(u.len());
        let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, the length of all three slices at least.
            let (x, uu) = unsafe { (_mm256_loadu_ps(g.as_ptr().add(i)), _mm256_loadu_ps(u.as_ptr().add(i))) };
            let mut idx = [0u16; 8];
            // SAFETY: `idx` is 16 writable bytes.
            unsafe {
                _mm_storeu_si128(
                    idx.as_mut_ptr() as *mut __m128i,
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x),
                )
            };
            let vals = idx.map(|h| table[h as usize].to_bits());
            // SAFETY: `vals` is 16 readable bytes.
            let gx = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(vals.as_ptr() as *const __m128i) });
            // x >= 10: x; x <= -10: 0 (NaN compares false both ways: the table's NaN).
            let r = _mm256_blendv_ps(gx, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
            let r = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), r);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_mul_ps(r, uu)) };
            i += 8;
        }
        for ((y, &x), &u) in y[i..n].iter_mut().zip(&g[i..n]).zip(&u[i..n]) {
            *y = super::geglu_one(x) * u;
        }
    }
}

/// Widen f16 values into `dst`.
#[inline]
pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// f32 dot product (4 accumulators so the compiler vectorizes it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod gelu_tests {
    use super::*;

    /// ggml's own GELU table (`tests/golden/gelu`, from `ggml_cpu_init`) against
    /// [`gelu_table`]: the hash of its entries for every input but NaN, and by name the entries that rounding
    /// every operation on its own would get wrong.
    #[test]
    fn gelu_table_is_ggmls() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/golden/gelu/golden.json")).unwrap();
        let t = gelu_table();
        let differs = golden["unfused_differs"].as_array().unwrap();
        assert!(!differs.is_empty(), "the golden names the entries where fusing matters");
        for e in differs {
            let (i, want) = (e[0].as_u64().unwrap() as usize, e[1].as_u64().unwrap() as u16);
            assert_eq!(t[i].to_bits(), want, "entry {i} (x = {})", f16::from_bits(i as u16));
        }
        // NaN inputs give NaN (ggml's f16 conversion drops the payload, half keeps it).
        let is_nan = |i: usize| f16::from_bits(i as u16).is_nan();
        assert!((0..t.len()).filter(|&i| is_nan(i)).all(|i| t[i].is_nan()));
        // The whole table as glibc's tanhf makes it (another libm may round an entry apart).
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return;
        }
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let entries = t.iter().enumerate().filter(|&(i, _)| !is_nan(i));
        for b in entries.flat_map(|(_, v)| v.to_bits().to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        assert_eq!(format!("{h:016x}"), golden["fnv1a64"].as_str().unwrap());
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Inputs for the expf / SiLU checks: a sweep over −120..120, the thresholds of both forms
    /// (|n| = 126 and 192, |x| near 87.3, 88.7, 103.9 and 133.1), subnormal results, zeros,
    /// tiny values, infinities and NaN.
    fn expf_inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..24_000).map(|i| -120.0 + i as f32 * 0.01).collect();
        for e in [
            87.3,
            88.37,
            88.38,
            88.73,
            89.0,
            103.9,
            103.97,
            104.0,
            126.0 * std::f32::consts::LN_2,
        ] {
            for d in [-0.01f32, -1e-4, 0.0, 1e-4, 0.01] {
                v.extend([e + d, -(e + d)]);
            }
        }
        v.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-8,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        v.extend([f32::MAX, f32::MIN, 3.0e5, -3.0e5]);
        // Around |n| = 192 (|x| ≈ 133.1) and the subnormal results below e^-87.
        v.extend((0..800).flat_map(|i| {
            let x = 125.0 + i as f32 * 0.02;
            [x, -x]
        }));
        v.extend((0..2000).map(|i| -87.0 - i as f32 * 0.01));
        v
    }

    /// The two scalar forms of ggml's vectorized expf are within 2 ulp of the exact e^x over
    /// f32's normal range (ggml quotes 1.45 + 0.5 ulp), and flush as it says beyond it.
    #[test]
    fn expf_ggml_forms_are_expf() {
        for x in expf_inputs() {
            let want = (x as f64).exp();
            for (form, got) in [("avx512", expf_ggml_avx512(x)), ("avx2", expf_ggml_avx2(x))] {
                if x.is_nan() {
                    assert!(got.is_nan(), "{form} e^NaN = {got}");
                } else if (-87.0..=88.0).contains(&x) {
                    let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
                    assert!(ulp <= 2, "{form} e^{x}: {got} vs {want} ({ulp} ulp)");
                } else if x > 89.0 {
                    assert_eq!(got, f32::INFINITY, "{form} e^{x}");
                } else if x < -104.0 {
                    assert_eq!(got, 0.0, "{form} e^{x}");
                }
            }
        }
    }

    /// Each vector form of ggml's expf against its scalar reference, lane for lane, bit for
    /// bit, over all the inputs (NaN: both NaN).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn expf_vector_forms_match_their_references() {
        use std::arch::x86_64::*;
        // The AVX2 form wherever this runs (x86-64 CPUs of the last decade), the AVX-512 form
        // where the CPU has it (this project's machines do).
        assert!(f16c_available(), "this test needs AVX2, FMA and F16C");
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let xs = expf_inputs();
        let avx512 = quant::SimdLevel::Avx512.is_available();
        for c in xs.chunks_exact(16).filter(|_| avx512) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 detected; 16 floats read and written.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), x86::expf_avx512(_mm512_loadu_ps(c.as_ptr()))) };
            for (&x, &g) in c.iter().zip(&got) {
                assert!(
                    same(g, expf_ggml_avx512(x)),
                    "avx512 e^{x}: {g} vs {}",
                    expf_ggml_avx512(x)
                );
            }
        }
        for c in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA asserted above; 8 floats.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), x86::expf_avx2(_mm256_loadu_ps(c.as_ptr()))) };
            for (&x, &g) in c.iter().zip(&got) {
                assert!(same(g, expf_ggml_avx2(x)), "avx2 e^{x}: {g} vs {}", expf_ggml_avx2(x));
            }
        }
    }

    /// `swiglu` over two rows of 4099 (16 and 8 do not divide it): each row's whole vector
    /// groups through the level's expf form, its tail through libm, bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn swiglu_rows_split_as_ggml() {
        let n = 4099;
        let g: Vec<f32> = expf_inputs()
            .into_iter()
            .filter(|x| x.is_finite())
            .take(2 * n)
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut y = vec![0f32; g.len()];
        swiglu(&g, &u, &mut y, n);
        let level = quant::SimdLevel::detect();
        let (expf, lanes): (fn(f32) -> f32, usize) = match level {
            quant::SimdLevel::Avx512 => (expf_ggml_avx512, 16),
            quant::SimdLevel::Avx2 => (expf_ggml_avx2, 8),
            _ => (|x: f32| x.exp(), 1),
        };
        for (i, ((&x, &uu), &got)) in g.iter().zip(&u).zip(&y).enumerate() {
            let silu = if i % n < n / lanes * lanes {
                x / (1.0 + expf(0.0 - x))
            } else {
                silu_libm(x)
            };
            assert_eq!(got.to_bits(), (silu * uu).to_bits(), "{level:?} element {i}: silu({x})");
        }
    }

    /// `swiglu` with each vector form gives, bit for bit, its scalar reference on every lane
    /// and libm's on the row's tail (a row of 4099: 16 / 8 do not divide it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn swiglu_simd_matches_scalar_bit_for_bit() {
        let g = expf_inputs();
        let u: Vec<f32> = (0..g.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let n = 4099;
        type Kernel = unsafe fn(&[f32], &[f32], &mut [f32]);
        type Form = (quant::SimdLevel, Kernel, fn(f32) -> f32, usize);
        let forms: [Form; 2] = [
            (quant::SimdLevel::Avx512, x86::swiglu_avx512, expf_ggml_avx512, 16),
            (quant::SimdLevel::Avx2, x86::swiglu_avx2, expf_ggml_avx2, 8),
        ];
        let mut checked = 0;
        for (level, kernel, expf, lanes) in forms {
            if !level.is_available() {
                continue;
            }
            for (gr, ur) in g.chunks(n).zip(u.chunks(n)) {
                let mut y = vec![0f32; gr.len()];
                // SAFETY: the level's features were detected just above.
                unsafe { kernel(gr, ur, &mut y) };
                let vec_end = gr.len() / lanes * lanes;
                for (i, ((&x, &uu), &got)) in gr.iter().zip(ur).zip(&y).enumerate() {
                    let silu = if i < vec_end {
                        x / (1.0 + expf(0.0 - x))
                    } else {
                        silu_libm(x)
                    };
                    let want = silu * uu;
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{level:?} silu({x}) * {uu}: {got} vs {want}"
                    );
                }
            }
            checked += 1;
        }
        assert!(checked > 0 || !quant::SimdLevel::Avx2.is_available());
    }

    #[test]
    fn geglu_f16c_matches_scalar_bit_for_bit() {
        if !f16c_available() {
            return;
        }
        let mut st = 0x2545_F491_4F6C_DD1Du64;
        let mut g: Vec<f32> = (0..4099)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                ((st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 30.0
            })
            .collect();
        // The edges: the thresholds, zeros, values between f16 steps, subnormal f16, NaN, inf.
        g[..12].copy_from_slice(&[
            -10.0,
            10.0,
            -0.0,
            0.0,
            1e-6,
            -3e-5,
            1.0004883,
            9.999,
            -9.999,
            f32::INFINITY,
            f32::NEG_INFINITY,
            2.5,
        ]);
        g[12] = f32::NAN;
        let u: Vec<f32> = g.iter().map(|v| 1.5 - v * 0.01).collect();
        let mut want = vec![0f32; g.len()];
        for ((y, &x), &u) in want.iter_mut().zip(&g).zip(&u) {
            *y = geglu_one(x) * u;
        }
        let mut got = vec![0f32; g.len()];
        // SAFETY: F16C (with AVX2 and FMA) was detected just above.
        unsafe { x86::geglu(&g, &u, &mut got, gelu_table()) };
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{i}: x {} -> {a} vs {b}",
                g[i]
            );
        }
    }
}
