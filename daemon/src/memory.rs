//! Keeping the daemon's memory flat: freed heap given back to the system.
//!
//! Backend work used to run on whichever runtime thread read the request (under
//! `block_in_place`), so over time a few dozen threads allocated and freed, and glibc bound each
//! to one of up to 8 × CPUs arenas. Every arena kept its high-water mark and its fragments (glibc
//! returns memory to the system only from the top of a heap), so under a steady load the
//! daemon's RSS crept up — 35 → 48 → 61 MiB over a 10-minute soak — while its live heap stayed
//! under 8 MiB (heaptrack). With the work on the fixed worker threads only it stayed flat, which
//! located the cause; requests now run whole on those workers ([`crate::sched`]). Threads still
//! differ in what they allocate, so every [`TRIM_EVERY`] the free pages of every arena go back to
//! the system ([`trim`], `malloc_trim(0)`). Capping the arenas too (`mallopt(M_ARENA_MAX, 2)`)
//! flattened RSS more but slowed a flood of 256 KiB requests until connections broke
//! (`tests/tests/fairness.rs`), so it is not done. Figures in README.md, "Guarantees". `malloc_trim` is an FFI call, the
//! daemon's only `unsafe` code besides the TPM lockout reset.

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns the free memory of every malloc arena to the system (glibc `malloc_trim(0)`); a no-op
/// with other C libraries.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a size and touches only malloc's own state, under its locks; it
    // may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims the heap every [`TRIM_EVERY`] on a blocking thread, until the runtime shuts down.
pub fn start_trimming() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}
