//! Causal self-attention for prompt batches of at least [`TILE_Q`] tokens, computed as
//! llama.cpp's CPU flash attention computes them there
//! (`ggml_compute_forward_flash_attn_ext_tiled`, ggml-cpu/ops.cpp; used when a batch has
//! `GGML_FA_TILE_Q` or more query rows).
//!
//! Per query row, the keys go in tiles of [`TILE_KV`] positions (aligned at position 0):
//! - scores: `s_j = (Σ_d q_d·k_jd)·scale`, each sum a chain of fused multiply-adds in `d` order
//!   from 0, with q in f32 and k widened from the f16 cache (`simd_gemm`'s order); positions
//!   the row may not see are −∞;
//! - a tile the row sees nothing of changes nothing; otherwise, with `M` the running maximum
//!   and `S` the running sum: `M' = max(M, max_j s_j)`; if `M' > M`, the accumulator and `S` are
//!   multiplied by `expf(M − M')` (libm);
//! - `p_j = exp(s_j − M')` over the whole tile with the level's `ggml_v_expf` form, summed as
//!   `ggml_vec_soft_max_f32` sums it (each vector reduced, added in f64), `S = f32(S + sum)`;
//! - `acc_c += Σ_j p_j·v_jc`, a chain of fused multiply-adds in `j` order (f32 accumulator);
//! - at the end `out = acc · (1/S)` (0 when `S` is 0).
//!
//! Rows are independent, so how rows are grouped into tasks does not change any value. Rows
//! and tiles a query does not see are skipped where ggml adds `0·v`: the same values but for
//! the sign of a zero (or a non-finite value in the cache, which ggml would spread as NaN). The
//! SIMD kernels ([`kq_tile`], [`pv_tile`], [`softmax_tile`]) are bit-identical to their
//! scalar references (tested).

use half::f16;
use quant::SimdLevel;
use rayon::prelude::*;

/// Query rows per task (`GGML_FA_TILE_Q`, ggml-cpu/common.h); batches of fewer rows take
/// [`super::ops::attention`]'s one-row path, as llama.cpp's do.
pub const TILE_Q: usize = 64;
/// Key positions per tile (`GGML_FA_TILE_KV`).
pub const TILE_KV: usize = 64;

/// Which kernels: a SIMD level, and whether to run the scalar references of that level's
/// kernels instead (for tests; the same values bit for bit).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Kernels {
    pub level: SimdLevel,
    pub reference: bool,
}

impl Kernels {
    /// The detected level's kernels.
    pub fn detect() -> Kernels {
        Kernels {
            level: SimdLevel::detect(),
            reference: false,
        }
    }

    /// Whether this runs the AVX-512 kernels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn avx512(self) -> bool {
        !self.reference && self.level == SimdLevel::Avx512 && self.level.is_available()
    }

    /// Whether this runs the AVX2 kernels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn avx2(self) -> bool {
        !self.reference && self.level == SimdLevel::Avx2 && self.level.is_available()
    }
}

/// An element of a key/value cache: f16 (llama.cpp's), or f32 (the float reference path's).
pub(crate) trait KvElem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i]` widened to f32.
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn widen(src: &[f16], dst: &mut [f32]) {
        super::ops::f16_to_f32_slice(src, dst)
    }
}

impl KvElem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
}

/// `[n_tok, n_head, head_dim_v]`: [`super::ops::attention`] in the tiled form, for a batch of
/// any size (llama.cpp takes it from [`TILE_Q`] queries; the float reference path always), over
/// an f16 cache or, on the float reference path, an f32 one (the keys and values are widened
/// to f32 first either way).
pub(crate) fn attention_tiled<T: KvElem>(
    kernels: Kernels,
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    shape: &super::ops::AttnShape,
) -> Vec<f32> {
    shape.check(q, k_cache, v_cache);
    if shape.n_tok == 0 {
        return Vec::new();
    }
    let &super::ops::AttnShape {
        n_tok,
        pos0,
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        scale,
        ..
    } = shape;
    let (dk, dv) = (head_dim, head_dim_v);
    let n_kv = pos0 + n_tok;
    let group = n_head / n_head_kv;
    // The first position any query sees, and the key tiles that hold what they see.
    let first_of = |pos: usize| shape.first_seen(pos);
    let lo = first_of(pos0);
    let (t_lo, t_hi) = (lo / TILE_KV, (n_kv - 1) / TILE_KV + 1);
    let n_tiles = t_hi - t_lo;
    // Keys widened and transposed once per tile and head, `[head][tile][d][TILE_KV]`
    // (positions past the cache or before `lo` are zero: they are masked).
    let tile_len = dk * TILE_KV;
    let mut kt = vec![0f32; n_head_kv * n_tiles * tile_len];
    kt.par_chunks_mut(tile_len).enumerate().for_each(|(idx, t)| {
        let (kvh, ti) = (idx / n_tiles, t_lo + idx % n_tiles);
        for j in 0..TILE_KV {
            let p = ti * TILE_KV + j;
            if p < lo || p >= n_kv {
                continue;
            }
            let row = &k_cache[(p * n_head_kv + kvh) * dk..][..dk];
            for (d, &x) in row.iter().enumerate() {
                t[d * TILE_KV + j] = x.to_f32();
            }
        }
    });
    // Values widened once, `[pos − lo][n_head_kv][dv]`.
    let v_src = &v_cache[lo * n_head_kv * dv..n_kv * n_head_kv * dv];
    let mut v = vec![0f32; v_src.len()];
    v.par_chunks_mut(4096)
        .zip(v_src.par_chunks(4096))
        .for_each(|(d, s)| T::widen(s, d));
    let v_stride = n_head_kv * dv;

    // One task per head and tile of query rows.
    let q_tiles = n_tok.div_ceil(TILE_Q);
    let outs: Vec<(usize, usize, Vec<f32>)> = (0..n_head * q_tiles)
        .into_par_iter()
        .map(|task| {
            let (h, qt) = (task / q_tiles, task % q_tiles);
            let kvh = h / group;
            let t0 = qt * TILE_Q;
            let rows = TILE_Q.min(n_tok - t0);
            let mut qr = vec![0f32; rows * dk];
            for (i, dst) in qr.chunks_exact_mut(dk).enumerate() {
                dst.copy_from_slice(&q[((t0 + i) * n_head + h) * dk..][..dk]);
            }
            let mut m = vec![f32::NEG_INFINITY; rows];
            let mut s = vec![0f32; rows];
            let mut acc = vec![0f32; rows * dv];
            let mut kq = vec![0f32; rows * TILE_KV];
            let mut seen = vec![false; rows];
            let (p_first, p_last) = (first_of(pos0 + t0), pos0 + t0 + rows - 1);
            for ti in p_first / TILE_KV..=p_last / TILE_KV {
                let base = ti * TILE_KV;
                let tile = &kt[(kvh * n_tiles + ti - t_lo) * tile_len..][..tile_len];
                kq_tile(kernels, &qr, tile, dk, rows, &mut kq);
                for (i, row) in kq.chunks_exact_mut(TILE_KV).enumerate() {
                    let pos = pos0 + t0 + i;
                    let (a, b) = (first_of(pos), pos);
                    let mut any = false;
                    for (j, x) in row.iter_mut().enumerate() {
                        let p = base + j;
                        if p < a || p > b {
                            *x = f32::NEG_INFINITY;
                        } else {
                            *x *= scale;
                            any = true;
                        }
                    }
                    seen[i] = any;
                    if !any {
                        // ggml zeroes a row that sees nothing of the tile (no contribution).
                        row.fill(0.0);
                        continue;
                    }
                    let tile_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let m_new = m[i].max(tile_max);
                    if m_new > m[i] {
                        let ms = (m[i] - m_new).exp();
                        acc[i * dv..][..dv].iter_mut().for_each(|a| *a *= ms);
                        s[i] *= ms;
                    }
                    m[i] = m_new;
                    let row = <&mut [f32; TILE_KV]>::try_from(row).expect("a tile row");
                    s[i] = (s[i] as f64 + softmax_tile(kernels, row, m_new)) as f32;
                }
                // The positions this tile holds in `v`: p_j = 0 elsewhere, and fma(0, v, acc)
                // leaves acc as it is (but for the sign of a zero, or a non-finite v, which
                // ggml would turn into NaN there).
                let j0 = base.max(lo);
                let j1 = (base + TILE_KV).min(n_kv);
                if j0 < j1 && seen.iter().any(|&x| x) {
                    let vt = &v[((j0 - lo) * n_head_kv + kvh) * dv..];
                    let t = PvTile {
                        p: &kq,
                        j0: j0 - base,
                        n: j1 - j0,
                        v: vt,
                        stride: v_stride,
                        dv,
                        rows,
                    };
                    pv_tile(kernels, &t, &mut acc);
                }
            }
            for (a, &s) in acc.chunks_exact_mut(dv).zip(&s) {
                let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
                a.iter_mut().for_each(|x| *x *= inv);
            }
            (h, t0, acc)
        })
        .collect();
    let mut out = vec![0f32; n_tok * n_head * dv];
    for (h, t0, acc) in outs {
        for (i, row) in acc.chunks_exact(dv).enumerate() {
            out[((t0 + i) * n_head + h) * dv..][..dv].copy_from_slice(row);
        }
    }
    out
}

/// `kq[i][j] = Σ_d q[i][d]·kt[d][j]` for `i < rows`, `j <` [`TILE_KV`]: each sum a chain of
/// fused multiply-adds in `d` order from 0 (`simd_gemm`). `q` is `[rows][dk]`, `kt`
/// `[dk][TILE_KV]`.
fn kq_tile(kernels: Kernels, q: &[f32], kt: &[f32], dk: usize, rows: usize, kq: &mut [f32]) {
    let (q, kt, kq) = (&q[..rows * dk], &kt[..dk * TILE_KV], &mut kq[..rows * TILE_KV]);
    #[cfg(target_arch = "x86_64")]
    {
        if kernels.avx512() {
            // SAFETY: AVX-512 detected; the slices have the sizes the kernel reads.
            return unsafe { x86::avx512::kq_tile(q, kt, dk, kq) };
        }
        if kernels.avx2() {
            // SAFETY: AVX2 and FMA detected; sizes as above.
            return unsafe { x86::avx2::kq_tile(q, kt, dk, kq) };
        }
    }
    let _ = kernels;
    kq_tile_ref(q, kt, dk, kq);
}

/// [`kq_tile`], one element at a time (the reference).
fn kq_tile_ref(q: &[f32], kt: &[f32], dk: usize, kq: &mut [f32]) {
    for (qi, out) in q.chunks_exact(dk).zip(kq.chunks_exact_mut(TILE_KV)) {
        for (j, o) in out.iter_mut().enumerate() {
            let mut a = 0f32;
            for (d, &x) in qi.iter().enumerate() {
                a = x.mul_add(kt[d * TILE_KV + j], a);
            }
            *o = a;
        }
    }
}

/// One tile's weighted sum of values: weights `p` (`[rows][TILE_KV]`, columns `j0..j0 + n`)
/// against value rows `v_j = v[j·stride..][..dv]`, `j < n`.
#[derive(Clone, Copy)]
struct PvTile<'a> {
    p: &'a [f32],
    j0: usize,
    n: usize,
    v: &'a [f32],
    stride: usize,
    dv: usize,
    rows: usize,
}

/// `acc[i][c] += Σ_j p[i][j0 + j]·v_j[c]` over `j < n` for `i < rows`, `c < dv` (`acc` is
/// `[rows][dv]`), each a chain of fused multiply-adds in `j` order continuing from `acc`
/// (`simd_gemm`).
fn pv_tile(kernels: Kernels, t: &PvTile<'_>, acc: &mut [f32]) {
    assert!(t.j0 + t.n <= TILE_KV && t.p.len() >= t.rows * TILE_KV && acc.len() >= t.rows * t.dv);
    assert!(
        t.n == 0 || t.v.len() >= (t.n - 1) * t.stride + t.dv,
        "value rows out of range"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if kernels.avx512() {
            // SAFETY: AVX-512 detected; sizes checked above.
            return unsafe { x86::avx512::pv_tile(t, acc) };
        }
        if kernels.avx2() {
            // SAFETY: AVX2 and FMA detected; sizes checked above.
            return unsafe { x86::avx2::pv_tile(t, acc) };
        }
    }
    let _ = kernels;
    pv_tile_ref(t, acc, 0);
}

/// [`pv_tile`] for the columns `c0..dv`, one element at a time (the reference, and the
/// kernels' leftover columns).
fn pv_tile_ref(t: &PvTile<'_>, acc: &mut [f32], c0: usize) {
    let dv = t.dv;
    for i in 0..t.rows {
        let pi = &t.p[i * TILE_KV + t.j0..][..t.n];
        for c in c0..dv {
            let mut a = acc[i * dv + c];
            for (j, &pj) in pi.iter().enumerate() {
                a = pj.mul_add(t.v[j * t.stride + c], a);
            }
            acc[i * dv + c] = a;
        }
    }
}

/// `s = exp(s − max)` in place over a whole tile, returning the sum as
/// `ggml_vec_soft_max_f32` (vec.cpp) forms it for the level: AVX-512, sixteen lanes of
/// `ggml_v_expf` per vector, each vector's sum reduced by halves (as `_mm512_reduce_add_ps`)
/// and added in f64; AVX2, eight lanes, reduced as ggml's SSE shuffles do; other levels,
/// libm's `expf` one value at a time, added in f64.
fn softmax_tile(kernels: Kernels, s: &mut [f32; TILE_KV], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if kernels.avx512() {
            // SAFETY: AVX-512 detected.
            return unsafe { x86::avx512::softmax_tile(s, max) };
        }
        if kernels.avx2() {
            // SAFETY: AVX2 and FMA detected.
            return unsafe { x86::avx2::softmax_tile(s, max) };
        }
    }
    softmax_tile_ref(kernels.level, s, max)
}

/// [`softmax_tile`] one lane at a time, with the level's expf form and reduction order.
fn softmax_tile_ref(level: SimdLevel, s: &mut [f32; TILE_KV], max: f32) -> f64 {
    let mut sum = 0f64;
    match level {
        SimdLevel::Avx512 | SimdLevel::Avx2 => {
            let (lanes, expf): (usize, fn(f32) -> f32) = if level == SimdLevel::Avx512 {
                (16, super::ops::expf_ggml_avx512)
            } else {
                (8, super::ops::expf_ggml_avx2)
            };
            for g in s.chunks_exact_mut(lanes) {
                for x in g.iter_mut() {
                    *x = expf(*x - max);
                }
                sum += halves_sum(g) as f64;
            }
        }
        _ => {
            for x in s.iter_mut() {
                *x = (*x - max).exp();
                sum += *x as f64;
            }
        }
    }
    sum
}

/// The sum of 16 or 8 lanes by halves: lane i + lane i + n/2 until one is left; for 8 lanes
/// the last two steps pair lanes (0, 2) and (1, 3) and then add those two, which is also what
/// ggml's `movehl` / `movehdup` sequence does.
fn halves_sum(x: &[f32]) -> f32 {
    let mut v = x.to_vec();
    while v.len() > 1 {
        let h = v.len() / 2;
        v = (0..h).map(|i| v[i] + v[i + h]).collect();
    }
    v[0]
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// The tile GEMM kernels for one vector width: `kq_tile_$sfx` ([`super::kq_tile`]: four
    /// rows × `KQ_W` vectors of columns at a time, then single rows) and `pv_tile_$sfx`
    /// ([`super::pv_tile`]: four rows × `PV_W` vectors of columns, then four rows × one vector,
    /// then the leftover columns one at a time with the reference). Every element is one chain
    /// of fused multiply-adds in the reference's order, so the blocking changes no value.
    macro_rules! tile_kernels {
        (
            $sfx:ident, $feat:literal, lanes = $lanes:literal, kq_w = $kq_w:literal, pv_w = $pv_w:literal,
            $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident, $sub:ident,
            expf = $expf:path, halves = $halves:path
        ) => {
            pub(super) mod $sfx {
                use super::super::TILE_KV;
                use std::arch::x86_64::*;

                const LANES: usize = $lanes;

                /// [`super::super::softmax_tile`]: `ggml_v_expf` a vector at a time, each
                /// vector's sum by halves, added in f64.
                ///
                /// # Safety
                /// Requires the level's features.
                #[target_feature(enable = $feat)]
                pub unsafe fn softmax_tile(s: &mut [f32; TILE_KV], max: f32) -> f64 {
                    let m = $set1(max);
                    let mut sum = 0f64;
                    for g in s.chunks_exact_mut(LANES) {
                        // SAFETY: g holds LANES floats.
                        unsafe {
                            let val = $expf($sub($load(g.as_ptr()), m));
                            $store(g.as_mut_ptr(), val);
                            sum += $halves(val) as f64;
                        }
                    }
                    sum
                }

                /// # Safety
                /// Requires the level's features; `q` is `[rows][dk]`, `kt` `[dk][64]`, `kq`
                /// `[rows][64]`.
                #[target_feature(enable = $feat)]
                pub unsafe fn kq_tile(q: &[f32], kt: &[f32], dk: usize, kq: &mut [f32]) {
                    let rows = kq.len() / TILE_KV;
                    for c0 in (0..TILE_KV).step_by($kq_w * LANES) {
                        let mut i = 0;
                        while i + 4 <= rows {
                            // SAFETY: rows i..i + 4 and the column block exist.
                            unsafe { kq_rows::<4>(q, kt, dk, kq, i, c0) };
                            i += 4;
                        }
                        while i < rows {
                            // SAFETY: row i exists.
                            unsafe { kq_rows::<1>(q, kt, dk, kq, i, c0) };
                            i += 1;
                        }
                    }
                }

                /// Rows `i..i + R`, columns `c0..c0 + KQ_W·LANES` of [`kq_tile`].
                ///
                /// # Safety
                /// As [`kq_tile`], with those rows and columns in range.
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn kq_rows<const R: usize>(
                    q: &[f32],
                    kt: &[f32],
                    dk: usize,
                    kq: &mut [f32],
                    i: usize,
                    c0: usize,
                ) {
                    let mut acc = [[$zero(); $kq_w]; R];
                    for d in 0..dk {
                        let mut b = [$zero(); $kq_w];
                        for (c, b) in b.iter_mut().enumerate() {
                            // SAFETY: kt is dk × 64 and the block ends by column 64.
                            *b = unsafe { $load(kt.as_ptr().add(d * TILE_KV + c0 + LANES * c)) };
                        }
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let a = $set1(q[(i + r) * dk + d]);
                            for (c, acc) in acc.iter_mut().enumerate() {
                                *acc = $fmadd(a, b[c], *acc);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        for (c, &acc) in acc.iter().enumerate() {
                            // SAFETY: row i + r of kq holds 64 floats; the block ends by 64.
                            unsafe { $store(kq.as_mut_ptr().add((i + r) * TILE_KV + c0 + LANES * c), acc) };
                        }
                    }
                }

                /// # Safety
                /// Requires the level's features; the sizes [`super::super::pv_tile`] checks.
                #[target_feature(enable = $feat)]
                pub unsafe fn pv_tile(t: &super::super::PvTile<'_>, acc: &mut [f32]) {
                    let mut c0 = 0;
                    while c0 + $pv_w * LANES <= t.dv {
                        // SAFETY: these columns exist; rows as the caller checked.
                        unsafe { pv_cols::<$pv_w>(t, acc, c0) };
                        c0 += $pv_w * LANES;
                    }
                    while c0 + LANES <= t.dv {
                        // SAFETY: these columns exist.
                        unsafe { pv_cols::<1>(t, acc, c0) };
                        c0 += LANES;
                    }
                    super::super::pv_tile_ref(t, acc, c0);
                }

                /// Columns `c0..c0 + W·LANES` of [`pv_tile`], four rows at a time.
                ///
                /// # Safety
                /// As [`pv_tile`], with those columns in range.
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn pv_cols<const W: usize>(t: &super::super::PvTile<'_>, acc: &mut [f32], c0: usize) {
                    let (p, v, dv) = (t.p, t.v, t.dv);
                    let mut i = 0;
                    while i < t.rows {
                        let r = (t.rows - i).min(4);
                        let mut a = [[$zero(); W]; 4];
                        for (rr, a) in a.iter_mut().enumerate().take(r) {
                            for (c, a) in a.iter_mut().enumerate() {
                                // SAFETY: row i + rr of acc holds dv ≥ c0 + W·LANES floats.
                                *a = unsafe { $load(acc.as_ptr().add((i + rr) * dv + c0 + LANES * c)) };
                            }
                        }
                        for j in 0..t.n {
                            let mut b = [$zero(); W];
                            for (c, b) in b.iter_mut().enumerate() {
                                // SAFETY: value row j is v[j·stride..][..dv].
                                *b = unsafe { $load(v.as_ptr().add(j * t.stride + c0 + LANES * c)) };
                            }
                            for (rr, a) in a.iter_mut().enumerate().take(r) {
                                let pj = $set1(p[(i + rr) * TILE_KV + t.j0 + j]);
                                for (c, a) in a.iter_mut().enumerate() {
                                    *a = $fmadd(pj, b[c], *a);
                                }
                            }
                        }
                        for (rr, a) in a.iter().enumerate().take(r) {
                            for (c, &a) in a.iter().enumerate() {
                                // SAFETY: as the loads.
                                unsafe { $store(acc.as_mut_ptr().add((i + rr) * dv + c0 + LANES * c), a) };
                            }
                        }
                        i += r;
                    }
                }
            }
        };
    }

    tile_kernels!(
        avx512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
        lanes = 16,
        kq_w = 4,
        pv_w = 4,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_sub_ps,
        expf = crate::model::ops::x86::expf_avx512,
        halves = super::halves_512
    );
    tile_kernels!(
        avx2,
        "avx2,fma,f16c",
        lanes = 8,
        kq_w = 2,
        pv_w = 2,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_sub_ps,
        expf = crate::model::ops::x86::expf_avx2,
        halves = super::halves_256
    );

    /// The sum of 16 lanes by halves (`_mm512_reduce_add_ps`'s order).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(in crate::model) fn halves_512(v: __m512) -> f32 {
        halves_256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v)))
    }

    /// The sum of 8 lanes by halves (ggml's `extractf128` / `movehl` / `movehdup` sequence).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn halves_256(v: __m256) -> f32 {
        let h4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut st = seed | 1;
        move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    fn levels() -> Vec<SimdLevel> {
        let l = SimdLevel::available();
        #[cfg(target_arch = "x86_64")]
        assert!(l.contains(&SimdLevel::Avx2), "these tests need an AVX2 CPU");
        l
    }

    /// Each level's tile kernels against their scalar references, bit for bit: every row
    /// count to 9, head sizes with leftover columns, value rows strided, tiles cut short.
    #[test]
    fn tile_kernels_match_their_references() {
        let mut r = rng(11);
        for level in levels() {
            let (simd, reference) = (
                Kernels {
                    level,
                    reference: false,
                },
                Kernels { level, reference: true },
            );
            for (dk, dv) in [(64, 64), (256, 256), (40, 72), (128, 24)] {
                for rows in 1..=9 {
                    let q: Vec<f32> = (0..rows * dk).map(|_| r() * 4.0).collect();
                    let kt: Vec<f32> = (0..dk * TILE_KV).map(|_| r() * 4.0).collect();
                    let (mut a, mut b) = (vec![0f32; rows * TILE_KV], vec![1f32; rows * TILE_KV]);
                    kq_tile(simd, &q, &kt, dk, rows, &mut a);
                    kq_tile(reference, &q, &kt, dk, rows, &mut b);
                    assert_eq!(bits(&a), bits(&b), "{level:?} kq, dk {dk}, {rows} rows");

                    let p: Vec<f32> = (0..rows * TILE_KV).map(|_| r() + 0.5).collect();
                    let stride = 2 * dv + 8;
                    let v: Vec<f32> = (0..TILE_KV * stride).map(|_| r() * 8.0).collect();
                    let acc0: Vec<f32> = (0..rows * dv).map(|_| r() * 100.0).collect();
                    for (j0, n) in [(0, TILE_KV), (5, 40), (63, 1), (10, 0)] {
                        let (mut a, mut b) = (acc0.clone(), acc0.clone());
                        let t = PvTile {
                            p: &p,
                            j0,
                            n,
                            v: &v,
                            stride,
                            dv,
                            rows,
                        };
                        pv_tile(simd, &t, &mut a);
                        pv_tile(reference, &t, &mut b);
                        assert_eq!(bits(&a), bits(&b), "{level:?} pv, dv {dv}, {rows} rows, {j0}+{n}");
                    }
                }
            }
            for max in [0.0f32, 3.0, 50.0] {
                let mut x: [f32; TILE_KV] = std::array::from_fn(|_| r() * 60.0);
                x[3] = f32::NEG_INFINITY;
                x[40] = max;
                let (mut a, mut b) = (x, x);
                let (sa, sb) = (softmax_tile(simd, &mut a, max), softmax_tile(reference, &mut b, max));
                assert_eq!(bits(&a), bits(&b), "{level:?} softmax, max {max}");
                assert_eq!(sa.to_bits(), sb.to_bits(), "{level:?} softmax sum, max {max}");
                assert_eq!(a[3], 0.0);
            }
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// A cache of `n_kv` positions and `n_tok` queries at its end, with random values.
    struct Case {
        q: Vec<f32>,
        k: Vec<f16>,
        v: Vec<f16>,
        n_tok: usize,
        pos0: usize,
        heads: (usize, usize),
        dims: (usize, usize),
        window: Option<usize>,
    }

    fn case(
        seed: u64,
        n_tok: usize,
        pos0: usize,
        heads: (usize, usize),
        dims: (usize, usize),
        window: Option<usize>,
    ) -> Case {
        let mut r = rng(seed);
        let n_kv = pos0 + n_tok;
        Case {
            q: (0..n_tok * heads.0 * dims.0).map(|_| r() * 3.0).collect(),
            k: (0..n_kv * heads.1 * dims.0).map(|_| f16::from_f32(r() * 3.0)).collect(),
            v: (0..n_kv * heads.1 * dims.1).map(|_| f16::from_f32(r() * 2.0)).collect(),
            n_tok,
            pos0,
            heads,
            dims,
            window,
        }
    }

    fn run(c: &Case, kernels: Kernels) -> Vec<f32> {
        let shape = crate::model::ops::AttnShape {
            n_tok: c.n_tok,
            pos0: c.pos0,
            n_head: c.heads.0,
            n_head_kv: c.heads.1,
            head_dim: c.dims.0,
            head_dim_v: c.dims.1,
            scale: 0.125,
            window: c.window,
        };
        attention_tiled(kernels, &c.q, &c.k, &c.v, &shape)
    }

    /// Softmax attention in f64 from the definition (causal, windowed, grouped heads).
    fn exact(c: &Case) -> Vec<f64> {
        let ((nh, nkv), (dk, dv)) = (c.heads, c.dims);
        let mut out = vec![0f64; c.n_tok * nh * dv];
        for t in 0..c.n_tok {
            let pos = c.pos0 + t;
            let first = c.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let q = &c.q[(t * nh + h) * dk..][..dk];
                let s: Vec<f64> = (first..=pos)
                    .map(|p| {
                        let k = &c.k[(p * nkv + kvh) * dk..][..dk];
                        q.iter().zip(k).map(|(&a, b)| a as f64 * b.to_f64()).sum::<f64>() * 0.125
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = w.iter().sum();
                for (i, p) in (first..=pos).enumerate() {
                    let v = &c.v[(p * nkv + kvh) * dv..][..dv];
                    for (o, x) in out[(t * nh + h) * dv..][..dv].iter_mut().zip(v) {
                        *o += w[i] / sum * x.to_f64();
                    }
                }
            }
        }
        out
    }

    /// The whole tiled attention: each level's kernels give the values of their references
    /// bit for bit, and both are the softmax attention of the definition (to f32 rounding),
    /// for grouped heads, a sliding window, a cache already holding positions, and query
    /// tiles cut short.
    #[test]
    fn tiled_attention_is_attention() {
        let cases = [
            case(1, 64, 0, (4, 1), (64, 64), None),
            case(2, 130, 77, (4, 2), (40, 72), None),
            case(3, 100, 300, (2, 2), (32, 32), Some(90)),
            case(4, 70, 0, (3, 1), (16, 24), Some(20)),
        ];
        for c in &cases {
            let want = exact(c);
            for level in levels() {
                let got = run(
                    c,
                    Kernels {
                        level,
                        reference: false,
                    },
                );
                let r = run(c, Kernels { level, reference: true });
                assert_eq!(bits(&got), bits(&r), "{level:?}: kernels against references");
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{level:?} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
