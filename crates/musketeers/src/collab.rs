//! `text-collab`: the baseline where experts talk in text. Each expert answers the question
//! briefly (greedy, its own tokenizer and chat template), and the answers are pasted into the
//! policy's prompt. No latent interface; the policy trains as in `single` mode on the longer
//! prompts.

use crate::error::TrainError;
use crate::team::TeamMember;
use burn::tensor::backend::Backend;
use musketeers_lm::generate::{GenerationConfig, generate};
use musketeers_lm::tokenizer::ChatMessage;

/// An expert that answers in text, with the tokens that end its answers.
#[derive(Debug)]
pub struct TextExpert<B: Backend> {
    pub member: TeamMember<B>,
    pub eos_token_ids: Vec<u32>,
}

/// Longest suggestion kept, in characters: a runaway expert cannot flood the policy's prompt.
const MAX_SUGGESTION_CHARS: usize = 200;

impl<B: Backend> TextExpert<B> {
    /// Greedy short answers to `questions` (already in the run's prompt template); through the
    /// expert's chat template when `chat` and it has one.
    pub fn suggest(
        &self,
        questions: &[String],
        chat: bool,
        max_new_tokens: usize,
        device: &B::Device,
    ) -> Result<Vec<String>, TrainError> {
        let tokenizer = &self.member.tokenizer;
        let ids = questions
            .iter()
            .map(|q| {
                let text = if chat {
                    let message = ChatMessage {
                        role: "user".into(),
                        content: q.clone(),
                    };
                    tokenizer
                        .apply_chat_template(&[message], true)
                        .unwrap_or_else(|_| q.clone())
                } else {
                    q.clone()
                };
                tokenizer.encode(&text, true)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let generation = generate(
            &self.member.model,
            &ids,
            &GenerationConfig {
                max_new_tokens,
                num_return_sequences: 1,
                eos_token_ids: self.eos_token_ids.clone(),
                ..GenerationConfig::default()
            },
            device,
        )?;
        generation
            .tokens
            .iter()
            .map(|t| Ok(tidy(&tokenizer.decode(t, true)?)))
            .collect()
    }
}

/// The first non-empty line, trimmed and capped.
fn tidy(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(MAX_SUGGESTION_CHARS).collect()
}

/// The policy's question with the team's answers below it.
pub fn with_suggestions(question: &str, suggestions: &[(&str, &str)]) -> String {
    let mut text = format!("{question}\n\nAnswers from other models:");
    for (name, answer) in suggestions {
        text.push_str(&format!("\n- {name}: {answer}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_one_trimmed_line_and_capped() {
        assert_eq!(tidy("\n  42  \nmore"), "42");
        assert_eq!(tidy(&"x".repeat(1000)).len(), MAX_SUGGESTION_CHARS);
        assert_eq!(tidy(""), "");
        let prompt = with_suggestions("2 + 2 =", &[("a", "4"), ("b", "5")]);
        assert_eq!(
            prompt,
            "2 + 2 =\n\nAnswers from other models:\n- a: 4\n- b: 5"
        );
    }
}
