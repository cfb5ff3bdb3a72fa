//! Compact JWS with RS256, in two steps so the signature can come from a backend:
//!
//! 1. [`signing_input`] builds `base64url(header) "." base64url(payload)`;
//! 2. the caller signs SHA-256 of it ([`signing_digest`]) with RSASSA-PKCS1-v1_5 in a backend;
//! 3. [`assemble`] appends `"." base64url(signature)`.
//!
//! The protected header is exactly these bytes, keys in this order, no whitespace:
//!
//! ```text
//! {"alg":"RS256","typ":"JWT","kid":"<kid>"}
//! ```
//!
//! `<kid>` is the kid as a JSON string body: for the key indexes MOSIP uses (`ab:cd:…`) and any kid
//! of printable ASCII without `"` or `\`, that is the kid byte for byte. Other kids are escaped
//! the way `serde_json` escapes strings (`\"`, `\\`, control characters as `\n`/`\u00XX`; non-ASCII
//! left as UTF-8). The payload is embedded as the caller's exact bytes after checking it is one
//! JSON object. All base64url is without padding.

use sha2::{Digest, Sha256};

use super::b64::encode_b64url;

/// Why a JWS could not be built. Never carries the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The `kid` is empty.
    #[error("JWT kid is empty")]
    EmptyKid,
    /// The payload is not valid JSON.
    #[error("JWT payload is not valid JSON (line {line}, column {column})")]
    PayloadNotJson {
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// The payload is valid JSON but not an object (a JWT claims set must be one).
    #[error("JWT payload is not a JSON object")]
    PayloadNotObject,
}

/// The protected header bytes for `kid`: `{"alg":"RS256","typ":"JWT","kid":"<kid>"}`.
pub fn header_json(kid: &str) -> Result<String, JwtError> {
    if kid.is_empty() {
        return Err(JwtError::EmptyKid);
    }
    // serde_json's string serialisation is infallible for &str and yields a quoted JSON string.
    let kid_json = serde_json::Value::String(kid.to_owned()).to_string();
    Ok(format!(r#"{{"alg":"RS256","typ":"JWT","kid":{kid_json}}}"#))
}

/// Builds the JWS signing input `base64url(header) "." base64url(payload)` (no padding).
///
/// `payload_json` must be one JSON object (surrounding whitespace allowed); it is embedded as
/// given, byte for byte, so the caller controls key order and formatting.
pub fn signing_input(header_kid: &str, payload_json: &[u8]) -> Result<String, JwtError> {
    let header = header_json(header_kid)?;
    let value: serde_json::Value =
        serde_json::from_slice(payload_json).map_err(|e| JwtError::PayloadNotJson {
            line: e.line(),
            column: e.column(),
        })?;
    if !value.is_object() {
        return Err(JwtError::PayloadNotObject);
    }
    let mut out = encode_b64url(header.as_bytes());
    out.push('.');
    out.push_str(&encode_b64url(payload_json));
    Ok(out)
}

/// SHA-256 of the signing input: the digest a backend signs with RSASSA-PKCS1-v1_5 for RS256.
pub fn signing_digest(signing_input: &str) -> [u8; 32] {
    Sha256::digest(signing_input.as_bytes()).into()
}

/// Appends the signature: `signing_input "." base64url(signature)`.
pub fn assemble(signing_input: &str, signature: &[u8]) -> String {
    let sig = encode_b64url(signature);
    let mut out = String::with_capacity(signing_input.len() + 1 + sig.len());
    out.push_str(signing_input);
    out.push('.');
    out.push_str(&sig);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::b64::decode_b64;

    const KID: &str = "ba:78:16:bf:8f:01:cf:ea:41:41:40:de:5d:ae:22:23:\
                       b0:03:61:a3:96:17:7a:9c:b4:10:ff:61:f2:00:15:ad";

    #[test]
    fn header_exact_bytes() {
        assert_eq!(
            header_json("k1").expect("header"),
            r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#
        );
        assert_eq!(
            header_json(r#"a"b\c"#).expect("header"),
            r#"{"alg":"RS256","typ":"JWT","kid":"a\"b\\c"}"#
        );
        assert_eq!(header_json(""), Err(JwtError::EmptyKid));
    }

    #[test]
    fn signing_input_exact_bytes() {
        let input = signing_input("k1", br#"{"sub":"1"}"#).expect("input");
        // base64url('{"alg":"RS256","typ":"JWT","kid":"k1"}') . base64url('{"sub":"1"}')
        assert_eq!(
            input,
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJzdWIiOiIxIn0"
        );
    }

    #[test]
    fn signing_input_with_key_index_kid_and_verbatim_payload() {
        let payload = b"{ \"b\": 2,\n  \"a\": [1, 2.50] }\n";
        let input = signing_input(KID, payload).expect("input");
        let (h, p) = input.split_once('.').expect("dot");
        assert!(!input.contains('='));
        let header = decode_b64(h).expect("h");
        assert_eq!(
            header,
            format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{KID}"}}"#).into_bytes()
        );
        assert_eq!(decode_b64(p).expect("p"), payload.to_vec());
    }

    #[test]
    fn payload_validation() {
        assert!(matches!(
            signing_input("k", b"{\"a\":"),
            Err(JwtError::PayloadNotJson { .. })
        ));
        assert!(matches!(
            signing_input("k", b"{} {}"),
            Err(JwtError::PayloadNotJson { .. })
        ));
        assert!(matches!(
            signing_input("k", b"{\"a\":\"\xff\"}"),
            Err(JwtError::PayloadNotJson { .. })
        ));
        assert_eq!(signing_input("k", b"[1]"), Err(JwtError::PayloadNotObject));
        assert_eq!(
            signing_input("k", b"\"s\""),
            Err(JwtError::PayloadNotObject)
        );
        assert_eq!(signing_input("", b"{}"), Err(JwtError::EmptyKid));
    }

    #[test]
    fn assemble_and_digest() {
        let input = signing_input("k1", b"{}").expect("input");
        let jws = assemble(&input, &[0xfb, 0xff, 0x00]);
        assert_eq!(jws, format!("{input}.-_8A"));
        assert_eq!(jws.split('.').count(), 3);
        assert_eq!(
            signing_digest(&input).to_vec(),
            Sha256::digest(input.as_bytes()).to_vec()
        );
    }

    #[test]
    fn rs256_verifies_with_rsa_crate() {
        use rsa::pkcs1v15::Pkcs1v15Sign;
        let key = crate::format::envelope::tests::test_key();
        let input = signing_input(KID, br#"{"iat":1}"#).expect("input");
        let digest = signing_digest(&input);
        let sig = key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
            .expect("sign");
        let jws = assemble(&input, &sig);
        let (si, s) = jws.rsplit_once('.').expect("dot");
        assert_eq!(si, input);
        key.to_public_key()
            .verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &signing_digest(si),
                &decode_b64(s).expect("sig"),
            )
            .expect("verifies");
    }
}
