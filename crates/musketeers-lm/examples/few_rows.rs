//! GFLOP/s of decode-shaped products (a few rows by a weight matrix) through
//! `musketeers_lm::few_rows` and through Burn's matmul (`gemm`), on the CPU backend, for
//! SmolLM2-135M's and Qwen2.5-0.5B's projections and tied heads; and the largest difference
//! between the two. `cargo run --release -p musketeers-lm --example few_rows`

#![allow(clippy::print_stdout)] // an example reports on stdout

use burn::tensor::{Distribution, Tensor};
use burn_flex::Flex;
use std::time::Instant;

type B = Flex;

/// Seconds per call, the best of three rounds after a warm-up.
fn seconds(f: &dyn Fn()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..10 {
                f();
            }
            start.elapsed().as_secs_f64() / 10.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let device = Default::default();
    // (k, n, tied): tied heads are read as the transposed embedding table.
    let shapes = [
        (576, 1536, false),
        (1536, 576, false),
        (576, 192, false),
        (576, 49152, true),
        (896, 4864, false),
        (4864, 896, false),
        (896, 151_936, true),
    ];
    println!("rows      k       n  layout      ours GFLOP/s  burn GFLOP/s  ratio  max |diff|");
    for rows in [1usize, 8, 32, 48, 64] {
        for &(k, n, tied) in &shapes {
            let x = Tensor::<B, 2>::random([rows, k], Distribution::Default, &device);
            let w = if tied {
                Tensor::<B, 2>::random([n, k], Distribution::Default, &device).transpose()
            } else {
                Tensor::<B, 2>::random([k, n], Distribution::Default, &device)
            };
            let Some(ours) = musketeers_lm::few_rows::matmul(&x, &w) else {
                println!("{rows:>4} {k:>6} {n:>7}  (not taken by few_rows)");
                continue;
            };
            let burn = x.clone().matmul(w.clone());
            let diff: f32 = (ours - burn).abs().max().into_scalar();
            let t_ours = seconds(&|| {
                let _ = musketeers_lm::few_rows::matmul(&x, &w).map(|y| y.into_data());
            });
            let t_burn = seconds(&|| {
                let _ = x.clone().matmul(w.clone()).into_data();
            });
            let flops = 2.0 * (rows * k * n) as f64 / 1e9;
            println!(
                "{rows:>4} {k:>6} {n:>7}  {:<10} {:>12.1} {:>13.1} {:>5.2}x  {diff:.2e}",
                if tied { "transposed" } else { "row-major" },
                flops / t_ours,
                flops / t_burn,
                t_burn / t_ours
            );
        }
    }
}
