//! The key/value cache of one attention layer.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of the tokens seen so far, `[batch, kv_heads, seq, head_dim]`.
///
/// On the CPU backend the tensors hold room for more positions than are cached (`len` of
/// them are), and a decode step writes its one position into that room in place: appending
/// by concatenation copied the whole cache at every step of every layer (6% of a batch-32
/// decode's time, SmolLM2 shape). Other backends concatenate, as before. What [`Self::append`]
/// returns is always the `len` cached positions.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`; positions from `len` on are unused.
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
        }
    }
}

/// Positions of room left after a growth on the CPU backend: a growth copies the cache, so
/// a decode of `n` tokens copies it about `n / ROOM` times instead of `n`.
const ROOM: usize = 64;

impl<B: Backend> KvCache<B> {
    /// Append new keys and values along the sequence and return the whole cache.
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let new = keys.dims()[2];
        let in_place = match (self.keys.take(), self.values.take()) {
            (Some(past_keys), Some(past_values)) => {
                match in_place::write(past_keys, past_values, &keys, &values, self.len) {
                    Ok(written) => Some(written),
                    Err((past_keys, past_values)) => {
                        self.keys = Some(past_keys);
                        self.values = Some(past_values);
                        None
                    }
                }
            }
            _ => None,
        };
        let (all_keys, all_values) = match in_place {
            Some(written) => written,
            None => {
                let room = if in_place::supported(&keys) { ROOM } else { 0 };
                let len = self.len;
                let grow = |past: Option<Tensor<B, 4>>, new: Tensor<B, 4>| {
                    let mut parts: Vec<Tensor<B, 4>> = past
                        .filter(|_| len > 0)
                        .map(|p| {
                            if p.dims()[2] == len {
                                p
                            } else {
                                p.narrow(2, 0, len)
                            }
                        })
                        .into_iter()
                        .collect();
                    if room > 0 {
                        let [b, h, _, d] = new.dims();
                        let spare = Tensor::<B, 4>::zeros([b, h, room, d], &new.device());
                        parts.push(new.clone());
                        parts.push(spare.cast(new.dtype()));
                    } else {
                        parts.push(new);
                    }
                    Tensor::cat(parts, 2)
                };
                (
                    grow(self.keys.take(), keys),
                    grow(self.values.take(), values),
                )
            }
        };
        self.len += new;
        self.keys = Some(all_keys.clone());
        self.values = Some(all_values.clone());
        (
            all_keys.narrow(2, 0, self.len),
            all_values.narrow(2, 0, self.len),
        )
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached positions alone, without room (before an operation that works on them).
    fn trim(&mut self) {
        let len = self.len;
        let cut = |t: Tensor<B, 4>| {
            if t.dims()[2] == len {
                t
            } else {
                t.narrow(2, 0, len)
            }
        };
        self.keys = self.keys.take().map(cut);
        self.values = self.values.take().map(cut);
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
        self.trim();
        if self.keys.is_some() {
            self.len += n;
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
    pub fn cat_rows(&mut self, mut other: KvCache<B>) {
        self.trim();
        other.trim();
        if self.keys.is_none() {
            self.len = other.len;
        }
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
        self.trim();
        self.len -= n.min(self.len);
        let cut = |t: Tensor<B, 4>| {
            let len = t.dims()[2];
            t.narrow(2, n.min(len), len - n.min(len))
        };
        self.keys = self.keys.take().map(cut);
        self.values = self.values.take().map(cut);
    }
}

/// Writing a step's keys and values into the room of a cache on the CPU backend (Flex), whose
/// buffers can be changed in place when this cache is their only holder.
mod in_place {
    use crate::flex::{as_flex, float_tensor, into_flex};
    use burn::backend::flex::FlexTensor;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Element, Tensor, TensorData, TensorPrimitive};

    /// Whether `t` is the CPU backend's (so a cache of it can have room).
    pub(super) fn supported<B: Backend>(t: &Tensor<B, 4>) -> bool {
        as_flex(&t.clone().into_primitive().tensor()).is_some()
    }

    /// A pair of tensors, handed back unchanged when they cannot be written in place.
    type Pair<B> = (Tensor<B, 4>, Tensor<B, 4>);

    /// `keys` and `values` `[b, h, t, d]` written at positions `len..len + t` of the cache's
    /// buffers `[b, h, capacity, d]`, when both are the CPU backend's, contiguous, held by
    /// nobody else and have room; otherwise the buffers back as they were.
    pub(super) fn write<B: Backend>(
        past_keys: Tensor<B, 4>,
        past_values: Tensor<B, 4>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
        len: usize,
    ) -> Result<Pair<B>, Pair<B>> {
        let [b, h, t, d] = keys.dims();
        let fits = |past: &Tensor<B, 4>| {
            let [pb, ph, capacity, pd] = past.dims();
            (pb, ph, pd) == (b, h, d) && len + t <= capacity && past.dtype() == keys.dtype()
        };
        if !fits(&past_keys) || !fits(&past_values) || values.dims() != [b, h, t, d] {
            return Err((past_keys, past_values));
        }
        let (k, v) = (primitive(past_keys), primitive(past_values));
        if !(writable(&k) && writable(&v)) {
            return Err((tensor(k), tensor(v)));
        }
        let (Some(mut k), Some(mut v)) = (into_flex(k), into_flex(v)) else {
            unreachable!("checked by `writable`")
        };
        copy_positions(&mut k, keys.clone().into_data(), len);
        copy_positions(&mut v, values.clone().into_data(), len);
        let back = |f| float_tensor(f).expect("a Flex tensor came from this backend");
        Ok((back(k), back(v)))
    }

    fn primitive<B: Backend>(t: Tensor<B, 4>) -> B::FloatTensorPrimitive {
        t.into_primitive().tensor()
    }

    fn tensor<B: Backend>(p: B::FloatTensorPrimitive) -> Tensor<B, 4> {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }

    /// A Flex buffer laid out from offset 0, held only here, of a dtype we write.
    fn writable<P: std::any::Any>(p: &P) -> bool {
        as_flex(p).is_some_and(|f| {
            f.is_unique()
                && f.is_contiguous()
                && f.layout().start_offset() == 0
                && matches!(f.dtype(), DType::F32 | DType::F16 | DType::BF16)
        })
    }

    /// Copies `new` `[b, h, t, d]` into `cache` `[b, h, capacity, d]` at positions `len..`.
    fn copy_positions(cache: &mut FlexTensor, new: TensorData, len: usize) {
        match cache.dtype() {
            DType::F16 => copy_as::<half::f16>(cache, new, len),
            DType::BF16 => copy_as::<half::bf16>(cache, new, len),
            _ => copy_as::<f32>(cache, new, len),
        }
    }

    fn copy_as<E: Element + bytemuck::Pod>(cache: &mut FlexTensor, new: TensorData, len: usize) {
        let shape = cache.layout().shape();
        let (capacity, d) = (shape[2], shape[3]);
        let t = new.shape[2];
        let block = t * d;
        let source = new.as_slice::<E>().expect("the cache's dtype");
        let target = cache
            .try_storage_mut::<E>()
            .expect("checked unique by `writable`");
        for (row, values) in source.chunks_exact(block).enumerate() {
            let at = (row * capacity + len) * d;
            target[at..at + block].copy_from_slice(values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    fn positions(b: usize, t: usize) -> Tensor<B, 4> {
        Tensor::random([b, 2, t, 4], Distribution::Default, &Default::default())
    }

    fn same(a: Tensor<B, 4>, b: Tensor<B, 4>) {
        assert_eq!(a.dims(), b.dims());
        assert_eq!(a.into_data(), b.into_data());
    }

    #[test]
    fn appending_in_place_gives_what_concatenation_gives_and_spares_every_copy() {
        let mut cache = KvCache::<B>::default();
        let (first_keys, first_values) = (positions(3, 5), positions(3, 5));
        cache.append(first_keys.clone(), first_values.clone());
        let (mut all_keys, mut all_values) = (first_keys, first_values);
        let mut snapshot = None;
        let capacity = |cache: &KvCache<B>| cache.keys.as_ref().map(|k| k.dims()[2]);
        let (mut last_capacity, mut growths) = (capacity(&cache), 0);
        // Past the room of one growth, so the cache grows again on the way.
        for step in 0..2 * ROOM + 3 {
            let (k, v) = (positions(3, 1), positions(3, 1));
            all_keys = Tensor::cat(vec![all_keys, k.clone()], 2);
            all_values = Tensor::cat(vec![all_values, v.clone()], 2);
            let (keys, values) = cache.append(k, v);
            same(keys, all_keys.clone());
            same(values, all_values.clone());
            assert_eq!(cache.len(), 5 + step + 1);
            if capacity(&cache) != last_capacity {
                growths += 1;
                last_capacity = capacity(&cache);
            }
            if step == 10 {
                // A copy held elsewhere shares the buffers: later writes must not reach it.
                snapshot = Some((cache.clone(), all_keys.clone()));
            }
        }
        // Every other step wrote in place: the buffers changed once because the snapshot
        // shared them, once because the room ran out.
        assert_eq!(growths, 2);
        let (mut kept, keys_then) = snapshot.expect("taken at step 10");
        assert_eq!(kept.len(), 16);
        let (keys, _) = kept.append(positions(3, 1), positions(3, 1));
        same(keys.narrow(2, 0, 16), keys_then);
    }

    #[test]
    fn row_and_position_edits_see_only_the_cached_positions() {
        let mut cache = KvCache::<B>::default();
        let (k, v) = (positions(2, 3), positions(2, 3));
        cache.append(k.clone(), v.clone());
        let (k1, v1) = (positions(2, 1), positions(2, 1));
        cache.append(k1.clone(), v1.clone());
        let keys = Tensor::cat(vec![k, k1], 2);
        cache.select_rows(&[1, 1, 0]);
        assert_eq!(cache.len(), 4);
        let picked = keys.clone().select(
            0,
            Tensor::<B, 1, Int>::from_data(
                TensorData::new(vec![1i64, 1, 0], [3]),
                &Default::default(),
            ),
        );
        cache.pad_front(2);
        assert_eq!(cache.len(), 6);
        cache.drop_front(2);
        assert_eq!(cache.len(), 4);
        let (step_k, step_v) = (positions(3, 1), positions(3, 1));
        let (after, _) = cache.append(step_k.clone(), step_v);
        same(after, Tensor::cat(vec![picked, step_k], 2));
        let mut empty = KvCache::<B>::default();
        empty.pad_front(3);
        assert!(empty.is_empty());
        empty.cat_rows(cache);
        assert_eq!(empty.len(), 5);
    }
}
