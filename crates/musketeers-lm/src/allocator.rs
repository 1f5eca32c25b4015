//! mimalloc for a binary that runs these models, and the settings it wants. A library cannot
//! pick the process's allocator; a binary does, with
//! `#[global_allocator] static A: MiMalloc = MiMalloc;` and [`keep_freed_memory`] first thing
//! in `main`, as the `musketeers` binary does with its feature `mimalloc`.
//!
//! Why: a decode step allocates and frees many small tensors, and a forward allocates each
//! layer's activations afresh and frees them a moment later. Beside glibc's allocator,
//! mimalloc decoded the SmolLM2-135M shape 22-27% faster at batch 1 and 8 on a 2-core AVX2
//! EPYC (README, "One-pass SwiGLU and rotary, and the allocator"). The price is memory: a
//! real fused cell peaked at 8.24 GB against glibc's 7.68 (8.01 even with purging at once),
//! so it is not the default.
//!
//! The settings: freed blocks up to 32 MiB are never purged (mimalloc's default purge delay
//! made the GRPO loss phase 40% slower than glibc on an AVX-512 EPYC: each layer faulted its
//! pages in again); larger ones go back to the kernel at once.
#![allow(unsafe_code)] // FFI calls that set and read allocator options

pub use mimalloc::MiMalloc;

/// Options of mimalloc 3's `mi_option_e` (`mimalloc.h`) that `libmimalloc-sys` does not name:
/// their indices. The test below checks them against the options' documented defaults.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const ARENA_MAX_OBJECT_SIZE: libmimalloc_sys::mi_option_t = 45;

/// Blocks above this go to the kernel directly and back at once (glibc's largest threshold
/// for the same): a model's load dequantizes tensors of hundreds of megabytes into buffers
/// that are dropped, and nothing later reuses them.
const KEEP_UP_TO_KIB: i64 = 32 * 1024;

/// Freed blocks up to [`KEEP_UP_TO_KIB`] stay mapped for the next allocation instead of going
/// back to the kernel. `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ARENA_MAX_OBJECT_SIZE` in the
/// environment still decide, as mimalloc documents. Harmless where mimalloc is not the
/// global allocator (the options are then unused).
pub fn keep_freed_memory() {
    // Not `mi_option_set_default`: mimalloc reads every option when the process loads, and a
    // default set after that is ignored (the test below caught it).
    for (option, variable, value) in [
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1),
        (
            ARENA_MAX_OBJECT_SIZE,
            "MIMALLOC_ARENA_MAX_OBJECT_SIZE",
            KEEP_UP_TO_KIB,
        ),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: sets an integer option, which mimalloc reads at each use.
            unsafe { libmimalloc_sys::mi_option_set(option, value as _) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: the options are the process's, and tests run in parallel.
    #[test]
    fn the_options_we_set_are_the_ones_mimalloc_then_uses() {
        // SAFETY: reads integer options.
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        let from_environment = |variable| std::env::var_os(variable).is_some();
        // mimalloc 3's defaults (`options.c`): purging after 1000 ms, arena objects up to
        // 2 GiB (in KiB); their neighbours in the enum default to 0 or 1, so a wrong index
        // fails here.
        if !from_environment("MIMALLOC_PURGE_DELAY") {
            assert_eq!(get(PURGE_DELAY), 1000);
        }
        if !from_environment("MIMALLOC_ARENA_MAX_OBJECT_SIZE") {
            assert_eq!(get(ARENA_MAX_OBJECT_SIZE), 2 * 1024 * 1024);
        }
        keep_freed_memory();
        if !from_environment("MIMALLOC_PURGE_DELAY") {
            assert_eq!(get(PURGE_DELAY), -1);
        }
        if !from_environment("MIMALLOC_ARENA_MAX_OBJECT_SIZE") {
            assert_eq!(
                get(ARENA_MAX_OBJECT_SIZE),
                KEEP_UP_TO_KIB as std::ffi::c_long
            );
        }
    }
}
