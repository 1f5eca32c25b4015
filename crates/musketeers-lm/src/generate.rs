//! Batched generation with a KV cache: left padding, a group of samples per prompt from one
//! prefill, per-sequence stop on eos or a stop string, sampling log-probabilities.

use crate::cache::KvCache;
use crate::context::{SoftContext, row_positions};
use crate::error::LmError;
use crate::llama::Llama;
use crate::rope::Rope;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::TextTokenizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rayon::prelude::*;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Samples per prompt; the prompt is prefilled once for all of them.
    pub num_return_sequences: usize,
    pub eos_token_ids: Vec<u32>,
    pub sampling: SamplingConfig,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            num_return_sequences: 1,
            eos_token_ids: Vec::new(),
            sampling: SamplingConfig::default(),
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It sampled an eos token (the last token).
    Eos,
    /// A [`StopCondition`] fired (e.g. a stop string was completed by the last token).
    Stop,
    /// It reached `max_new_tokens` (a truncated completion).
    Length,
}

/// Decides after each new token whether a sequence is finished, from its new tokens.
pub trait StopCondition {
    fn should_stop(&self, new_tokens: &[u32]) -> bool;

    /// Called once per decode step (counted from 0), with the rows still sampling after it. A
    /// stop condition sees every step, so it is also where a caller follows a long generation
    /// (evaluation's progress display does).
    fn after_step(&self, _step: usize, _rows_left: usize) {}
}

/// Stop once the decoded new text contains one of `strings` (the stop string is kept, as
/// `transformers` keeps it). Only a tail of the tokens is decoded at each step.
#[derive(Debug)]
pub struct StopStrings<'a> {
    tokenizer: &'a TextTokenizer,
    strings: Vec<String>,
    /// Tokens decoded per check: enough to hold the longest stop string even when every
    /// token carries a single byte, plus the token before it.
    window: usize,
}

impl<'a> StopStrings<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, strings: Vec<String>) -> Self {
        let longest = strings.iter().map(String::len).max().unwrap_or(0);
        Self {
            tokenizer,
            strings: strings.into_iter().filter(|s| !s.is_empty()).collect(),
            window: longest + 1,
        }
    }
}

impl StopCondition for StopStrings<'_> {
    fn should_stop(&self, new_tokens: &[u32]) -> bool {
        if self.strings.is_empty() {
            return false;
        }
        let tail = &new_tokens[new_tokens.len().saturating_sub(self.window)..];
        // A tail that does not decode cannot contain a stop string yet.
        self.tokenizer
            .decode(tail, false)
            .is_ok_and(|text| self.strings.iter().any(|s| text.contains(s.as_str())))
    }
}

/// Generated tokens of each sequence (prompt-major: prompt 0's samples first).
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens, up to and including the first eos (or the token completing a stop).
    pub tokens: Vec<Vec<u32>>,
    /// Sampling log-probability of each new token.
    pub logprobs: Vec<Vec<f32>>,
    pub finish_reasons: Vec<FinishReason>,
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
}

/// Generate continuations of `prompts` (token ids, no padding), stopping on eos.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &B::Device,
) -> Result<Generation, LmError> {
    generate_until(model, prompts, config, None, device)
}

/// Like [`generate`], also stopping a sequence when `stop` says so.
pub fn generate_until<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    stop: Option<&dyn StopCondition>,
    device: &B::Device,
) -> Result<Generation, LmError> {
    generate_with_prefix(model, prompts, None, config, stop, device)
}

/// Like [`generate_until`], with soft tokens in front of every prompt: `prefix` is
/// `[prompts, K, hidden]` input embeddings (n-Musketeers' context tokens), placed before the
/// (left-padded) prompt embeddings. Rows are laid out `[prefix | padding | prompt]`, the same
/// layout `Llama::forward_embeddings` sees when a trainer scores the completions.
pub fn generate_with_prefix<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    prefix: Option<Tensor<B, 3>>,
    config: &GenerationConfig,
    stop: Option<&dyn StopCondition>,
    device: &B::Device,
) -> Result<Generation, LmError> {
    generate_part(
        model,
        prompts,
        prefix.map(SoftContext::prefix),
        config,
        stop,
        0,
        device,
    )
}

/// Like [`generate_with_prefix`], with context read as `context` says (a plain prefix or
/// gated, see [`crate::context`]).
pub fn generate_with_context<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    context: Option<SoftContext<B>>,
    config: &GenerationConfig,
    stop: Option<&dyn StopCondition>,
    device: &B::Device,
) -> Result<Generation, LmError> {
    generate_part(model, prompts, context, config, stop, 0, device)
}

/// Like [`generate_with_context`] for a part of a larger batch whose first sample is sample
/// `first_sequence` of the whole: each sample draws from the random stream its place in the
/// whole batch gives it, so a batch split across processes samples what it would in one.
pub fn generate_part<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    context: Option<SoftContext<B>>,
    config: &GenerationConfig,
    stop: Option<&dyn StopCondition>,
    first_sequence: u64,
    device: &B::Device,
) -> Result<Generation, LmError> {
    let vocab = model.embed_tokens.weight.dims()[0];
    if let Some(context) = &context {
        context.check(prompts.len(), model.context_shape())?;
    }
    let soft = context.as_ref().map_or(0, SoftContext::len);
    let gated = context.as_ref().is_some_and(SoftContext::is_gated);
    let (prefix, gates) = match context {
        Some(c) => (Some(c.tokens), c.gates.map(|g| g.cast(model.float_dtype()))),
        None => (None, None),
    };
    check_inputs(prompts, vocab, config)?;
    let generator = Generator {
        model,
        rope: model.rope(device),
        gates,
        device,
    };
    let prefill = generator.prefill(prompts, prefix, soft, gated);
    let prefill_seconds = prefill.seconds;

    // One row per sample: repeat each prompt's cache, logits and mask G times.
    let g = config.num_return_sequences;
    let rows: Vec<usize> = (0..prompts.len())
        .flat_map(|p| std::iter::repeat_n(p, g))
        .collect();
    let prefill = prefill.select_rows(&rows, device);
    let samplers: Vec<Sampler> = (0..rows.len())
        .map(|s| Sampler::new(&config.sampling, first_sequence + s as u64))
        .collect();

    let (decoded, decode_seconds) = generator.decode(prefill, samplers, config, stop, vocab)?;
    Ok(Generation {
        tokens: decoded.tokens,
        logprobs: decoded.logprobs,
        finish_reasons: decoded.finish_reasons,
        prefill_tokens: prompts.iter().map(Vec::len).sum(),
        prefill_seconds,
        decode_tokens: decoded.decode_tokens,
        decode_seconds,
    })
}

/// Rejects empty prompts, token ids outside the vocabulary and a zero sample count.
fn check_inputs(
    prompts: &[Vec<u32>],
    vocab: usize,
    config: &GenerationConfig,
) -> Result<(), LmError> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(LmError::BadInput(
            "every prompt needs at least one token".into(),
        ));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&id| id as usize >= vocab) {
        return Err(LmError::BadInput(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    if config.num_return_sequences == 0 {
        return Err(LmError::BadInput(
            "num_return_sequences must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The model and what every forward pass of one generation shares.
struct Generator<'a, B: Backend> {
    model: &'a Llama<B>,
    rope: Rope<B>,
    /// Gated context reading (cast to the model's float type); `None`: a plain prefix or none.
    gates: Option<Tensor<B, 2>>,
    device: &'a B::Device,
}

/// Per batch row, what a decode step needs besides the cache.
struct Rows {
    /// Per key, whether it is a real token (not padding).
    real: Vec<Vec<bool>>,
    /// Per key, its position.
    key_positions: Vec<Vec<i64>>,
    /// The position of the row's next token.
    next_position: Vec<i64>,
}

impl Rows {
    /// Rows `picks` of these, in that order (a row may be picked more than once).
    fn select(&self, picks: &[usize]) -> Self {
        Self {
            real: picks.iter().map(|&p| self.real[p].clone()).collect(),
            key_positions: picks
                .iter()
                .map(|&p| self.key_positions[p].clone())
                .collect(),
            next_position: picks.iter().map(|&p| self.next_position[p]).collect(),
        }
    }
}

/// What the prefill leaves for decoding: one row per prompt, until [`Prefill::select_rows`].
struct Prefill<B: Backend> {
    caches: Vec<KvCache<B>>,
    /// Logits after each row's last token, `[b, 1, vocab]`.
    last: Tensor<B, 3>,
    rows: Rows,
    seconds: f64,
}

impl<B: Backend> Prefill<B> {
    /// Rows `picks` of the caches, logits and masks, in that order.
    fn select_rows(mut self, picks: &[usize], device: &B::Device) -> Self {
        for cache in &mut self.caches {
            cache.select_rows(picks);
        }
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                picks.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [picks.len()],
            ),
            device,
        );
        Self {
            last: self.last.select(0, index),
            rows: self.rows.select(picks),
            ..self
        }
    }
}

/// The new tokens of each sample, indexed by row.
struct Decoded {
    tokens: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    finish_reasons: Vec<FinishReason>,
    decode_tokens: usize,
}

impl Decoded {
    fn new(n: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); n],
            logprobs: vec![Vec::new(); n],
            finish_reasons: vec![FinishReason::Length; n],
            decode_tokens: 0,
        }
    }

    /// Samples one token for each active row from `logits` (`[active, vocab]`, flat) and
    /// records why a row finished. Returns the slots (indices into `active`) still sampling
    /// and their tokens, the next step's input.
    fn sample_step(
        &mut self,
        active: &[usize],
        logits: &[f32],
        vocab: usize,
        samplers: &mut [Sampler],
        config: &GenerationConfig,
        stop: Option<&dyn StopCondition>,
    ) -> (Vec<usize>, Vec<i64>) {
        let mut step_ids = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        // Rows sample on rayon's threads: each reads its own logits with its own seeded
        // stream, so the draws do not depend on the thread count (a row's softmax over a
        // 49k-150k vocabulary is ~100k `exp`s; serial, 10-20% of a batch-32 decode step).
        let mut by_row: Vec<Option<&mut Sampler>> = samplers.iter_mut().map(Some).collect();
        let mut active_samplers: Vec<&mut Sampler> = active
            .iter()
            .map(|&row| by_row[row].take().expect("active rows are distinct"))
            .collect();
        let drawn: Vec<(u32, f32)> = active_samplers
            .par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .map(|(sampler, logits)| sampler.sample(logits))
            .collect();
        for (slot, (&row, (token, logprob))) in active.iter().zip(drawn).enumerate() {
            self.tokens[row].push(token);
            self.logprobs[row].push(logprob);
            self.decode_tokens += 1;
            if config.eos_token_ids.contains(&token) {
                self.finish_reasons[row] = FinishReason::Eos;
            } else if stop.is_some_and(|s| s.should_stop(&self.tokens[row])) {
                self.finish_reasons[row] = FinishReason::Stop;
            }
            if self.finish_reasons[row] == FinishReason::Length {
                keep.push(slot);
                step_ids.push(i64::from(token));
            }
        }
        (keep, step_ids)
    }
}

impl<B: Backend> Generator<'_, B> {
    /// Prefill: [prefix | padding | prompt], positions counted over real tokens only.
    fn prefill(
        &self,
        prompts: &[Vec<u32>],
        prefix: Option<Tensor<B, 3>>,
        soft: usize,
        gated: bool,
    ) -> Prefill<B> {
        let (model, device) = (self.model, self.device);
        let (b, width) = (
            prompts.len(),
            prompts.iter().map(Vec::len).max().unwrap_or(0),
        );
        let start = Instant::now();
        let (ids, positions, rows) = pad_prompts(prompts, soft, width, gated);
        let total = soft + width;
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, width]), device);
        let positions =
            Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, total]), device);
        let embedded = match prefix {
            Some(prefix) => {
                Tensor::cat(vec![prefix.cast(model.float_dtype()), model.embed(ids)], 1)
            }
            None => model.embed(ids),
        };
        let mut caches = model.new_caches();
        let hidden = model.forward_cached_gated(
            embedded,
            positions.clone(),
            positions,
            &attention_mask(&rows.real, total, device),
            &mut caches,
            &self.rope,
            self.gates.as_ref(),
        );
        let [_, _, h] = hidden.dims();
        let last = model.head(hidden.slice([0..b, total - 1..total, 0..h])); // [b, 1, vocab]
        Prefill {
            caches,
            last,
            rows,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// Samples up to `max_new_tokens` per row from the prefill's (one row per sample) logits.
    /// Returns the samples and the seconds it took.
    fn decode(
        &self,
        prefill: Prefill<B>,
        mut samplers: Vec<Sampler>,
        config: &GenerationConfig,
        stop: Option<&dyn StopCondition>,
        vocab: usize,
    ) -> Result<(Decoded, f64), LmError> {
        let Prefill {
            mut caches,
            mut last,
            mut rows,
            ..
        } = prefill;
        let n = samplers.len();
        let mut decoded = Decoded::new(n);
        // The rows still sampling, in batch order: a row that finishes leaves the batch (its
        // cache rows are dropped), so a few long completions do not drag finished rows along.
        let mut active: Vec<usize> = (0..n).collect();
        let start = Instant::now();
        for step in 0..config.max_new_tokens {
            let logits = last
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| LmError::BadInput(format!("logits: {e:?}")))?;
            let (keep, step_ids) =
                decoded.sample_step(&active, &logits, vocab, &mut samplers, config, stop);
            if let Some(stop) = stop {
                stop.after_step(step, keep.len());
            }
            if keep.is_empty() || step + 1 == config.max_new_tokens {
                break;
            }
            if keep.len() < active.len() {
                for cache in &mut caches {
                    cache.select_rows(&keep);
                }
                active = keep.iter().map(|&slot| active[slot]).collect();
                rows = rows.select(&keep);
            }
            last = self.decode_step(step_ids, &mut rows, &mut caches);
        }
        Ok((decoded, start.elapsed().as_secs_f64()))
    }

    /// Runs each row's last sampled token (`step_ids`) through the model, its key appended
    /// to the row's mask and key positions; returns the logits `[rows, 1, vocab]`.
    fn decode_step(
        &self,
        step_ids: Vec<i64>,
        rows: &mut Rows,
        caches: &mut [KvCache<B>],
    ) -> Tensor<B, 3> {
        let (model, device) = (self.model, self.device);
        let m = rows.next_position.len();
        for (mask, (keys, position)) in rows
            .real
            .iter_mut()
            .zip(rows.key_positions.iter_mut().zip(&rows.next_position))
        {
            mask.push(true);
            keys.push(*position);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(step_ids, [m, 1]), device);
        let positions = Tensor::<B, 2, Int>::from_data(
            TensorData::new(rows.next_position.clone(), [m, 1]),
            device,
        );
        rows.next_position.iter_mut().for_each(|p| *p += 1);
        let width = rows.real[0].len();
        let keys: Vec<i64> = rows.key_positions.iter().flatten().copied().collect();
        let hidden = model.forward_cached_gated(
            model.embed(ids),
            positions,
            Tensor::<B, 2, Int>::from_data(TensorData::new(keys, [m, width]), device),
            &decode_mask(&rows.real, width, device),
            caches,
            &self.rope,
            self.gates.as_ref(),
        );
        model.head(hidden)
    }
}

/// Lays out each prompt as `[soft context | left padding | prompt]`: the token ids
/// `[b, width]` (padding as 0), the positions `[b, soft + width]` and each row's keys.
fn pad_prompts(
    prompts: &[Vec<u32>],
    soft: usize,
    width: usize,
    gated: bool,
) -> (Vec<i64>, Vec<i64>, Rows) {
    let b = prompts.len();
    let mut ids = Vec::with_capacity(b * width);
    let mut positions = Vec::with_capacity(b * (soft + width));
    let mut real: Vec<Vec<bool>> = Vec::with_capacity(b);
    let mut prompt_ends = Vec::with_capacity(b);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(prompt.iter().map(|&t| i64::from(t))));
        let (row, end) = row_positions(soft, pad, prompt.len(), gated);
        positions.extend(row);
        prompt_ends.push(end);
        real.push(
            std::iter::repeat_n(true, soft)
                .chain(std::iter::repeat_n(false, pad))
                .chain(std::iter::repeat_n(true, prompt.len()))
                .collect(),
        );
    }
    let key_positions = positions
        .chunks(soft + width)
        .map(<[i64]>::to_vec)
        .collect();
    let rows = Rows {
        real,
        key_positions,
        next_position: prompt_ends,
    };
    (ids, positions, rows)
}

/// Prefill mask `[b, 1, t, t]`: forbidden where the key is in the future or padding.
pub fn attention_mask<B: Backend>(
    real: &[Vec<bool>],
    t: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let mut data = Vec::with_capacity(real.len() * t * t);
    for row in real {
        for i in 0..t {
            data.extend((0..t).map(|j| j > i || !row[j]));
        }
    }
    Tensor::from_data(TensorData::new(data, [real.len(), 1, t, t]), device)
}

/// Decode mask `[b, 1, 1, t]`: forbidden where the key is padding.
fn decode_mask<B: Backend>(real: &[Vec<bool>], t: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let data: Vec<bool> = real.iter().flat_map(|row| row.iter().map(|r| !r)).collect();
    Tensor::from_data(TensorData::new(data, [real.len(), 1, 1, t]), device)
}
