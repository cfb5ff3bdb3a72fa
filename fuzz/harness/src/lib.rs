//! Fuzz harnesses: one function per parser of data that comes from outside the daemon (frames,
//! requests and every op's arguments, MOSIP envelopes, zero-knowledge attributes, share strings
//! and pool exports, idOS box content, certificates and public keys, `TPMT_PUBLIC`, base64 text,
//! configuration files). Each takes arbitrary bytes, must never panic, and checks what a correct
//! parser guarantees (round trips, lengths, refusals).
//!
//! `fuzz/targets` (cargo-fuzz, `make fuzz`) runs them under libFuzzer; `tests/replay.rs` replays
//! every committed corpus and crash artifact in `make test`.

use std::path::Path;

use custody_daemon::config::Config;
use custody_daemon::crypto::idos;
use custody_daemon::format::{b64, envelope, tpm_public, x509, zk};
use custody_proto::frame;
use custody_proto::{Request, Response};

/// A harness: arbitrary bytes in, a panic on a broken guarantee.
pub type Harness = fn(&[u8]);

/// Every target: its name (the cargo-fuzz target and corpus directory) and harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("frame", frame_codec),
    ("request", request),
    ("response", response),
    ("envelope", mosip_envelope),
    ("zk_attribute", zk_attribute),
    ("zk_share", zk_share),
    ("zk_export", zk_export),
    ("box_content", box_content),
    ("certificate", certificate),
    ("public_key", public_key),
    ("tpm_public", tpmt_public),
    ("base64", base64_text),
    ("config", config),
];

/// Runs the harness named `name` (panics on an unknown name).
pub fn run(name: &str, data: &[u8]) {
    let (_, h) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    h(data);
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Frame headers: the length read back equals the length written; oversize is refused.
pub fn frame_codec(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let header = [data[0], data[1], data[2], data[3]];
    let max = 1 + u32::from(data.get(4).copied().unwrap_or(0)) * 4096;
    match frame::body_len(header, max) {
        Ok(n) => {
            assert!(n as u64 <= u64::from(max));
            assert_eq!(n as u32, u32::from_be_bytes(header));
        }
        Err(_) => assert!(u32::from_be_bytes(header) > max || u32::from_be_bytes(header) == 0),
    }
    let body = &data[4..];
    if let Ok(f) = frame::encode(body, max) {
        let h = [f[0], f[1], f[2], f[3]];
        assert_eq!(frame::body_len(h, max).ok(), Some(body.len()));
        assert_eq!(&f[4..], body);
    }
}

mod typed {
    use custody_proto::ops::*;
    use custody_proto::Request;

    macro_rules! decode_args {
    ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
         |$a:ident| $access:expr); )*) => {
        /// Decodes `req`'s arguments as the op it names and computes the rights it needs.
        pub fn typed_args(req: &Request) {
            match req.op.as_str() {
                $( $name => {
                    if let Ok(a) = req.args::<$args>() {
                        let _ = <$ty as Op>::access(&a).map(|v: Vec<Access<'_>>| v.len());
                    }
                } )*
                _ => {}
            }
        }
    };
}
    custody_proto::for_each_op!(decode_args);
}
use typed::typed_args;

/// Request bodies: decoding is bounded and total; a decoded request re-encodes to a body that
/// decodes to the same request; its arguments decode (or are refused) as its op's type.
pub fn request(data: &[u8]) {
    if let Ok(req) = Request::decode(data) {
        let again = req.encode().expect("a decoded request encodes");
        let back = Request::decode(&again).expect("a re-encoded request decodes");
        assert_eq!((back.id, &back.op), (req.id, &req.op));
        typed_args(&req);
        // Every op's argument type, whatever the op field says.
        for op in custody_proto::ops::names::ALL {
            let r = Request {
                id: req.id,
                op: (*op).to_owned(),
                args: req.args.clone(),
            };
            typed_args(&r);
        }
    }
}

/// Response bodies (what a client parses).
pub fn response(data: &[u8]) {
    if let Ok(r) = Response::decode(data) {
        let again = r.encode().expect("a decoded response encodes");
        assert!(Response::decode(&again).is_ok());
    }
}

/// MOSIP `VER_R2` envelopes: a parsed envelope's parts have the layout's lengths and opening it
/// with a wrong data key fails cleanly.
pub fn mosip_envelope(data: &[u8]) {
    if let Ok(p) = envelope::parse(data) {
        assert_eq!(p.thumbprint.len(), 32);
        assert_eq!(p.wrapped_key.len(), 256);
        assert!(envelope::open_with(&p, &[7u8; 32]).is_err());
    }
}

/// Zero-knowledge attributes: the index is the first four bytes; a random key never decrypts.
pub fn zk_attribute(data: &[u8]) {
    match zk::attribute_index(data) {
        Ok(i) => {
            assert!(data.len() >= zk::OVERHEAD);
            assert_eq!(i.to_be_bytes(), data[..4]);
            let d = zk::derive(&[3u8; 32], "fuzz");
            assert!(zk::decrypt_attribute(&d, data).is_err());
        }
        Err(_) => assert!(data.len() < zk::OVERHEAD),
    }
}

/// Share strings: every parsed segment re-encodes to base64url of 288 bytes.
pub fn zk_share(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(segs) = zk::parse_share(t) {
        assert!(!segs.is_empty());
        for s in segs {
            let enc = zk::share_segment(&s.thumbprint, &s.wrapped);
            let back = zk::parse_share(&enc).expect("a re-encoded segment parses");
            assert_eq!(back, vec![s]);
        }
    }
}

/// MOSIP pool exports: rows have distinct in-range indices.
pub fn zk_export(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(rows) = zk::parse_export(t) {
        let mut seen = std::collections::HashSet::new();
        for r in rows {
            assert!(r.index <= zk::MAX_INDEX);
            assert!(seen.insert(r.index));
        }
    }
}

/// idOS box content: parsed content splits into a 24-byte nonce and a box of at least a tag;
/// a fixed key never opens random content.
pub fn box_content(data: &[u8]) {
    if let Ok(c) = idos::parse_content(data) {
        assert_eq!(c.nonce.len(), 24);
        assert!(c.boxed.len() >= 16);
        assert!(idos::open(&[9u8; 32], &[5u8; 32], &c.nonce, c.boxed).is_err());
    }
}

/// Certificates taken in (`keys.cert-import`, `keys.import`): parse or refuse, never panic.
pub fn certificate(data: &[u8]) {
    if let Ok(c) = x509::parse_certificate(data) {
        assert!(!c.der.is_empty());
    }
}

/// Public keys and certificates in PEM or DER (`keys.import`, `--to-pem`).
pub fn public_key(data: &[u8]) {
    if let Ok((spki, _)) = x509::parse_public_key(data) {
        let _ = x509::rsa2048(&spki);
    }
}

/// `TPMT_PUBLIC` as a TPM returns it.
pub fn tpmt_public(data: &[u8]) {
    if let Ok(p) = tpm_public::parse(data) {
        let _ = p.to_spki_der();
    }
}

/// Base64 text as MOSIP writes and reads it: decoded bytes re-encode to base64url that decodes
/// to the same bytes.
pub fn base64_text(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(b) = b64::decode_b64(t) {
        assert_eq!(b64::decode_b64(&b64::encode_b64url(&b)).ok(), Some(b));
    }
}

/// Configuration files: parse or refuse with an error naming the file, never panic.
pub fn config(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = Config::parse(t, Path::new("fuzz.toml"));
}
