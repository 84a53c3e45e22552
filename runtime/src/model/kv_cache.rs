//! The per-session key/value cache.

use half::f16;

/// Keys and values of every layer for positions `0..len()`, stored as f16 (llama.cpp's default
/// cache type, whose rounding the attention reproduces).
///
/// Layout per layer: keys `[n_pos, n_head_kv · head_dim]`, values `[n_pos, n_head_kv ·
/// head_dim_v]`. Memory grows with use, up to `n_ctx` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    n_ctx: usize,
    len: usize,
    k_dim: usize,
    v_dim: usize,
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

impl KvCache {
    /// An empty cache for `n_layer` layers and at most `n_ctx` positions.
    pub fn new(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> KvCache {
        KvCache {
            n_ctx,
            len: 0,
            k_dim,
            v_dim,
            k: vec![Vec::new(); n_layer],
            v: vec![Vec::new(); n_layer],
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forget everything from position `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
            k.truncate(self.len * self.k_dim);
            v.truncate(self.len * self.v_dim);
        }
    }

    /// Append the keys and values of new positions to layer `il` (after the committed ones)
    /// and return the layer's whole cache `(k, v)` including them.
    pub(crate) fn append(&mut self, il: usize, k: &[f32], v: &[f32]) -> (&[f16], &[f16]) {
        let (kl, vl) = (&mut self.k[il], &mut self.v[il]);
        kl.truncate(self.len * self.k_dim);
        vl.truncate(self.len * self.v_dim);
        kl.extend(k.iter().map(|&x| f16::from_f32(x)));
        vl.extend(v.iter().map(|&x| f16::from_f32(x)));
        (kl, vl)
    }

    /// Commit `n` appended positions.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
