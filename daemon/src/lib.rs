//! custodyd: a hardware-backed key custody daemon.
//!
//! Keys live in a TPM or a PKCS#11 HSM; the daemon performs signing, unwrapping and envelope
//! operations for local processes over a Unix socket, with per-uid authorization and an audit log.
#![deny(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod crypto;
pub mod error;
pub mod format;
pub mod keys;
pub mod memory;
pub mod ops;
pub mod sched;
pub mod server;
pub mod setup;
pub mod stages;
pub mod state;

/// Server name and version reported by `hello` and `status`.
pub const SERVER_NAME: &str = concat!("custodyd ", env!("CARGO_PKG_VERSION"));
