//! The key/value cache of one attention layer.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of the tokens seen so far, `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self {
            keys: None,
            values: None,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// Append new keys and values along the sequence and return the whole cache.
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let keys = match self.keys.take() {
            Some(past) => Tensor::cat(vec![past, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(past) => Tensor::cat(vec![past, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep rows `rows` of the batch, in that order (repeats allowed): a prompt prefilled
    /// once serves all G samples of its group.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let pick = |t: Tensor<B, 4>| {
            let device = t.device();
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            t.select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows.len()]), &device),
            )
        };
        self.keys = self.keys.take().map(pick);
        self.values = self.values.take().map(pick);
    }

    /// Put `n` empty slots before the cached positions (the caller masks them), so that
    /// rows of another length can join the batch.
    pub fn pad_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let pad = |t: Tensor<B, 4>| {
            let [rows, heads, _, dim] = t.dims();
            let zeros = Tensor::<B, 4>::zeros([rows, heads, n, dim], &t.device()).cast(t.dtype());
            Tensor::cat(vec![zeros, t], 2)
        };
        self.keys = self.keys.take().map(pad);
        self.values = self.values.take().map(pad);
    }

    /// Append `other`'s rows (of the same number of positions) after this cache's.
    pub fn cat_rows(&mut self, other: KvCache<B>) {
        let cat = |mine: Option<Tensor<B, 4>>, theirs: Option<Tensor<B, 4>>| match (mine, theirs) {
            (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
            (a, b) => a.or(b),
        };
        self.keys = cat(self.keys.take(), other.keys);
        self.values = cat(self.values.take(), other.values);
    }

    /// Drop the first `n` cached positions (slots every row masks).
    pub fn drop_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let cut = |t: Tensor<B, 4>| {
            let len = t.dims()[2];
            t.narrow(2, n.min(len), len - n.min(len))
        };
        self.keys = self.keys.take().map(cut);
        self.values = self.values.take().map(cut);
    }
}
