//! Direct rates of a raw SoftHSM loop (no custodyd code) on the reference machine (the 2-core
//! shared Debian 12 machine these benchmarks are meant for): a run whose direct rates are more
//! than [`NOISE_LIMIT`] off these was disturbed by other load. `make bench` and
//! `make bench-peers` both flag such runs.

/// RSA-2048 PKCS#1 v1.5 sign, one thread, ops/s.
pub const HSM_SIGN_1: f64 = 1640.0;
/// The same, two threads.
pub const HSM_SIGN_2: f64 = 3130.0;

/// Largest relative distance of a direct rate from the reference before a run counts as noisy.
pub const NOISE_LIMIT: f64 = 0.25;
