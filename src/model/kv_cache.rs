//! Keys (after RoPE) and values of every past position, per layer, in f32.

/// The attention memory of one session.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers that can hold up to `capacity` positions.
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> Self {
        Self {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            kv_dim,
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
        self.kv_dim
    }
    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.truncate(self.len * self.kv_dim);
        }
    }
    pub fn clear(&mut self) {
        self.truncate(0);
    }
    /// Marks `n` more positions as written (after every layer has appended them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.k.iter().all(|k| k.len() == self.len * self.kv_dim));
    }
    /// Replaces the content with `len` positions of saved keys and values.
    pub(crate) fn restore(&mut self, k: Vec<Vec<f32>>, v: Vec<Vec<f32>>, len: usize) {
        debug_assert!(k.len() == self.k.len() && v.len() == self.v.len());
        self.k = k;
        self.v = v;
        self.len = len;
    }
    /// Bytes held by the cache now.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|x| x.len() * 4).sum()
    }
}
