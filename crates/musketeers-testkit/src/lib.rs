//! Test support shared by the workspace's crates (a dev-dependency only).
//!
//! [`backend_tests!`] runs one generic test on every backend the calling crate was built
//! with: always Flex (the CPU), plus wgpu and CUDA when the calling crate's `wgpu-plain` /
//! `cuda-plain` features are on (`wgpu` and `cuda` imply them). The `cfg` is evaluated in the
//! calling crate, so each crate that uses the macro declares those two features and forwards
//! them to `burn`.
//!
//! ```ignore
//! fn logits_match<B: Backend>(device: &B::Device) { /* ... */ }
//! musketeers_testkit::backend_tests!(logits_match);
//! // -> flex::logits_match, and wgpu::logits_match under `--features wgpu`
//! ```
//!
//! Filter by backend with the module name: `cargo test --features wgpu -- wgpu::`.

/// Instantiate `fn name<B: burn::tensor::backend::Backend>(device: &B::Device)` test bodies
/// once per compiled-in backend, each as `#[test] <backend>::name` on that backend's default
/// device. Tests that need gradients wrap the backend in `Autodiff<B>` themselves.
#[macro_export]
macro_rules! backend_tests {
    ($($test:ident),+ $(,)?) => {
        $crate::backend_tests!(@on flex, burn::backend::Flex, cfg(all()); $($test),+);
        $crate::backend_tests!(@on wgpu, burn::backend::Wgpu, cfg(feature = "wgpu-plain"); $($test),+);
        $crate::backend_tests!(@on cuda, burn::backend::Cuda, cfg(feature = "cuda-plain"); $($test),+);
    };
    (@on $backend:ident, $B:ty, $cfg:meta; $($test:ident),+) => {
        #[$cfg]
        mod $backend {
            $(
                #[test]
                fn $test() {
                    super::$test::<$B>(&Default::default())
                }
            )+
        }
    };
}

/// The environment variable that turns every [`skip`] into a failure. CI sets it once it has
/// fetched the models and made the venvs and files these tests need, so a test that would
/// quietly pass by skipping (a renamed variable, a model missing from the fetch) fails there.
pub const NO_SKIP: &str = "MUSKETEERS_NO_SKIP";

/// A test that cannot run here (a model not fetched, a venv or data file not given) says why
/// and returns; under `MUSKETEERS_NO_SKIP=1` it fails with the same reason instead.
#[allow(clippy::print_stderr)] // the skip reason belongs in the test output
pub fn skip(reason: impl std::fmt::Display) {
    if std::env::var(NO_SKIP).is_ok_and(|value| value == "1") {
        panic!("{reason}, and {NO_SKIP}=1 forbids skipping");
    }
    eprintln!("skipped: {reason}");
}

/// Every tiny random-weight fixture model, one per architecture and variant we load (Llama
/// with GQA, tied embeddings, Llama 3 rope scaling; Qwen2's biases; Qwen3's q/k norm; Gemma 3's
/// sliding window): the set an "on every architecture" test loops over.
pub const TINY_MODELS: [&str; 6] = [
    "llama-gqa",
    "llama-tied",
    "llama3-rope-scaling",
    "qwen2-bias",
    "qwen3-qk-norm",
    "gemma3-sliding",
];

/// A tiny random-weight model of `crates/musketeers-lm/tests/fixtures` (`llama-gqa`,
/// `qwen3-qk-norm`, ...; made by `scripts/fixtures/make-tiny-models.sh`), for any crate's tests.
pub fn tiny_model(name: &str) -> std::path::PathBuf {
    fixture(name)
}

/// `crates/musketeers-lm/tests/fixtures/<name>`: the tiny models, their expected outputs, the
/// GGUF files and adapters the reference scripts made; one place for every crate's tests.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../musketeers-lm/tests/fixtures")
        .join(name)
}
