//! The machine's f32 matmul rate: the yardstick throughput numbers are reported beside.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

/// GFLOP/s of an `n x n x n` f32 matmul on `device`, best of five after a warm-up.
pub fn matmul_gflops<B: Backend>(n: usize, device: &B::Device) -> f64 {
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

/// GB/s at which `device` reads 256 MiB of f32 (four 64 MiB tensors, each summed; wgpu caps
/// one buffer at 256 MiB, lavapipe lower), best of five after a warm-up: the bandwidth
/// roofline of decoding on that device, where every step streams the weights once. Four
/// parts also keep the read well beyond a GPU's L2 cache (50 MB on an H100).
pub fn device_read_gbs<B: Backend>(device: &B::Device) -> f64 {
    let part = 16usize << 20;
    let parts: Vec<Tensor<B, 1>> = (0..4).map(|_| Tensor::ones([part], device)).collect();
    let read = || {
        let total = parts
            .iter()
            .map(|p| p.clone().sum())
            .reduce(|a, b| a + b)
            .expect("four parts");
        let _ = total.into_data();
    };
    read();
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            read();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (parts.len() * part * 4) as f64 / best / 1e9
}

/// GB/s of reading a 256 MiB f32 buffer on all rayon threads, best of five: the rate at which
/// decoding can stream weights that do not fit in cache.
pub fn memory_read_gbs() -> f64 {
    use rayon::prelude::*;
    let values = vec![1.0f32; 64 << 20];
    let chunk = values.len() / rayon::current_num_threads().max(1);
    let read = || -> f32 {
        values
            .par_chunks(chunk.max(1))
            .map(|part| {
                // Sixteen independent sums, so the adds vectorise and the loop is bound by
                // memory, not by one add's latency.
                let mut acc = [0f32; 16];
                for block in part.chunks_exact(16) {
                    for (a, v) in acc.iter_mut().zip(block) {
                        *a += v;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum()
    };
    let _ = std::hint::black_box(read());
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(read());
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (values.len() * 4) as f64 / best / 1e9
}

/// This process's peak resident memory in bytes (Linux `VmHWM`), `None` elsewhere: what a
/// benchmark reports beside its rates.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The highest peak seen before a [`phase_peak`] reset cleared the kernel's own.
static EARLIER_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This process's peak resident memory over its whole life so far, in bytes: the kernel's
/// `VmHWM`, or a higher peak it held before [`phase_peak`] reset it. `None` off Linux.
pub fn process_peak_bytes() -> Option<u64> {
    let now = peak_rss_bytes()?;
    Some(now.max(EARLIER_PEAK.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Runs `work` and returns, beside its result, the peak resident memory reached while it
/// ran, in bytes: the kernel's high-water mark is reset to the current resident size first
/// (Linux: `5` written to `/proc/self/clear_refs`), after the peak so far is kept for
/// [`process_peak_bytes`]. `None` where the mark cannot be reset or read. Meant for phases
/// long enough that their peak matters (loading a model, a training step's parts), and for
/// one thread at a time: phases measured concurrently would share one mark.
pub fn phase_peak<T>(work: impl FnOnce() -> T) -> (T, Option<u64>) {
    if let Some(before) = peak_rss_bytes() {
        EARLIER_PEAK.fetch_max(before, std::sync::atomic::Ordering::Relaxed);
    }
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let result = work();
    let peak = peak_rss_bytes().filter(|_| reset);
    if let Some(peak) = peak {
        EARLIER_PEAK.fetch_max(peak, std::sync::atomic::Ordering::Relaxed);
    }
    (result, peak)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{phase_peak, process_peak_bytes};

    /// A phase that touches 256 MB reports a peak at least that far above where it began,
    /// and the process's peak never falls below a phase's.
    #[test]
    fn a_phase_peak_sees_what_the_phase_held() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let resident = |line: &str| -> Option<u64> {
            let kb = line
                .strip_prefix("VmRSS:")?
                .trim()
                .trim_end_matches("kB")
                .trim();
            kb.parse::<u64>().ok().map(|kb| kb * 1024)
        };
        let before = status.lines().find_map(resident).expect("VmRSS");
        let size = 256 << 20;
        let (sum, peak) = phase_peak(|| {
            let held = vec![1u8; size];
            held.iter().map(|&b| u64::from(b)).sum::<u64>()
        });
        assert_eq!(sum, size as u64);
        let peak = peak.expect("Linux resets and reads the high-water mark");
        assert!(
            peak >= before + (size as u64) * 9 / 10,
            "phase peak {peak} bytes from {before} resident with {size} held"
        );
        assert!(process_peak_bytes().expect("Linux") >= peak);
    }
}
