//! Propositional formulas as reasoning-gym parses and checks them.
//!
//! The parser mirrors reasoning-gym's `parse_expr`: outer parentheses are peeled, the
//! lowest-precedence operator (`↔`, then `→`, `∨`, `∧`) at nesting level 0 is split at its
//! rightmost occurrence, then a leading `¬`; anything else is a variable named by its text
//! (so `p` or `P Q` are variables too, as in Python). Validity is decided by truth table.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formula {
    Var(String),
    Not(Box<Formula>),
    Binary(Op, Box<Formula>, Box<Formula>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    And,
    Or,
    Implies,
    Iff,
}

impl Op {
    fn symbol(self) -> char {
        match self {
            Op::And => '∧',
            Op::Or => '∨',
            Op::Implies => '→',
            Op::Iff => '↔',
        }
    }
}

/// Why a formula could not be parsed or checked; reasoning-gym scores these 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogicError {
    #[error("empty sub-expression")]
    Empty,
    #[error("formula nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("truth table over {0} variables is too large to check")]
    TooManyVariables(usize),
}

const MAX_DEPTH: usize = 900;
/// Python enumerates 2^n assignments without limit; we stop where that would take seconds.
const MAX_VARIABLES: usize = 20;
const MAX_TABLE_WORK: u64 = 200_000_000;

impl Formula {
    pub fn parse(text: &str) -> Result<Self, LogicError> {
        let chars: Vec<char> = text.chars().collect();
        parse(&chars, 0)
    }

    pub fn evaluate(&self, variables: &[String], assignment: u64) -> bool {
        match self {
            Formula::Var(name) => {
                let index = variables
                    .binary_search(name)
                    .expect("every variable was collected before evaluation");
                (assignment >> index) & 1 == 1
            }
            Formula::Not(inner) => !inner.evaluate(variables, assignment),
            Formula::Binary(op, l, r) => {
                let left = l.evaluate(variables, assignment);
                match op {
                    Op::And => left && r.evaluate(variables, assignment),
                    Op::Or => left || r.evaluate(variables, assignment),
                    Op::Implies => !left || r.evaluate(variables, assignment),
                    Op::Iff => left == r.evaluate(variables, assignment),
                }
            }
        }
    }

    fn collect(&self, into: &mut BTreeSet<String>) {
        match self {
            Formula::Var(name) => {
                into.insert(name.clone());
            }
            Formula::Not(inner) => inner.collect(into),
            Formula::Binary(_, l, r) => {
                l.collect(into);
                r.collect(into);
            }
        }
    }

    fn size(&self) -> u64 {
        match self {
            Formula::Var(_) => 1,
            Formula::Not(inner) => 1 + inner.size(),
            Formula::Binary(_, l, r) => 1 + l.size() + r.size(),
        }
    }
}

fn parse(expr: &[char], depth: usize) -> Result<Formula, LogicError> {
    if depth > MAX_DEPTH {
        return Err(LogicError::TooDeep);
    }
    let expr = strip(expr);
    if expr.is_empty() {
        return Err(LogicError::Empty);
    }
    if expr[0] == '(' && expr[expr.len() - 1] == ')' && encloses(&expr[1..expr.len() - 1]) {
        return parse(&expr[1..expr.len() - 1], depth + 1);
    }
    for op in [Op::Iff, Op::Implies, Op::Or, Op::And] {
        let mut level = 0i64;
        for i in (0..expr.len()).rev() {
            match expr[i] {
                ')' => level += 1,
                '(' => level -= 1,
                c if level == 0 && c == op.symbol() => {
                    let left = parse(&expr[..i], depth + 1)?;
                    let right = parse(&expr[i + 1..], depth + 1)?;
                    return Ok(Formula::Binary(op, Box::new(left), Box::new(right)));
                }
                _ => {}
            }
        }
    }
    if expr[0] == '¬' {
        return Ok(Formula::Not(Box::new(parse(&expr[1..], depth + 1)?)));
    }
    Ok(Formula::Var(expr.iter().collect()))
}

fn strip(expr: &[char]) -> &[char] {
    let is_space = |c: &char| crate::pynum::is_py_space(*c);
    let start = expr.iter().position(|c| !is_space(c)).unwrap_or(expr.len());
    let end = expr
        .iter()
        .rposition(|c| !is_space(c))
        .map_or(start, |e| e + 1);
    &expr[start..end]
}

/// Python's check: scanning the inside, the level never drops below zero and ends at zero.
fn encloses(inner: &[char]) -> bool {
    let mut level = 0i64;
    for &c in inner {
        match c {
            '(' => level += 1,
            ')' => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    level == 0
}

/// Variables of all formulas, sorted (the truth-table index order).
fn variables_of(formulas: &[&Formula]) -> Vec<String> {
    let mut set = BTreeSet::new();
    for f in formulas {
        f.collect(&mut set);
    }
    set.into_iter().collect()
}

fn check_table(formulas: &[&Formula]) -> Result<Vec<String>, LogicError> {
    let variables = variables_of(formulas);
    let size: u64 = formulas.iter().map(|f| f.size()).sum();
    if variables.len() > MAX_VARIABLES
        || (1u64 << variables.len()).saturating_mul(size) > MAX_TABLE_WORK
    {
        return Err(LogicError::TooManyVariables(variables.len()));
    }
    Ok(variables)
}

/// Whether `conclusion` holds in every assignment where all premises hold.
pub fn is_valid_conclusion(premises: &[Formula], conclusion: &Formula) -> Result<bool, LogicError> {
    let mut all: Vec<&Formula> = premises.iter().collect();
    all.push(conclusion);
    let variables = check_table(&all)?;
    Ok((0..1u64 << variables.len()).all(|assignment| {
        !premises.iter().all(|p| p.evaluate(&variables, assignment))
            || conclusion.evaluate(&variables, assignment)
    }))
}

/// reasoning-gym's `_is_trivial`: a bare variable, or a tautology.
pub fn is_trivial(formula: &Formula) -> Result<bool, LogicError> {
    if matches!(formula, Formula::Var(_)) {
        return Ok(true);
    }
    let variables = check_table(&[formula])?;
    Ok((0..1u64 << variables.len()).all(|assignment| formula.evaluate(&variables, assignment)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_reasoning_gym() {
        let f = Formula::parse("(P ∨ Q) ∧ ¬R").unwrap();
        assert!(matches!(f, Formula::Binary(Op::And, _, _)));
        assert_eq!(Formula::parse(" ((P)) ").unwrap(), Formula::Var("P".into()));
        assert_eq!(Formula::parse("P ∧"), Err(LogicError::Empty));
        // `(P) ∧ (Q)` must not be peeled as one enclosure.
        assert!(matches!(
            Formula::parse("(P) ∧ (Q)").unwrap(),
            Formula::Binary(Op::And, _, _)
        ));
    }

    #[test]
    fn validity_and_triviality() {
        let premises = vec![
            Formula::parse("P → Q").unwrap(),
            Formula::parse("P").unwrap(),
        ];
        assert_eq!(
            is_valid_conclusion(&premises, &Formula::parse("Q").unwrap()),
            Ok(true)
        );
        assert_eq!(
            is_valid_conclusion(&premises, &Formula::parse("¬Q").unwrap()),
            Ok(false)
        );
        assert_eq!(is_trivial(&Formula::parse("P ∨ ¬P").unwrap()), Ok(true));
        assert_eq!(is_trivial(&Formula::parse("P ∨ Q").unwrap()), Ok(false));
    }

    #[test]
    fn refuses_huge_truth_tables() {
        let wide = (0..30)
            .map(|i| format!("v{i}"))
            .collect::<Vec<_>>()
            .join(" ∧ ");
        let f = Formula::parse(&wide).unwrap();
        assert_eq!(is_trivial(&f), Err(LogicError::TooManyVariables(30)));
        assert_eq!(
            Formula::parse(&"¬".repeat(100_000)),
            Err(LogicError::TooDeep)
        );
    }
}
