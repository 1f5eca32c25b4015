//! The processes that share each step's batch (data parallelism). A step's prompts are split
//! into contiguous shares, one per process, whole groups each, so group advantages need no
//! communication; what the processes exchange is the token count that normalises the loss,
//! the flat gradient and the step's metrics, all as element-wise sums.
//!
//! One process alone is [`Alone`]; MPI ranks are the binary's (`cli/dp.rs`, feature `mpi`).

use super::TrainError;

pub trait Collective {
    /// This process's index, `0..size`; rank 0 writes the run's files.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum over every process, in place; every process gets the same values.
    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError>;
    fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError>;
    /// Every process's `value`, by rank: a sum of zero-padded 16-bit pieces, exact in f64.
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>, TrainError> {
        let (rank, size) = (self.rank(), self.size());
        let mut pieces = vec![0.0f64; size * 4];
        for k in 0..4 {
            pieces[rank * 4 + k] = ((value >> (16 * k)) & 0xffff) as f64;
        }
        self.sum_f64(&mut pieces)?;
        Ok(pieces
            .chunks(4)
            .map(|p| {
                p.iter()
                    .enumerate()
                    .fold(0u64, |v, (k, x)| v | ((*x as u64) << (16 * k)))
            })
            .collect())
    }
    /// Seconds spent in collective operations so far.
    fn seconds(&self) -> f64 {
        0.0
    }
}

/// A single process: sums are the values themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<(), TrainError> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Process `rank`'s share of `n` prompts among `size` processes: contiguous, the first
/// `n % size` shares one longer.
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order_without_overlap() {
        for n in 0..12 {
            for size in 1..5 {
                let parts: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
