//! The policy as GRPO sees it: a language model that, given context tokens `C` and a prompt,
//! scores completion tokens. Rows are laid out `[C | padding | prompt | completion | padding]`,
//! the layout `musketeers_lm::generate::generate_with_prefix` samples in, so the scores of
//! freshly sampled tokens equal their sampling log-probabilities.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use musketeers_lm::cache::KvCache;
use musketeers_lm::context::row_positions;
use musketeers_lm::head::FrozenHead;
use musketeers_lm::llama::causal_padding_mask;
use musketeers_lm::precision::to_f32;
use musketeers_lm::rope::Rope;
use musketeers_lm::{Llama, SoftContext};
use musketeers_rl::logprobs::token_logprobs;
use musketeers_rl::{RlError, Rollouts, TokenScorer};

#[derive(Debug)]
pub struct PrefixedPolicy<'a, B: Backend> {
    pub model: &'a Llama<B>,
    /// Each prompt's context tokens `C` `[prompts, K, hidden]` (read as a prefix or gated),
    /// shared by its group's completions; `None` for a policy without context (`single`).
    pub context: Option<SoftContext<B>>,
    /// The sampling temperature: scores are under `softmax(logits / temperature)`.
    pub temperature: f64,
    /// The log-probabilities carry gradients (the loss's scorer); a reference or evaluation
    /// pass leaves them out and skips their cost.
    pub with_gradient: bool,
}

/// The rows of a batch with their shared prefixes: group `g` holds rows
/// `g * size .. (g + 1) * size`, all with `prompts[g]`.
struct Groups<'r> {
    prompts: Vec<&'r [u32]>,
    size: usize,
}

impl<'r> Groups<'r> {
    fn of(rollouts: &'r Rollouts) -> Result<Self, RlError> {
        let n = rollouts.completion_ids.len();
        let size = rollouts.num_generations;
        if size == 0 || !n.is_multiple_of(size) || rollouts.prompt_ids.len() != n {
            return Err(RlError::BadInput(format!(
                "{n} completions and {} prompts do not make groups of {size}",
                rollouts.prompt_ids.len()
            )));
        }
        let mut prompts = Vec::with_capacity(n / size);
        for (g, rows) in rollouts.prompt_ids.chunks(size).enumerate() {
            if rows.iter().any(|p| p != &rows[0]) {
                return Err(RlError::BadInput(format!(
                    "the completions of group {g} (rows {}..{}) have different prompts",
                    g * size,
                    (g + 1) * size
                )));
            }
            prompts.push(rows[0].as_slice());
        }
        Ok(Self { prompts, size })
    }
}

impl<B: Backend> TokenScorer<B> for PrefixedPolicy<'_, B> {
    /// The `[C ; prompt]` prefix runs once per prompt, not once per completion: its keys and
    /// values are computed for the `prompts` rows and shared (gathered, so gradients sum
    /// back) by the group's completions, which then run through the model against that
    /// cache. With 8 completions per prompt and prompts longer than completions this is most
    /// of a step's forward and backward work saved; the log-probabilities are those of a
    /// full forward over each row (the test holds them to the sampling log-probabilities).
    fn score(
        &self,
        rollouts: &Rollouts,
        width: usize,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), RlError> {
        let groups = Groups::of(rollouts)?;
        let p = groups.prompts.len();
        let device = self.model.embed_tokens.weight.device();
        if let Some(c) = &self.context {
            c.check(p, self.model.context_shape())
                .map_err(|e| RlError::BadInput(format!("context: {e}")))?;
        }
        let soft = self.context.as_ref().map_or(0, SoftContext::len);
        let gated = self.context.as_ref().is_some_and(SoftContext::is_gated);
        let gates = self
            .context
            .as_ref()
            .and_then(|c| c.gates.clone())
            .map(|g| g.cast(self.model.float_dtype()));
        let prompt_width = groups.prompts.iter().map(|t| t.len()).max().unwrap_or(0);
        let prefix = soft + prompt_width;
        check_widths(rollouts, prefix, width)?;

        // The prefixes, `[p, soft + prompt_width]`, prompts left-padded after C.
        // Real tokens are numbered from 0 in each row; left padding shifts nothing (a pad
        // slot takes the position before it, never attended to).
        let layout = PrefixLayout::of(&groups.prompts, soft, prompt_width, gated);
        let embedded = self.embed_prefixes(layout.ids, p, prompt_width, &device);
        let prefix_mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(layout.mask.clone(), [p, prefix]),
            &device,
        );
        let prefix_positions = Tensor::<B, 2, Int>::from_data(
            TensorData::new(layout.positions.clone(), [p, prefix]),
            &device,
        );
        let rope = self.model.rope(&device);
        let mut caches = self.model.new_caches();
        let prefix_hidden = self.model.forward_cached_gated(
            embedded,
            prefix_positions.clone(),
            prefix_positions,
            &causal_padding_mask(prefix_mask),
            &mut caches,
            &rope,
            gates.as_ref(),
        );
        let d = prefix_hidden.dims()[2];
        // Position p predicts token p + 1: the prefix's last position predicts each
        // completion's first token, completion token j the one after it.
        let last = prefix_hidden.slice([0..p, prefix - 1..prefix, 0..d]);
        let shared = Shared {
            model: self.model,
            rope: &rope,
            caches: &caches,
            last: &last,
            mask: &layout.mask,
            positions: &layout.positions,
            prompt_ends: &layout.prompt_ends,
            gates: gates.as_ref(),
            prefix,
            temperature: self.temperature,
            with_gradient: self.with_gradient,
            frozen_head: self.model.frozen_head(),
        };
        Ok(shared.score_in_buckets(rollouts, &groups, width, &device))
    }
}

impl<B: Backend> PrefixedPolicy<'_, B> {
    /// The prefixes' input embeddings, `[p, soft + prompt_width, hidden]`: C followed by the
    /// embedded prompt `ids` (row-major `[p, prompt_width]`).
    fn embed_prefixes(
        &self,
        ids: Vec<i64>,
        p: usize,
        prompt_width: usize,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [p, prompt_width]), device);
        match &self.context {
            Some(c) if prompt_width == 0 => c.tokens.clone().cast(self.model.float_dtype()),
            Some(c) => Tensor::cat(
                vec![
                    c.tokens.clone().cast(self.model.float_dtype()),
                    self.model.embed(ids),
                ],
                1,
            ),
            None => self.model.embed(ids),
        }
    }
}

/// Refuses a batch with nothing before its completions, 0 tokens wide, or with a completion
/// wider than `width`.
fn check_widths(rollouts: &Rollouts, prefix: usize, width: usize) -> Result<(), RlError> {
    if prefix == 0 {
        return Err(RlError::BadInput(
            "nothing precedes the completions: no context tokens and empty prompts".into(),
        ));
    }
    if width == 0 {
        return Err(RlError::BadInput("completions 0 tokens wide".into()));
    }
    if let Some((r, c)) = rollouts
        .completion_ids
        .iter()
        .enumerate()
        .find(|(_, c)| c.len() > width)
    {
        return Err(RlError::BadInput(format!(
            "completion {r} has {} tokens in a batch {width} wide",
            c.len()
        )));
    }
    Ok(())
}

/// The prefixes' tokens, padding and positions, on the host.
struct PrefixLayout {
    /// Row-major `[p, prompt_width]`, the prompt tokens (0 on padding).
    ids: Vec<i64>,
    /// Row-major `[p, prefix]`, 1 on real tokens.
    mask: Vec<i64>,
    /// Row-major `[p, prefix]`, each slot's position.
    positions: Vec<i64>,
    /// Per prompt, the position of the first completion token.
    prompt_ends: Vec<i64>,
}

impl PrefixLayout {
    /// The layout of `prompts` left-padded to `prompt_width` after `soft` context tokens.
    fn of(prompts: &[&[u32]], soft: usize, prompt_width: usize, gated: bool) -> Self {
        let p = prompts.len();
        let prefix = soft + prompt_width;
        let mut ids = Vec::with_capacity(p * prompt_width);
        let mut mask = Vec::with_capacity(p * prefix);
        let mut positions = Vec::with_capacity(p * prefix);
        let mut prompt_ends = Vec::with_capacity(p);
        for prompt in prompts {
            let left = prompt_width - prompt.len();
            ids.extend(std::iter::repeat_n(0i64, left));
            ids.extend(prompt.iter().map(|&t| i64::from(t)));
            mask.extend(
                std::iter::repeat_n(1i64, soft)
                    .chain(std::iter::repeat_n(0i64, left))
                    .chain(std::iter::repeat_n(1i64, prompt.len())),
            );
            let (row, end) = row_positions(soft, left, prompt.len(), gated);
            positions.extend(row);
            prompt_ends.push(end);
        }
        Self {
            ids,
            mask,
            positions,
            prompt_ends,
        }
    }
}

/// How many length buckets a batch of completions is scored in (at least).
const LENGTH_BUCKETS: usize = 4;

/// The most logits one bucket holds (2^27 floats, 512 MiB): the demo's small vocabularies
/// never reach it; Qwen2.5 at 256 new tokens takes three completions per bucket.
const LOGITS_BUDGET: usize = 1 << 27;

/// What every bucket of completions shares: the model and the prefixes' cache.
struct Shared<'s, B: Backend> {
    model: &'s Llama<B>,
    rope: &'s Rope<B>,
    /// Per layer, the prefixes' keys and values, `[prompts, kv_heads, prefix, head_dim]`.
    caches: &'s [KvCache<B>],
    /// The prefixes' last hidden state, `[prompts, 1, hidden]`.
    last: &'s Tensor<B, 3>,
    /// Row-major `[prompts, prefix]`, 1 on real tokens.
    mask: &'s [i64],
    /// Row-major `[prompts, prefix]`, each slot's position.
    positions: &'s [i64],
    /// Per prompt, the position of the first completion token.
    prompt_ends: &'s [i64],
    /// Gated context's `[layers, heads]` factors.
    gates: Option<&'s Tensor<B, 2>>,
    prefix: usize,
    temperature: f64,
    with_gradient: bool,
    /// The model's head when nothing in it trains (see `Llama::frozen_head`).
    frozen_head: Option<FrozenHead<B>>,
}

impl<B: Backend> Shared<'_, B> {
    /// Log-probabilities and entropies of every completion, `[rows, width]` in the rollouts'
    /// row order, scored bucket by bucket.
    fn score_in_buckets(
        &self,
        rollouts: &Rollouts,
        groups: &Groups<'_>,
        width: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let n = groups.prompts.len() * groups.size;
        // Completions run in buckets of similar length, each only as wide as its longest:
        // one batch as wide as the longest completion spends most of its work on padding
        // when a few completions hit the length limit and most stop early.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&r| rollouts.completion_ids[r].len());
        // Through a trainable head a bucket's logits are `[rows, width, vocab]`, held for
        // backward; with a large vocabulary (Qwen's is 151,936) and long completions the
        // bucket is cut further to stay within a budget. A frozen head holds none.
        let vocab = self.model.embed_tokens.weight.dims()[0].max(1);
        let budget_rows = match &self.frozen_head {
            Some(_) => n,
            None => (LOGITS_BUDGET / (width * vocab).max(1)).max(1),
        };
        let bucket_rows = n.div_ceil(LENGTH_BUCKETS).clamp(1, budget_rows);
        let mut logps = Vec::new();
        let mut entropies = Vec::new();
        for bucket in order.chunks(bucket_rows) {
            let rows: Vec<(usize, &[u32])> = bucket
                .iter()
                .map(|&r| (r / groups.size, rollouts.completion_ids[r].as_slice()))
                .collect();
            let (logp, entropy) = self.score_bucket(&rows, width, device);
            logps.push(logp);
            entropies.push(entropy);
        }
        // Back to the rollouts' row order.
        let mut inverse = vec![0i64; n];
        for (sorted, &r) in order.iter().enumerate() {
            inverse[r] = sorted as i64;
        }
        let inverse = Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [n]), device);
        (
            Tensor::cat(logps, 0).select(0, inverse.clone()),
            Tensor::cat(entropies, 0).select(0, inverse),
        )
    }

    /// Log-probabilities and entropies of `rows` (each its group and completion tokens),
    /// `[rows, width]`, zero past each completion.
    fn score_bucket(
        &self,
        rows: &[(usize, &[u32])],
        width: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let n = rows.len();
        let bucket_width = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(1);
        let groups: Vec<usize> = rows.iter().map(|&(g, _)| g).collect();
        let group_index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(groups.iter().map(|&g| g as i64).collect(), [n]),
            device,
        );
        let first = self.last.clone().select(0, group_index);
        let hidden = if bucket_width == 1 {
            first
        } else {
            let rest = self.forward_completions(rows, &groups, bucket_width - 1, device);
            Tensor::cat(vec![first, rest], 1)
        };
        let mut targets = Vec::with_capacity(n * bucket_width);
        for &(_, completion) in rows {
            targets.extend(completion.iter().map(|&t| i64::from(t)));
            targets.extend(std::iter::repeat_n(0i64, bucket_width - completion.len()));
        }
        let targets =
            Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, bucket_width]), device);
        let (logp, entropy) = match &self.frozen_head {
            Some(head) => {
                head.token_logprobs(hidden, targets, self.temperature, self.with_gradient)
            }
            None => token_logprobs(to_f32(self.model.head(hidden)), targets, self.temperature),
        };
        if bucket_width == width {
            return (logp, entropy);
        }
        let pad = || Tensor::<B, 2>::zeros([n, width - bucket_width], device);
        (
            Tensor::cat(vec![logp, pad()], 1),
            Tensor::cat(vec![entropy, pad()], 1),
        )
    }

    /// The hidden states of each row's first `steps` completion tokens, `[rows, steps,
    /// hidden]`, run against its group's prefix in the cache (`groups[i]` is row `i`'s).
    fn forward_completions(
        &self,
        rows: &[(usize, &[u32])],
        groups: &[usize],
        steps: usize,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        let n = rows.len();
        let prefix = self.prefix;
        let mut caches = self.caches.to_vec();
        for cache in &mut caches {
            cache.select_rows(groups);
        }
        let keys = prefix + steps;
        let mut ids = Vec::with_capacity(n * steps);
        let mut query_positions = Vec::with_capacity(n * steps);
        let mut key_positions = Vec::with_capacity(n * keys);
        let mut forbidden = Vec::with_capacity(n * steps * keys);
        for &(group, completion) in rows {
            let slots = group * prefix..(group + 1) * prefix;
            let row_mask = &self.mask[slots.clone()];
            let real = self.prompt_ends[group];
            ids.extend((0..steps).map(|j| completion.get(j).map_or(0, |&t| i64::from(t))));
            query_positions.extend((0..steps as i64).map(|j| real + j));
            key_positions.extend_from_slice(&self.positions[slots]);
            key_positions.extend((0..steps as i64).map(|j| real + j));
            for j in 0..steps {
                forbidden.extend(row_mask.iter().map(|&m| m == 0));
                forbidden.extend((0..steps).map(|k| k > j));
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, steps]), device);
        let query_positions =
            Tensor::<B, 2, Int>::from_data(TensorData::new(query_positions, [n, steps]), device);
        let key_positions =
            Tensor::<B, 2, Int>::from_data(TensorData::new(key_positions, [n, keys]), device);
        let forbidden = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(forbidden, [n, 1, steps, keys]),
            device,
        );
        self.model.forward_cached_gated(
            self.model.embed(ids),
            query_positions,
            key_positions,
            &forbidden,
            &mut caches,
            self.rope,
            self.gates,
        )
    }
}
