//! Native, seeded generators emitting entries in Reasoning Gym's format.
//!
//! They follow Reasoning Gym's task definitions and difficulty settings (same setting names
//! and defaults) so the same scorers apply; they do not reproduce Python's random stream.
//! Entry `index` under `seed` is drawn from its own ChaCha8 stream: identical on every
//! platform, independent of how many entries were drawn before.

mod arithmetic;
mod logic;
pub mod names;
mod text;

pub use names::NAMES;

use crate::entry::Entry;
use crate::error::TaskError;
use crate::options::Options;
use crate::task::{Task, entry_rng};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

/// What a generator produces before the common metadata is added.
pub(crate) struct Draft {
    pub question: String,
    pub answer: Option<String>,
    pub metadata: Map<String, Value>,
}

/// One generator: settings parsed once, then a pure function of the random stream.
pub(crate) trait Generator: Send + Sync + 'static {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String>;
}

struct Generated<G> {
    name: &'static str,
    generator: G,
}

impl<G: Generator> Task for Generated<G> {
    fn name(&self) -> &str {
        self.name
    }

    fn entry(&self, seed: u64, index: u64) -> Result<Entry, TaskError> {
        let mut rng = entry_rng(seed, index);
        let draft = self
            .generator
            .draft(&mut rng)
            .map_err(|reason| TaskError::Generation {
                task: self.name.to_string(),
                index,
                reason,
            })?;
        let mut metadata = draft.metadata;
        metadata.insert("source_dataset".into(), self.name.into());
        metadata.insert("source_index".into(), index.into());
        Ok(Entry {
            question: draft.question,
            answer: draft.answer,
            metadata: Value::Object(metadata),
        })
    }
}

/// The generator for `name`, configured by `options` (Reasoning Gym's setting names).
pub fn create(name: &str, mut options: Options) -> Result<Box<dyn Task>, TaskError> {
    fn boxed<G: Generator>(name: &'static str, generator: G) -> Box<dyn Task> {
        Box::new(Generated { name, generator })
    }
    let task = match name {
        "chain_sum" => boxed("chain_sum", arithmetic::ChainSum::new(&mut options)?),
        "basic_arithmetic" => boxed(
            "basic_arithmetic",
            arithmetic::BasicArithmetic::new(&mut options)?,
        ),
        "products" => boxed("products", arithmetic::Products::new(&mut options)?),
        "gcd" => boxed(
            "gcd",
            arithmetic::GcdLcm::new(&mut options, arithmetic::Reduction::Gcd)?,
        ),
        "lcm" => boxed(
            "lcm",
            arithmetic::GcdLcm::new(&mut options, arithmetic::Reduction::Lcm)?,
        ),
        "leg_counting" => boxed("leg_counting", arithmetic::LegCounting::new(&mut options)?),
        "base_conversion" => boxed(
            "base_conversion",
            arithmetic::BaseConversion::new(&mut options)?,
        ),
        "countdown" => boxed("countdown", arithmetic::Countdown::new(&mut options)?),
        "number_sorting" => boxed("number_sorting", text::NumberSorting::new(&mut options)?),
        "spell_backward" => boxed("spell_backward", text::SpellBackward::new(&mut options)?),
        "letter_counting" => boxed("letter_counting", text::LetterCounting::new(&mut options)?),
        "propositional_logic" => boxed(
            "propositional_logic",
            logic::PropositionalLogic::new(&mut options)?,
        ),
        "syllogism" => boxed("syllogism", logic::Syllogism::new(&mut options)?),
        _ => return Err(TaskError::UnknownGenerator(name.to_string())),
    };
    options.finish()?;
    Ok(task)
}

/// Read `min_<key>`/`max_<key>` with defaults and check their order.
pub(crate) fn range_option<T>(
    options: &mut Options,
    key: &str,
    default: (T, T),
) -> Result<(T, T), TaskError>
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let lo = options.take(&format!("min_{key}"), default.0)?;
    let hi = options.take(&format!("max_{key}"), default.1)?;
    if lo > hi {
        return Err(options.invalid(
            &format!("min_{key}"),
            format!("min_{key} = {lo} exceeds max_{key} = {hi}"),
        ));
    }
    Ok((lo, hi))
}

/// A uniform integer in `lo..=hi`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, (lo, hi): (i64, i64)) -> i64 {
    rng.random_range(lo..=hi)
}

/// A uniform count in `lo..=hi`.
pub(crate) fn count(rng: &mut ChaCha8Rng, (lo, hi): (usize, usize)) -> usize {
    rng.random_range(lo as u64..=hi as u64) as usize
}

/// A random `digits`-digit number (0-9 for one digit, as Reasoning Gym does).
pub(crate) fn with_digits(rng: &mut ChaCha8Rng, digits: u32) -> i64 {
    let lo = if digits <= 1 {
        0
    } else {
        10i64.pow(digits - 1)
    };
    rng.random_range(lo..10i64.pow(digits))
}

pub(crate) fn metadata(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub(crate) fn difficulty(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}
