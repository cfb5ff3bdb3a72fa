//! Byte-exact MOSIP formats: thumbprints and key indexes, the keymanager hybrid envelope
//! (`VER_R2`), the zero-knowledge attribute, share and pool-export formats, compact JWS (RS256) assembly, and the TPM `TPMT_PUBLIC` encoding of RSA keys.
//!
//! Everything here is a pure function: no I/O and no backend calls. Private-key operations (RSA
//! signing, RSA-OAEP unwrapping) are done by a backend; this module only builds and parses the
//! bytes around them. Error messages never contain key bytes or plaintext. The layouts follow
//! `reference/mosip.md`.

pub mod b64;
pub mod envelope;
pub mod jwt;
pub mod okp;
pub mod thumbprint;
pub mod tpm_public;
pub mod x509;
pub mod zk;
