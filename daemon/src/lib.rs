//! custodyd: a hardware-backed key custody daemon.
//!
//! Keys live in a TPM or a PKCS#11 HSM; the daemon performs signing, unwrapping and envelope
//! operations for local processes over a Unix socket, with per-uid authorization and an audit log.
#![forbid(unsafe_code)]

pub mod backend;
pub mod crypto;
