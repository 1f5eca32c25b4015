//! Data parallelism over MPI, the binary's side of [`musketeers::train::collective`]: a run
//! started by `mpirun -np N` (or `srun`) trains as N processes that each take a share of a
//! step's prompts and sum their gradients with MPI.
//!
//! A collective waits at most `MUSKETEERS_COLLECTIVE_TIMEOUT` seconds (default 1800) for the
//! other processes; past that the whole job is aborted with a message naming this rank, so a
//! hung rank never hangs the others forever. A rank that dies is reported by the launcher
//! (`mpirun` names it and ends the job), and a rank that fails aborts the job with its error.

use anyhow::{Context as _, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use musketeers::TrainError;
use musketeers::train::collective::Collective;
use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

/// An MPI job this process belongs to, when it was started by a launcher.
pub struct Launch {
    universe: Universe,
}

/// Whether a launcher started this process as one of several.
fn launched_with_peers() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_NTASKS",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok())
    .filter_map(|v| v.parse::<usize>().ok())
    .any(|n| n > 1)
}

impl Launch {
    /// MPI, initialised when a launcher started this process with peers; `None` for a run
    /// on its own (MPI is not touched).
    pub fn from_env() -> Result<Option<Self>> {
        if !launched_with_peers() {
            return Ok(None);
        }
        let universe = mpi::initialize().context("initialising MPI")?;
        Ok(Some(Self { universe }))
    }

    pub fn rank(&self) -> usize {
        self.universe.world().rank() as usize
    }

    pub fn size(&self) -> usize {
        self.universe.world().size() as usize
    }

    pub fn collective(&self) -> Result<MpiCollective> {
        let timeout = match std::env::var("MUSKETEERS_COLLECTIVE_TIMEOUT") {
            Ok(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .with_context(|| {
                    format!(
                        "MUSKETEERS_COLLECTIVE_TIMEOUT={v:?} is not a positive number of seconds"
                    )
                })?,
            Err(_) => 1800.0,
        };
        Ok(MpiCollective {
            world: self.universe.world(),
            timeout: Duration::from_secs_f64(timeout),
            seconds: Cell::new(0.0),
        })
    }

    /// End every process of the job: an error here must not leave the others waiting.
    pub fn abort(&self, error: &anyhow::Error) -> ! {
        let _ = writeln!(
            std::io::stderr(),
            "musketeers: rank {} of {}: {error:#}; aborting every rank",
            self.rank(),
            self.size()
        );
        self.universe.world().abort(1)
    }
}

pub struct MpiCollective {
    world: SimpleCommunicator,
    timeout: Duration,
    seconds: Cell<f64>,
}

impl MpiCollective {
    fn sum<T: Equivalence + Copy>(&self, values: &mut [T]) {
        let started = Instant::now();
        let send = values.to_vec();
        mpi::request::scope(|scope| {
            let mut request = self.world.immediate_all_reduce_into(
                scope,
                &send[..],
                values,
                SystemOperation::sum(),
            );
            let mut polls = 0u32;
            loop {
                match request.test() {
                    Ok(_) => break,
                    Err(pending) => request = pending,
                }
                if started.elapsed() > self.timeout {
                    let _ = writeln!(
                        std::io::stderr(),
                        "musketeers: rank {} of {}: the other ranks did not reach the step's \
                         all-reduce within {:.0} s (MUSKETEERS_COLLECTIVE_TIMEOUT): a rank has \
                         stopped or hangs; aborting every rank",
                        self.world.rank(),
                        self.world.size(),
                        self.timeout.as_secs_f64()
                    );
                    self.world.abort(3);
                }
                // Spin briefly (a collective of ranks in step is quick), then poll gently so
                // that a rank waiting for a slower one leaves the core to it.
                polls += 1;
                if polls < 2000 {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        self.seconds
            .set(self.seconds.get() + started.elapsed().as_secs_f64());
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
        self.sum(values);
        Ok(())
    }

    fn sum_f64(&self, values: &mut [f64]) -> Result<(), TrainError> {
        self.sum(values);
        Ok(())
    }

    fn seconds(&self) -> f64 {
        self.seconds.get()
    }
}
