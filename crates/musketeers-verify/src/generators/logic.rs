//! Logic generators: propositional_logic and syllogism.

use super::{Draft, Generator, count, difficulty, metadata, range_option};
use crate::error::TaskError;
use crate::options::Options;
use crate::proplogic::{self, Formula, Op};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Premises over a few variables; any valid, non-trivial conclusion scores 1.
pub struct PropositionalLogic {
    vars: (usize, usize),
    statements: (usize, usize),
    complexity: (usize, usize),
}

impl PropositionalLogic {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let vars = range_option(options, "vars", (2, 4))?;
        let statements = range_option(options, "statements", (2, 4))?;
        let complexity = range_option(options, "complexity", (1, 3))?;
        if vars.0 < 1 || vars.1 > 10 || statements.0 < 1 || complexity.0 < 1 || complexity.1 > 6 {
            return Err(options.invalid(
                "max_vars",
                "vars in 1..=10, statements >= 1, complexity in 1..=6",
            ));
        }
        Ok(Self {
            vars,
            statements,
            complexity,
        })
    }
}

const QUESTION: &str = "The following question is a propositional logic reasoning question.\n\nIn the question we provide a list of premises. The task is to infer a correct conclusion from the premise.\n\nFORMAT INSTRUCTIONS:\n- Return the conclusion logic statement, as your final answer.\n- Use the following notation to denote symbols\n    - OR = \u{2228}\n    - AND = \u{2227}\n    - IMPLIES = \u{2192}\n    - IFF = \u{2194}\n    - NOT = \u{ac}\n\nHere is the question:\n";

/// Reasoning Gym's rendering: binary operators parenthesised, `¬` prefixed.
fn render(formula: &Formula) -> String {
    match formula {
        Formula::Var(name) => name.clone(),
        Formula::Not(inner) => format!("¬{}", render(inner)),
        Formula::Binary(op, l, r) => {
            let symbol = match op {
                Op::And => '∧',
                Op::Or => '∨',
                Op::Implies => '→',
                Op::Iff => '↔',
            };
            format!("({} {symbol} {})", render(l), render(r))
        }
    }
}

fn random_formula(rng: &mut ChaCha8Rng, variables: &[String], depth: usize) -> Formula {
    if depth <= 1 {
        return Formula::Var(
            variables
                .choose(rng)
                .expect("at least one variable")
                .clone(),
        );
    }
    let sub = |rng: &mut ChaCha8Rng| Box::new(random_formula(rng, variables, depth - 1));
    match rng.random_range(0..5u32) {
        0 => Formula::Not(sub(rng)),
        k => {
            let op = [Op::And, Op::Or, Op::Implies, Op::Iff][(k - 1) as usize];
            let left = sub(rng);
            Formula::Binary(op, left, sub(rng))
        }
    }
}

impl Generator for PropositionalLogic {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n_vars = count(rng, self.vars);
        let variables: Vec<String> = (0..n_vars)
            .map(|i| char::from(b'P' + i as u8).to_string())
            .collect();
        let n_statements = count(rng, self.statements);
        let premises: Vec<Formula> = (0..n_statements)
            .map(|_| {
                let depth = count(rng, self.complexity);
                random_formula(rng, &variables, depth)
            })
            .collect();
        // Unlike reasoning-gym, whose fallback `P` may not follow at all, fall back to a
        // premise (or a premise `∨` another variable), which always follows.
        let mut conclusion =
            fallback_conclusion(&premises, &variables).map_err(|e| e.to_string())?;
        for _ in 0..100 {
            let candidate = random_formula(rng, &variables, 2);
            let valid =
                proplogic::is_valid_conclusion(&premises, &candidate).map_err(|e| e.to_string())?;
            if valid && !proplogic::is_trivial(&candidate).map_err(|e| e.to_string())? {
                conclusion = candidate;
                break;
            }
        }
        let rendered: Vec<String> = premises.iter().map(render).collect();
        let mut question = format!("{QUESTION}Given:\n");
        for (i, premise) in rendered.iter().enumerate() {
            question += &format!("{}. {premise}\n.", i + 1);
        }
        question += "What can we conclude from the above statements?";
        Ok(Draft {
            question,
            answer: None,
            metadata: metadata(vec![
                ("premises", json!(rendered)),
                ("variables", json!(variables)),
                ("example_answer", json!(render(&conclusion))),
                (
                    "difficulty",
                    difficulty(&[
                        ("vars", json!(self.vars)),
                        ("statements", json!(self.statements)),
                        ("complexity", json!(self.complexity)),
                    ]),
                ),
            ]),
        })
    }
}

fn fallback_conclusion(
    premises: &[Formula],
    variables: &[String],
) -> Result<Formula, proplogic::LogicError> {
    for premise in premises {
        if let Formula::Var(v) = premise {
            let other = variables.iter().find(|w| *w != v).unwrap_or(v);
            return Ok(Formula::Binary(
                Op::Or,
                Box::new(premise.clone()),
                Box::new(Formula::Var(other.clone())),
            ));
        }
        if !proplogic::is_trivial(premise)? {
            return Ok(premise.clone());
        }
    }
    Ok(premises[0].clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantifier {
    All,
    No,
    Some,
    SomeNot,
}

impl Quantifier {
    /// Whether "Q xs are ys" holds in a model: `regions` is the set of non-empty Venn regions
    /// of three terms, bit i of a region meaning membership of term i.
    fn holds(self, regions: u8, x: usize, y: usize) -> bool {
        let any = |want_y: bool| {
            (0..8u8)
                .any(|r| regions >> r & 1 == 1 && r >> x & 1 == 1 && (r >> y & 1 == 1) == want_y)
        };
        match self {
            Quantifier::All => !any(false),
            Quantifier::No => !any(true),
            Quantifier::Some => any(true),
            Quantifier::SomeNot => any(false),
        }
    }

    fn sentence(self, x: &str, y: &str) -> String {
        match self {
            Quantifier::All => format!("All {x} are {y}"),
            Quantifier::No => format!("No {x} are {y}"),
            Quantifier::Some => format!("Some {x} are {y}"),
            Quantifier::SomeNot => format!("Some {x} are not {y}"),
        }
    }
}

const TERMS: [&str; 24] = [
    "animals",
    "artists",
    "bees",
    "birds",
    "cats",
    "chefs",
    "children",
    "dogs",
    "doctors",
    "engineers",
    "fish",
    "horses",
    "insects",
    "lawyers",
    "lions",
    "mammals",
    "musicians",
    "parents",
    "plants",
    "programmers",
    "students",
    "teachers",
    "tigers",
    "writers",
];

/// Two categorical premises and a conclusion; answer whether it follows ("Yes"/"No").
///
/// Semantics: every term names a non-empty class (Aristotelian existential import); the
/// conclusion follows when it holds in every Venn model of the premises.
pub struct Syllogism;

impl Syllogism {
    pub fn new(_options: &mut Options) -> Result<Self, TaskError> {
        Ok(Self)
    }
}

fn follows(
    premises: &[(Quantifier, usize, usize)],
    conclusion: (Quantifier, usize, usize),
) -> bool {
    let term_nonempty =
        |regions: u8, t: usize| (0..8u8).any(|r| regions >> r & 1 == 1 && r >> t & 1 == 1);
    (0..=255u8)
        .filter(|&m| (0..3).all(|t| term_nonempty(m, t)))
        .filter(|&m| premises.iter().all(|&(q, x, y)| q.holds(m, x, y)))
        .all(|m| conclusion.0.holds(m, conclusion.1, conclusion.2))
}

impl Generator for Syllogism {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let quantifiers = [
            Quantifier::All,
            Quantifier::No,
            Quantifier::Some,
            Quantifier::SomeNot,
        ];
        let terms: Vec<&str> = TERMS.choose_multiple(rng, 3).copied().collect();
        let want_valid = rng.random_bool(0.5);
        // Premises link A-B and B-C (in either order); the conclusion relates A and C.
        for _ in 0..1000 {
            let mut pick = |x: usize, y: usize| {
                let q = *quantifiers.choose(rng).expect("four quantifiers");
                if rng.random_bool(0.5) {
                    (q, x, y)
                } else {
                    (q, y, x)
                }
            };
            let premises = [pick(0, 1), pick(1, 2)];
            let conclusion = pick(0, 2);
            let valid = follows(&premises, conclusion);
            if valid != want_valid {
                continue;
            }
            let say = |(q, x, y): (Quantifier, usize, usize)| q.sentence(terms[x], terms[y]);
            let (p1, p2, c) = (say(premises[0]), say(premises[1]), say(conclusion));
            return Ok(Draft {
                question: format!(
                    "Consider these statements:\n1. {p1}\n2. {p2}\n\nDoes it logically follow that:\n{c}?\n(Answer Yes or No)"
                ),
                answer: Some(if valid { "Yes" } else { "No" }.to_string()),
                metadata: metadata(vec![
                    ("premise1", json!(p1)),
                    ("premise2", json!(p2)),
                    ("conclusion", json!(c)),
                    ("is_valid", json!(valid)),
                ]),
            });
        }
        Err("no syllogism with the wanted validity in 1000 draws".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_forms() {
        use Quantifier::*;
        // Barbara: All A are B, All B are C => All A are C.
        assert!(follows(&[(All, 0, 1), (All, 1, 2)], (All, 0, 2)));
        // With existential import, Barbari: => Some A are C.
        assert!(follows(&[(All, 0, 1), (All, 1, 2)], (Some, 0, 2)));
        // Undistributed middle: All A are B, All C are B =/=> All A are C.
        assert!(!follows(&[(All, 0, 1), (All, 2, 1)], (All, 0, 2)));
        // Celarent: No B are C, All A are B => No A are C.
        assert!(follows(&[(No, 1, 2), (All, 0, 1)], (No, 0, 2)));
    }
}
