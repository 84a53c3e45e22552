//! Applying adapters on the fly: a [`LoraPlan`] resolves the active adapters and their scales
//! to the model's linear layers once per generation, so the forward pass looks nothing up.
//!
//! For a linear layer `y = W·x + b` with active targets `i`:
//! `y = W·x + Σᵢ sᵢ·Bᵢ(Aᵢ·x) + b`, where `sᵢ` = (generation scale) × (adapter scale). With a
//! DoRA target (PEFT `DoraLinearLayer.forward`): `y = f ⊙ (W·x + s·B(A·x)) + b` with the
//! per-row factor `f = m / ‖W + s·B·A‖₂` (row norms), computed from the dequantized base for
//! that `s`. `Aᵢ·x` is computed first (`[n_tok, r]`, cheap); the `Bᵢ` term is added to each
//! output element inside the base product's parallel pass (a fused epilogue).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{LoraAdapter, LoraError, LoraTarget};
use crate::model::{Model, ops};

/// Output rows per block of the epilogue's B layout ([`AdapterHandle`]).
const B_BLOCK: usize = 16;

/// One loaded adapter in an engine's adapter set.
#[derive(Clone, Debug)]
pub struct AdapterHandle {
    /// The name it is registered under.
    pub name: String,
    /// Unique per load: reloading a file under the same name gives a new version.
    pub version: u64,
    pub adapter: Arc<LoraAdapter>,
    /// DoRA row factors per (model weights, scale), computed on first use: a bake changes the
    /// weights the norms are taken of ([`Model::weights_id`]).
    pub(crate) dora_cache: Arc<Mutex<HashMap<(u64, u32), DoraFactors>>>,
    /// Each target's B in row blocks of [`B_BLOCK`]: block `o / B_BLOCK` holds
    /// `[r][B_BLOCK]` (B transposed within the block, zero-padded), so the fused epilogue for a
    /// run of rows reads one contiguous stretch (prefetcher-friendly) and is `r` short axpy
    /// passes across the rows (vectorizes), not one tiny dot per row.
    pub(crate) b_t: Arc<Vec<Vec<f32>>>,
}

impl AdapterHandle {
    /// Wrap a loaded adapter.
    pub fn new(name: String, version: u64, adapter: LoraAdapter) -> AdapterHandle {
        let b_t = adapter
            .targets
            .iter()
            .map(|t| {
                let mut bt = vec![0f32; t.n_out.div_ceil(B_BLOCK) * B_BLOCK * t.r];
                for o in 0..t.n_out {
                    for k in 0..t.r {
                        bt[((o / B_BLOCK) * t.r + k) * B_BLOCK + o % B_BLOCK] = t.b[o * t.r + k];
                    }
                }
                bt
            })
            .collect();
        AdapterHandle {
            name,
            version,
            adapter: Arc::new(adapter),
            dora_cache: Default::default(),
            b_t: Arc::new(b_t),
        }
    }
}

/// DoRA row factors of every target of an adapter at one scale (empty for non-DoRA targets).
pub(crate) type DoraFactors = Arc<Vec<Arc<Vec<f32>>>>;

/// One active target on one linear layer.
#[derive(Clone, Debug)]
pub(crate) struct PlanEntry {
    adapter: Arc<LoraAdapter>,
    target: usize,
    /// All transposed Bs of the adapter (index `target`).
    b_t: Arc<Vec<Vec<f32>>>,
    /// Total scale: generation scale × the target's own scale.
    scale: f32,
    /// DoRA row factors `[n_out]`.
    dora: Option<Arc<Vec<f32>>>,
}

impl PlanEntry {
    /// The target this entry applies.
    pub(crate) fn target(&self) -> &LoraTarget {
        &self.adapter.targets[self.target]
    }

    /// Total scale (generation scale × target scale).
    pub(crate) fn scale(&self) -> f32 {
        self.scale
    }

    /// DoRA row factors, if DoRA.
    pub(crate) fn dora_factors(&self) -> Option<&[f32]> {
        self.dora.as_deref().map(|v| v.as_slice())
    }
}

/// The active adapters resolved against a model. `LoraPlan::default()` is "no adapter".
#[derive(Clone, Debug, Default)]
pub struct LoraPlan {
    /// Per linear id (see [`Model::linear_ids`]).
    per_linear: Vec<Vec<PlanEntry>>,
    /// Embedding LoRAs with their total scales.
    embedding: Vec<(Arc<LoraAdapter>, f32)>,
    /// The active adapter whose replacement input embedding is in use.
    embedding_replacement: Option<Arc<LoraAdapter>>,
    /// The active adapter whose replacement output head is in use.
    head_replacement: Option<Arc<LoraAdapter>>,
    /// What the plan was built from: `(version, scale bits)` per adapter, in order. Equal keys
    /// mean equal computations; KV caches are keyed by it.
    key: Vec<(u64, u32)>,
}

impl LoraPlan {
    /// Resolve `active` (adapter, generation scale) pairs against `model`.
    ///
    /// Errors: [`LoraError::Plan`] when the same adapter (handle version) is listed twice, a
    /// scale is not finite, two DoRA targets (or a DoRA and a plain one) meet on one layer, a
    /// target names no layer of this model, or two adapters each replace the embedding (or
    /// the head).
    pub fn new(model: &Model, active: &[(AdapterHandle, f32)]) -> Result<LoraPlan, LoraError> {
        let ids = model.linear_ids();
        let mut per_linear: Vec<Vec<PlanEntry>> = vec![Vec::new(); ids.len()];
        let mut embedding = Vec::new();
        let (mut embedding_replacement, mut head_replacement): (Option<Arc<LoraAdapter>>, Option<Arc<LoraAdapter>>) =
            (None, None);
        let mut key = Vec::new();
        for (h, scale) in active {
            if !scale.is_finite() {
                return Err(LoraError::Plan {
                    message: format!("adapter {}: scale {scale} is not a finite number", h.name),
                });
            }
            if key.iter().any(|&(v, _)| v == h.version) {
                return Err(LoraError::Plan {
                    message: format!(
                        "adapter {} is active twice; give it once, with the sum of the scales",
                        h.name
                    ),
                });
            }
            key.push((h.version, scale.to_bits()));
            let a = &h.adapter;
            let dora = if a.targets.iter().any(|t| t.dora_magnitude.is_some()) {
                Some(dora_factors(model, h, *scale)?)
            } else {
                None
            };
            for (ti, t) in a.targets.iter().enumerate() {
                let Some(&id) = ids.get(t.tensor.as_str()) else {
                    return Err(LoraError::Plan {
                        message: format!("adapter {}: no layer `{}` in this model", h.name, t.tensor),
                    });
                };
                let entry = PlanEntry {
                    adapter: a.clone(),
                    target: ti,
                    b_t: h.b_t.clone(),
                    scale: scale * t.scale,
                    dora: dora
                        .as_ref()
                        .filter(|_| t.dora_magnitude.is_some())
                        .map(|d| d[ti].clone()),
                };
                let slot = &mut per_linear[id];
                if (entry.dora.is_some() && !slot.is_empty()) || slot.iter().any(|e| e.dora.is_some()) {
                    return Err(LoraError::Plan {
                        message: format!(
                            "DoRA adapter on `{}` cannot be stacked with another adapter on the same layer",
                            t.tensor
                        ),
                    });
                }
                slot.push(entry);
            }
            if a.embedding.is_some() {
                embedding.push((a.clone(), *scale));
            }
            let (c, n) = (&model.config, model.config.n_vocab * model.config.n_embd);
            for (what, has, slot) in [
                (
                    "input embedding",
                    a.embedding_replacement.as_ref(),
                    &mut embedding_replacement,
                ),
                ("output head", a.head_replacement.as_ref(), &mut head_replacement),
            ] {
                let Some(w) = has else { continue };
                if w.len() != n {
                    return Err(LoraError::Plan {
                        message: format!(
                            "adapter {}: its replacement {what} has {} values, this model's is [{}, {}]",
                            h.name,
                            w.len(),
                            c.n_vocab,
                            c.n_embd
                        ),
                    });
                }
                if let Some(other) = slot {
                    return Err(LoraError::Plan {
                        message: format!(
                            "adapters {} and {} both replace the {what}; activate one of them",
                            other.name, h.name
                        ),
                    });
                }
                *slot = Some(a.clone());
            }
        }
        Ok(LoraPlan {
            per_linear,
            embedding,
            embedding_replacement,
            head_replacement,
            key,
        })
    }

    /// Whether no adapter is active.
    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// `(version, scale bits)` of each active adapter, in order.
    pub fn key(&self) -> &[(u64, u32)] {
        &self.key
    }

    pub(crate) fn entries(&self, linear_id: usize) -> &[PlanEntry] {
        self.per_linear.get(linear_id).map_or(&[], |v| v.as_slice())
    }

    /// The replacement input embedding in use (`[n_vocab, n_embd]`), if any.
    pub(crate) fn embedding_replacement(&self) -> Option<&[f32]> {
        self.embedding_replacement
            .as_ref()
            .and_then(|a| a.embedding_replacement.as_deref())
    }

    /// The replacement output head in use (`[n_vocab, n_embd]` f32), if any.
    pub(crate) fn head_replacement(&self) -> Option<&[f32]> {
        self.head_replacement
            .as_ref()
            .and_then(|a| a.head_replacement.as_deref())
    }

    /// Add the embedding LoRA rows of `tokens` to `x` (`[n_tok, n_embd]`), each multiplied by
    /// `embed_scale` as the embedding itself is (Gemma's √n_embd: PEFT's `Embedding.forward`
    /// scales the adapter's output by the base layer's `embed_scale`; 1 elsewhere).
    pub(crate) fn add_embedding(&self, x: &mut [f32], tokens: &[u32], embed_scale: f32) {
        for (a, scale) in &self.embedding {
            let Some(e) = &a.embedding else { continue };
            let s = scale * e.scale;
            for (row, &t) in x.chunks_exact_mut(e.n_embd).zip(tokens) {
                let t = t as usize;
                if t >= e.n_vocab {
                    continue;
                }
                // column t of A: A[k, t]
                let col: Vec<f32> = (0..e.r).map(|k| e.a[k * e.n_vocab + t]).collect();
                for (j, v) in row.iter_mut().enumerate() {
                    *v += s * ops::dot(&e.b[j * e.r..][..e.r], &col) * embed_scale;
                }
            }
        }
    }
}

/// DoRA row factors of every target of `h` at generation scale `scale`: `m / ‖W + s·B·A‖₂`
/// per output row, with W the dequantized base (PEFT `DoraLinearLayer.get_weight_norm`).
/// Cached per weights and scale.
fn dora_factors(model: &Model, h: &AdapterHandle, scale: f32) -> Result<DoraFactors, LoraError> {
    let key = (model.weights_id, scale.to_bits());
    if let Some(f) = h.dora_cache.lock().expect("dora cache").get(&key) {
        return Ok(f.clone());
    }
    let mut out = Vec::with_capacity(h.adapter.targets.len());
    for t in &h.adapter.targets {
        let Some(m) = &t.dora_magnitude else {
            out.push(Arc::new(Vec::new()));
            continue;
        };
        let w = model
            .dequantize_weight(&t.tensor)
            .map_err(|e| LoraError::Plan { message: e.to_string() })?;
        let s = scale * t.scale;
        let f: Vec<f32> = (0..t.n_out)
            .into_par_iter()
            .map(|o| {
                let b = &t.b[o * t.r..][..t.r];
                let mut sum = 0f64;
                for i in 0..t.n_in {
                    let mut ba = 0f32;
                    for (k, bk) in b.iter().enumerate() {
                        ba += bk * t.a[k * t.n_in + i];
                    }
                    let v = w[o * t.n_in + i] + s * ba;
                    sum += (v as f64) * (v as f64);
                }
                m[o] / (sum.sqrt() as f32)
            })
            .collect();
        out.push(Arc::new(f));
    }
    let out = Arc::new(out);
    let mut cache = h.dora_cache.lock().expect("dora cache");
    // Factors of weights no longer in use are not kept around. (A bake and its base, each used
    // again in turn, recompute theirs: a fraction of a second.)
    cache.retain(|(id, _), _| *id == model.weights_id);
    cache.insert(key, out.clone());
    Ok(out)
}

/// `[n_tok, r]` = x (`[n_tok, n_in]`) · Aᵀ.
pub(crate) fn lora_a_times(t: &LoraTarget, x: &[f32], n_tok: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_tok * t.r];
    // The quant crate's f32 dot product (run-time dispatched AVX2 / AVX-512 / NEON).
    let level = quant::SimdLevel::detect();
    let work = |(tok, o): (usize, &mut [f32])| {
        let xr = &x[tok * t.n_in..][..t.n_in];
        for (k, v) in o.iter_mut().enumerate() {
            *v = <f32 as quant::VecDot>::vec_dot(level, &t.a[k * t.n_in..][..t.n_in], xr);
        }
    };
    if n_tok > 4 {
        out.par_chunks_mut(t.r).enumerate().for_each(work);
    } else {
        out.chunks_mut(t.r).enumerate().for_each(work);
    }
    out
}

/// The precomputed pieces of one entry for the fused epilogue.
pub(crate) struct Prepared<'p> {
    /// B in the blocked layout of [`AdapterHandle`].
    pub b_t: &'p [f32],
    pub r: usize,
    /// `A·x` (`[n_tok, r]`, f32 bits). For a few tokens it is computed inside the pass, one
    /// `(token, rank)` unit at a time by whichever tasks start first, so it overlaps the other
    /// tasks' share of `W·x` instead of running serially before it; for prompt batches it is
    /// computed up front, in parallel.
    ax: Vec<std::sync::atomic::AtomicU32>,
    /// Next unit of `ax` to claim.
    next: std::sync::atomic::AtomicUsize,
    /// Units of `ax` finished.
    done: std::sync::atomic::AtomicUsize,
    target: &'p LoraTarget,
    x: &'p [f32],
    pub scale: f32,
    pub dora: Option<&'p [f32]>,
}

impl Prepared<'_> {
    /// Claim and compute one unit of `A·x`; false when none was left.
    fn compute_one(&self) -> bool {
        use std::sync::atomic::Ordering;
        // A plain load first: once all is claimed, tasks only read the shared line.
        if self.next.load(Ordering::Relaxed) >= self.ax.len() {
            return false;
        }
        let u = self.next.fetch_add(1, Ordering::Relaxed);
        if u >= self.ax.len() {
            return false;
        }
        let (tok, k) = (u / self.r, u % self.r);
        let t = self.target;
        let v = <f32 as quant::VecDot>::vec_dot(
            quant::SimdLevel::detect(),
            &t.a[k * t.n_in..][..t.n_in],
            &self.x[tok * t.n_in..][..t.n_in],
        );
        self.ax[u].store(v.to_bits(), Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Release);
        true
    }

    /// `A·x` row of token `tok`, once every unit is done: helps with the units still
    /// unclaimed, then waits (spinning, a microsecond or two) for those in other tasks.
    fn ax(&self, tok: usize, out: &mut [f32]) {
        use std::sync::atomic::Ordering;
        if self.done.load(Ordering::Acquire) < self.ax.len() {
            while self.compute_one() {}
            while self.done.load(Ordering::Acquire) < self.ax.len() {
                std::hint::spin_loop();
            }
        }
        for (o, a) in out.iter_mut().zip(&self.ax[tok * self.r..][..self.r]) {
            *o = f32::from_bits(a.load(Ordering::Relaxed));
        }
    }
}

/// Rows `lane..lane + v.len()` of one block of the epilogue's update: `d = Σ_k B_k·a_k`
/// (a product, then a sum, per k in order) and `v += d·scale`. `block` is the block's
/// `[r][B_BLOCK]` of Bᵀ, `ax` the `r` values of A·x. A whole block goes eight lanes at a time
/// with AVX2 ([`add_block_avx2`], the same operations, bit-identical).
fn add_block(block: &[f32], lane: usize, ax: &[f32], scale: f32, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Ok(whole) = <&mut [f32; B_BLOCK]>::try_from(&mut *v)
        && avx2()
    {
        debug_assert_eq!(lane, 0, "a whole block starts at its first row");
        // SAFETY: AVX2 was detected.
        return unsafe { add_block_avx2(block, ax, scale, whole) };
    }
    add_block_scalar(block, lane, ax, scale, v);
}

/// [`add_block`] one value at a time (the reference).
fn add_block_scalar(block: &[f32], lane: usize, ax: &[f32], scale: f32, v: &mut [f32]) {
    let n = v.len();
    let mut d = [0f32; B_BLOCK];
    let d = &mut d[..n];
    for (k, &a) in ax.iter().enumerate() {
        for (dv, &b) in d.iter_mut().zip(&block[k * B_BLOCK + lane..][..n]) {
            *dv += b * a;
        }
    }
    for (v, &dv) in v.iter_mut().zip(d.iter()) {
        *v += dv * scale;
    }
}

/// Whether AVX2 is there (cached by the standard library).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// [`add_block`] for a whole block, eight lanes at a time: [`add_block_scalar`]'s operations
/// in its order, so bit-identical to it.
///
/// # Safety
/// Requires AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_block_avx2(block: &[f32], ax: &[f32], scale: f32, v: &mut [f32; B_BLOCK]) {
    use std::arch::x86_64::*;
    let mut d = [_mm256_setzero_ps(); 2];
    for (b, &a) in block.chunks_exact(B_BLOCK).zip(ax) {
        let va = _mm256_set1_ps(a);
        for (h, dh) in d.iter_mut().enumerate() {
            // SAFETY: 8 floats of the block's 16 for this k.
            let bk = unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * h)) };
            *dh = _mm256_add_ps(*dh, _mm256_mul_ps(bk, va));
        }
    }
    let s = _mm256_set1_ps(scale);
    for (h, dh) in d.into_iter().enumerate() {
        // SAFETY: 8 floats of the 16 in `v`.
        unsafe {
            let p = v.as_mut_ptr().add(8 * h);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(dh, s)));
        }
    }
}

/// The adapters of one linear layer, fused into its matmul ([`quant::RowEpilogue`]).
pub(crate) struct LoraEpilogue<'p>(Vec<Prepared<'p>>);

pub(crate) fn prepare<'p>(entries: &'p [PlanEntry], x: &'p [f32], n_tok: usize) -> LoraEpilogue<'p> {
    use std::sync::atomic::{AtomicU32, AtomicUsize};
    LoraEpilogue(
        entries
            .iter()
            .map(|e| {
                let t = e.target();
                // Prompt batches: computed now, in parallel. Single tokens: inside the pass.
                let (ax, done): (Vec<AtomicU32>, usize) = if n_tok > 4 {
                    let v = lora_a_times(t, x, n_tok);
                    let n = v.len();
                    (v.into_iter().map(|f| AtomicU32::new(f.to_bits())).collect(), n)
                } else {
                    ((0..n_tok * t.r).map(|_| AtomicU32::new(0)).collect(), 0)
                };
                Prepared {
                    b_t: &e.b_t[e.target],
                    r: t.r,
                    next: AtomicUsize::new(done),
                    done: AtomicUsize::new(done),
                    ax,
                    target: t,
                    x,
                    scale: e.scale,
                    dora: e.dora.as_deref().map(|v| v.as_slice()),
                }
            })
            .collect(),
    )
}

impl quant::RowEpilogue for LoraEpilogue<'_> {
    /// One unit of each entry's `A·x`, if any is left.
    fn begin_task(&self) {
        for p in &self.0 {
            p.compute_one();
        }
    }

    /// Add the adapters' terms to `vals`, the base values `W·x` (no bias) of rows `first..`
    /// for token `tok`; with DoRA, scale the sum by the row factor.
    #[inline]
    fn apply(&self, tok: usize, first: usize, vals: &mut [f32]) {
        let mut dora = None;
        let (mut stack, mut heap) = ([0f32; 64], Vec::new());
        for p in &self.0 {
            let ax_buf = if p.r <= stack.len() {
                &mut stack[..p.r]
            } else {
                heap.resize(p.r, 0.0);
                &mut heap[..]
            };
            p.ax(tok, ax_buf);
            // d = B·(A·x) for these rows, summed over k in order (vectorized across rows through
            // the blocked Bᵀ), then scaled and added: ggml's `build_lora_mm` order,
            // (B·(A·x))·s + W·x.
            let end = first + vals.len();
            let mut o = first;
            while o < end {
                let (blk, lane) = (o / B_BLOCK, o % B_BLOCK);
                let n = (B_BLOCK - lane).min(end - o);
                let block = &p.b_t[blk * p.r * B_BLOCK..][..p.r * B_BLOCK];
                add_block(block, lane, ax_buf, p.scale, &mut vals[o - first..][..n]);
                o += n;
            }
            if let Some(f) = p.dora {
                dora = Some(&f[first..first + vals.len()]);
            }
        }
        if let Some(f) = dora {
            for (v, f) in vals.iter_mut().zip(f) {
                *v *= f;
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 block update against the scalar one, bit for bit, over ranks 1..=20 and
    /// scales of both signs.
    #[test]
    fn add_block_avx2_matches_scalar() {
        assert!(avx2(), "this test needs AVX2");
        let mut st = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            ((st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        for r in 1..=20 {
            let block: Vec<f32> = (0..r * B_BLOCK).map(|_| rnd()).collect();
            let ax: Vec<f32> = (0..r).map(|_| rnd()).collect();
            let scale = rnd() * 8.0;
            let v0: [f32; B_BLOCK] = std::array::from_fn(|_| rnd() * 10.0);
            let (mut want, mut got) = (v0, v0);
            add_block_scalar(&block, 0, &ax, scale, &mut want);
            // SAFETY: AVX2 asserted above.
            unsafe { add_block_avx2(&block, &ax, scale, &mut got) };
            assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "rank {r}");
        }
    }
}
