//! What a run's models will hold, known before any is loaded, against what the machine has: a
//! run that cannot fit stops at once with the figures, instead of being killed by the kernel
//! halfway through loading its team.

use std::fmt;

use musketeers_lm::pretrained::load_config;
use musketeers_lm::{Precision, catalog};

use crate::error::TrainError;
use crate::method::system::Needs;
use crate::run_config::RunConfig;

/// Set (in GB) to check against this figure instead of the machine's available memory.
pub const MEMORY_LIMIT_ENV: &str = "MUSKETEERS_MEMORY_LIMIT_GB";

/// Held beyond the weights by any run: the program, allocator slack, one step's smallest
/// working set (measured: a fused cell of the default real team peaked 6.5 GB above its
/// weights with completions of 12-17 tokens; longer completions need more).
const RESERVE_BYTES: u64 = 1 << 30;

/// Each model's weights as it will be stored, and the reserve.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    /// `(role and model, bytes)`
    pub parts: Vec<(String, u64)>,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|(_, bytes)| bytes).sum::<u64>() + RESERVE_BYTES
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} GB (", gb(self.total()))?;
        for (name, bytes) in &self.parts {
            write!(f, "{name} {} GB, ", gb(*bytes))?;
        }
        write!(f, "working memory at least {} GB)", gb(RESERVE_BYTES))
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e9)
}

/// The weights `config`'s system will load (the team only if it `needs` one), read from the
/// models' configs alone.
pub fn estimate(config: &RunConfig, needs: Needs) -> Result<MemoryEstimate, TrainError> {
    let weights_of = |spec: &str, weights: Precision, head: bool| -> Result<u64, TrainError> {
        let path = catalog::resolve(spec).map_err(musketeers_lm::LmError::from)?;
        let model = load_config(&path)?;
        let head_bytes = if head {
            0
        } else {
            model.untied_head_bytes(weights)
        };
        Ok(model.parameter_bytes(weights) - head_bytes)
    };
    let mut parts = vec![(
        format!("policy {} ({})", config.policy.model, config.policy.weights),
        weights_of(&config.policy.model, config.policy.weights, true)?,
    )];
    if needs.team {
        for member in &config.team {
            parts.push((
                format!("expert {} ({})", member.name, config.team_weights),
                weights_of(&member.model, config.team_weights, needs.team_generates)?,
            ));
        }
    }
    Ok(MemoryEstimate { parts })
}

/// The bytes a run may use: [`MEMORY_LIMIT_ENV`] when set, else the kernel's `MemAvailable`;
/// `None` where neither is known (the check is then skipped).
pub fn memory_limit() -> Result<Option<u64>, TrainError> {
    if let Ok(text) = std::env::var(MEMORY_LIMIT_ENV) {
        let limit: f64 = text.trim().parse().map_err(|_| {
            TrainError::BadInput(format!(
                "{MEMORY_LIMIT_ENV}={text:?} is not a number of gigabytes"
            ))
        })?;
        if !(limit.is_finite() && limit > 0.0) {
            return Err(TrainError::BadInput(format!(
                "{MEMORY_LIMIT_ENV}={text:?} must be a positive number of gigabytes"
            )));
        }
        return Ok(Some((limit * 1e9) as u64));
    }
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(None);
    };
    Ok(meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024))
}

/// Refuses `estimate` if it exceeds `limit`, saying both and what would shrink it.
pub fn check_fits(estimate: &MemoryEstimate, limit: Option<u64>) -> Result<(), TrainError> {
    match limit {
        Some(limit) if estimate.total() > limit => Err(TrainError::BadInput(format!(
            "this run needs about {estimate}, but only {} GB are available ({}); store weights \
             compactly (team_weights = \"f16\", policy.weights = \"f16\") or use a smaller team",
            gb(limit),
            if std::env::var(MEMORY_LIMIT_ENV).is_ok() {
                format!("the limit {MEMORY_LIMIT_ENV} sets")
            } else {
                "MemAvailable".to_string()
            }
        ))),
        _ => Ok(()),
    }
}
