//! One autodiff graph at a time in a process.
//!
//! Burn 0.21's autodiff keeps its graphs in one process-wide registry, and the clean-up at the
//! end of a `backward()` can free the steps of a graph another thread is still building on
//! leaves that already went through a backward pass (tracel-ai/burn#5573, fixed upstream
//! after 0.21 by a breaking change). The victim's parameters then come back with part of their
//! gradient silently missing. Every pass over a trained parameter set here reuses its leaves
//! (micro-batches, the next step before the optimiser replaces them), so two trainings in one
//! process, or the tests of this crate running side by side, could lose gradient.
//!
//! Each forward-and-backward of this crate holds [`hold`] from the first operation on the
//! trained parameters to the last gradient read; a single-threaded run never waits. The lock
//! is re-entrant, so a caller may hold it around a call that takes it again. Code of your own
//! that runs Burn autodiff beside a training in the same process should hold it too.

use parking_lot::{ReentrantMutex, ReentrantMutexGuard};

static GRAPHS: ReentrantMutex<()> = ReentrantMutex::new(());

/// While the returned guard lives, no other thread of this process builds or walks back an
/// autodiff graph through this crate.
pub fn hold() -> ReentrantMutexGuard<'static, ()> {
    GRAPHS.lock()
}

#[cfg(test)]
mod tests {
    use super::hold;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_holder_may_take_it_again_and_other_threads_wait() {
        let outer = hold();
        let inner = hold();
        let entered = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _guard = hold();
                entered.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!entered.load(Ordering::SeqCst), "entered while held");
            drop(inner);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!entered.load(Ordering::SeqCst), "entered while held once");
            drop(outer);
            waiter.join().expect("waiter");
        });
        assert!(entered.load(Ordering::SeqCst));
    }
}
