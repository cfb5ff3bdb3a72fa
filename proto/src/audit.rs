//! The audit file's hash chain, shared by the daemon (which writes it) and `custody audit verify`
//! (which checks it). See PROTOCOL.md, "Audit trail".
//!
//! Every line is one JSON object whose first two members are `seq` (1, 2, 3, … across rotated
//! files) and `prev`: the lowercase hex SHA-256 of the bytes of the previous line (without its
//! newline), or [`GENESIS`] for the first line ever written. A checkpoint line (`op` =
//! [`CHECKPOINT_OP`]) carries a signature by the configured audit key over
//! [`checkpoint_message`] of its own `seq`, `prev` and `ts_ms`, which binds every line before it.

/// `prev` of the first line of a new chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `op` of a checkpoint line.
pub const CHECKPOINT_OP: &str = "audit.checkpoint";

/// `alg` of a checkpoint signed by an `rsa2048-sign` key: RSASSA-PKCS1-v1_5 over the SHA-256 of
/// the message.
pub const ALG_RSA: &str = "rsa-pkcs1v15-sha256";

/// `alg` of a checkpoint signed by an `ed25519` key: pure Ed25519 over the message.
pub const ALG_ED25519: &str = "ed25519";

/// The bytes a checkpoint line with sequence number `seq`, previous-line hash `prev` (hex) and
/// time `ts_ms` signs.
pub fn checkpoint_message(seq: u64, prev: &str, ts_ms: u128) -> Vec<u8> {
    format!("custodyd audit checkpoint v1\nseq {seq}\nprev {prev}\nts_ms {ts_ms}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_fixed() {
        assert_eq!(
            checkpoint_message(7, "ab", 12),
            b"custodyd audit checkpoint v1\nseq 7\nprev ab\nts_ms 12\n".to_vec()
        );
        assert_eq!(GENESIS.len(), 64);
    }
}
