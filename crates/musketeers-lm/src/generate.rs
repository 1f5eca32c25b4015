//! Batched generation with a KV cache: left padding, a group of samples per prompt from one
//! prefill, per-sequence stop on eos or a stop string, sampling log-probabilities.

use crate::context::{SoftContext, row_positions};
use crate::error::LmError;
use crate::llama::Llama;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::TextTokenizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
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
    let rope = model.rope(device);
    let (b, width) = (
        prompts.len(),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
    );

    // Prefill: [prefix | padding | prompt], positions counted over real tokens only.
    let start = Instant::now();
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
    let total = soft + width;
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, width]), device);
    let mut key_positions: Vec<Vec<i64>> = positions.chunks(total).map(<[i64]>::to_vec).collect();
    let positions = Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, total]), device);
    let embedded = match prefix {
        Some(prefix) => Tensor::cat(vec![prefix.cast(model.float_dtype()), model.embed(ids)], 1),
        None => model.embed(ids),
    };
    let mut caches = model.new_caches();
    let hidden = model.forward_cached_gated(
        embedded,
        positions.clone(),
        positions,
        &attention_mask(&real, total, device),
        &mut caches,
        &rope,
        gates.as_ref(),
    );
    let [_, _, h] = hidden.dims();
    let mut last = model.head(hidden.slice([0..b, total - 1..total, 0..h])); // [b, 1, vocab]
    let prefill_seconds = start.elapsed().as_secs_f64();

    // One row per sample: repeat each prompt's cache, logits and mask G times.
    let g = config.num_return_sequences;
    let rows: Vec<usize> = (0..b).flat_map(|p| std::iter::repeat_n(p, g)).collect();
    for cache in &mut caches {
        cache.select_rows(&rows);
    }
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        device,
    );
    last = last.select(0, index);
    let mut real: Vec<Vec<bool>> = rows.iter().map(|&p| real[p].clone()).collect();
    key_positions = rows.iter().map(|&p| key_positions[p].clone()).collect();
    let mut next_position: Vec<i64> = rows.iter().map(|&p| prompt_ends[p]).collect();
    let mut samplers: Vec<Sampler> = (0..rows.len())
        .map(|s| Sampler::new(&config.sampling, first_sequence + s as u64))
        .collect();

    let n = rows.len();
    let mut tokens = vec![Vec::new(); n];
    let mut logprobs = vec![Vec::new(); n];
    let mut finish_reasons = vec![FinishReason::Length; n];
    // The rows still sampling, in batch order: a row that finishes leaves the batch (its
    // cache rows are dropped), so a few long completions do not drag finished rows along.
    let mut active: Vec<usize> = (0..n).collect();
    let start = Instant::now();
    let mut decode_tokens = 0;
    for step in 0..config.max_new_tokens {
        let logits = last
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| LmError::BadInput(format!("logits: {e:?}")))?;
        let mut step_ids = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (slot, &row) in active.iter().enumerate() {
            let (token, logprob) = samplers[row].sample(&logits[slot * vocab..(slot + 1) * vocab]);
            tokens[row].push(token);
            logprobs[row].push(logprob);
            decode_tokens += 1;
            if config.eos_token_ids.contains(&token) {
                finish_reasons[row] = FinishReason::Eos;
            } else if stop.is_some_and(|s| s.should_stop(&tokens[row])) {
                finish_reasons[row] = FinishReason::Stop;
            }
            if finish_reasons[row] == FinishReason::Length {
                keep.push(slot);
                step_ids.push(i64::from(token));
            }
        }
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
            real = keep.iter().map(|&slot| real[slot].clone()).collect();
            key_positions = keep
                .iter()
                .map(|&slot| key_positions[slot].clone())
                .collect();
            next_position = keep.iter().map(|&slot| next_position[slot]).collect();
        }
        let m = active.len();
        for (mask, (keys, position)) in real
            .iter_mut()
            .zip(key_positions.iter_mut().zip(&next_position))
        {
            mask.push(true);
            keys.push(*position);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(step_ids, [m, 1]), device);
        let positions =
            Tensor::<B, 2, Int>::from_data(TensorData::new(next_position.clone(), [m, 1]), device);
        next_position.iter_mut().for_each(|p| *p += 1);
        let width = real[0].len();
        let keys: Vec<i64> = key_positions.iter().flatten().copied().collect();
        let hidden = model.forward_cached_gated(
            model.embed(ids),
            positions,
            Tensor::<B, 2, Int>::from_data(TensorData::new(keys, [m, width]), device),
            &decode_mask(&real, width, device),
            &mut caches,
            &rope,
            gates.as_ref(),
        );
        last = model.head(hidden);
    }
    Ok(Generation {
        tokens,
        logprobs,
        finish_reasons,
        prefill_tokens: prompts.iter().map(Vec::len).sum(),
        prefill_seconds,
        decode_tokens,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
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
