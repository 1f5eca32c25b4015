//! The one place where a compute backend is chosen. Library code is generic over
//! `B: Backend`; this binary picks Flex (CPU, always compiled), CUDA or wgpu by feature.

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use std::io::Write;
use std::time::Instant;

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
        DeviceKind::Cpu => matmul_rate::<burn::backend::Flex>(&Default::default(), args.size),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => matmul_rate::<burn::backend::Cuda>(&Default::default(), args.size),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => matmul_rate::<burn::backend::Wgpu>(&Default::default(), args.size),
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

/// f32 GFLOP/s of an n x n x n matmul, best of five after a warm-up.
fn matmul_rate<B: Backend>(device: &B::Device, n: usize) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let _ = a.clone().matmul(b.clone()).into_data();
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}
