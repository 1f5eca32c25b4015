//! The one place where a compute backend is chosen. Library code is generic over
//! `B: Backend`; this binary picks Flex (CPU, always compiled), CUDA or wgpu by feature.

use anyhow::{Result, bail};
use musketeers_lm::perf::matmul_gflops;
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

pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = vec!["cpu (flex)"];
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    names
}

pub fn run(args: &DeviceArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "compiled backends: {}", compiled_backends().join(", "))?;
    let gflops = match args.device {
        DeviceKind::Cpu => matmul_gflops::<burn::backend::Flex>(args.size, &Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => matmul_gflops::<burn::backend::Cuda>(args.size, &Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => matmul_gflops::<burn::backend::Wgpu>(args.size, &Default::default()),
        #[allow(unreachable_patterns)]
        other => bail!(
            "backend {other:?} is not compiled in; rebuild with `--features {}`",
            format!("{other:?}").to_lowercase()
        ),
    };
    writeln!(
        out,
        "{:?}: f32 matmul {n}^3 at {gflops:.1} GFLOP/s",
        args.device,
        n = args.size
    )?;
    Ok(())
}
