//! The generator names, apart from the generators so an error message can list them.

/// Names of the tasks with a native generator.
pub const NAMES: [&str; 13] = [
    "chain_sum",
    "basic_arithmetic",
    "products",
    "gcd",
    "lcm",
    "leg_counting",
    "number_sorting",
    "spell_backward",
    "letter_counting",
    "base_conversion",
    "countdown",
    "propositional_logic",
    "syllogism",
];
