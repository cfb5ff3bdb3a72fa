//! The deadline of the request a thread is working for.
//!
//! The scheduler ([`crate::sched`]) sets it on its worker thread while a job runs; device calls
//! check it before they start ([`check`]) and bound their own waits by it ([`cap`]), so work whose
//! caller has already been told "timed out" never reaches the TPM or the HSM. Threads that are
//! not scheduler workers (tests, the benchmark's direct path) have no deadline: nothing changes
//! for them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BackendError;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Device calls refused because their request's deadline had passed.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with `deadline` as this thread's deadline (restored afterwards, also on panic).
pub fn with<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(Some(deadline))));
    f()
}

/// This thread's deadline, if it works for a scheduled request.
pub fn current() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// `limit`, shortened to the time left before this thread's deadline.
pub fn cap(limit: Duration) -> Duration {
    match current() {
        Some(d) => limit.min(d.saturating_duration_since(Instant::now())),
        None => limit,
    }
}

/// `Unavailable` (and counted) when this thread's deadline has passed: call before every device
/// call, so that work whose caller stopped waiting is not sent to the device.
pub fn check(what: &str) -> Result<(), BackendError> {
    match current() {
        Some(d) if Instant::now() >= d => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            Err(BackendError::Unavailable(format!(
                "{what}: the request's deadline passed before the device call"
            )))
        }
        _ => Ok(()),
    }
}

/// Device calls refused by [`check`] since start.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_only_after_the_deadline() {
        assert!(check("x").is_ok(), "no deadline: no check");
        assert_eq!(cap(Duration::from_secs(5)), Duration::from_secs(5));
        let before = refused();
        with(Instant::now() + Duration::from_secs(60), || {
            assert!(check("x").is_ok());
            assert!(cap(Duration::from_secs(5)) == Duration::from_secs(5));
            assert!(cap(Duration::from_secs(600)) <= Duration::from_secs(60));
        });
        with(Instant::now(), || {
            assert!(check("sign").is_err());
            assert_eq!(cap(Duration::from_secs(5)), Duration::ZERO);
        });
        assert!(current().is_none(), "restored");
        assert!(refused() > before);
    }
}
