//! `text-collab`: the baseline where experts talk in text. Each expert answers the question
//! briefly (greedy, its own tokenizer and chat template), and the answers are pasted under the
//! question before the policy's template. No latent interface and no loss term of its own: the
//! policy trains as in `single` mode on the longer prompts.

use burn::tensor::backend::{AutodiffBackend, Backend};
use musketeers_lm::generate::{GenerationConfig, generate};
use musketeers_lm::tokenizer::ChatMessage;

use super::{Context, Infer, InferenceParts, Inferred, Needs, Parts, System};
use crate::error::TrainError;
use crate::method::team::TeamMember;
use crate::run_config::RunConfig;

/// How the experts are asked.
#[derive(Debug, Clone)]
pub struct TextCollab {
    /// The run's prompt template (`{question}` marks the question), which the experts read
    /// the question in.
    pub prompt_template: String,
    /// Ask through each expert's chat template.
    pub chat: bool,
    pub max_new_tokens: usize,
}

impl TextCollab {
    pub fn new(config: &RunConfig) -> Self {
        Self {
            prompt_template: config.policy.prompt_template.clone(),
            chat: config.policy.chat,
            max_new_tokens: config.collab.max_new_tokens,
        }
    }
}

impl<B: Backend> Infer<B> for TextCollab {
    fn name(&self) -> &'static str {
        "text-collab"
    }

    fn needs(&self) -> Needs {
        Needs {
            team: true,
            team_generates: true,
            ..Needs::default()
        }
    }

    fn infer(
        &self,
        _: &InferenceParts<'_, B>,
        _: &[String],
        _: &[Vec<u32>],
    ) -> Result<Inferred<B>, TrainError> {
        Ok(Inferred::none())
    }

    fn questions(
        &self,
        parts: &InferenceParts<'_, B>,
        questions: &[String],
    ) -> Result<Vec<String>, TrainError> {
        let templated: Vec<String> = questions
            .iter()
            .map(|q| self.prompt_template.replace("{question}", q))
            .collect();
        let device = parts.policy.embed_tokens.weight.device();
        let answers = parts
            .team
            .iter()
            .map(|x| suggest(x, &templated, self.chat, self.max_new_tokens, &device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(questions
            .iter()
            .enumerate()
            .map(|(i, question)| {
                let notes: Vec<(&str, &str)> = parts
                    .team
                    .iter()
                    .zip(&answers)
                    .map(|(x, a)| (x.name.as_str(), a[i].as_str()))
                    .collect();
                with_suggestions(question, &notes)
            })
            .collect())
    }
}

impl<B: AutodiffBackend> System<B> for TextCollab {
    fn context(
        &self,
        _: &Parts<'_, B>,
        _: &[String],
        _: &[Vec<u32>],
        _: Option<u64>,
    ) -> Result<Context<B>, TrainError> {
        Ok(Context::none())
    }
}

/// Longest suggestion kept, in characters: a runaway expert cannot flood the policy's prompt.
const MAX_SUGGESTION_CHARS: usize = 200;

/// `expert`'s greedy short answers to `questions` (already in the run's prompt template);
/// through its chat template when `chat` and it has one.
pub fn suggest<B: Backend>(
    expert: &TeamMember<B>,
    questions: &[String],
    chat: bool,
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<Vec<String>, TrainError> {
    let tokenizer = &expert.tokenizer;
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
        &expert.model,
        &ids,
        &GenerationConfig {
            max_new_tokens,
            num_return_sequences: 1,
            eos_token_ids: expert.eos_token_ids.clone(),
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
