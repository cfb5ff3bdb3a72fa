//! Interop of the Rust `VER_R2` envelope with an independent Python implementation
//! (`tests/interop/mosip_envelope.py`, `cryptography` package), both ways.
//!
//! Requires `openssl`, `python3` and the Python `cryptography` package; the test fails (does not
//! skip) when any of them is missing.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use custody_daemon::format::b64::{decode_b64, encode_b64url};
use custody_daemon::format::envelope::{self, EnvelopeError};
use custody_daemon::format::thumbprint::thumbprint;
use custody_testkit::{
    openssl_keypair, path_str, python, require_python_cryptography, KeyPair, MOSIP_ENVELOPE_PY,
};
use rand::rngs::OsRng;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;

struct Fixture {
    dir: tempfile::TempDir,
    pair: KeyPair,
    key: RsaPrivateKey,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn new() -> Self {
        require_python_cryptography();
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = openssl_keypair(dir.path(), "openssl", 2048);
        let pem = std::fs::read_to_string(&pair.key).expect("read key");
        let key = RsaPrivateKey::from_pkcs8_pem(&pem).expect("parse openssl key");
        Fixture { dir, pair, key }
    }

    fn python(&self, args: &[&str], input: &Path, output: &Path) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--in", path_str(input), "--out", path_str(output)]);
        python(MOSIP_ENVELOPE_PY, &all)
    }

    fn python_seal(&self, plaintext: &[u8], base64: bool) -> Vec<u8> {
        let (pt, env) = (self.path("py-pt"), self.path("py-env"));
        std::fs::write(&pt, plaintext).expect("write");
        let mut args = vec!["seal", "--pub", path_str(&self.pair.public_pem)];
        if base64 {
            args.push("--base64");
        }
        let out = self.python(&args, &pt, &env);
        assert!(
            out.status.success(),
            "python seal failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&env).expect("read envelope")
    }

    fn python_open(&self, envelope: &[u8], base64: bool) -> Result<Vec<u8>, String> {
        let (env, pt) = (self.path("rs-env"), self.path("rs-pt"));
        let _ = std::fs::remove_file(&pt);
        std::fs::write(&env, envelope).expect("write");
        let mut args = vec!["open", "--key", path_str(&self.pair.key)];
        if base64 {
            args.push("--base64");
        }
        let out = self.python(&args, &env, &pt);
        if out.status.success() {
            Ok(std::fs::read(&pt).expect("read plaintext"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn rust_open(&self, envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let parsed = envelope::parse(envelope)?;
        assert_eq!(parsed.thumbprint, &thumbprint(&self.pair.public_der));
        let data_key = zeroize::Zeroizing::new(
            self.key
                .decrypt(Oaep::new::<Sha256>(), parsed.wrapped_key)
                .expect("RSA-OAEP-SHA256 unwrap"),
        );
        envelope::open_with(&parsed, &data_key).map(|p| p.to_vec())
    }
}

fn plaintexts() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"{\"uin\":\"1234567890\"}".to_vec(),
        (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect(),
    ]
}

#[test]
fn envelope_interop_python_and_rust() {
    let fx = Fixture::new();

    for pt in plaintexts() {
        // Python seals, Rust opens (binary and base64url wire form).
        let env = fx.python_seal(&pt, false);
        assert_eq!(env.len(), 6 + 32 + 256 + 14 + 32 + pt.len() + 16);
        assert_eq!(fx.rust_open(&env).expect("rust opens python envelope"), pt);

        let wire = fx.python_seal(&pt, true);
        let text = std::str::from_utf8(&wire).expect("ascii");
        assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
        let env = decode_b64(text).expect("base64url");
        assert_eq!(fx.rust_open(&env).expect("rust opens python b64"), pt);

        // Rust seals, Python opens (binary and base64url).
        let env = envelope::seal_to_public_key(&pt, &fx.pair.public_der).expect("seal");
        assert_eq!(
            fx.python_open(&env, false)
                .expect("python opens rust envelope"),
            pt
        );
        let wire = encode_b64url(&env);
        assert_eq!(
            fx.python_open(wire.as_bytes(), true)
                .expect("python opens rust b64"),
            pt
        );
    }
}

#[test]
fn python_rejects_tampered_rust_envelope_and_accepts_rewrapped() {
    let fx = Fixture::new();
    let pt = b"re-targeted without touching the body".to_vec();
    let env = envelope::seal_to_public_key(&pt, &fx.pair.public_der).expect("seal");

    // Tag tamper: both sides refuse.
    let mut bad = env.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let err = fx.python_open(&bad, false).expect_err("python must refuse");
    assert!(err.contains("integrity"), "{err}");
    assert_eq!(fx.rust_open(&bad), Err(EnvelopeError::Integrity));

    // Wrong thumbprint: python refuses before decrypting.
    let parsed = envelope::parse(&env).expect("parse");
    let wrong = envelope::rewrap(&env, &[0u8; 32], parsed.wrapped_key).expect("rewrap");
    let err = fx
        .python_open(&wrong, false)
        .expect_err("python must refuse");
    assert!(err.contains("thumbprint"), "{err}");

    // Rewrap with a fresh OAEP encryption of the same data key: body untouched, Python opens it.
    let data_key = zeroize::Zeroizing::new(
        fx.key
            .decrypt(Oaep::new::<Sha256>(), parsed.wrapped_key)
            .expect("unwrap"),
    );
    let new_wrapped = fx
        .key
        .to_public_key()
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &data_key[..])
        .expect("wrap");
    let rewrapped =
        envelope::rewrap(&env, &thumbprint(&fx.pair.public_der), &new_wrapped).expect("rewrap");
    assert_ne!(rewrapped, env);
    assert_eq!(&rewrapped[6 + 32 + 256..], &env[6 + 32 + 256..]);
    assert_eq!(fx.python_open(&rewrapped, false).expect("python opens"), pt);
}
