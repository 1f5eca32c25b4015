//! Continuous batching: sequences join a running decode batch between steps and leave it when
//! they finish, so a server decodes every request in flight in one forward pass per token.
//!
//! Rows of one batch have caches of different lengths (their prompts and the steps they
//! joined at differ): the shorter side is left-padded with masked slots when sequences join,
//! exactly as [`crate::generate::generate_with_prefix`] left-pads a batch of prompts, so a
//! sequence decodes the tokens it would decode alone (up to float rounding of the batch).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::context::row_positions;
use crate::generate::{FinishReason, StopCondition, attention_mask};
use crate::rope::Rope;
use crate::sampling::{Sampler, SamplingConfig};
use crate::{Llama, LmError};

/// What a sequence starts from and how it stops.
pub struct SequenceSpec<B: Backend> {
    /// Caller's identifier, reported with every event.
    pub id: u64,
    pub prompt: Vec<u32>,
    /// Soft tokens `[K, hidden]` in front of the prompt (n-Musketeers' context).
    pub prefix: Option<Tensor<B, 2>>,
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    pub sampling: SamplingConfig,
    /// The sequence's random stream (e.g. its index among a request's `n` samples).
    pub stream: u64,
    pub stop: Option<Box<dyn StopCondition + Send>>,
}

impl<B: Backend> std::fmt::Debug for SequenceSpec<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceSpec")
            .field("id", &self.id)
            .field("prompt", &self.prompt.len())
            .field("max_new_tokens", &self.max_new_tokens)
            .finish_non_exhaustive()
    }
}

/// One sampled token, or the end of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token { id: u64, token: u32, logprob: f32 },
    Finished { id: u64, reason: FinishReason },
}

struct Row {
    id: u64,
    /// Per cached slot: a real key (not padding).
    real: Vec<bool>,
    /// Per cached slot: its position (rotary and sliding windows).
    keys: Vec<i64>,
    next_position: i64,
    sampler: Sampler,
    tokens: Vec<u32>,
    max_new_tokens: usize,
    eos_token_ids: Vec<u32>,
    stop: Option<Box<dyn StopCondition + Send>>,
}

/// A running decode batch over one model.
pub struct DecodeBatch<B: Backend> {
    caches: Vec<KvCache<B>>,
    rows: Vec<Row>,
    /// Next-token logits of every row, `[rows, vocab]`.
    last: Option<Tensor<B, 2>>,
    rope: Rope<B>,
    vocab: usize,
    /// `[layers, heads]`: prefixes are read as gated context (see [`crate::context`]).
    gates: Option<Tensor<B, 2>>,
}

impl<B: Backend> std::fmt::Debug for DecodeBatch<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeBatch")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

fn int2<B: Backend>(data: Vec<i64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

impl<B: Backend> DecodeBatch<B> {
    pub fn new(model: &Llama<B>, device: &B::Device) -> Self {
        Self {
            caches: model.new_caches(),
            rows: Vec::new(),
            last: None,
            rope: model.rope(device),
            vocab: model.embed_tokens.weight.dims()[0],
            gates: None,
        }
    }

    /// Read every sequence's prefix as gated context through `gates` `[layers, heads]`
    /// (checked against the model when sequences join).
    pub fn with_context_gates(mut self, gates: Tensor<B, 2>) -> Self {
        self.gates = Some(gates);
        self
    }

    /// Sequences decoding now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Cached positions per row (real and padding).
    pub fn width(&self) -> usize {
        self.caches.first().map_or(0, KvCache::len)
    }

    /// Prefill `specs` (one forward pass; all with a prefix of the same length, or none) and
    /// add them to the batch: they sample their first token at the next [`Self::step`].
    pub fn join(
        &mut self,
        model: &Llama<B>,
        specs: Vec<SequenceSpec<B>>,
        device: &B::Device,
    ) -> Result<(), LmError> {
        if specs.is_empty() {
            return Ok(());
        }
        self.check_and_cast_gates(model)?;
        let gates = self.gates.clone();
        let soft = self.check_specs(model, &specs)?;
        let (prefill, rows) = lay_out(specs, soft, self.gates.is_some());
        let total = prefill.total;
        let real: Vec<Vec<bool>> = rows.iter().map(|r| r.real.clone()).collect();
        let (caches, last) = self.prefill(model, prefill, &real, gates.as_ref(), device);
        self.append(caches, rows, last, total);
        Ok(())
    }

    /// Checks the context gates against the model and casts them to its float type.
    fn check_and_cast_gates(&mut self, model: &Llama<B>) -> Result<(), LmError> {
        if let Some(gates) = &self.gates {
            let (layers, heads, _) = model.context_shape();
            if gates.dims() != [layers, heads] {
                return Err(LmError::BadInput(format!(
                    "context gates are {:?}, the model has {layers} layers of {heads} heads",
                    gates.dims()
                )));
            }
        }
        // Cast once here; every later step reuses them.
        self.gates = self.gates.take().map(|g| g.cast(model.float_dtype()));
        Ok(())
    }

    /// Checks the joining sequences' prefixes, prompts and token ids; returns the prefix
    /// length (0 without prefixes).
    fn check_specs(&self, model: &Llama<B>, specs: &[SequenceSpec<B>]) -> Result<usize, LmError> {
        let hidden = model.embed_tokens.weight.dims()[1];
        let soft = match specs[0].prefix.as_ref().map(|p| p.dims()) {
            Some([k, d]) if d == hidden => k,
            Some([k, d]) => {
                return Err(LmError::BadInput(format!(
                    "prefix is [{k}, {d}], expected [K, {hidden}]"
                )));
            }
            None => 0,
        };
        if specs
            .iter()
            .any(|s| s.prefix.as_ref().map_or(0, |p| p.dims()[0]) != soft)
        {
            return Err(LmError::BadInput(
                "sequences joining together need prefixes of one length".into(),
            ));
        }
        if let Some(bad) = specs
            .iter()
            .find(|s| s.prompt.is_empty() || s.max_new_tokens == 0)
        {
            return Err(LmError::BadInput(format!(
                "sequence {}: an empty prompt or max_new_tokens 0",
                bad.id
            )));
        }
        if let Some(bad) = specs
            .iter()
            .flat_map(|s| &s.prompt)
            .find(|&&t| t as usize >= self.vocab)
        {
            return Err(LmError::BadInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        Ok(soft)
    }

    /// Runs the joining sequences' prefill; returns their caches and next-token logits
    /// `[b, vocab]`.
    fn prefill(
        &self,
        model: &Llama<B>,
        prefill: PrefillBatch<B>,
        real: &[Vec<bool>],
        gates: Option<&Tensor<B, 2>>,
        device: &B::Device,
    ) -> (Vec<KvCache<B>>, Tensor<B, 2>) {
        let PrefillBatch {
            ids,
            positions,
            prefixes,
            b,
            width,
            total,
        } = prefill;
        let ids = int2::<B>(ids, [b, width], device);
        let positions = int2::<B>(positions, [b, total], device);
        let embedded = if prefixes.is_empty() {
            model.embed(ids)
        } else {
            Tensor::cat(
                vec![
                    Tensor::cat(prefixes, 0).cast(model.float_dtype()),
                    model.embed(ids),
                ],
                1,
            )
        };
        let mut caches = model.new_caches();
        let hidden_states = model.forward_cached_gated(
            embedded,
            positions.clone(),
            positions,
            &attention_mask::<B>(real, total, device),
            &mut caches,
            &self.rope,
            gates,
        );
        let [_, _, h] = hidden_states.dims();
        let last = model
            .head(hidden_states.slice([0..b, total - 1..total, 0..h]))
            .reshape([b, self.vocab]);
        (caches, last)
    }

    /// Adds prefilled `rows` (caches `total` slots long) to the batch.
    fn append(
        &mut self,
        caches: Vec<KvCache<B>>,
        mut rows: Vec<Row>,
        last: Tensor<B, 2>,
        total: usize,
    ) {
        // Align the caches: the shorter side is left-padded with masked slots.
        let running = self.caches.first().map_or(0, KvCache::len);
        if self.rows.is_empty() {
            self.caches = caches;
            self.rows = rows;
            self.last = Some(last);
            return;
        }
        let (pad_running, pad_new) = (total.saturating_sub(running), running.saturating_sub(total));
        for row in &mut self.rows {
            pad_front(row, pad_running);
        }
        for row in &mut rows {
            pad_front(row, pad_new);
        }
        for (cache, new) in self.caches.iter_mut().zip(caches) {
            cache.pad_front(pad_running);
            let mut new = new;
            new.pad_front(pad_new);
            cache.cat_rows(new);
        }
        self.rows.extend(rows);
        self.last = Some(match self.last.take() {
            Some(previous) => Tensor::cat(vec![previous, last], 0),
            None => last,
        });
    }

    /// Sample one token for every row, end the rows that finish, and run the rest one
    /// position further.
    pub fn step(&mut self, model: &Llama<B>, device: &B::Device) -> Result<Vec<Event>, LmError> {
        let Some(last) = self.last.take() else {
            return Ok(Vec::new());
        };
        let logits = last
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| LmError::BadInput(format!("logits: {e:?}")))?;
        let vocab = self.vocab;
        let mut events = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        let mut step_ids = Vec::with_capacity(self.rows.len());
        for (slot, row) in self.rows.iter_mut().enumerate() {
            let (token, logprob) = row
                .sampler
                .sample(&logits[slot * vocab..(slot + 1) * vocab]);
            row.tokens.push(token);
            events.push(Event::Token {
                id: row.id,
                token,
                logprob,
            });
            let reason = if row.eos_token_ids.contains(&token) {
                Some(FinishReason::Eos)
            } else if row
                .stop
                .as_ref()
                .is_some_and(|s| s.should_stop(&row.tokens))
            {
                Some(FinishReason::Stop)
            } else if row.tokens.len() >= row.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match reason {
                Some(reason) => events.push(Event::Finished { id: row.id, reason }),
                None => {
                    keep.push(slot);
                    step_ids.push(i64::from(token));
                }
            }
        }
        self.keep(&keep);
        if self.rows.is_empty() {
            return Ok(events);
        }
        let m = self.rows.len();
        let mut positions = Vec::with_capacity(m);
        for row in &mut self.rows {
            row.real.push(true);
            row.keys.push(row.next_position);
            positions.push(row.next_position);
            row.next_position += 1;
        }
        let width = self.rows[0].real.len();
        let keys: Vec<i64> = self.rows.iter().flat_map(|r| r.keys.clone()).collect();
        let mask: Vec<bool> = self
            .rows
            .iter()
            .flat_map(|r| r.real.iter().map(|x| !x))
            .collect();
        let hidden = model.forward_cached_gated(
            model.embed(int2::<B>(step_ids, [m, 1], device)),
            int2::<B>(positions, [m, 1], device),
            int2::<B>(keys, [m, width], device),
            &Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [m, 1, 1, width]), device),
            &mut self.caches,
            &self.rope,
            self.gates.as_ref(),
        );
        self.last = Some(model.head(hidden).reshape([m, vocab]));
        Ok(events)
    }

    /// Drop sequence `id` (its client went away); `false` when it is not decoding.
    pub fn cancel(&mut self, id: u64) -> bool {
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&slot| self.rows[slot].id != id)
            .collect();
        if keep.len() == self.rows.len() {
            return false;
        }
        self.keep(&keep);
        true
    }

    /// Keep rows `keep` (slots, in order) of the batch.
    fn keep(&mut self, keep: &[usize]) {
        if keep.len() == self.rows.len() {
            return;
        }
        if keep.is_empty() {
            self.rows.clear();
            self.last = None;
            for cache in &mut self.caches {
                *cache = KvCache::default();
            }
            return;
        }
        for cache in &mut self.caches {
            cache.select_rows(keep);
        }
        if let Some(last) = self.last.take() {
            let device = last.device();
            let index: Vec<i64> = keep.iter().map(|&s| s as i64).collect();
            let n = index.len();
            self.last = Some(last.select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device),
            ));
        }
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep.iter().filter_map(|&s| rows[s].take()).collect();
        // Slots that are padding in every remaining row go: without this a batch that is
        // never empty (a busy server) would keep every departed row's length forever.
        let unused = self
            .rows
            .iter()
            .map(|r| r.real.iter().take_while(|real| !**real).count())
            .min()
            .unwrap_or(0);
        if unused > 0 {
            for cache in &mut self.caches {
                cache.drop_front(unused);
            }
            for row in &mut self.rows {
                row.real.drain(..unused);
                row.keys.drain(..unused);
            }
        }
    }
}

fn pad_front(row: &mut Row, n: usize) {
    if n == 0 {
        return;
    }
    row.real.splice(0..0, std::iter::repeat_n(false, n));
    row.keys.splice(0..0, std::iter::repeat_n(0, n));
}

/// The joining sequences as one prefill batch: `[prefix | padding | prompt]` rows.
struct PrefillBatch<B: Backend> {
    /// Token ids `[b, width]`, padding as 0.
    ids: Vec<i64>,
    /// Positions `[b, total]`.
    positions: Vec<i64>,
    /// Each sequence's prefix `[1, K, hidden]` (empty without prefixes).
    prefixes: Vec<Tensor<B, 3>>,
    b: usize,
    /// The longest prompt.
    width: usize,
    /// Prefix length plus `width`.
    total: usize,
}

/// Lays `specs` out as one left-padded prefill batch behind `soft` prefix tokens, and makes
/// their rows.
fn lay_out<B: Backend>(
    specs: Vec<SequenceSpec<B>>,
    soft: usize,
    gated: bool,
) -> (PrefillBatch<B>, Vec<Row>) {
    let (b, width) = (
        specs.len(),
        specs.iter().map(|s| s.prompt.len()).max().unwrap_or(0),
    );
    let total = soft + width;
    let mut ids = Vec::with_capacity(b * width);
    let mut positions = Vec::with_capacity(b * total);
    let mut rows = Vec::with_capacity(b);
    let mut prefixes = Vec::new();
    for spec in specs {
        let pad = width - spec.prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(spec.prompt.iter().map(|&t| i64::from(t))));
        let (keys, next_position) = row_positions(soft, pad, spec.prompt.len(), gated);
        positions.extend(&keys);
        let real = std::iter::repeat_n(true, soft)
            .chain(std::iter::repeat_n(false, pad))
            .chain(std::iter::repeat_n(true, spec.prompt.len()))
            .collect();
        if let Some(prefix) = spec.prefix {
            prefixes.push(prefix.unsqueeze_dim::<3>(0));
        }
        rows.push(Row {
            id: spec.id,
            real,
            keys,
            next_position,
            sampler: Sampler::new(&spec.sampling, spec.stream),
            tokens: Vec::new(),
            max_new_tokens: spec.max_new_tokens,
            eos_token_ids: spec.eos_token_ids,
            stop: spec.stop,
        });
    }
    let prefill = PrefillBatch {
        ids,
        positions,
        prefixes,
        b,
        width,
        total,
    };
    (prefill, rows)
}
