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
///
/// The scalar reference of [`make_qx_quants_lanes`], which the Q6_K quantizer uses.
#[cfg_attr(not(test), allow(dead_code))]
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
/// The scalar reference of [`make_qkx2_quants_lanes`], which the quantizers use.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(test), allow(dead_code))]
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

/// [`make_qkx2_quants`] for `L` independent groups of `N` elements at once, bit for bit what
/// `L` calls of it give (`use_mad` false, the Q4_K / Q5_K case): every group runs the same
/// operations in the same order in its own lane, the branches become per-lane selects, so the
/// compiler can vectorize across groups instead of waiting on each group's running sums.
/// Inputs and `l_out` are transposed, `[element][group]`; returns `(scale, the_min)` per group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants_lanes<const L: usize, const N: usize>(
    nmax: i32,
    x: &[[f32; L]; N],
    weights: &[[f32; L]; N],
    l_out: &mut [[u8; L]; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; L], [f32; L]) {
    let clamp = |l: i32| 0.max(nmax.min(l));
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = [0f32; L];
    for j in 0..L {
        sum_x[j] = sum_w[j] * x[0][j];
    }
    for i in 1..N {
        for j in 0..L {
            let v = x[i][j];
            if v < min[j] {
                min[j] = v;
            }
            if v > max[j] {
                max[j] = v;
            }
            let w = weights[i][j];
            sum_w[j] += w;
            sum_x[j] += w * v;
        }
    }
    let mut flat = [false; L];
    for j in 0..L {
        if min[j] > 0.0 {
            min[j] = 0.0;
        }
        flat[j] = max[j] == min[j];
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; L];
    let mut scale = [0f32; L];
    for j in 0..L {
        iscale[j] = nmaxf / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    let mut best_error = [0f32; L];
    for i in 0..N {
        for j in 0..L {
            let l = clamp(nearest_int(iscale[j] * (x[i][j] - min[j])));
            l_out[i][j] = l as u8;
            let diff = scale[j] * l as u8 as f32 + min[j] - x[i][j];
            best_error[j] += weights[i][j] * (diff * diff);
        }
    }
    let mut laux = [[0u8; L]; N];
    let steps = if nstep < 1 { 0..0 } else { 0..nstep + 1 };
    for is in steps {
        for j in 0..L {
            iscale[j] = (rmin + rdelta * is as f32 + nmaxf) / (max[j] - min[j]);
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; L], [0f32; L], [0f32; L]);
        for i in 0..N {
            for j in 0..L {
                let l = clamp(nearest_int(iscale[j] * (x[i][j] - min[j])));
                laux[i][j] = l as u8;
                let w = weights[i][j];
                let lf = l as f32;
                sum_l[j] += w * lf;
                sum_l2[j] += w * lf * lf;
                sum_xl[j] += w * lf * x[i][j];
            }
        }
        let (mut this_scale, mut this_min, mut ok) = ([0f32; L], [0f32; L], [false; L]);
        for j in 0..L {
            let d = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = d > 0.0 && !flat[j];
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d;
            if this_min[j] > 0.0 {
                this_min[j] = 0.0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
        }
        let mut cur_error = [0f32; L];
        for i in 0..N {
            for j in 0..L {
                let diff = this_scale[j] * laux[i][j] as f32 + this_min[j] - x[i][j];
                cur_error[j] += weights[i][j] * (diff * diff);
            }
        }
        let mut take = [false; L];
        for j in 0..L {
            take[j] = ok[j] && cur_error[j] < best_error[j];
            if take[j] {
                best_error[j] = cur_error[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
            }
        }
        if take.iter().any(|&t| t) {
            for i in 0..N {
                for j in 0..L {
                    if take[j] {
                        l_out[i][j] = laux[i][j];
                    }
                }
            }
        }
    }
    let mut the_min = [0f32; L];
    for j in 0..L {
        if flat[j] {
            scale[j] = 0.0;
            for row in l_out.iter_mut() {
                row[j] = 0;
            }
        }
        the_min[j] = -min[j];
    }
    (scale, the_min)
}

/// [`make_qx_quants`] with `rmse_type` 1 and no `qw` (weights `x²`, the Q6_K case) for `L`
/// independent groups of `N` elements at once, bit for bit what `L` calls of it give (see
/// [`make_qkx2_quants_lanes`]). Inputs and `l_out` are `[element][group]`; returns the scales.
pub(crate) fn make_qx_quants_lanes<const L: usize, const N: usize>(
    nmax: i32,
    x: &[[f32; L]; N],
    l_out: &mut [[i8; L]; N],
) -> [f32; L] {
    let clamp = |l: i32| (-nmax).max((nmax - 1).min(l));
    let (mut max, mut amax) = ([0f32; L], [0f32; L]);
    for i in 0..N {
        for j in 0..L {
            let ax = x[i][j].abs();
            if ax > amax[j] {
                amax[j] = ax;
                max[j] = x[i][j];
            }
        }
    }
    let mut zero = [false; L];
    let mut iscale = [0f32; L];
    for j in 0..L {
        zero[j] = amax[j] < GROUP_MAX_EPS;
        iscale[j] = (-nmax) as f32 / max[j];
    }
    let (mut sumlx, mut suml2) = ([0f32; L], [0f32; L]);
    for i in 0..N {
        for j in 0..L {
            let v = x[i][j];
            let l = clamp(nearest_int(iscale[j] * v));
            l_out[i][j] = (l + nmax) as i8;
            let w = v * v;
            let lf = l as f32;
            sumlx[j] += w * v * lf;
            suml2[j] += w * lf * lf;
        }
    }
    let (mut scale, mut best) = ([0f32; L], [0f32; L]);
    for j in 0..L {
        scale[j] = if suml2[j] != 0.0 { sumlx[j] / suml2[j] } else { 0.0 };
        best[j] = scale[j] * sumlx[j];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        for j in 0..L {
            iscale[j] = -(nmax as f32 + 0.1f32 * is as f32) / max[j];
        }
        let (mut sumlx, mut suml2) = ([0f32; L], [0f32; L]);
        for i in 0..N {
            for j in 0..L {
                let v = x[i][j];
                let l = clamp(nearest_int(iscale[j] * v));
                let w = v * v;
                let lf = l as f32;
                sumlx[j] += w * v * lf;
                suml2[j] += w * lf * lf;
            }
        }
        let mut take = [false; L];
        for j in 0..L {
            take[j] = !zero[j] && suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j];
            if take[j] {
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
            }
        }
        if take.iter().any(|&t| t) {
            for i in 0..N {
                for j in 0..L {
                    if take[j] {
                        l_out[i][j] = (nmax + clamp(nearest_int(iscale[j] * x[i][j]))) as i8;
                    }
                }
            }
        }
    }
    for j in 0..L {
        if zero[j] {
            scale[j] = 0.0;
            for row in l_out.iter_mut() {
                row[j] = 0;
            }
        }
    }
    scale
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
    // The eight sub-blocks' fits run side by side ([`make_qkx2_quants_lanes`]), transposed.
    let mut xt = [[0f32; 8]; 32];
    let mut wt = [[0f32; 8]; 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (i, &v) in xs.iter().enumerate() {
            xt[i][j] = v;
            wt[i][j] = av_x + v.abs();
        }
    }
    let mut lt = [[0u8; 8]; 32];
    let (scales, mins) = make_qkx2_quants_lanes::<8, 32>(nmax, &xt, &wt, &mut lt, rmin, 0.1, nstep);
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..QK_K / 32 {
        for i in 0..32 {
            l[32 * j + i] = lt[i][j];
        }
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
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

/// The integer sums of one super-block in the K-quant four-row kernels (x86, AVX-512): for two
/// unpacked rows (`q[r][k]` the 64 unsigned quants of group k, `sc[r][k]` their i16 scales)
/// and four activation blocks, Σ_k `vpdpwssd(vpmaddubsw(q, a), sc)` per (row, token).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) fn sumi_2x4(
    q: [&[[u8; 64]; 4]; 2],
    sc: [&[[i16; 32]; 4]; 2],
    ys: [&crate::k_quants::q8_k::BlockQ8_K; 4],
) -> [[std::arch::x86_64::__m512i; 4]; 2] {
    use std::arch::x86_64::*;
    let mut sumi = [[_mm512_setzero_si512(); 4]; 2];
    for k in 0..4 {
        // SAFETY: 64 bytes of each block's 256 quants from 64·k.
        let a: [__m512i; 4] =
            std::array::from_fn(|t| unsafe { _mm512_loadu_si512(ys[t].qs.as_ptr().add(64 * k) as *const _) });
        for r in 0..2 {
            // SAFETY: 64-byte arrays; unaligned loads.
            let (qv, scv) = unsafe {
                (
                    _mm512_loadu_si512(q[r][k].as_ptr() as *const _),
                    _mm512_loadu_si512(sc[r][k].as_ptr() as *const _),
                )
            };
            for t in 0..4 {
                sumi[r][t] = _mm512_dpwssd_epi32(sumi[r][t], _mm512_maddubs_epi16(qv, a[t]), scv);
            }
        }
    }
    sumi
}

/// The driver of the K-quant four-row kernels (x86): the super-blocks all rows and tokens
/// have, each row unpacked once into `U`s (`unpack` per block, into a per-thread buffer), then
/// rows in pairs against tokens in fours (a short last group repeats its last token) through
/// `tile`, whose values go to `outs[r][t]`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn four_rows_by_pairs<B, U: Copy + 'static>(
    buf: &'static std::thread::LocalKey<std::cell::RefCell<Vec<U>>>,
    zero: U,
    xs: [&[B]; 4],
    ys: &[&[crate::k_quants::q8_k::BlockQ8_K]],
    outs: [&mut [f32]; 4],
    mut unpack: impl FnMut(&B, &mut U),
    tile: impl Fn([&[U]; 2], [&[crate::k_quants::q8_k::BlockQ8_K]; 4], usize) -> [[f32; 4]; 2],
) {
    let n = ys
        .iter()
        .fold(xs.iter().fold(usize::MAX, |m, x| m.min(x.len())), |m, y| m.min(y.len()));
    let n_tok = ys.len();
    buf.with_borrow_mut(|w| {
        w.resize(4 * n, zero);
        for (x, rw) in xs.iter().zip(w.chunks_exact_mut(n.max(1))) {
            for (bx, u) in x[..n].iter().zip(rw.iter_mut()) {
                unpack(bx, u);
            }
        }
        let [o0, o1, o2, o3] = outs;
        for (pair, mut outs) in [[o0, o1], [o2, o3]].into_iter().enumerate() {
            let rows = [&w[2 * pair * n..][..n], &w[(2 * pair + 1) * n..][..n]];
            for t0 in (0..n_tok).step_by(4) {
                let tok: [&[crate::k_quants::q8_k::BlockQ8_K]; 4] =
                    std::array::from_fn(|j| ys[(t0 + j).min(n_tok - 1)]);
                let nt = (n_tok - t0).min(4);
                for (out, s) in outs.iter_mut().zip(tile(rows, tok, n)) {
                    out[t0..t0 + nt].copy_from_slice(&s[..nt]);
                }
            }
        }
    });
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

    /// Groups for the lane tests: random magnitudes and signs, all-equal, all-zero, all
    /// positive and tiny groups, so every branch of the fits is taken.
    fn lane_groups<const L: usize, const N: usize>(seed: u64) -> [[f32; L]; N] {
        let mut st = seed | 1;
        let mut rnd = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut x = [[0f32; L]; N];
        for j in 0..L {
            let kind = (rnd() * 6.0) as usize;
            let mag = 10f64.powf(rnd() * 8.0 - 4.0);
            let c = (rnd() - 0.5) * mag;
            for row in x.iter_mut() {
                row[j] = match kind {
                    0 => c as f32,
                    1 => 0.0,
                    2 => (rnd() * mag) as f32,
                    3 => ((rnd() - 0.5) * 1e-17) as f32,
                    _ => ((rnd() - 0.5) * mag) as f32,
                };
            }
        }
        x
    }

    #[test]
    fn qkx2_lanes_equal_the_scalar_fit() {
        for seed in 0..300u64 {
            let x = lane_groups::<8, 32>(seed * 7919 + 1);
            let mut w = [[0f32; 8]; 32];
            for i in 0..32 {
                for j in 0..8 {
                    w[i][j] = 0.25 + x[i][j].abs();
                }
            }
            for (nmax, rmin, nstep) in [(15, -1.0, 20), (31, -0.5, 15), (15, -1.0, 0)] {
                let mut lt = [[0u8; 8]; 32];
                let (s, m) = make_qkx2_quants_lanes::<8, 32>(nmax, &x, &w, &mut lt, rmin, 0.1, nstep);
                for j in 0..8 {
                    let xs: Vec<f32> = (0..32).map(|i| x[i][j]).collect();
                    let ws: Vec<f32> = (0..32).map(|i| w[i][j]).collect();
                    let (mut l, mut laux) = ([0u8; 32], [0u8; 32]);
                    let (s1, m1) = make_qkx2_quants(nmax, &xs, &ws, &mut l, &mut laux, rmin, 0.1, nstep, false);
                    assert_eq!(
                        (s[j].to_bits(), m[j].to_bits()),
                        (s1.to_bits(), m1.to_bits()),
                        "seed {seed} group {j}"
                    );
                    assert!((0..32).all(|i| lt[i][j] == l[i]), "seed {seed} group {j}: quants");
                }
            }
        }
    }

    #[test]
    fn qx_lanes_equal_the_scalar_fit() {
        for seed in 0..300u64 {
            let x = lane_groups::<16, 16>(seed * 104729 + 3);
            let mut lt = [[0i8; 16]; 16];
            let s = make_qx_quants_lanes::<16, 16>(32, &x, &mut lt);
            for j in 0..16 {
                let xs: Vec<f32> = (0..16).map(|i| x[i][j]).collect();
                let mut l = [0i8; 16];
                let s1 = make_qx_quants(32, &xs, &mut l, 1, None);
                assert_eq!(s[j].to_bits(), s1.to_bits(), "seed {seed} group {j}");
                assert!((0..16).all(|i| lt[i][j] == l[i]), "seed {seed} group {j}: quants");
            }
        }
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

    /// `nt` activation rows derived from `y`: its quants rotated by 37·t, its scales times
    /// 1 + t/2.
    fn derived_acts(y: &[BlockQ8_K], nt: usize) -> Vec<Vec<BlockQ8_K>> {
        let q: Vec<i8> = y.iter().flat_map(|b| b.qs).collect();
        (0..nt)
            .map(|t| {
                let q: Vec<i8> = (0..q.len()).map(|i| q[(i + 37 * t) % q.len()]).collect();
                let d: Vec<f32> = y.iter().map(|b| b.d * (1.0 + t as f32 * 0.5)).collect();
                act_blocks(&q, &d)
            })
            .collect()
    }

    /// [`VecDot::vec_dot_multi`] equals [`VecDot::vec_dot`] bit for bit at every level, for
    /// `nt` activation rows derived from `y` (rotated quants, other scales).
    pub fn check_multi_tokens<B: VecDot<Act = BlockQ8_K>>(
        x: &[B],
        y: &[BlockQ8_K],
        nt: usize,
    ) -> Result<(), TestCaseError> {
        let rows = derived_acts(y, nt);
        let ys: Vec<&[BlockQ8_K]> = rows.iter().map(|r| r.as_slice()).collect();
        for level in SimdLevel::available() {
            let mut out = [0f32; 4];
            B::vec_dot_multi(level, x, &ys, &mut out[..nt]);
            for t in 0..nt {
                let want = B::vec_dot(level, x, ys[t]);
                prop_assert_eq!(out[t].to_bits(), want.to_bits(), "{:?} token {}", level, t);
            }
        }
        Ok(())
    }

    /// [`VecDot::vec_dot_four_rows`] equals [`VecDot::vec_dot`] bit for bit at every level,
    /// for four weight rows (`x` and three rotations of its blocks) and `nt` activation rows
    /// derived from `y` as in [`check_multi_tokens`].
    pub fn check_four_rows<B: VecDot<Act = BlockQ8_K>>(
        x: &[B],
        y: &[BlockQ8_K],
        nt: usize,
    ) -> Result<(), TestCaseError> {
        let rows: Vec<Vec<B>> = (0..4)
            .map(|r| (0..x.len()).map(|i| x[(i + r) % x.len()]).collect())
            .collect();
        let acts = derived_acts(y, nt);
        let ys: Vec<&[BlockQ8_K]> = acts.iter().map(|r| r.as_slice()).collect();
        for level in SimdLevel::available() {
            let mut out = vec![vec![0f32; nt]; 4];
            let [o0, o1, o2, o3] = &mut out[..] else { unreachable!() };
            B::vec_dot_four_rows(
                level,
                std::array::from_fn(|r| rows[r].as_slice()),
                &ys,
                [o0, o1, o2, o3],
            );
            for (r, row) in rows.iter().enumerate() {
                for t in 0..nt {
                    let want = B::vec_dot(level, row, ys[t]);
                    prop_assert_eq!(out[r][t].to_bits(), want.to_bits(), "{:?} row {} token {}", level, r, t);
                }
            }
        }
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
