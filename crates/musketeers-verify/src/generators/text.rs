//! Generators over numbers-as-text and words: number_sorting, spell_backward, letter_counting.

use super::{Draft, Generator, count, difficulty, metadata, range_option};
use crate::error::TaskError;
use crate::options::Options;
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Common English words (public-domain frequency lists); enough variety for letter and
/// spelling tasks without shipping a corpus.
const WORDS: &[&str] = &[
    "about",
    "above",
    "across",
    "action",
    "active",
    "actually",
    "address",
    "after",
    "again",
    "against",
    "agency",
    "almost",
    "already",
    "although",
    "always",
    "america",
    "among",
    "amount",
    "animal",
    "another",
    "answer",
    "anyone",
    "appear",
    "approach",
    "around",
    "article",
    "artist",
    "attack",
    "attention",
    "audience",
    "author",
    "available",
    "average",
    "balance",
    "because",
    "become",
    "before",
    "begin",
    "behavior",
    "behind",
    "believe",
    "benefit",
    "better",
    "between",
    "beyond",
    "billion",
    "bottle",
    "budget",
    "building",
    "business",
    "camera",
    "cancer",
    "capital",
    "career",
    "center",
    "central",
    "century",
    "certain",
    "chair",
    "challenge",
    "chance",
    "change",
    "character",
    "charge",
    "check",
    "child",
    "choice",
    "church",
    "citizen",
    "claim",
    "class",
    "clear",
    "close",
    "coach",
    "collection",
    "college",
    "color",
    "common",
    "community",
    "company",
    "compare",
    "computer",
    "concern",
    "condition",
    "conference",
    "congress",
    "consider",
    "consumer",
    "contain",
    "continue",
    "control",
    "country",
    "couple",
    "course",
    "create",
    "crime",
    "cultural",
    "culture",
    "current",
    "customer",
    "danger",
    "daughter",
    "debate",
    "decade",
    "decide",
    "decision",
    "defense",
    "degree",
    "democrat",
    "describe",
    "design",
    "despite",
    "detail",
    "develop",
    "difference",
    "difficult",
    "dinner",
    "direction",
    "director",
    "discover",
    "discuss",
    "disease",
    "doctor",
    "dream",
    "during",
    "early",
    "economic",
    "economy",
    "education",
    "effect",
    "effort",
    "eight",
    "either",
    "election",
    "energy",
    "enough",
    "enjoy",
    "entire",
    "environment",
    "especially",
    "establish",
    "evening",
    "event",
    "everybody",
    "evidence",
    "exactly",
    "example",
    "executive",
    "exist",
    "expect",
    "experience",
    "expert",
    "explain",
    "factor",
    "family",
    "father",
    "federal",
    "feeling",
    "field",
    "figure",
    "final",
    "finally",
    "financial",
    "finger",
    "finish",
    "flower",
    "follow",
    "foreign",
    "forget",
    "former",
    "forward",
    "freedom",
    "friend",
    "future",
    "garden",
    "general",
    "generation",
    "government",
    "ground",
    "growth",
    "guess",
    "happen",
    "health",
    "heart",
    "history",
    "hospital",
    "hotel",
    "house",
    "however",
    "hundred",
    "husband",
    "identify",
    "image",
    "imagine",
    "impact",
    "important",
    "improve",
    "include",
    "increase",
    "indeed",
    "industry",
    "information",
    "inside",
    "instead",
    "interest",
    "interview",
    "investment",
    "island",
    "itself",
    "journey",
    "justice",
    "kitchen",
    "knowledge",
    "language",
    "large",
    "later",
    "laugh",
    "leader",
    "learn",
    "letter",
    "level",
    "light",
    "listen",
    "little",
    "machine",
    "magazine",
    "maintain",
    "majority",
    "manage",
    "market",
    "marriage",
    "material",
    "matter",
    "measure",
    "medical",
    "meeting",
    "member",
    "memory",
    "mention",
    "message",
    "method",
    "middle",
    "military",
    "million",
    "minute",
    "mission",
    "model",
    "modern",
    "moment",
    "money",
    "morning",
    "mother",
    "mountain",
    "movement",
    "music",
    "myself",
    "nation",
    "natural",
    "nature",
    "necessary",
    "network",
    "never",
    "newspaper",
    "night",
    "nothing",
    "notice",
    "number",
    "object",
    "occur",
    "office",
    "officer",
    "official",
    "often",
    "operation",
    "opportunity",
    "option",
    "order",
    "organization",
    "other",
    "outside",
    "owner",
    "painting",
    "paper",
    "parent",
    "partner",
    "party",
    "patient",
    "pattern",
    "people",
    "perform",
    "perhaps",
    "period",
    "person",
    "picture",
    "piece",
    "place",
    "planet",
    "player",
    "pocket",
    "point",
    "police",
    "policy",
    "political",
    "popular",
    "population",
    "position",
    "positive",
    "possible",
    "power",
    "practice",
    "prepare",
    "present",
    "president",
    "pressure",
    "pretty",
    "prevent",
    "price",
    "private",
    "probably",
    "problem",
    "process",
    "produce",
    "product",
    "professor",
    "program",
    "project",
    "property",
    "protect",
    "prove",
    "provide",
    "public",
    "purpose",
    "quality",
    "question",
    "quickly",
    "quite",
    "rather",
    "reach",
    "ready",
    "reality",
    "realize",
    "reason",
    "receive",
    "recent",
    "recognize",
    "record",
    "reduce",
    "reflect",
    "region",
    "relate",
    "remain",
    "remember",
    "remove",
    "report",
    "represent",
    "require",
    "research",
    "resource",
    "respond",
    "response",
    "result",
    "return",
    "reveal",
    "river",
    "science",
    "scientist",
    "season",
    "second",
    "section",
    "security",
    "senior",
    "sense",
    "series",
    "serious",
    "service",
    "seven",
    "several",
    "shake",
    "share",
    "shoulder",
    "significant",
    "similar",
    "simple",
    "simply",
    "single",
    "sister",
    "situation",
    "small",
    "social",
    "society",
    "soldier",
    "somebody",
    "someone",
    "something",
    "sometimes",
    "source",
    "south",
    "space",
    "speak",
    "special",
    "specific",
    "speech",
    "spend",
    "sport",
    "spring",
    "staff",
    "stage",
    "standard",
    "start",
    "state",
    "statement",
    "station",
    "still",
    "stock",
    "story",
    "strategy",
    "street",
    "strong",
    "structure",
    "student",
    "study",
    "stuff",
    "style",
    "subject",
    "success",
    "suddenly",
    "suffer",
    "suggest",
    "summer",
    "support",
    "surface",
    "system",
    "table",
    "teacher",
    "technology",
    "television",
    "terms",
    "thank",
    "themselves",
    "theory",
    "thing",
    "think",
    "third",
    "thousand",
    "threat",
    "three",
    "through",
    "throughout",
    "today",
    "together",
    "tonight",
    "total",
    "tough",
    "toward",
    "trade",
    "traditional",
    "training",
    "travel",
    "treatment",
    "trial",
    "trouble",
    "truth",
    "under",
    "understand",
    "until",
    "upon",
    "usually",
    "value",
    "various",
    "victim",
    "violence",
    "visit",
    "voice",
    "water",
    "weapon",
    "weather",
    "week",
    "weight",
    "western",
    "whatever",
    "whether",
    "which",
    "while",
    "white",
    "whole",
    "window",
    "within",
    "without",
    "woman",
    "wonder",
    "worker",
    "world",
    "worry",
    "would",
    "write",
    "writer",
    "wrong",
    "yellow",
    "yesterday",
    "young",
    "yourself",
];

/// Sort a list of decimal numbers ascending or descending.
pub struct NumberSorting {
    numbers: (usize, usize),
    decimals: (u32, u32),
    value: (i64, i64),
}

impl NumberSorting {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let numbers = range_option(options, "numbers", (3, 10))?;
        let decimals = range_option(options, "decimals", (0, 2))?;
        let value = range_option(options, "value", (-100, 100))?;
        if numbers.0 < 1 || decimals.1 > 8 {
            return Err(options.invalid(
                "max_decimals",
                "need at least one number and at most 8 decimals",
            ));
        }
        Ok(Self {
            numbers,
            decimals,
            value,
        })
    }
}

fn python_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Generator for NumberSorting {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n = count(rng, self.numbers);
        let decimals = rng.random_range(self.decimals.0..=self.decimals.1);
        let scale = 10i64.pow(decimals);
        let mut values: Vec<i64> = (0..n)
            .map(|_| rng.random_range(self.value.0 * scale..=self.value.1 * scale))
            .collect();
        let format = |v: i64| format!("{:.*}", decimals as usize, v as f64 / scale as f64);
        let original: Vec<String> = values.iter().map(|&v| format(v)).collect();
        let ascending = rng.random_bool(0.5);
        values.sort_unstable();
        if !ascending {
            values.reverse();
        }
        let sorted: Vec<String> = values.iter().map(|&v| format(v)).collect();
        let direction = if ascending { "ascending" } else { "descending" };
        let example = "['-69', '-13', '1', '7', '11', '43', '59', '61']";
        Ok(Draft {
            question: format!(
                "Sort these numbers in {direction} order: {}\nPlease follow the instruction below:\n## 1. Let all your answers be a list of numbers. Instead of reporting your answer as -69, -13, 1, 7, 11, 43, 59, 61, use {example} instead\n## 2. Convert all numbers in the square brackets as strings. For example, {example}\n",
                original.join(", ")
            ),
            answer: Some(python_list(&sorted)),
            metadata: metadata(vec![
                ("original_numbers", json!(original)),
                ("direction", json!(direction)),
                ("sorted_numbers", json!(sorted)),
                (
                    "difficulty",
                    difficulty(&[
                        ("numbers", json!(self.numbers)),
                        ("decimals", json!(self.decimals)),
                        ("value", json!(self.value)),
                    ]),
                ),
            ]),
        })
    }
}

fn words_in(len: (usize, usize)) -> Vec<&'static str> {
    WORDS
        .iter()
        .copied()
        .filter(|w| (len.0..=len.1).contains(&w.len()))
        .collect()
}

/// Spell a word backward.
pub struct SpellBackward {
    word_len: (usize, usize),
    words: Vec<&'static str>,
}

impl SpellBackward {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let word_len = range_option(options, "word_len", (3, 10))?;
        let words = words_in(word_len);
        if words.is_empty() {
            return Err(options.invalid(
                "min_word_len",
                format!("no word of length {word_len:?} in the word list"),
            ));
        }
        Ok(Self { word_len, words })
    }
}

impl Generator for SpellBackward {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let word = *self
            .words
            .choose(rng)
            .expect("word list checked non-empty in new");
        Ok(Draft {
            question: format!("Spell this word backward (example: sun -> nus): {word}"),
            answer: Some(word.chars().rev().collect()),
            metadata: metadata(vec![
                ("word", json!(word)),
                ("word_len", json!(word.len())),
                (
                    "difficulty",
                    difficulty(&[("word_len", json!(self.word_len))]),
                ),
            ]),
        })
    }
}

/// Count a letter's occurrences in a span of words.
pub struct LetterCounting {
    words: (usize, usize),
}

impl LetterCounting {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let words = range_option(options, "words", (5, 15))?;
        if words.0 < 1 {
            return Err(options.invalid("min_words", "need at least one word"));
        }
        Ok(Self { words })
    }
}

impl Generator for LetterCounting {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n = count(rng, self.words);
        let span: Vec<&str> = (0..n)
            .map(|_| *WORDS.choose(rng).expect("static word list is non-empty"))
            .collect();
        let text = span.join(" ");
        let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
        let letter = *letters.choose(rng).expect("words have letters");
        let count = text.chars().filter(|&c| c == letter).count();
        Ok(Draft {
            question: format!(
                "How many times does the letter \"{letter}\" appear in the text: \"{text}\"?"
            ),
            answer: Some(count.to_string()),
            metadata: metadata(vec![
                ("span_length", json!(n)),
                ("target_letter", json!(letter.to_string())),
                ("span", Value::from(span)),
                ("difficulty", difficulty(&[("words", json!(self.words))])),
            ]),
        })
    }
}
