//! Checking an audit file's hash chain and checkpoint signatures offline (`custody audit
//! verify`); the format is in [`custody_proto::audit`] and PROTOCOL.md, "Audit trail".

use base64::Engine as _;
use custody_proto::audit::{checkpoint_message, ALG_ED25519, ALG_RSA, CHECKPOINT_OP, GENESIS};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The public key of the audit key, to check checkpoint signatures.
#[derive(Debug)]
pub enum AuditPublicKey {
    /// An `rsa2048-sign` key.
    Rsa(rsa::RsaPublicKey),
    /// An `ed25519` key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl AuditPublicKey {
    /// Reads a PEM SubjectPublicKeyInfo (`custody keys public KEY --format pem`).
    pub fn from_pem(pem: &str) -> Result<AuditPublicKey, String> {
        use rsa::pkcs8::DecodePublicKey;
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            return Ok(AuditPublicKey::Rsa(k));
        }
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!("PEM label `{label}`, expected `PUBLIC KEY`"));
        }
        // Ed25519 SubjectPublicKeyInfo: a fixed 12-byte prefix, then the 32-byte key.
        const ED25519_SPKI: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        match der.strip_prefix(&ED25519_SPKI[..]) {
            Some(raw) if raw.len() == 32 => {
                let mut b = [0u8; 32];
                b.copy_from_slice(raw);
                ed25519_dalek::VerifyingKey::from_bytes(&b)
                    .map(AuditPublicKey::Ed25519)
                    .map_err(|e| format!("bad Ed25519 key: {e}"))
            }
            _ => Err("the public key is neither RSA nor Ed25519".into()),
        }
    }

    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (AuditPublicKey::Rsa(k), ALG_RSA) => {
                let digest = Sha256::digest(msg);
                k.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                    .is_ok()
            }
            (AuditPublicKey::Ed25519(k), ALG_ED25519) => {
                let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                k.verify_strict(msg, &sig).is_ok()
            }
            _ => false,
        }
    }
}

/// What a chain that checked out holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines (records and checkpoints).
    pub lines: usize,
    /// `seq` of the first line.
    pub first_seq: u64,
    /// `seq` of the last line.
    pub last_seq: u64,
    /// Checkpoint lines.
    pub checkpoints: usize,
    /// Checkpoints whose signature was verified (0 without a public key).
    pub verified: usize,
    /// Lines after the last checkpoint: chained, but not yet covered by a signature.
    pub unsigned_tail: usize,
    /// `prev` of the first line when the file continues a rotated one (not the genesis).
    pub continues_from: Option<String>,
}

/// The first problem found: a line number (1-based) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The line that was altered, or the first line after records removed or reordered.
    pub line: usize,
    /// What is wrong, naming the line.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

fn finding(line: usize, problem: String) -> Finding {
    Finding { line, problem }
}

/// Checks the chain of `text` (an audit file), and each checkpoint's signature when `key` is
/// given. Returns the first line altered, removed or reordered.
pub fn verify(text: &[u8], key: Option<&AuditPublicKey>) -> Result<Summary, Finding> {
    if text.is_empty() {
        return Err(finding(0, "the audit file is empty".into()));
    }
    let body = match text.strip_suffix(b"\n") {
        Some(b) => b,
        None => {
            let n = text.split(|b| *b == b'\n').count();
            return Err(finding(
                n,
                format!("line {n} was cut short (the file does not end with a newline)"),
            ));
        }
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let seq_of = |l: &[u8]| {
        serde_json::from_slice::<Value>(l)
            .ok()
            .and_then(|v| v.get("seq").and_then(Value::as_u64))
    };
    let mut expected: Option<u64> = None;
    let mut prev_hash = String::new();
    let mut sum = Summary {
        lines: lines.len(),
        first_seq: 0,
        last_seq: 0,
        checkpoints: 0,
        verified: 0,
        unsigned_tail: 0,
        continues_from: None,
    };
    let mut last_checkpoint = 0;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let v: Value = serde_json::from_slice(raw)
            .map_err(|_| finding(n, format!("line {n} is not a JSON record: it was altered")))?;
        let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(|| {
            finding(
                n,
                format!("line {n} has no `seq`: it was altered or inserted"),
            )
        })?;
        let prev = v.get("prev").and_then(Value::as_str).ok_or_else(|| {
            finding(
                n,
                format!("line {n} has no `prev`: it was altered or inserted"),
            )
        })?;
        match expected {
            None => {
                sum.first_seq = seq;
                if seq == 1 && prev != GENESIS {
                    return Err(finding(
                        n,
                        format!("line {n} starts the chain (seq 1) but its `prev` is not the genesis: it was altered"),
                    ));
                }
                if prev != GENESIS {
                    sum.continues_from = Some(prev.to_owned());
                }
            }
            Some(exp) => {
                if seq != exp {
                    let elsewhere = lines
                        .iter()
                        .enumerate()
                        .find(|(j, l)| *j != i && seq_of(l) == Some(exp))
                        .map(|(j, _)| j + 1);
                    return Err(finding(
                        n,
                        match elsewhere {
                            Some(at) => format!(
                                "line {n} has seq {seq} where {exp} was expected: records were \
                                 reordered (seq {exp} is on line {at})"
                            ),
                            None if seq > exp => format!(
                                "line {n} has seq {seq} where {exp} was expected: {} record(s) \
                                 were removed before line {n}",
                                seq - exp
                            ),
                            None => format!(
                                "line {n} has seq {seq} where {exp} was expected: records were \
                                 reordered or duplicated"
                            ),
                        },
                    ));
                }
                if prev != prev_hash {
                    return Err(finding(
                        n - 1,
                        format!(
                            "line {} was altered: its SHA-256 does not match `prev` of line {n}",
                            n - 1
                        ),
                    ));
                }
            }
        }
        if v.get("op").and_then(Value::as_str) == Some(CHECKPOINT_OP) {
            sum.checkpoints += 1;
            last_checkpoint = n;
            if let Some(k) = key {
                let alg = v.get("alg").and_then(Value::as_str).unwrap_or_default();
                let ts = v.get("ts_ms").and_then(Value::as_u64).unwrap_or_default();
                let sig = v
                    .get("sig")
                    .and_then(Value::as_str)
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .unwrap_or_default();
                let msg = checkpoint_message(seq, prev, u128::from(ts));
                if !k.verify(alg, &msg, &sig) {
                    return Err(finding(
                        n,
                        format!(
                            "line {n}: the checkpoint's signature does not verify with this \
                             key: the checkpoint, or a line before it, was altered"
                        ),
                    ));
                }
                sum.verified += 1;
            }
        }
        sum.last_seq = seq;
        expected = Some(seq + 1);
        prev_hash = hex::encode(Sha256::digest(raw));
    }
    sum.unsigned_tail = lines.len() - last_checkpoint;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut prev = GENESIS.to_owned();
        for seq in 1..=n {
            let l = format!("{{\"seq\":{seq},\"prev\":\"{prev}\",\"op\":\"ping\"}}");
            prev = hex::encode(Sha256::digest(l.as_bytes()));
            out.push(l);
        }
        out
    }

    fn text(lines: &[String]) -> Vec<u8> {
        let mut s = lines.join("\n");
        s.push('\n');
        s.into_bytes()
    }

    #[test]
    fn intact_edit_delete_swap() {
        let c = chain(5);
        let s = verify(&text(&c), None).unwrap();
        assert_eq!(
            (s.lines, s.first_seq, s.last_seq, s.unsigned_tail),
            (5, 1, 5, 5)
        );
        let mut e = c.clone();
        e[2] = e[2].replace("ping", "pong");
        assert_eq!(verify(&text(&e), None).unwrap_err().line, 3);
        let mut d = c.clone();
        d.remove(1);
        let f = verify(&text(&d), None).unwrap_err();
        assert_eq!(f.line, 2);
        assert!(f.problem.contains("removed"), "{f}");
        let mut w = c.clone();
        w.swap(2, 3);
        let f = verify(&text(&w), None).unwrap_err();
        assert_eq!(f.line, 3);
        assert!(f.problem.contains("reordered"), "{f}");
        let f = verify(&text(&c)[..10], None).unwrap_err();
        assert!(f.problem.contains("cut short"), "{f}");
        // A rotated file continues from the last hash of the previous one.
        let s = verify(&text(&c[2..]), None).unwrap();
        assert_eq!(s.first_seq, 3);
        assert!(s.continues_from.is_some());
    }
}
