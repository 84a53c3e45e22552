//! The per-session key/value cache.

use half::f16;

/// Keys and values of every layer for positions `0..len()`, stored as f16 (llama.cpp's default
/// cache type, whose rounding the attention reproduces), or as f32 for the float reference path
/// ([`KvCache::new_f32`]).
///
/// Layout per layer: keys `[n_pos, n_head_kv · head_dim]`, values `[n_pos, n_head_kv ·
/// head_dim_v]`. Memory grows with use, up to `n_ctx` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    n_ctx: usize,
    len: usize,
    k_dim: usize,
    v_dim: usize,
    k: Store,
    v: Store,
}

/// Every layer's keys (or values) in the cache's element type.
#[derive(Clone, Debug)]
enum Store {
    F16(Vec<Vec<f16>>),
    F32(Vec<Vec<f32>>),
}

impl Store {
    fn truncate(&mut self, n: usize) {
        match self {
            Store::F16(layers) => layers.iter_mut().for_each(|l| l.truncate(n)),
            Store::F32(layers) => layers.iter_mut().for_each(|l| l.truncate(n)),
        }
    }
}

/// One layer's whole cache, keys and values, as [`KvCache::append`] gives it.
pub(crate) enum KvLayer<'a> {
    F16(&'a [f16], &'a [f16]),
    F32(&'a [f32], &'a [f32]),
}

impl KvCache {
    /// An empty f16 cache for `n_layer` layers and at most `n_ctx` positions.
    pub fn new(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> KvCache {
        let store = || Store::F16(vec![Vec::new(); n_layer]);
        KvCache {
            n_ctx,
            len: 0,
            k_dim,
            v_dim,
            k: store(),
            v: store(),
        }
    }

    /// [`KvCache::new`] keeping keys and values in f32, as transformers does (the float
    /// reference path, `--exact`).
    pub fn new_f32(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> KvCache {
        let store = || Store::F32(vec![Vec::new(); n_layer]);
        KvCache {
            k: store(),
            v: store(),
            ..KvCache::new(0, n_ctx, k_dim, v_dim)
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
        self.k.truncate(self.len * self.k_dim);
        self.v.truncate(self.len * self.v_dim);
    }

    /// Append the keys and values of new positions to layer `il` (after the committed ones)
    /// and return the layer's whole cache including them.
    pub(crate) fn append(&mut self, il: usize, k: &[f32], v: &[f32]) -> KvLayer<'_> {
        let (nk, nv) = (self.len * self.k_dim, self.len * self.v_dim);
        match (&mut self.k, &mut self.v) {
            (Store::F16(ks), Store::F16(vs)) => {
                let (kl, vl) = (&mut ks[il], &mut vs[il]);
                kl.truncate(nk);
                vl.truncate(nv);
                kl.extend(k.iter().map(|&x| f16::from_f32(x)));
                vl.extend(v.iter().map(|&x| f16::from_f32(x)));
                KvLayer::F16(kl, vl)
            }
            (Store::F32(ks), Store::F32(vs)) => {
                let (kl, vl) = (&mut ks[il], &mut vs[il]);
                kl.truncate(nk);
                vl.truncate(nv);
                kl.extend_from_slice(k);
                vl.extend_from_slice(v);
                KvLayer::F32(kl, vl)
            }
            _ => unreachable!("keys and values are made with one element type"),
        }
    }

    /// Commit `n` appended positions.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
