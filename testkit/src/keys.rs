//! Keys through the daemon, as the end-to-end tests read them: created and shown with the CLI,
//! public keys through the CLI or the library, version states, thumbprints.

use std::path::PathBuf;

use custody_client::BlockingClient;
use custody_proto::ops::{names, PublicKeyArgs, PublicKeyResult};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value as Json;
use sha2::Sha256;

use crate::cli::{cli_json, cli_ok};
use crate::daemon::Daemon;
use crate::data::{b64url_decode, file, path_str, read, sha256};

/// `custody keys create NAME --kind KIND --backend pkcs11`, checking the answer (name, kind,
/// backend, version 1); the key as JSON.
pub fn create_pkcs11(d: &Daemon, name: &str, kind: &str) -> Json {
    let k = cli_json(
        d,
        &[
            "keys",
            "create",
            name,
            "--kind",
            kind,
            "--backend",
            "pkcs11",
        ],
    );
    assert_eq!(k["name"], name, "{k}");
    assert_eq!(k["kind"], kind, "{k}");
    assert_eq!(k["backend"], "pkcs11", "{k}");
    assert_eq!(k["current_version"], 1, "{k}");
    k
}

/// `custody keys create NAME --kind KIND --backend software --master MASTER`, checking the
/// answer (kind, backend, version 1 with a thumbprint for x25519/ed25519); the key as JSON.
pub fn create_software(d: &Daemon, name: &str, kind: &str, master: &str) -> Json {
    let k = cli_json(
        d,
        &[
            "keys",
            "create",
            name,
            "--kind",
            kind,
            "--backend",
            "software",
            "--master",
            master,
        ],
    );
    assert_eq!(k["kind"], kind, "{k}");
    assert_eq!(k["backend"], "software", "{k}");
    assert_eq!(k["current_version"], 1, "{k}");
    k
}

/// `custody --json keys show NAME`.
pub fn show(d: &Daemon, name: &str) -> Json {
    cli_json(d, &["keys", "show", name])
}

/// `[(version, state)]` of a KeyInfo JSON.
pub fn states(k: &Json) -> Vec<(u64, String)> {
    k["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions: {k}"))
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `[(version, state)]` written out, to compare with [`states`].
pub fn st(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(v, s)| (*v, s.to_string())).collect()
}

/// The thumbprint of a version from `keys public --json`, checked against SHA-256 of the DER.
pub fn thumb(d: &Daemon, name: &str, version: u32) -> Vec<u8> {
    let v = version.to_string();
    let j = cli_json(
        d,
        &["keys", "public", name, "--version", &v, "--format", "der"],
    );
    assert_eq!(j["version"], version, "{j}");
    let der = b64url_decode(j["data"].as_str().unwrap());
    let t = hex::decode(j["thumbprint"].as_str().unwrap()).unwrap();
    assert_eq!(t, sha256(&der), "thumbprint is SHA-256 of the DER SPKI");
    t
}

/// Writes the PEM of a version (`keys public --format pem --out`) to `DIR/NAME-vN.pem`; its path.
pub fn pem(d: &Daemon, name: &str, version: u32) -> PathBuf {
    let f = file(d, &format!("{name}-v{version}.pem"));
    let v = version.to_string();
    cli_ok(
        d,
        &[
            "keys",
            "public",
            name,
            "--version",
            &v,
            "--format",
            "pem",
            "--out",
            path_str(&f),
        ],
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{text}");
    f
}

/// Writes the current public key in `format` (`pem`, `der`, `tpmt`) to `DIR/out` with the CLI;
/// its bytes.
pub fn cli_public(d: &Daemon, name: &str, format: &str, out: &str) -> Vec<u8> {
    let p = file(d, out);
    cli_ok(
        d,
        &[
            "keys",
            "public",
            name,
            "--format",
            format,
            "--out",
            path_str(&p),
        ],
    );
    read(&p)
}

/// `keys.public` of the current version through the library.
pub fn public(c: &BlockingClient, name: &str, format: &str) -> PublicKeyResult {
    c.call_untyped(
        names::KEYS_PUBLIC,
        &PublicKeyArgs {
            name: name.into(),
            version: None,
            format: Some(format.into()),
        },
    )
    .unwrap_or_else(|e| panic!("keys.public {name} {format}: {e}"))
}

/// The current RSA public key of `name` (DER through the library).
pub fn rsa_public(c: &BlockingClient, name: &str) -> RsaPublicKey {
    RsaPublicKey::from_public_key_der(&public(c, name, "der").data).expect("DER SPKI")
}

/// Asserts `sig` is a 256-byte RSASSA-PKCS1-v1_5/SHA-256 signature of `digest` by `key`.
pub fn verify_pkcs1(key: &RsaPublicKey, digest: &[u8], sig: &[u8]) {
    assert_eq!(sig.len(), 256);
    key.verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig)
        .expect("RSASSA-PKCS1-v1_5/SHA-256 signature verifies");
}

/// Labels of the objects on the daemon's token, by `pkcs11-tool --list-objects`.
pub fn token_labels(d: &Daemon) -> Vec<String> {
    d.hsm().expect("daemon has a token").object_labels()
}

/// The user PIN (and any `extra` secrets) never appear in the daemon's stderr or audit log.
pub fn assert_no_pin(d: &Daemon, extra: &[&str]) {
    let pin = d.hsm().expect("token").pin();
    assert!(pin.len() >= 8, "PIN {pin:?} too short to search for");
    let audit = std::fs::read_to_string(d.audit_path()).unwrap_or_default();
    let err = d.stderr();
    for secret in std::iter::once(pin.as_str()).chain(extra.iter().copied()) {
        assert!(
            !err.contains(secret),
            "the PIN appears in the daemon's stderr"
        );
        assert!(!audit.contains(secret), "the PIN appears in the audit log");
    }
}
