//! Soft context tokens in front of a prompt (n-Musketeers' `C`) and the two ways a model
//! reads them.
//!
//! - **Prefix** (the paper): `C` is ordinary input; the prompt's tokens attend to it as to any
//!   earlier token, and its rotary positions push the prompt's back by `K`. A prefix changes
//!   every logit from the first step, before anything has been learned about it.
//! - **Gated**: the prompt's tokens attend to the context keys through a second softmax of
//!   their own, added to the ordinary attention times `tanh(gate)`, one gate per layer and
//!   head that starts at 0 (LLaMA-Adapter's zero-initialised attention, with Flamingo's
//!   tanh bounding it). The context tokens take the positions `-K..-1` and the prompt keeps
//!   `0..`, as without `C`. At a zero gate the model computes exactly what it computes
//!   without `C`: the ordinary softmax never sees a context key (masked scores give an
//!   exact 0 weight) and the gated term is multiplied by 0.
//!
//! Which slots are context is read from the positions: a gated row's context tokens, and
//! only they, have negative positions. So every cache layout that already carries
//! per-slot positions (left padding, a continuous batch's front padding) carries it too.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::LmError;

/// Context tokens for a batch of prompts.
#[derive(Debug, Clone)]
pub struct SoftContext<B: Backend> {
    /// `[prompts, K, hidden]`: input embeddings placed before each (left-padded) prompt.
    pub tokens: Tensor<B, 3>,
    /// Gated reading: `[layers, heads]`, the factor of each layer's and head's context
    /// attention (already squashed, e.g. `tanh(gate)`). `None`: the plain prefix.
    pub gates: Option<Tensor<B, 2>>,
}

impl<B: Backend> SoftContext<B> {
    /// `C` read as a plain prefix.
    pub fn prefix(tokens: Tensor<B, 3>) -> Self {
        Self {
            tokens,
            gates: None,
        }
    }

    /// `C` read through per-layer, per-head gates (see the module documentation).
    pub fn gated(tokens: Tensor<B, 3>, gates: Tensor<B, 2>) -> Self {
        Self {
            tokens,
            gates: Some(gates),
        }
    }

    pub fn is_gated(&self) -> bool {
        self.gates.is_some()
    }

    /// Number of context tokens per prompt.
    pub fn len(&self) -> usize {
        self.tokens.dims()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same context on another backend (e.g. off the autodiff graph).
    pub fn map<C: Backend>(
        self,
        tokens: impl FnOnce(Tensor<B, 3>) -> Tensor<C, 3>,
        gates: impl FnOnce(Tensor<B, 2>) -> Tensor<C, 2>,
    ) -> SoftContext<C> {
        SoftContext {
            tokens: tokens(self.tokens),
            gates: self.gates.map(gates),
        }
    }

    /// Rows `first..first + len` (prompts); the gates are shared.
    pub fn rows(&self, first: usize, len: usize) -> Self {
        Self {
            tokens: self.tokens.clone().narrow(0, first, len),
            gates: self.gates.clone(),
        }
    }

    /// Check the shapes against a model of `layers` layers, `heads` query heads and width
    /// `hidden`, for `prompts` prompts.
    pub fn check(
        &self,
        prompts: usize,
        (layers, heads, hidden): (usize, usize, usize),
    ) -> Result<(), LmError> {
        let [rows, k, d] = self.tokens.dims();
        if rows != prompts || d != hidden {
            return Err(LmError::BadInput(format!(
                "context tokens are [{rows}, {k}, {d}], expected [{prompts}, K, {hidden}]"
            )));
        }
        if let Some(gates) = &self.gates
            && gates.dims() != [layers, heads]
        {
            return Err(LmError::BadInput(format!(
                "context gates are {:?}, the model has {layers} layers of {heads} heads",
                gates.dims()
            )));
        }
        Ok(())
    }
}

/// Where the slots of a row `[context (k) | padding (pad) | prompt (len)]` sit: every
/// slot's position, and the position of the token after the prompt.
///
/// Prefix: the context at `0..k`, the prompt at `k..k + len`. Gated: the context at
/// `-k..0` and the prompt at `0..len`, as if there were no context. Padding takes the
/// position of the prompt's first token (it is never attended to).
pub fn row_positions(k: usize, pad: usize, len: usize, gated: bool) -> (Vec<i64>, i64) {
    let (context_start, prompt_start) = if gated {
        (-(k as i64), 0)
    } else {
        (0, k as i64)
    };
    let end = prompt_start + len as i64;
    let positions = (context_start..context_start + k as i64)
        .chain(std::iter::repeat_n(prompt_start, pad))
        .chain(prompt_start..end)
        .collect();
    (positions, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rows_count_the_context() {
        let (positions, next) = row_positions(2, 1, 3, false);
        assert_eq!(positions, vec![0, 1, 2, 2, 3, 4]);
        assert_eq!(next, 5);
    }

    #[test]
    fn gated_rows_keep_the_prompt_positions() {
        let (positions, next) = row_positions(2, 1, 3, true);
        assert_eq!(positions, vec![-2, -1, 0, 0, 1, 2]);
        assert_eq!(next, 3);
        assert_eq!(row_positions(0, 2, 2, true).0, vec![0, 0, 0, 1]);
    }
}
