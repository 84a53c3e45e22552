//! Calibrated baking: requantizing `W + s·B·A` on the original tensor's own grid so that the
//! layer's outputs on real activations move as little as they can, rather than each weight
//! on its own.
//!
//! A bake into a tensor's own type rounds `W + Δ` to a grid whose step is often larger than
//! the adapter's change, so rounding weight by weight loses much of Δ or adds fresh rounding
//! noise. Here the block scales stay as they are (the original `W` is on that grid exactly)
//! and the quants are chosen one input column at a time, each rounding error spread onto the
//! columns not yet rounded in proportion to how the inputs correlate: GPTQ's update (Frantar
//! et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers", Algorithm 1, `gptq.py` `fasterquant`), which minimises ‖(Ŵ − W')·X‖² for
//! the layer's inputs `X` over calibration text, with `H = X·Xᵀ` damped ([`DAMP`]). The
//! inputs are collected with the adapters applied on the fly, so each layer sees what it will
//! see once baked.
//!
//! A block whose target leaves its grid's range takes the scales that ggml's quantizer fits
//! to the target instead, and a row for which plain requantization (ggml's quantizer, weight
//! by weight) gives the smaller ‖(Ŵ − W')·X‖² keeps that: a calibrated bake is never further
//! than a plain one on the calibration inputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use quant::SimdLevel;

use super::LoraPlan;
use crate::model::{Model, ModelError};

/// The damping: `H + λ·I` with λ this fraction of the mean of `diag(H)`. GPTQ uses 0.01 with
/// far more calibration tokens than inputs; with fewer (1032 tokens against gemma-3-270m's
/// 2048 FFN inputs) `H` is singular and 0.01 follows the calibration text too closely: on
/// gemma + jargon the baked model's mean KL from the on-the-fly one, over other text, was
/// 1.07× the base's quantization noise at 0.01 and 0.84× at 0.1 (0.73× at 0.3, 0.78× at 1;
/// measured before blocks that leave their grid took fresh scales, which brought 0.1 to 0.55×).
const DAMP: f32 = 0.1;

/// Input statistics of a model's linear layers over calibration text: per layer input, the
/// Gram matrix `H = Σ_t x_t·x_tᵀ` of its input rows (`[n_in, n_in]`). The projections that read
/// the same input (q, k and v; gate and up) share one.
pub struct Calibration {
    /// Linear id → index of its input's Gram matrix in `grams`.
    group_of: HashMap<usize, usize>,
    /// Per input: `n_in` and `H` (its upper triangle, packed by rows ([`Gram::row_start`]), f32
    /// as in GPTQ: `n_in·(n_in + 1)/2` · 4 bytes, 8 MB for a 2048-wide input).
    grams: Vec<Mutex<Gram>>,
    /// Linear id whose calls are observed → its input's index.
    observed: HashMap<usize, usize>,
    /// Tokens run.
    tokens: usize,
    /// The weights it was collected on ([`Model::weights_id`]).
    pub(crate) weights_id: u64,
}

impl std::fmt::Debug for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calibration")
            .field("tokens", &self.tokens)
            .field("inputs", &self.grams.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

struct Gram {
    n: usize,
    h: Vec<f32>,
}

impl Gram {
    /// An all-zero `H` for `n` inputs.
    fn zeros(n: usize) -> Gram {
        Gram {
            n,
            h: vec![0f32; n * (n + 1) / 2],
        }
    }

    /// Where row `a` of the upper triangle (`H_ab` for `b ≥ a`) starts in `h`.
    fn row_start(&self, a: usize) -> usize {
        a * self.n - a * a.saturating_sub(1) / 2
    }

    /// `H_ij`.
    fn at(&self, i: usize, j: usize) -> f32 {
        let (a, b) = (i.min(j), i.max(j));
        self.h[self.row_start(a) + b - a]
    }
}

impl Calibration {
    /// Run `model` with the adapters of `plan` on the fly over `chunks` (token ids; each chunk
    /// is one sequence from an empty cache) and collect the inputs of the linear layers the
    /// plan's adapters change, where the bake can use them (of a type
    /// [`super::bake::calibrates`]). Each input keeps the upper triangle of an `n_in × n_in`
    /// matrix of f32 ([`Calibration::bytes`]).
    ///
    /// Errors: [`ModelError`] from the forward pass (a token id out of range), and
    /// [`ModelError::NonFiniteLogits`] for a hidden state that is not finite (an adapter scale
    /// too large), naming the chunk and position.
    pub fn collect(model: &Model, plan: &LoraPlan, chunks: &[Vec<u32>]) -> Result<Calibration, ModelError> {
        let ids: Vec<usize> = model
            .linears()
            .filter(|l| !plan.entries(l.id).is_empty() && super::bake::calibrates(l.w.ty))
            .map(|l| l.id)
            .collect();
        let head = ids.contains(&model.output.id);
        let mut group_of = HashMap::new();
        let mut observed = HashMap::new();
        let mut grams = Vec::new();
        let mut tokens = 0;
        // The layers that share an input, the first of each observed for all.
        let mut sets: Vec<Vec<&crate::model::Linear>> = Vec::new();
        for l in &model.layers {
            sets.push(vec![&l.wq, &l.wk, &l.wv]);
            sets.push(vec![&l.wo]);
            sets.push(vec![&l.ffn_gate, &l.ffn_up]);
            sets.push(vec![&l.ffn_down]);
        }
        sets.push(vec![&model.output]);
        for set in sets {
            if !set.iter().any(|lin| ids.contains(&lin.id)) {
                continue;
            }
            let g = grams.len();
            let n = set[0].w.n_in;
            grams.push(Mutex::new(Gram::zeros(n)));
            observed.insert(set[0].id, g);
            for lin in set {
                group_of.insert(lin.id, g);
            }
        }
        let cal = Arc::new(Calibration {
            group_of,
            grams,
            observed,
            tokens: 0,
            weights_id: model.weights_id,
        });
        let mut m = model.clone();
        m.calibration = Some(cal.clone());
        for (c, ids) in chunks.iter().enumerate() {
            let mut kv = m.new_kv_cache(ids.len());
            let x = m.forward_hidden(&mut kv, ids, plan)?;
            // An overflow (a huge adapter scale) is named here, as generation names it, rather
            // than leaving layers unseen.
            let n_embd = model.config.n_embd;
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFiniteLogits {
                    what: format!(
                        "hidden state {} at position {} of calibration chunk {c}",
                        x[i],
                        i / n_embd
                    ),
                    with_adapters: !plan.is_empty(),
                });
            }
            if head {
                // The head's input, as the head computes it, without the head's product.
                let xn = crate::model::ops::rms_norm_to(&x, &model.output_norm, model.config.rms_eps);
                cal.observe(model.output.id, &xn, ids.len());
            }
            tokens += ids.len();
        }
        drop(m);
        let mut cal = Arc::try_unwrap(cal).unwrap_or_else(|_| unreachable!("the model clone holding it is dropped"));
        cal.tokens = tokens;
        Ok(cal)
    }

    /// The calibration tokens the model ran over.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Bytes of the collected statistics.
    pub fn bytes(&self) -> usize {
        self.grams
            .iter()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).h.len() * 4)
            .sum()
    }

    /// Called by the model's linear products (`Model::linear`) and by [`Calibration::collect`]
    /// for the head, for each one: add `x` (`[n_tok, n_in]`) to the Gram
    /// matrix of `id`'s input when it is observed.
    pub(crate) fn observe(&self, id: usize, x: &[f32], n_tok: usize) {
        let Some(&g) = self.observed.get(&id) else {
            return;
        };
        let mut gram = self.grams[g].lock().unwrap_or_else(|e| e.into_inner());
        let n = gram.n;
        let level = SimdLevel::detect();
        // The upper triangle's rows, `H_ab` for b ≥ a.
        let mut rows: Vec<&mut [f32]> = Vec::with_capacity(n);
        let mut rest = &mut gram.h[..];
        for a in 0..n {
            let (row, r) = std::mem::take(&mut rest).split_at_mut(n - a);
            rows.push(row);
            rest = r;
        }
        rows.into_par_iter().enumerate().for_each(|(a, h_row)| {
            on_level(level, || {
                for xt in x.chunks_exact(n).take(n_tok) {
                    let xa = xt[a];
                    if xa != 0.0 {
                        h_row.iter_mut().zip(&xt[a..]).for_each(|(s, &xb)| *s += xa * xb);
                    }
                }
            })
        });
    }

    /// GPTQ's factor for `id`'s input, with GPTQ's column order ("act order": the inputs by
    /// decreasing `H_jj`, so the columns that matter most are rounded first and the rest can
    /// make up for them). `None` when `id`'s input was not observed, was all zero, or its
    /// damped Gram matrix is not positive definite (not finite).
    pub(crate) fn factor(&self, id: usize, level: SimdLevel) -> Option<GptqFactor> {
        let &g = self.group_of.get(&id)?;
        let gram = self.grams[g].lock().unwrap_or_else(|e| e.into_inner());
        let n = gram.n;
        let diag = |i: usize| gram.at(i, i) as f64;
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
        let mean_diag = (0..n).map(diag).sum::<f64>() / n as f64;
        if mean_diag <= 0.0 || !mean_diag.is_finite() {
            return None;
        }
        let damp = DAMP * mean_diag as f32;
        let mut h: Vec<f32> = vec![0f32; n * n];
        for a in 0..n {
            for b in 0..n {
                h[a * n + b] = gram.at(perm[a], perm[b]);
            }
            h[a * n + a] += damp;
        }
        let v = reverse_cholesky(h, n, level)?;
        // Column j of V as row j.
        let mut vt = vec![0f32; n * n];
        for i in 0..n {
            for j in i..n {
                vt[j * n + i] = v[i * n + j];
            }
        }
        Some(GptqFactor { perm, vt, damp })
    }

    /// Which observed input `id` reads (the same for projections that share one), if any.
    pub(crate) fn input_of(&self, id: usize) -> Option<usize> {
        self.group_of.get(&id).copied()
    }
}

/// What GPTQ needs of one layer input ([`Calibration::factor`]).
pub(crate) struct GptqFactor {
    /// The column order: `perm[k]` is the k-th input column rounded.
    pub perm: Vec<usize>,
    /// `Vᵀ` (`[n, n]` row-major, lower triangular) for the upper triangular `V` with
    /// `P·H·Pᵀ + λ·I = V·Vᵀ`: row `j` holds column `j` of `V`. GPTQ's factor, the upper
    /// Cholesky factor of `(P·H·Pᵀ + λ·I)⁻¹`, is `V⁻¹`; [`gptq_rows`] uses `V` itself.
    pub vt: Vec<f32>,
    /// The damping λ.
    pub damp: f32,
}

/// Run `f` compiled for `level`'s instruction set (AVX2 with FMA, or AVX-512), so that the
/// loops it inlines are vectorized for it; plain code for the others. Only the lanes change:
/// the float operations stay separate multiplies and adds (Rust does not fuse them).
#[inline(always)]
fn on_level<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match level {
            // SAFETY: the CPU has the features (`is_available`).
            SimdLevel::Avx512 if level.is_available() => return unsafe { avx512(f) },
            SimdLevel::Avx2 if level.is_available() => return unsafe { avx2(f) },
            _ => {}
        }
    }
    let _ = level;
    f()
}

/// `Σ a·b` in 32 lanes (independent chains for the vector units).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ac, bc) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..32 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Columns factored together by [`reverse_cholesky`]: the rows above read once per block.
const BLOCK: usize = 32;

/// The upper triangular `V` with `H = V·Vᵀ` (a Cholesky factorisation from the last column
/// to the first; `h` symmetric positive definite, `[n, n]`), row-major with zeros below the
/// diagonal; `None` when `h` is not positive definite.
///
/// `V_jj = √(H_jj − Σ_{k>j} V_jk²)` and `V_ij = (H_ij − Σ_{k>j} V_ik·V_jk) / V_jj` for `i < j`,
/// by blocks of [`BLOCK`] columns from the right: first the sums over the columns already
/// done (each row read once per block, in parallel), then the block's own columns.
fn reverse_cholesky(mut h: Vec<f32>, n: usize, level: SimdLevel) -> Option<Vec<f32>> {
    let mut j1 = n;
    while j1 > 0 {
        let j0 = j1.saturating_sub(BLOCK);
        // The block's rows from column j1 on (done), read by every row above.
        let done: Vec<f32> = (j0..j1).flat_map(|j| h[j * n + j1..(j + 1) * n].to_vec()).collect();
        let w = n - j1;
        h[..j1 * n].par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            on_level(level, || {
                let (head, tail) = row.split_at_mut(j1);
                for j in j0.max(i)..j1 {
                    head[j] -= dot(tail, &done[(j - j0) * w..][..w]);
                }
            })
        });
        // The block's columns, last first: the diagonal block, then every row above it.
        for j in (j0..j1).rev() {
            let row_j = &h[j * n..(j + 1) * n];
            let d = row_j[j] - row_j[j + 1..j1].iter().map(|v| v * v).sum::<f32>();
            if !(d > 0.0 && d.is_finite()) {
                return None;
            }
            let vjj = d.sqrt();
            h[j * n + j] = vjj;
            for i in j0..j {
                let s: f32 = (j + 1..j1).map(|k| h[i * n + k] * h[j * n + k]).sum();
                h[i * n + j] = (h[i * n + j] - s) / vjj;
            }
        }
        let diag: Vec<f32> = (j0..j1).flat_map(|j| h[j * n + j0..j * n + j1].to_vec()).collect();
        let b = j1 - j0;
        h[..j0 * n].par_chunks_mut(n).for_each(|row| {
            for j in (j0..j1).rev() {
                let vj = &diag[(j - j0) * b..][..b];
                let s: f32 = (j + 1..j1).map(|k| row[k] * vj[k - j0]).sum();
                row[j] = (row[j] - s) / vj[j - j0];
            }
        });
        j1 = j0;
    }
    for i in 0..n {
        h[i * n..i * n + i].fill(0.0);
    }
    Some(h)
}

/// The grid of a group of rows, interleaved as [`gptq_rows`] takes them: element value
/// `scale·q + offset` for an integer q in `range`.
pub(crate) struct GroupGrid {
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    pub range: (i32, i32),
}

/// GPTQ on a fixed grid for a group of `g` rows: `w` holds the rows' targets interleaved
/// (`w[k·g + r]` is row `r`, input column `perm[k]`), `grid` their grids in the same layout,
/// `f` the factor. Writes the chosen quants to `q` (same layout). Returns, per row, the
/// objective `(Ŵ − W')·H·(Ŵ − W')ᵀ = Σ_t ((Ŵ − W')·x_t)²` over the calibration inputs of
/// GPTQ's choice and of `plain`, other values for the same rows (same layout): the plain
/// requantization.
///
/// GPTQ's update (round column j, spread its error `e_j = (w̃_j − q_j) / U_jj` onto the later
/// columns by row j of `U = V⁻¹`) in closed form: the column-j target after the updates is
/// `w̃_j = w_j + Σ_{i<j} (w_i − q_i)·V_ij / V_jj`, so `V` serves without an inverse; and the
/// damped objective of an error `e` is `‖Vᵀ·e‖²`, whose j-th term is that same sum plus
/// `V_jj·e_j`, less `λ·‖e‖²` for the undamped one.
pub(crate) fn gptq_rows(
    w: &[f32],
    grid: &GroupGrid,
    plain: &[f32],
    f: &GptqFactor,
    g: usize,
    q: &mut [i32],
    level: SimdLevel,
) -> Vec<[f64; 2]> {
    let n = f.perm.len();
    let (lo, hi) = grid.range;
    // `w − q` (in value) for the columns done, and `w − plain`, same layout.
    let mut err = vec![0f32; n * g];
    let err_plain: Vec<f32> = w.iter().zip(plain).map(|(a, b)| a - b).collect();
    let (mut acc, mut acc_plain) = (vec![0f32; g], vec![0f32; g]);
    let mut objective = vec![[0f64; 2]; g];
    let damp = f.damp as f64;
    on_level(level, || {
        for j in 0..n {
            let vj = &f.vt[j * n..][..n];
            acc.fill(0.0);
            acc_plain.fill(0.0);
            for (i, &c) in vj[..j].iter().enumerate() {
                for (a, &e) in acc.iter_mut().zip(&err[i * g..][..g]) {
                    *a += e * c;
                }
                for (a, &e) in acc_plain.iter_mut().zip(&err_plain[i * g..][..g]) {
                    *a += e * c;
                }
            }
            let (vjj, inv) = (vj[j], 1.0 / vj[j]);
            for (r, &a) in acc.iter().enumerate() {
                let k = j * g + r;
                let (s, o) = (grid.scale[k], grid.offset[k]);
                let target = w[k] + a * inv;
                let qk = if s != 0.0 {
                    ((target - o) / s).round().clamp(lo as f32, hi as f32) as i32
                } else {
                    lo
                };
                q[k] = qk;
                err[k] = w[k] - (s * qk as f32 + o);
                let (e, ep) = (err[k] as f64, err_plain[k] as f64);
                objective[r][0] += ((a + vjj * err[k]) as f64).powi(2) - damp * e * e;
                objective[r][1] += ((acc_plain[r] + vjj * err_plain[k]) as f64).powi(2) - damp * ep * ep;
            }
        }
    });
    objective
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform in [−0.5, 0.5), from a fixed seed.
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut st = seed;
        move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    #[test]
    fn factor_reproduces_h_at_every_level() {
        // A random symmetric positive definite H over several blocks and a partial one:
        // V·Vᵀ = H, V upper triangular, the same at every SIMD level as in plain code.
        let n = 2 * BLOCK + 13;
        let mut rnd = rng(12345);
        let x: Vec<f32> = (0..n * 3 * n).map(|_| rnd()).collect();
        let mut h = vec![0f32; n * n];
        for t in 0..3 * n {
            for a in 0..n {
                for b in 0..n {
                    h[a * n + b] += x[t * n + a] * x[t * n + b];
                }
            }
        }
        let plain = reverse_cholesky(h.clone(), n, SimdLevel::Scalar).unwrap();
        for level in SimdLevel::available() {
            let v = reverse_cholesky(h.clone(), n, level).unwrap();
            for a in 0..n {
                for b in 0..n {
                    let s: f64 = (0..n).map(|k| v[a * n + k] as f64 * v[b * n + k] as f64).sum();
                    assert!(
                        (s - h[a * n + b] as f64).abs() < 1e-3,
                        "{level:?} ({a},{b}): {s} vs {}",
                        h[a * n + b]
                    );
                    if b < a {
                        assert_eq!(v[a * n + b], 0.0);
                    }
                    let d = (v[a * n + b] - plain[a * n + b]).abs();
                    assert!(d < 1e-4 * plain[a * n + b].abs().max(1.0), "{level:?} ({a},{b})");
                }
            }
        }
        // Not positive definite.
        let mut bad = h.clone();
        bad[5 * n + 5] = -1.0;
        assert!(reverse_cholesky(bad, n, SimdLevel::Scalar).is_none());
    }

    /// A calibration that saw the rows of `x` (`[n_tok, n]`) as the input of linear `id`.
    fn calibration_over(id: usize, x: &[f32], n: usize) -> Calibration {
        let cal = Calibration {
            group_of: HashMap::from([(id, 0)]),
            grams: vec![Mutex::new(Gram::zeros(n))],
            observed: HashMap::from([(id, 0)]),
            tokens: x.len() / n,
            weights_id: 0,
        };
        cal.observe(id, x, x.len() / n);
        cal
    }

    /// `Σ_t ((q − t)·x_t)²` for one row: the layer-output error GPTQ minimises.
    fn output_error(row: &[f32], target: &[f32], x: &[f32], n: usize) -> f64 {
        x.chunks_exact(n)
            .map(|xt| {
                let e: f64 = row
                    .iter()
                    .zip(target)
                    .zip(xt)
                    .map(|((a, b), v)| ((a - b) * v) as f64)
                    .sum();
                e * e
            })
            .sum()
    }

    #[test]
    fn gptq_beats_rounding_each_weight_on_correlated_inputs() {
        // Inputs with correlated channels (a few shared factors plus noise), weights on a grid
        // of step 0.1, and a target that moves each weight by less than a step: rounding weight
        // by weight keeps the grid values (losing the change); GPTQ moves some of them so the
        // outputs follow the target. Checked against the objective itself, on the calibration
        // inputs and on fresh inputs from the same distribution.
        let (n, g, n_tok) = (64, 4, 512);
        let mut rnd = rng(99);
        let mix: Vec<f32> = (0..4 * n).map(|_| rnd()).collect();
        let mut inputs = |count: usize| -> Vec<f32> {
            let mut x = vec![0f32; count * n];
            for xt in x.chunks_exact_mut(n) {
                let f: Vec<f32> = (0..4).map(|_| 4.0 * rnd()).collect();
                for (i, v) in xt.iter_mut().enumerate() {
                    *v = (0..4).map(|k| f[k] * mix[k * n + i]).sum::<f32>() + 0.1 * rnd();
                }
            }
            x
        };
        let (x, fresh) = (inputs(n_tok), inputs(n_tok));
        let cal = calibration_over(0, &x, n);
        let f = cal.factor(0, SimdLevel::Scalar).unwrap();
        let step = 0.1f32;
        // Targets `[g, n]`: grid values plus a change under half a step.
        let target: Vec<f32> = (0..g * n)
            .map(|_| step * (20.0 * rnd()).round() + 0.4 * step * rnd())
            .collect();
        let mut wt = vec![0f32; g * n];
        for r in 0..g {
            for (k, &c) in f.perm.iter().enumerate() {
                wt[k * g + r] = target[r * n + c];
            }
        }
        let grid = GroupGrid {
            scale: vec![step; g * n],
            offset: vec![-16.0 * step; g * n],
            range: (0, 31),
        };
        let mut q = vec![0i32; g * n];
        // The plain requantization: each weight rounded, in the same layout.
        let plain: Vec<f32> = wt.iter().map(|&v| step * (v / step).round()).collect();
        let objective = gptq_rows(&wt, &grid, &plain, &f, g, &mut q, SimdLevel::Scalar);
        // The same choices at every SIMD level.
        for level in SimdLevel::available() {
            let f = cal.factor(0, level).unwrap();
            let mut ql = vec![0i32; g * n];
            gptq_rows(&wt, &grid, &plain, &f, g, &mut ql, level);
            assert_eq!(ql, q, "{level:?}");
        }
        for r in 0..g {
            let t = &target[r * n..][..n];
            let mut gptq = vec![0f32; n];
            for (k, &c) in f.perm.iter().enumerate() {
                gptq[c] = step * q[k * g + r] as f32 - 16.0 * step;
            }
            let rounded: Vec<f32> = t.iter().map(|&v| step * (v / step).round()).collect();
            // The objectives returned are ‖(Ŵ − W')·X‖² over the calibration inputs.
            for (k, ours) in [(0, &gptq), (1, &rounded)] {
                let want = output_error(ours, t, &x, n);
                let got = objective[r][k];
                assert!(
                    (got - want).abs() < 1e-3 * want,
                    "row {r}, objective {k}: {got} vs {want}"
                );
            }
            for x in [&x, &fresh] {
                let (e_gptq, e_round) = (output_error(&gptq, t, x, n), output_error(&rounded, t, x, n));
                eprintln!("row {r}: GPTQ {e_gptq:.4} vs rounding {e_round:.4}");
                assert!(e_gptq < 0.5 * e_round, "row {r}: GPTQ {e_gptq} vs rounding {e_round}");
            }
        }
    }

    #[test]
    fn gptq_keeps_a_target_on_the_grid() {
        // Nothing to move: the quants are the grid's own.
        let n = 40;
        let mut rnd = rng(7);
        let x: Vec<f32> = (0..100 * n).map(|_| rnd()).collect();
        let cal = calibration_over(3, &x, n);
        let f = cal.factor(3, SimdLevel::detect()).unwrap();
        assert!(cal.factor(4, SimdLevel::detect()).is_none());
        let want: Vec<i32> = (0..n as i32).map(|i| (i * 5) % 16).collect();
        let wt: Vec<f32> = f.perm.iter().map(|&c| 0.3 * want[c] as f32 - 1.2).collect();
        let mut q = vec![0i32; n];
        let grid = GroupGrid {
            scale: vec![0.3; n],
            offset: vec![-1.2; n],
            range: (0, 15),
        };
        let objective = gptq_rows(&wt, &grid, &wt, &f, 1, &mut q, SimdLevel::detect());
        assert!(objective[0][0] < 1e-9 && objective[0][1] == 0.0, "{objective:?}");
        let got: Vec<i32> = (0..n)
            .map(|c| q[f.perm.iter().position(|&p| p == c).unwrap()])
            .collect();
        assert_eq!(got, want);
    }
}
