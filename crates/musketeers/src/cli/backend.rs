//! The one place where a compute backend is chosen. Library code is generic over
//! `B: Backend`; this binary picks Flex (CPU, always compiled), CUDA or wgpu by feature.

use anyhow::Result;
use musketeers_lm::perf::{device_read_gbs, matmul_gflops};
use std::io::Write;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
}

#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// Which backend to run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Square matmul size for the rate measurement.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

/// `autodiff` wraps a backend in `Autodiff`, `plain` leaves it as it is.
///
/// Training recomputes memory-bound operations (element-wise activations, norms) in backward
/// instead of keeping their outputs (`BalancedCheckpointing`): the same gradients to the bit, a
/// real step's peak 0.27 GB lower (9.04 GB to 8.77 on the default real team's fused cell) and
/// not slower in the one comparison made (loss and backward phases 34.7 and 21.0 s, against
/// 41.1 and 23.5 in an earlier run of the same step).
macro_rules! wrapped {
    (autodiff, $back:ty) => {
        burn::backend::Autodiff<$back, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>
    };
    (plain, $back:ty) => { $back };
}
pub(crate) use wrapped;

/// Evaluate `$body` with `$B` naming the backend of `$kind` (`plain`, or wrapped in
/// `autodiff`); a backend that is not compiled in is an error naming the feature to build
/// with.
macro_rules! on_backend {
    ($kind:expr, $B:ident = $mode:ident, $body:expr) => {
        match $kind {
            $crate::cli::backend::DeviceKind::Cpu => {
                type $B = $crate::cli::backend::wrapped!($mode, burn::backend::Flex);
                $body
            }
            #[cfg(feature = "cuda-plain")]
            $crate::cli::backend::DeviceKind::Cuda => {
                type $B = $crate::cli::backend::wrapped!($mode, burn::backend::Cuda);
                $body
            }
            #[cfg(feature = "wgpu-plain")]
            $crate::cli::backend::DeviceKind::Wgpu => {
                type $B = $crate::cli::backend::wrapped!($mode, burn::backend::Wgpu);
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "backend {other:?} is not compiled in; rebuild with `--features {}`",
                format!("{other:?}").to_lowercase()
            ),
        }
    };
}
pub(crate) use on_backend;

pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = vec!["cpu (flex)"];
    if cfg!(feature = "cuda-plain") {
        names.push("cuda");
    }
    if cfg!(feature = "wgpu-plain") {
        names.push("wgpu");
    }
    names
}

pub fn run(args: &DeviceArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "compiled backends: {}", compiled_backends().join(", "))?;
    let (gflops, read_gbs) = on_backend!(args.device, B = plain, {
        let device = Default::default();
        (
            matmul_gflops::<B>(args.size, &device),
            device_read_gbs::<B>(&device),
        )
    });
    writeln!(
        out,
        "{:?}: f32 matmul {n}^3 at {gflops:.1} GFLOP/s",
        args.device,
        n = args.size
    )?;
    writeln!(out, "{:?}: memory read at {read_gbs:.1} GB/s", args.device)?;
    Ok(())
}
