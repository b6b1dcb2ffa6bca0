//! Keys (after RoPE) and values of every past position, per layer and KV head, in f32 or f16.
//!
//! Each KV head's rows are contiguous (`[kv_head][position][head_dim]`), so attention streams one
//! block per head instead of picking `head_dim` values out of every `kv_dim`-wide row. Outside
//! this module (session states, the backward pass of `adapt`) a layer is seen position-major,
//! `[position][kv_dim]`, in f32.

use half::f16;

use crate::kernels::attention::Element;

use crate::error::{Error, Result};

/// How the cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvType {
    /// Exact: attention sees the projections' values.
    #[default]
    F32,
    /// Half the bytes, so about half the memory traffic of attention in a long context; keys
    /// and values are rounded to the nearest f16 (the default of llama.cpp).
    F16,
}

impl KvType {
    pub const ALL: [KvType; 2] = [KvType::F32, KvType::F16];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    pub fn parse(name: &str) -> Result<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == name.trim())
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "unknown KV cache type `{name}` (known: {})",
                    KvType::ALL.map(KvType::name).join(", ")
                ))
            })
    }
}

/// One layer's keys or values: a growing block per KV head.
#[derive(Debug, Clone)]
pub(crate) enum Heads {
    F32(Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>),
}

impl Heads {
    /// Room for `values` values per KV head, reserved now: a block that grew by doubling would
    /// be copied each time and leave the old copy as freed but resident heap (a 2B4T decode
    /// after a 512-token prompt held 25-30 MB of such garbage), and reserved before a prompt's
    /// buffers it takes the space that loading freed. Pages never written are never resident.
    fn new(ty: KvType, kv_heads: usize, values: usize) -> Self {
        fn blocks<T>(n: usize, values: usize) -> Vec<Vec<T>> {
            (0..n).map(|_| Vec::with_capacity(values)).collect()
        }
        match ty {
            KvType::F32 => Heads::F32(blocks(kv_heads, values)),
            KvType::F16 => Heads::F16(blocks(kv_heads, values)),
        }
    }

    /// Appends position-major rows `[n][kv_heads * d]`.
    fn push_rows(&mut self, rows: &[f32], d: usize) {
        match self {
            Heads::F32(hs) => push_rows(hs, rows, d),
            Heads::F16(hs) => push_rows(hs, rows, d),
        }
    }

    /// The first `n` positions, position-major, as f32.
    fn rows(&self, n: usize, d: usize) -> Vec<f32> {
        match self {
            Heads::F32(hs) => rows_of(hs, n, d),
            Heads::F16(hs) => rows_of(hs, n, d),
        }
    }

    fn truncate(&mut self, values: usize) {
        match self {
            Heads::F32(hs) => hs.iter_mut().for_each(|b| b.truncate(values)),
            Heads::F16(hs) => hs.iter_mut().for_each(|b| b.truncate(values)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Heads::F32(hs) => hs.iter().map(|b| b.len() * 4).sum(),
            Heads::F16(hs) => hs.iter().map(|b| b.len() * 2).sum(),
        }
    }
}

fn push_rows<T: Element>(heads: &mut [Vec<T>], rows: &[f32], d: usize) {
    let kv_dim = heads.len() * d;
    for (h, block) in heads.iter_mut().enumerate() {
        for row in rows.chunks_exact(kv_dim) {
            block.extend(row[h * d..][..d].iter().map(|&x| T::from_f32(x)));
        }
    }
}

fn rows_of<T: Element>(heads: &[Vec<T>], n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * heads.len() * d];
    for (p, row) in out.chunks_exact_mut(heads.len() * d).enumerate() {
        for (dst, block) in row.chunks_exact_mut(d).zip(heads) {
            for (o, x) in dst.iter_mut().zip(&block[p * d..][..d]) {
                *o = x.to_f32();
            }
        }
    }
    out
}

/// The attention memory of one session.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Heads>,
    v: Vec<Heads>,
    head_dim: usize,
    kv_heads: usize,
    ty: KvType,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for a model of `cfg`'s shape that can hold up to `capacity` positions.
    pub fn new(cfg: &crate::Config, capacity: usize, ty: KvType) -> Self {
        Self::with_shape(
            (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
            capacity,
            ty,
        )
    }

    fn with_shape(
        (layers, kv_heads, head_dim): (usize, usize, usize),
        capacity: usize,
        ty: KvType,
    ) -> Self {
        Self {
            k: (0..layers)
                .map(|_| Heads::new(ty, kv_heads, capacity * head_dim))
                .collect(),
            v: (0..layers)
                .map(|_| Heads::new(ty, kv_heads, capacity * head_dim))
                .collect(),
            head_dim,
            kv_heads,
            ty,
            len: 0,
            capacity,
        }
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    pub fn kv_type(&self) -> KvType {
        self.ty
    }
    /// Appends keys and values `[n][kv_dim]` of layer `li` (positions `len..len + n` until
    /// `advance`).
    pub(crate) fn push(&mut self, li: usize, k: &[f32], v: &[f32]) {
        self.k[li].push_rows(k, self.head_dim);
        self.v[li].push_rows(v, self.head_dim);
    }
    /// Layer `li`'s keys and values, one block per KV head.
    pub(crate) fn layer(&self, li: usize) -> (&Heads, &Heads) {
        (&self.k[li], &self.v[li])
    }
    /// Layer `li`'s first `n` keys and values, position-major `[n][kv_dim]`, as f32.
    pub(crate) fn layer_rows(&self, li: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        (self.k[li].rows(n, d), self.v[li].rows(n, d))
    }
    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let values = self.len * self.head_dim;
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.truncate(values);
        }
    }
    pub fn clear(&mut self) {
        self.truncate(0);
    }
    /// Marks `n` more positions as written (after every layer has appended them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
    /// Every layer's keys and values, position-major `[len][kv_dim]` f32 (for session states).
    pub(crate) fn snapshot(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let d = self.head_dim;
        let rows = |ls: &[Heads]| ls.iter().map(|l| l.rows(self.len, d)).collect();
        (rows(&self.k), rows(&self.v))
    }
    /// Replaces the content with `len` positions of keys and values laid out as `snapshot`
    /// gives them (rounded to f16 for an f16 cache: exact for values saved from one).
    pub(crate) fn restore(&mut self, k: &[Vec<f32>], v: &[Vec<f32>], len: usize) {
        debug_assert!(k.len() == self.k.len() && v.len() == self.v.len());
        self.clear();
        for (li, (k, v)) in k.iter().zip(v).enumerate() {
            self.push(li, k, v);
        }
        self.len = len;
    }
    /// Bytes held by the cache now.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Heads::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: (usize, usize, usize) = (2, 3, 4);

    #[test]
    fn rows_come_back_as_pushed_and_truncate_drops_the_tail() {
        for ty in KvType::ALL {
            let mut c = KvCache::with_shape(SHAPE, 8, ty);
            // Values exact in f16, so both types must give them back unchanged.
            let rows = |n: usize, s: f32| (0..n * 12).map(|i| i as f32 * s).collect::<Vec<f32>>();
            let (k, v) = (rows(5, 0.5), rows(5, -0.25));
            for li in 0..2 {
                c.push(li, &k[..2 * 12], &v[..2 * 12]);
            }
            c.advance(2);
            for li in 0..2 {
                c.push(li, &k[2 * 12..], &v[2 * 12..]);
            }
            c.advance(3);
            assert_eq!(c.layer_rows(1, 5), (k.clone(), v.clone()), "{}", ty.name());
            assert_eq!(c.bytes(), 2 * 2 * 5 * 12 * ty.size());
            let (sk, sv) = c.snapshot();
            c.truncate(2);
            assert_eq!(c.layer_rows(0, 2), (k[..24].to_vec(), v[..24].to_vec()));
            c.restore(&sk, &sv, 5);
            assert_eq!(c.layer_rows(0, 5), (k.clone(), v.clone()));
        }
    }

    #[test]
    fn f16_rounds_to_nearest() {
        let mut c = KvCache::with_shape(SHAPE, 1, KvType::F16);
        let k: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 1e-4).collect();
        c.push(0, &k, &k);
        let (back, _) = c.layer_rows(0, 1);
        for (x, y) in k.iter().zip(&back) {
            assert_eq!(*y, f16::from_f32(*x).to_f32());
            assert!((x - y).abs() <= 1.0 / 2048.0);
        }
    }

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        for t in KvType::ALL {
            assert_eq!(KvType::parse(t.name()).unwrap(), t);
        }
        let e = KvType::parse("q8_0").unwrap_err();
        assert!(e.to_string().contains("q8_0") && e.to_string().contains("f16"));
    }
}
