//! The shared parts of the benchmarks: measurement primitives ([`measure`]), the direct path on
//! a daemon's SoftHSM token ([`direct`]), the reference machine's direct rates ([`reference`])
//! and the sections of `BENCHMARKS.md` that different harnesses own ([`sections`]).
//! `custody-bench` (`make bench`) and the peer benchmark (`bench/peers/`, `make bench-peers`)
//! both use them.

pub mod direct;
pub mod measure;
pub mod reference;
pub mod sections;
