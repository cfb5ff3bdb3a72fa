//! End-to-end tests of the PKCS#11 key registry: every test initialises its own SoftHSM token and
//! starts its own `custodyd`, then drives it with the `custody` CLI (and, for the load test, the
//! async client). Results are checked with independent tools: `openssl` (OAEP encryption,
//! signature verification, external key pairs), the Python MOSIP envelope implementation in
//! `tests/interop/mosip_envelope.py` and `pkcs11-tool` (objects on the token). Nothing is skipped:
//! a missing SoftHSM, openssl, python3 or pkcs11-tool fails the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use custody_e2e::proto::ops::{
    names, OpenArgs, PlaintextResult, PublicKeyArgs, PublicKeyResult, SealArgs, SealResult,
    SignArgs, SignResult, UnwrapArgs,
};
use custody_e2e::proto::ErrorCode;
use custody_e2e::*;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const ENVELOPE_TOOL: &str = "tests/interop/mosip_envelope.py";

// ---------------------------------------------------------------------------------------------
// helpers

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs an external tool (60 s limit) and asserts it succeeded.
fn run_ok(cmd: &mut Command) -> Output {
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `custody ARGS…`, asserting success.
fn cli_ok(d: &Daemon, args: &[&str]) -> Output {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "custody {args:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `custody --json ARGS…`, asserting success; the parsed JSON.
fn cli_json(d: &Daemon, args: &[&str]) -> Json {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = cli_ok(d, &a);
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("custody {args:?}: not JSON ({e}): {}", stdout(&out)))
}

/// The CLI's exit code for a server error code (`10 + position in ErrorCode::ALL`).
fn exit_code_of(code: ErrorCode) -> i32 {
    10 + ErrorCode::ALL.iter().position(|c| *c == code).unwrap() as i32
}

/// `custody ARGS…` must fail with `code`: checks the exit code and the `custody: CODE:` line.
/// Returns the error message.
fn cli_err(d: &Daemon, args: &[&str], code: ErrorCode) -> String {
    let out = d.cli(args);
    assert_eq!(
        out.status.code(),
        Some(exit_code_of(code)),
        "custody {args:?}: expected {} (exit {}), got {}: {}{}",
        code.as_str(),
        exit_code_of(code),
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let prefix = format!("custody: {}: ", code.as_str());
    let err = stderr(&out);
    assert!(err.starts_with(&prefix), "custody {args:?}: stderr {err:?}");
    err[prefix.len()..].trim_end().to_owned()
}

fn file(d: &Daemon, name: &str) -> PathBuf {
    d.dir().join(name)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn write(d: &Daemon, name: &str, data: &[u8]) -> PathBuf {
    let f = file(d, name);
    std::fs::write(&f, data).expect("write test file");
    f
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn random(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("urandom");
    buf
}

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim())
        .unwrap_or_else(|e| panic!("not base64url ({e}): {s}"))
}

fn create(d: &Daemon, name: &str, kind: &str) -> Json {
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

fn show(d: &Daemon, name: &str) -> Json {
    cli_json(d, &["keys", "show", name])
}

/// `[(version, state)]` of a KeyInfo JSON.
fn states(k: &Json) -> Vec<(u64, String)> {
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

fn st(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(v, s)| (*v, s.to_string())).collect()
}

/// The thumbprint of a version from `keys public --json`, checked against SHA-256 of the DER.
fn thumb(d: &Daemon, name: &str, version: u32) -> Vec<u8> {
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

/// Writes the PEM of a version (`keys public --format pem --out`); returns its path.
fn pem(d: &Daemon, name: &str, version: u32) -> PathBuf {
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
            p(&f),
        ],
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{text}");
    f
}

/// RSA-OAEP(SHA-256, MGF1-SHA-256, empty label) encryption by openssl.
fn openssl_oaep(d: &Daemon, pem: &Path, data: &[u8]) -> Vec<u8> {
    let n = random(6);
    let input = write(d, &format!("oaep-in-{}", hex::encode(&n)), data);
    let output = file(d, &format!("oaep-out-{}", hex::encode(&n)));
    run_ok(Command::new("openssl").args([
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        p(pem),
        "-in",
        p(&input),
        "-out",
        p(&output),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ]));
    let ct = read(&output);
    assert_eq!(ct.len(), 256);
    ct
}

/// An external RSA-2048 key pair made by openssl: (private PEM, public PEM, public DER).
fn external_keypair(d: &Daemon, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = file(d, &format!("{name}.key.pem"));
    let pubf = file(d, &format!("{name}.pub.pem"));
    let der = file(d, &format!("{name}.pub.der"));
    run_ok(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p(&key),
    ]));
    run_ok(Command::new("openssl").args(["pkey", "-in", p(&key), "-pubout", "-out", p(&pubf)]));
    run_ok(Command::new("openssl").args([
        "pkey",
        "-in",
        p(&key),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        p(&der),
    ]));
    let der = read(&der);
    (key, pubf, der)
}

/// `python3 tests/interop/mosip_envelope.py ARGS…`.
fn py_envelope(args: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_root().join(ENVELOPE_TOOL)).args(args);
    run_ok(&mut c)
}

/// Labels of the objects on the daemon's token, by `pkcs11-tool --list-objects`.
fn token_labels(d: &Daemon) -> Vec<String> {
    let h = d.hsm().expect("daemon has a token");
    let pin = h.pin();
    let out = run_ok(
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &h.conf)
            .args([
                "--module",
                SOFTHSM_MODULE,
                "--token-label",
                &h.label,
                "--login",
                "--pin",
                &pin,
                "--list-objects",
            ]),
    );
    stdout(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The user PIN (and any `extra` secrets) never appear in the daemon's stderr or audit log.
fn assert_no_pin(d: &Daemon, extra: &[&str]) {
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

fn status_backend(d: &Daemon, name: &str) -> Json {
    let s = cli_json(d, &["status"]);
    s["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends: {s}"))
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name}: {s}"))
        .clone()
}

fn flip(mut b: Vec<u8>, i: usize) -> Vec<u8> {
    b[i] ^= 0x01;
    b
}

fn hsm_daemon() -> Daemon {
    DaemonBuilder::new().with_hsm().start()
}

// ---------------------------------------------------------------------------------------------
// 1. unwrap

#[test]
fn unwrap_openssl_wrapped_keys_by_thumbprint_and_version() {
    let mut d = hsm_daemon();
    create(&d, "ida", "rsa2048-oaep");
    let pem1 = pem(&d, "ida", 1);
    let t1 = thumb(&d, "ida", 1);

    // A bare 256-byte wrapped key (current version).
    let dk1 = random(32);
    let ct1 = openssl_oaep(&d, &pem1, &dk1);
    let w = write(&d, "ct1.bin", &ct1);
    let out = file(&d, "dk1.out");
    cli_ok(&d, &["unwrap", "ida", "--in", p(&w), "--out", p(&out)]);
    assert_eq!(read(&out), dk1);
    // Through stdin/stdout too.
    let o = d.cli_stdin(&["unwrap", "ida", "--in", "-"], &ct1);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, dk1);

    // Rotate: v2 becomes current; 288-byte inputs pick their version by thumbprint.
    let k = cli_json(&d, &["keys", "rotate", "ida"]);
    assert_eq!(k["current_version"], 2, "{k}");
    let pem2 = pem(&d, "ida", 2);
    let t2 = thumb(&d, "ida", 2);
    assert_ne!(t1, t2);
    let dk2 = random(32);
    let ct2 = openssl_oaep(&d, &pem2, &dk2);

    let w1 = write(&d, "w1.bin", &[t1.clone(), ct1.clone()].concat());
    let w2 = write(&d, "w2.bin", &[t2.clone(), ct2.clone()].concat());
    assert_eq!(read(&w1).len(), 288);
    let j = cli_json(&d, &["unwrap", "ida", "--in", p(&w1)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk1);
    let j = cli_json(&d, &["unwrap", "ida", "--in", p(&w2)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk2);

    // A bare 256-byte key now goes to the current version (v2): v1's ciphertext fails OAEP.
    cli_err(&d, &["unwrap", "ida", "--in", p(&w)], ErrorCode::Integrity);
    let w2bare = write(&d, "ct2.bin", &ct2);
    let j = cli_json(&d, &["unwrap", "ida", "--in", p(&w2bare)]);
    assert_eq!(j["version"], 2, "{j}");

    // --thumbprint (a 4-byte prefix, and the full 32 bytes) and --version select v1.
    let prefix = hex::encode(&t1[..4]);
    let j = cli_json(
        &d,
        &["unwrap", "ida", "--in", p(&w), "--thumbprint", &prefix],
    );
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk1);
    let full = hex::encode(&t1);
    let out = file(&d, "dk1b.out");
    cli_ok(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            p(&w),
            "--thumbprint",
            &full,
            "--out",
            p(&out),
        ],
    );
    assert_eq!(read(&out), dk1);
    let j = cli_json(&d, &["unwrap", "ida", "--in", p(&w), "--version", "1"]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk1);
    // `version` wins over the embedded thumbprint (no consistency check): v2 cannot open it.
    cli_err(
        &d,
        &["unwrap", "ida", "--in", p(&w1), "--version", "2"],
        ErrorCode::Integrity,
    );

    // Wrong thumbprints → not_found; a version that does not exist → not_found.
    let bogus = random(32);
    let wb = write(&d, "wb.bin", &[bogus.clone(), ct1.clone()].concat());
    cli_err(&d, &["unwrap", "ida", "--in", p(&wb)], ErrorCode::NotFound);
    cli_err(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            p(&w),
            "--thumbprint",
            &hex::encode(&bogus),
        ],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &["unwrap", "ida", "--in", p(&w), "--version", "9"],
        ErrorCode::NotFound,
    );
    // Bad lengths → bad_request.
    let short = write(&d, "short.bin", &ct1[..255]);
    cli_err(
        &d,
        &["unwrap", "ida", "--in", p(&short)],
        ErrorCode::BadRequest,
    );
    let thirty_three = hex::encode([0u8; 33]);
    cli_err(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            p(&w),
            "--thumbprint",
            &thirty_three,
        ],
        ErrorCode::BadRequest,
    );

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 2. signatures

#[test]
fn hsm_signatures_verify_with_openssl() {
    let mut d = hsm_daemon();
    create(&d, "signer", "rsa2048-sign");
    let pubf = pem(&d, "signer", 1);
    let data = write(&d, "data.bin", &random(5000));
    let tampered = write(&d, "tampered.bin", &flip(read(&data), 17));

    let verify = |sig: &Path, data: &Path, pss: bool| -> bool {
        let mut c = Command::new("openssl");
        c.args(["dgst", "-sha256"]);
        if pss {
            c.args([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sigopt",
                "rsa_mgf1_md:sha256",
            ]);
        }
        c.args(["-verify", p(&pubf), "-signature", p(sig), p(data)]);
        run_with_timeout(&mut c, Duration::from_secs(30))
            .status
            .success()
    };

    // PKCS#1 v1.5 (default scheme).
    let sig = file(&d, "sig.pkcs1");
    cli_ok(&d, &["sign", "signer", "--in", p(&data), "--out", p(&sig)]);
    assert_eq!(read(&sig).len(), 256);
    assert!(
        verify(&sig, &data, false),
        "pkcs1v15 signature does not verify"
    );
    assert!(!verify(&sig, &tampered, false), "verifies over other data");
    assert!(
        !verify(&sig, &data, true),
        "a PKCS#1 v1.5 signature verifies as PSS"
    );
    // Deterministic: the prehashed form gives the same signature.
    let digest = write(&d, "digest.bin", &sha256(&read(&data)));
    let sig2 = file(&d, "sig2.pkcs1");
    cli_ok(
        &d,
        &[
            "sign",
            "signer",
            "--in",
            p(&digest),
            "--prehashed",
            "--out",
            p(&sig2),
        ],
    );
    assert_eq!(read(&sig2), read(&sig));

    // PSS (SHA-256, MGF1-SHA-256, salt 32).
    let sig = file(&d, "sig.pss");
    cli_ok(
        &d,
        &[
            "sign",
            "signer",
            "--scheme",
            "pss",
            "--in",
            p(&data),
            "--out",
            p(&sig),
        ],
    );
    assert_eq!(read(&sig).len(), 256);
    assert!(verify(&sig, &data, true), "PSS signature does not verify");
    assert!(!verify(&sig, &tampered, true));
    assert!(!verify(&sig, &data, false));
    let sig3 = file(&d, "sig3.pss");
    cli_ok(
        &d,
        &[
            "sign",
            "signer",
            "--scheme",
            "pss",
            "--prehashed",
            "--in",
            p(&digest),
            "--out",
            p(&sig3),
        ],
    );
    assert!(verify(&sig3, &data, true), "prehashed PSS does not verify");
    assert_ne!(read(&sig3), read(&sig), "PSS is randomised");

    // --json reports the version; after a rotation v2 signs and verifies with v2's key only.
    let j = cli_json(&d, &["sign", "signer", "--in", p(&data)]);
    assert_eq!(j["version"], 1, "{j}");
    cli_ok(&d, &["keys", "rotate", "signer"]);
    let j = cli_json(&d, &["sign", "signer", "--in", p(&data)]);
    assert_eq!(j["version"], 2, "{j}");
    let sig4 = write(&d, "sig4", &b64url_decode(j["signature"].as_str().unwrap()));
    assert!(
        !verify(&sig4, &data, false),
        "v2 signature verifies with v1"
    );
    let pub2 = pem(&d, "signer", 2);
    let out = run_with_timeout(
        Command::new("openssl").args([
            "dgst",
            "-sha256",
            "-verify",
            p(&pub2),
            "-signature",
            p(&sig4),
            p(&data),
        ]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "v2 signature: {out:?}");

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 3. envelope interop

#[test]
fn envelopes_interoperate_with_python_mosip_implementation() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .extra(
            "[[keys.declare]]\nname = \"ida-partner\"\nkind = \"rsa2048-oaep\"\nbackend = \"pkcs11\"\n",
        )
        .start();
    // The declared key exists at start-up.
    let k = show(&d, "ida-partner");
    assert_eq!(k["kind"], "rsa2048-oaep", "{k}");
    assert_eq!(states(&k), st(&[(1, "active")]));
    let pubf = pem(&d, "ida-partner", 1);
    let t1 = thumb(&d, "ida-partner", 1);

    for (i, plain) in [random(3000), Vec::new(), b"x".to_vec()].iter().enumerate() {
        let plainf = write(&d, &format!("plain{i}"), plain);
        // Python seals to the daemon's key (binary) → the daemon opens.
        let env = file(&d, &format!("py{i}.env"));
        py_envelope(&[
            "seal",
            "--pub",
            p(&pubf),
            "--in",
            p(&plainf),
            "--out",
            p(&env),
        ]);
        let envb = read(&env);
        assert_eq!(envb.len(), 356 + plain.len());
        assert_eq!(&envb[6..38], &t1[..]);
        let out = file(&d, &format!("py{i}.out"));
        cli_ok(
            &d,
            &[
                "envelope",
                "open",
                "ida-partner",
                "--in",
                p(&env),
                "--out",
                p(&out),
            ],
        );
        assert_eq!(&read(&out), plain);

        // Python seals base64url → the daemon opens with --base64.
        let env64 = file(&d, &format!("py{i}.env64"));
        py_envelope(&[
            "seal",
            "--pub",
            p(&pubf),
            "--in",
            p(&plainf),
            "--out",
            p(&env64),
            "--base64",
        ]);
        let out = file(&d, &format!("py{i}.out64"));
        cli_ok(
            &d,
            &[
                "envelope",
                "open",
                "ida-partner",
                "--base64",
                "--in",
                p(&env64),
                "--out",
                p(&out),
            ],
        );
        assert_eq!(&read(&out), plain);
    }

    // The daemon seals to an external key made by openssl → Python opens with the private key.
    let (key, extpub, extder) = external_keypair(&d, "partner");
    let plain = random(2048);
    let plainf = write(&d, "ext.plain", &plain);
    let env = file(&d, "ext.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            p(&extpub),
            "--in",
            p(&plainf),
            "--out",
            p(&env),
        ],
    );
    let envb = read(&env);
    assert_eq!(&envb[..6], b"VER_R2");
    assert_eq!(
        &envb[6..38],
        &sha256(&extder)[..],
        "thumbprint of the external SPKI"
    );
    assert_eq!(&envb[294..308], b"#KEY_SPLITTER#");
    assert_eq!(envb.len(), 356 + plain.len());
    let out = file(&d, "ext.out");
    py_envelope(&["open", "--key", p(&key), "--in", p(&env), "--out", p(&out)]);
    assert_eq!(read(&out), plain);
    // Base64url form, and --json (no version for an external key).
    let env64 = file(&d, "ext.env64");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            p(&extpub),
            "--base64",
            "--in",
            p(&plainf),
            "--out",
            p(&env64),
        ],
    );
    let text = std::fs::read_to_string(&env64).unwrap();
    assert!(
        !text.contains('=') && !text.contains('+') && !text.contains('/'),
        "not base64url without padding: {text}"
    );
    let out = file(&d, "ext.out64");
    py_envelope(&[
        "open",
        "--key",
        p(&key),
        "--in",
        p(&env64),
        "--out",
        p(&out),
        "--base64",
    ]);
    assert_eq!(read(&out), plain);
    let j = cli_json(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            p(&extpub),
            "--in",
            p(&plainf),
        ],
    );
    assert!(j["version"].is_null(), "{j}");
    assert_eq!(j["thumbprint"], hex::encode(sha256(&extder)), "{j}");

    // The daemon seals to its named key → the daemon opens it.
    let env = file(&d, "named.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-partner",
            "--in",
            p(&plainf),
            "--out",
            p(&env),
        ],
    );
    assert_eq!(&read(&env)[6..38], &t1[..]);
    let j = cli_json(&d, &["envelope", "open", "ida-partner", "--in", p(&env)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    // Each seal uses a fresh data key and AAD.
    let env2 = file(&d, "named2.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-partner",
            "--in",
            p(&plainf),
            "--out",
            p(&env2),
        ],
    );
    assert_ne!(read(&env)[38..340], read(&env2)[38..340]);

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 4. rotation, retire, destroy

#[test]
fn rotation_retire_destroy_and_token_objects() {
    let mut d = hsm_daemon();
    create(&d, "rot", "rsa2048-oaep");
    let t1 = thumb(&d, "rot", 1);
    let plain = random(500);
    let plainf = write(&d, "plain", &plain);
    let env1 = file(&d, "v1.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "rot",
            "--in",
            p(&plainf),
            "--out",
            p(&env1),
        ],
    );
    let j = cli_json(&d, &["envelope", "seal", "rot", "--in", p(&plainf)]);
    assert_eq!(j["version"], 1, "{j}");

    let k = cli_json(&d, &["keys", "rotate", "rot"]);
    assert_eq!(k["current_version"], 2, "{k}");
    assert_eq!(states(&k), st(&[(1, "decrypt-only"), (2, "active")]));
    let t2 = thumb(&d, "rot", 2);
    assert_ne!(t1, t2);

    // Old envelopes still open, reporting version 1.
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", p(&env1)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    // New seals use version 2 and carry its thumbprint.
    let j = cli_json(&d, &["envelope", "seal", "rot", "--in", p(&plainf)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["thumbprint"], hex::encode(&t2), "{j}");
    let env2b = b64url_decode(j["envelope"].as_str().unwrap());
    assert_eq!(&env2b[6..38], &t2[..]);
    let env2 = write(&d, "v2.env", &env2b);
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", p(&env2)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Human `keys show`.
    let o = cli_ok(&d, &["keys", "show", "rot"]);
    let text = stdout(&o);
    assert!(text.contains("current=v2"), "{text}");
    assert!(text.contains("v1  decrypt-only"), "{text}");
    assert!(text.contains("v2  active"), "{text}");
    assert!(text.contains(&hex::encode(&t1)), "{text}");

    // Both versions are on the token.
    let labels = token_labels(&d);
    assert!(labels.iter().any(|l| l == "custodyd:rot:v1"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");

    // The current version can be neither retired nor destroyed.
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "2"],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "destroy", "rot", "--version", "2"],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "3"],
        ErrorCode::NotFound,
    );

    // Retire v1: old envelopes are refused with key_retired; v2 keeps working.
    let k = cli_json(&d, &["keys", "retire", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "retired"), (2, "active")]));
    cli_err(
        &d,
        &["envelope", "open", "rot", "--in", p(&env1)],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", p(&env2)]);
    assert_eq!(j["version"], 2, "{j}");
    // Retiring again is a no-op success.
    let k = cli_json(&d, &["keys", "retire", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "retired"), (2, "active")]));
    // The retired object is still on the token.
    assert!(token_labels(&d).iter().any(|l| l == "custodyd:rot:v1"));

    // Destroy v1: state destroyed, the object is gone from the token, v2's remains.
    let k = cli_json(&d, &["keys", "destroy", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "destroyed"), (2, "active")]));
    assert_eq!(
        states(&show(&d, "rot")),
        st(&[(1, "destroyed"), (2, "active")])
    );
    let labels = token_labels(&d);
    assert!(
        !labels.iter().any(|l| l == "custodyd:rot:v1"),
        "v1 still on the token: {labels:?}"
    );
    assert!(labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");
    // The recorded public key of v1 is still returned.
    assert_eq!(thumb(&d, "rot", 1), t1);
    // Further use of v1 and a second retire/destroy → key_retired.
    cli_err(
        &d,
        &["envelope", "open", "rot", "--in", p(&env1)],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "1"],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["keys", "destroy", "rot", "--version", "1"],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", p(&env2)]);
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Destroying a decrypt-only version directly (no retire first) also works.
    cli_ok(&d, &["keys", "rotate", "rot"]);
    let k = cli_json(&d, &["keys", "destroy", "rot", "--version", "2"]);
    assert_eq!(
        states(&k),
        st(&[(1, "destroyed"), (2, "destroyed"), (3, "active")])
    );
    let labels = token_labels(&d);
    assert!(!labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "custodyd:rot:v3"), "{labels:?}");

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 5. rewrap

#[test]
fn rewrap_retargets_wrapped_keys_and_envelopes() {
    let mut d = hsm_daemon();
    create(&d, "ida-a", "rsa2048-oaep");
    create(&d, "ida-b", "rsa2048-oaep");
    create(&d, "signer", "rsa2048-sign");
    let ta = thumb(&d, "ida-a", 1);
    let tb = thumb(&d, "ida-b", 1);
    let pema = pem(&d, "ida-a", 1);

    let dk = random(32);
    let ct = openssl_oaep(&d, &pema, &dk);
    let forbidden: Vec<String> = vec![
        hex::encode(&dk),
        b64url(&dk),
        base64::engine::general_purpose::STANDARD.encode(&dk),
    ];
    let check_no_dk = |o: &Output| {
        for out in [&o.stdout, &o.stderr] {
            assert!(
                !out.windows(dk.len()).any(|w| w == dk.as_slice()),
                "the data key appears in rewrap's output"
            );
            let text = String::from_utf8_lossy(out);
            for f in &forbidden {
                assert!(!text.contains(f.as_str()), "encoded data key in output");
            }
        }
    };

    // Wrapped key thumbprint(A) ‖ 256 → B; B unwraps it to the same data key.
    for (name, input) in [
        ("wa288", [ta.clone(), ct.clone()].concat()),
        ("wa256", ct.clone()),
    ] {
        let inf = write(&d, name, &input);
        let outf = file(&d, &format!("{name}.to-b"));
        let o = cli_ok(
            &d,
            &[
                "rewrap",
                "ida-a",
                "--in",
                p(&inf),
                "--to",
                "ida-b",
                "--out",
                p(&outf),
            ],
        );
        check_no_dk(&o);
        let w = read(&outf);
        assert_eq!(w.len(), 288, "{name}");
        assert_eq!(&w[..32], &tb[..], "{name}");
        let o = cli_ok(&d, &["unwrap", "ida-b", "--in", p(&outf)]);
        assert_eq!(o.stdout, dk, "{name}");
        // --json form.
        let o = cli_ok(
            &d,
            &[
                "--json",
                "rewrap",
                "ida-a",
                "--in",
                p(&inf),
                "--to",
                "ida-b",
            ],
        );
        check_no_dk(&o);
        let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(j["form"], "wrapped_key", "{j}");
        assert_eq!(j["version"], 1, "{j}");
        assert_eq!(j["thumbprint"], hex::encode(&tb), "{j}");
    }

    // An envelope for A re-targeted to an external public key opens in Python.
    let (key, extpub, extder) = external_keypair(&d, "partner");
    let plain = random(1500);
    let plainf = write(&d, "plain", &plain);
    let env = file(&d, "a.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-a",
            "--in",
            p(&plainf),
            "--out",
            p(&env),
        ],
    );
    let ext_env = file(&d, "ext.env");
    let o = cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            p(&env),
            "--to-pem",
            p(&extpub),
            "--out",
            p(&ext_env),
        ],
    );
    check_no_dk(&o);
    let e_in = read(&env);
    let e_out = read(&ext_env);
    assert_eq!(e_out.len(), e_in.len());
    assert_eq!(&e_out[6..38], &sha256(&extder)[..]);
    assert_eq!(
        &e_out[294..],
        &e_in[294..],
        "AAD, ciphertext and tag are copied"
    );
    let out = file(&d, "ext.out");
    py_envelope(&[
        "open",
        "--key",
        p(&key),
        "--in",
        p(&ext_env),
        "--out",
        p(&out),
    ]);
    assert_eq!(read(&out), plain);
    let j = cli_json(
        &d,
        &["rewrap", "ida-a", "--in", p(&env), "--to-pem", p(&extpub)],
    );
    assert_eq!(j["form"], "envelope", "{j}");
    assert!(j["version"].is_null(), "{j}");
    // The base64url round trip: envelope in and out as base64url.
    let env64 = write(&d, "a.env64", b64url(&e_in).as_bytes());
    let outb64 = file(&d, "b.env64");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--base64",
            "--in",
            p(&env64),
            "--to",
            "ida-b",
            "--out",
            p(&outb64),
        ],
    );
    let out = file(&d, "b.out");
    cli_ok(
        &d,
        &[
            "envelope",
            "open",
            "ida-b",
            "--base64",
            "--in",
            p(&outb64),
            "--out",
            p(&out),
        ],
    );
    assert_eq!(read(&out), plain);

    // Rotation re-wrap: an old envelope → the same key, now v2.
    cli_ok(&d, &["keys", "rotate", "ida-a"]);
    let ta2 = thumb(&d, "ida-a", 2);
    let o = cli_ok(
        &d,
        &[
            "--json",
            "rewrap",
            "ida-a",
            "--in",
            p(&env),
            "--to",
            "ida-a",
        ],
    );
    check_no_dk(&o);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["form"], "envelope", "{j}");
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["thumbprint"], hex::encode(&ta2), "{j}");
    let renv = b64url_decode(j["output"].as_str().unwrap());
    assert_eq!(&renv[6..38], &ta2[..]);
    let renvf = write(&d, "a2.env", &renv);
    let j = cli_json(&d, &["envelope", "open", "ida-a", "--in", p(&renvf)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    // After the re-wrap v1 can be retired and the re-wrapped envelope still opens.
    cli_ok(&d, &["keys", "retire", "ida-a", "--version", "1"]);
    cli_err(
        &d,
        &["envelope", "open", "ida-a", "--in", p(&env)],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", p(&env), "--to", "ida-b"],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "ida-a", "--in", p(&renvf)]);
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Targets of the wrong kind, unknown targets.
    let inf = write(&d, "wb288", &[tb.clone(), ct.clone()].concat());
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", p(&renvf), "--to", "signer"],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", p(&renvf), "--to", "nosuch"],
        ErrorCode::NotFound,
    );
    // A wrapped key with B's thumbprint cannot be re-wrapped with A.
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", p(&inf), "--to", "ida-b"],
        ErrorCode::NotFound,
    );

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 6. bad input

#[test]
fn bad_envelopes_and_wrong_keys_get_precise_errors() {
    let mut d = hsm_daemon();
    create(&d, "bad", "rsa2048-oaep");
    create(&d, "other", "rsa2048-oaep");
    create(&d, "signer", "rsa2048-sign");
    let plainf = write(&d, "plain", &random(100));
    let seal = |key: &str, name: &str| -> Vec<u8> {
        let f = file(&d, name);
        cli_ok(
            &d,
            &["envelope", "seal", key, "--in", p(&plainf), "--out", p(&f)],
        );
        read(&f)
    };
    let env = seal("bad", "bad.env");
    let open = |bytes: &[u8], key: &str, code: ErrorCode| -> String {
        let f = write(&d, "case.env", bytes);
        cli_err(&d, &["envelope", "open", key, "--in", p(&f)], code)
    };

    // Sanity: the untouched envelope opens.
    let f = write(&d, "good.env", &env);
    cli_ok(&d, &["envelope", "open", "bad", "--in", p(&f)]);

    // Truncated → bad_request (shorter than 356; tag cut; only the header).
    open(&env[..env.len() - 101], "bad", ErrorCode::BadRequest);
    open(&env[..355], "bad", ErrorCode::BadRequest);
    open(&env[..300], "bad", ErrorCode::BadRequest);
    open(&env[..38], "bad", ErrorCode::BadRequest);
    open(&[], "bad", ErrorCode::BadRequest);
    // Garbled version prefix, misplaced splitter → bad_request.
    let mut g = env.clone();
    g[..6].copy_from_slice(b"VER_R1");
    open(&g, "bad", ErrorCode::BadRequest);
    open(&flip(env.clone(), 0), "bad", ErrorCode::BadRequest);
    open(&flip(env.clone(), 300), "bad", ErrorCode::BadRequest);
    // An envelope for another key → not_found.
    let env_other = seal("other", "other.env");
    open(&env_other, "bad", ErrorCode::NotFound);
    // A changed thumbprint byte → not_found.
    open(&flip(env.clone(), 10), "bad", ErrorCode::NotFound);
    // Tampered tag, ciphertext, AAD or wrapped key → integrity.
    let last = env.len() - 1;
    open(&flip(env.clone(), last), "bad", ErrorCode::Integrity);
    open(&flip(env.clone(), 345), "bad", ErrorCode::Integrity);
    open(&flip(env.clone(), 320), "bad", ErrorCode::Integrity);
    open(&flip(env.clone(), 100), "bad", ErrorCode::Integrity);
    // Unknown key → not_found.
    open(&env, "nosuch", ErrorCode::NotFound);

    // Wrong key kind: an envelope carrying the sign key's thumbprint, opened with the sign key.
    let signpem = pem(&d, "signer", 1);
    let f = file(&d, "to-signer.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            p(&signpem),
            "--in",
            p(&plainf),
            "--out",
            p(&f),
        ],
    );
    open(&read(&f), "signer", ErrorCode::WrongKind);
    let ct = write(&d, "ct", &random(256));
    cli_err(
        &d,
        &["unwrap", "signer", "--in", p(&ct)],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["envelope", "seal", "signer", "--in", p(&plainf)],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["sign", "bad", "--in", p(&plainf)],
        ErrorCode::WrongKind,
    );
    // Random ciphertext is not valid OAEP → integrity.
    cli_err(&d, &["unwrap", "bad", "--in", p(&ct)], ErrorCode::Integrity);
    // Not an RSA-2048 external key → bad_request.
    let small = file(&d, "small.key");
    run_ok(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        p(&small),
    ]));
    let smallpub = file(&d, "small.pub");
    run_ok(Command::new("openssl").args([
        "pkey",
        "-in",
        p(&small),
        "-pubout",
        "-out",
        p(&smallpub),
    ]));
    cli_err(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            p(&smallpub),
            "--in",
            p(&plainf),
        ],
        ErrorCode::BadRequest,
    );

    // Retired version → key_retired.
    cli_ok(&d, &["keys", "rotate", "bad"]);
    cli_ok(&d, &["keys", "retire", "bad", "--version", "1"]);
    open(&env, "bad", ErrorCode::KeyRetired);

    // The daemon answered everything and is still up.
    d.assert_running();
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 7. expiry policy

#[test]
fn expiry_policy_validity_and_key_expired() {
    let mut d = hsm_daemon();
    let j = cli_json(
        &d,
        &[
            "keys",
            "create",
            "short",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
            "--validity-days",
            "2",
            "--pre-expire-days",
            "1",
        ],
    );
    let v = &j["versions"][0];
    let created = v["created"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((created - now).abs() < 60, "{j}");
    assert_eq!(
        v["not_after"].as_i64().unwrap() - created,
        2 * 86_400,
        "{j}"
    );
    let data = write(&d, "data", b"expiry test");
    let s = cli_json(&d, &["sign", "short", "--in", p(&data)]);
    assert_eq!(s["version"], 1, "{s}");
    cli_json(
        &d,
        &[
            "keys",
            "create",
            "short-enc",
            "--kind",
            "rsa2048-oaep",
            "--backend",
            "pkcs11",
            "--validity-days",
            "2",
            "--pre-expire-days",
            "1",
        ],
    );
    let env = file(&d, "short.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "short-enc",
            "--in",
            p(&data),
            "--out",
            p(&env),
        ],
    );

    // The tightest accepted policy: validity 1, pre-expire 0 → current now.
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "tight",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
            "--validity-days",
            "1",
            "--pre-expire-days",
            "0",
        ],
    );
    cli_json(&d, &["sign", "tight", "--in", p(&data)]);
    // Policies that would be expired at creation are refused: validity must exceed pre-expiry.
    for (v, pe) in [("1", "1"), ("2", "3"), ("0", "0")] {
        cli_err(
            &d,
            &[
                "keys",
                "create",
                "never",
                "--kind",
                "rsa2048-sign",
                "--backend",
                "pkcs11",
                "--validity-days",
                v,
                "--pre-expire-days",
                pe,
            ],
            ErrorCode::BadRequest,
        );
    }
    cli_err(&d, &["keys", "show", "never"], ErrorCode::NotFound);

    // Two days later for the daemon process only (libfaketime, installed by `make deps`): both
    // keys are past not_after − pre_expire. The daemon's own clock logic decides.
    d.shift_clock("+49h");
    d.restart();
    cli_err(
        &d,
        &["sign", "short", "--in", p(&data)],
        ErrorCode::KeyExpired,
    );
    cli_err(
        &d,
        &["envelope", "seal", "short-enc", "--in", p(&data)],
        ErrorCode::KeyExpired,
    );
    cli_err(
        &d,
        &["rewrap", "short-enc", "--in", p(&env), "--to", "short-enc"],
        ErrorCode::KeyExpired,
    );
    // Decryption never checks expiry.
    let j = cli_json(&d, &["envelope", "open", "short-enc", "--in", p(&env)]);
    assert_eq!(
        b64url_decode(j["plaintext"].as_str().unwrap()),
        b"expiry test"
    );
    cli_json(&d, &["keys", "public", "short"]);
    // An administrator's rotation makes the key usable again.
    cli_ok(&d, &["keys", "rotate", "short"]);
    let s = cli_json(&d, &["sign", "short", "--in", p(&data)]);
    assert_eq!(s["version"], 2, "{s}");

    // With auto_rotate the expired current version is replaced on use, exactly once even when
    // several requests race.
    assert_eq!(d.terminate().code(), Some(0));
    d.write_raw_config(&format!(
        "{}\n[keys.defaults]\nauto_rotate = true\n",
        d.config_text()
    ));
    d.restart();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let mut c =
                d.cli_command(&["--json", "envelope", "seal", "short-enc", "--in", p(&data)]);
            std::thread::spawn(move || run_with_timeout(&mut c, Duration::from_secs(30)))
        })
        .collect();
    // Each result: the version used, or the error the CLI printed.
    let results: Vec<Result<u64, String>> = handles
        .into_iter()
        .map(|h| {
            let o = h.join().unwrap();
            let j: Json = serde_json::from_str(&stdout(&o)).unwrap_or_default();
            match j["version"].as_u64() {
                Some(v) if o.status.success() => Ok(v),
                _ => Err(format!("{}: {}{}", o.status, stdout(&o), stderr(&o))),
            }
        })
        .collect();
    let k = show(&d, "short-enc");
    // The pre-expiry envelope still opens with v1.
    let j = cli_json(&d, &["envelope", "open", "short-enc", "--in", p(&env)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));

    // One rotation for all six.
    assert!(
        results.iter().all(|r| r == &Ok(2)),
        "6 concurrent seals of an expired key must all use the one new version 2: {results:?}"
    );
    assert_eq!(
        states(&k),
        st(&[(1, "decrypt-only"), (2, "active")]),
        "concurrent expired requests must rotate only once: {k}"
    );
}

#[test]
fn concurrent_rotations_all_succeed_with_distinct_versions() {
    let mut d = hsm_daemon();
    create(&d, "spin", "rsa2048-oaep");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let mut c = d.cli_command(&["--json", "keys", "rotate", "spin"]);
            std::thread::spawn(move || run_with_timeout(&mut c, Duration::from_secs(30)))
        })
        .collect();
    let outcomes: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let o = h.join().unwrap();
            if o.status.success() {
                "ok".to_owned()
            } else {
                format!("{}: {}", o.status, stdout(&o).trim())
            }
        })
        .collect();
    let k = show(&d, "spin");
    let sts = states(&k);
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
    assert!(
        outcomes.iter().all(|o| o == "ok"),
        "concurrent keys.rotate must all succeed: {outcomes:?}"
    );
    assert_eq!(k["current_version"], 7, "{k}");
    let mut expect: Vec<(u64, &str)> = (1..=6).map(|v| (v, "decrypt-only")).collect();
    expect.push((7, "active"));
    assert_eq!(sts, st(&expect));
}

// ---------------------------------------------------------------------------------------------
// 8. load

#[test]
fn load_64_clients_mixed_ops_with_four_sessions() {
    const CLIENTS: usize = 64;
    const OPS: usize = 500;
    const SAMPLES: usize = 8;
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .pkcs11(&["max_sessions = 4"])
        .start();
    assert!(d.config_text().contains("max_sessions = 4"));
    create(&d, "load-sign", "rsa2048-sign");
    create(&d, "load-enc", "rsa2048-oaep");
    let t_enc = thumb(&d, "load-enc", 1);
    let t_sign = thumb(&d, "load-sign", 1);
    let pem_enc = pem(&d, "load-enc", 1);

    // Fixtures: wrapped data keys (openssl), envelopes, reference PKCS#1 v1.5 signatures.
    let mut wrapped = Vec::new();
    let mut envelopes = Vec::new();
    let mut signatures = Vec::new();
    for i in 0..SAMPLES {
        let dk = random(32);
        let ct = openssl_oaep(&d, &pem_enc, &dk);
        wrapped.push(([t_enc.clone(), ct].concat(), dk));
        let plain = random(64 * i + 1);
        let f = write(&d, &format!("plain{i}"), &plain);
        let ef = file(&d, &format!("env{i}"));
        cli_ok(
            &d,
            &[
                "envelope",
                "seal",
                "load-enc",
                "--in",
                p(&f),
                "--out",
                p(&ef),
            ],
        );
        envelopes.push((read(&ef), plain));
        let msg = format!("message {i}").into_bytes();
        let mf = write(&d, &format!("msg{i}"), &msg);
        let sf = file(&d, &format!("sig{i}"));
        cli_ok(&d, &["sign", "load-sign", "--in", p(&mf), "--out", p(&sf)]);
        signatures.push((msg, read(&sf)));
    }
    let fixtures = Arc::new((wrapped, envelopes, signatures, t_enc, t_sign));

    let socket = d.socket().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (done, errors) = rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let socket = socket.clone();
            let fx = fixtures.clone();
            set.spawn(async move {
                let (wrapped, envelopes, signatures, t_enc, t_sign) = &*fx;
                let client = Client::connect(&socket).await.expect("connect");
                let mut errors: Vec<String> = Vec::new();
                let mut done = 0usize;
                for i in 0..OPS {
                    let j = (c + i) % SAMPLES;
                    let what = (c * 7 + i) % 6;
                    let r: Result<(), String> = match what {
                        0 => {
                            let (msg, sig) = &signatures[j];
                            let args = SignArgs {
                                key: "load-sign".into(),
                                data: Some(msg.clone()),
                                ..Default::default()
                            };
                            match client
                                .call_untyped::<_, SignResult>(names::SIGN, &args)
                                .await
                            {
                                Ok(r) if &r.signature == sig => Ok(()),
                                Ok(_) => Err("sign: different signature".into()),
                                Err(e) => Err(format!("sign: {e}")),
                            }
                        }
                        1 => {
                            let args = SignArgs {
                                key: "load-sign".into(),
                                digest: Some(sha256(&signatures[j].0)),
                                scheme: Some("pss".into()),
                                ..Default::default()
                            };
                            match client
                                .call_untyped::<_, SignResult>(names::SIGN, &args)
                                .await
                            {
                                Ok(r) if r.signature.len() == 256 => Ok(()),
                                Ok(_) => Err("sign pss: bad length".into()),
                                Err(e) => Err(format!("sign pss: {e}")),
                            }
                        }
                        2 => {
                            let (w, dk) = &wrapped[j];
                            let args = UnwrapArgs {
                                key: "load-enc".into(),
                                wrapped: w.clone(),
                                thumbprint: None,
                                version: None,
                            };
                            match client
                                .call_untyped::<_, PlaintextResult>(names::UNWRAP, &args)
                                .await
                            {
                                Ok(r) if &r.plaintext == dk => Ok(()),
                                Ok(_) => Err("unwrap: wrong data key".into()),
                                Err(e) => Err(format!("unwrap: {e}")),
                            }
                        }
                        3 => {
                            let args = SealArgs {
                                key: Some("load-enc".into()),
                                public_key: None,
                                plaintext: format!("{c}/{i}").into_bytes(),
                            };
                            match client
                                .call_untyped::<_, SealResult>(names::ENVELOPE_SEAL, &args)
                                .await
                            {
                                Ok(r)
                                    if &r.thumbprint == t_enc
                                        && &r.envelope[6..38] == t_enc.as_slice() =>
                                {
                                    Ok(())
                                }
                                Ok(_) => Err("seal: wrong thumbprint".into()),
                                Err(e) => Err(format!("seal: {e}")),
                            }
                        }
                        4 => {
                            let (env, plain) = &envelopes[j];
                            let args = OpenArgs {
                                key: "load-enc".into(),
                                envelope: env.clone(),
                            };
                            match client
                                .call_untyped::<_, PlaintextResult>(names::ENVELOPE_OPEN, &args)
                                .await
                            {
                                Ok(r) if &r.plaintext == plain => Ok(()),
                                Ok(_) => Err("open: wrong plaintext".into()),
                                Err(e) => Err(format!("open: {e}")),
                            }
                        }
                        _ => {
                            let args = PublicKeyArgs {
                                name: "load-sign".into(),
                                version: None,
                                format: None,
                            };
                            match client
                                .call_untyped::<_, PublicKeyResult>(names::KEYS_PUBLIC, &args)
                                .await
                            {
                                Ok(r) if &r.thumbprint == t_sign => Ok(()),
                                Ok(_) => Err("keys.public: wrong thumbprint".into()),
                                Err(e) => Err(format!("keys.public: {e}")),
                            }
                        }
                    };
                    match r {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(format!("client {c} op {i}: {e}")),
                    }
                }
                (done, errors)
            });
        }
        let mut done = 0;
        let mut errors = Vec::new();
        while let Some(r) = set.join_next().await {
            let (n, e) = r.expect("client task panicked");
            done += n;
            errors.extend(e);
        }
        (done, errors)
    });
    let elapsed = started.elapsed();
    eprintln!(
        "load: {CLIENTS} clients x {OPS} ops = {} ops in {elapsed:.1?} ({:.0} ops/s), {} errors",
        CLIENTS * OPS,
        (CLIENTS * OPS) as f64 / elapsed.as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(done, CLIENTS * OPS);
    assert!(elapsed < Duration::from_secs(90), "load took {elapsed:?}");

    let err = d.stderr();
    assert!(!err.contains("CKR_SESSION_COUNT"), "session count exceeded");
    assert!(!err.contains("SessionCount"), "session count exceeded");
    let b = status_backend(&d, "pkcs11");
    assert_eq!(b["ok"], true, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("/4 sessions open"),
        "max_sessions = 4 in force: {b}"
    );
    let s = cli_json(&d, &["status"]);
    assert!(
        s["ops"]["sign"]["ok"].as_u64().unwrap() >= (CLIENTS * OPS / 3) as u64,
        "{s}"
    );
    assert_eq!(s["ops"]["sign"]["err"], 0, "{s}");
    assert_eq!(s["ops"]["unwrap"]["err"], 0, "{s}");
    assert_eq!(s["ops"]["envelope.open"]["err"], 0, "{s}");
    d.assert_running();
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 9. restart

#[test]
fn restart_keeps_keys_versions_states_and_public_keys() {
    let mut d = hsm_daemon();
    create(&d, "r-enc", "rsa2048-oaep");
    create(&d, "r-sign", "rsa2048-sign");
    let plainf = write(&d, "plain", &random(700));
    let seal = |name: &str| -> PathBuf {
        let f = file(&d, name);
        cli_ok(
            &d,
            &[
                "envelope",
                "seal",
                "r-enc",
                "--in",
                p(&plainf),
                "--out",
                p(&f),
            ],
        );
        f
    };
    let env1 = seal("v1.env");
    cli_ok(&d, &["keys", "rotate", "r-enc"]);
    let env2 = seal("v2.env");
    cli_ok(&d, &["keys", "rotate", "r-enc"]);
    let env3 = seal("v3.env");
    cli_ok(&d, &["keys", "retire", "r-enc", "--version", "1"]);
    cli_ok(&d, &["keys", "rotate", "r-sign"]);
    cli_ok(&d, &["keys", "destroy", "r-sign", "--version", "1"]);
    let data = write(&d, "data", b"restart");
    let sig = file(&d, "sig");
    cli_ok(&d, &["sign", "r-sign", "--in", p(&data), "--out", p(&sig)]);

    let pems = |d: &Daemon| -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for (name, n) in [("r-enc", 3), ("r-sign", 2)] {
            for ver in 1..=n {
                let o = cli_ok(d, &["keys", "public", name, "--version", &ver.to_string()]);
                v.push(o.stdout);
            }
        }
        v
    };
    let list_before = cli_json(&d, &["keys", "list"]);
    let pems_before = pems(&d);
    let labels_before = {
        let mut l = token_labels(&d);
        l.sort();
        l
    };
    assert_eq!(
        states(&list_before["keys"][0]),
        st(&[(1, "retired"), (2, "decrypt-only"), (3, "active")])
    );
    assert_eq!(
        states(&list_before["keys"][1]),
        st(&[(1, "destroyed"), (2, "active")])
    );

    d.restart();

    assert_eq!(cli_json(&d, &["keys", "list"]), list_before);
    assert_eq!(pems(&d), pems_before);
    let mut labels = token_labels(&d);
    labels.sort();
    assert_eq!(labels, labels_before);
    let plain = read(&plainf);
    for (env, v) in [(&env2, 2), (&env3, 3)] {
        let j = cli_json(&d, &["envelope", "open", "r-enc", "--in", p(env)]);
        assert_eq!(j["version"], v, "{j}");
        assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    }
    cli_err(
        &d,
        &["envelope", "open", "r-enc", "--in", p(&env1)],
        ErrorCode::KeyRetired,
    );
    // Same private key: the deterministic PKCS#1 v1.5 signature is identical.
    let sig2 = file(&d, "sig2");
    cli_ok(&d, &["sign", "r-sign", "--in", p(&data), "--out", p(&sig2)]);
    assert_eq!(read(&sig2), read(&sig));
    // Rotation continues numbering after the restart.
    let k = cli_json(&d, &["keys", "rotate", "r-enc"]);
    assert_eq!(k["current_version"], 4, "{k}");

    // A SIGKILL (no clean shutdown) loses nothing either: changes are durable when acknowledged.
    let list = cli_json(&d, &["keys", "list"]);
    d.kill();
    d.restart();
    assert_eq!(cli_json(&d, &["keys", "list"]), list);
    let j = cli_json(&d, &["envelope", "open", "r-enc", "--in", p(&env3)]);
    assert_eq!(j["version"], 3, "{j}");

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 10. token problems

#[test]
fn wrong_token_label_gives_backend_unavailable_and_daemon_stays_up() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .env("CUSTODYD_LOG", "debug")
        .start();
    let pin = d.hsm().unwrap().pin();
    create(&d, "tp", "rsa2048-sign");
    let data = write(&d, "data", b"token problems");
    cli_ok(&d, &["sign", "tp", "--in", p(&data)]);
    assert_eq!(status_backend(&d, "pkcs11")["ok"], true);
    let good_config = d.config_text();
    assert!(good_config.contains("token_label = \"custody\""));

    // (a) A token label that matches no token: the daemon starts and stays up, pkcs11 ops fail
    // with backend_unavailable, status reports pkcs11 not ok, registry-only ops still work.
    assert_eq!(d.terminate().code(), Some(0));
    d.write_raw_config(&good_config.replace(
        "token_label = \"custody\"",
        "token_label = \"no-such-token\"",
    ));
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    let m = cli_err(
        &d,
        &["sign", "tp", "--in", p(&data)],
        ErrorCode::BackendUnavailable,
    );
    assert!(!m.contains(&pin), "{m}");
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "new",
            "--kind",
            "rsa2048-oaep",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::BackendUnavailable,
    );
    cli_err(&d, &["keys", "show", "new"], ErrorCode::NotFound);
    let b = status_backend(&d, "pkcs11");
    assert_eq!(b["ok"], false, "{b}");
    assert!(!b["detail"].as_str().unwrap().contains(&pin), "{b}");
    assert_eq!(show(&d, "tp")["current_version"], 1);
    cli_json(&d, &["keys", "public", "tp"]);
    cli_ok(&d, &["ping"]);
    d.assert_running();

    // The right label again: the key is usable (nothing was lost).
    assert_eq!(d.terminate().code(), Some(0));
    d.write_raw_config(&good_config);
    d.restart();
    cli_ok(&d, &["sign", "tp", "--in", p(&data)]);
    assert_eq!(status_backend(&d, "pkcs11")["ok"], true);
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn wrong_pin_gives_backend_unavailable_and_never_leaks_the_pin() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .env("CUSTODYD_LOG", "debug")
        .start();
    let pin = d.hsm().unwrap().pin();
    create(&d, "tp", "rsa2048-sign");
    let data = write(&d, "data", b"token problems");
    cli_ok(&d, &["sign", "tp", "--in", p(&data)]);
    let good_config = d.config_text();

    // (b) A wrong PIN: backend_unavailable, and no message contains either PIN.
    assert_eq!(d.terminate().code(), Some(0));
    let wrong_pin = "b4d00b4d00b4d00b4d00b4d0";
    let wrong_file = write(&d, "wrong.pin", format!("{wrong_pin}\n").as_bytes());
    let pin_file = d.hsm().unwrap().pin_file.to_string_lossy().into_owned();
    assert!(good_config.contains(&pin_file));
    d.write_raw_config(&good_config.replace(&pin_file, p(&wrong_file)));
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    for _ in 0..2 {
        let m = cli_err(
            &d,
            &["sign", "tp", "--in", p(&data)],
            ErrorCode::BackendUnavailable,
        );
        assert!(
            !m.contains(wrong_pin) && !m.contains(&pin),
            "PIN in message: {m}"
        );
        let o = d.cli(&["--json", "sign", "tp", "--in", p(&data)]);
        let text = stdout(&o);
        assert!(text.contains("backend_unavailable"), "{text}");
        assert!(!text.contains(wrong_pin) && !text.contains(&pin), "{text}");
    }
    let b = status_backend(&d, "pkcs11");
    let detail = b["detail"].as_str().unwrap();
    assert!(!detail.contains(wrong_pin) && !detail.contains(&pin), "{b}");
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "new",
            "--kind",
            "rsa2048-oaep",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::BackendUnavailable,
    );
    d.assert_running();
    assert_no_pin(&d, &[wrong_pin]);
    // After the token rejected the PIN the daemon stops trying it (each try would count against
    // the token's retry limit): later requests say so instead of logging in again.
    let m = cli_err(
        &d,
        &["sign", "tp", "--in", p(&data)],
        ErrorCode::BackendUnavailable,
    );
    assert!(m.contains("not retried"), "{m}");
    let logins = d.stderr().matches("login to token").count();
    assert!(logins <= 2, "login retried {logins} times:\n{}", d.stderr());

    // The right PIN again: everything works (the failed logins did not lock the token).
    assert_eq!(d.terminate().code(), Some(0));
    d.write_raw_config(&good_config);
    d.restart();
    cli_ok(&d, &["sign", "tp", "--in", p(&data)]);
    assert_eq!(status_backend(&d, "pkcs11")["ok"], true);

    // (c) Neither PIN appears in stderr (debug logging) or the audit log.
    assert!(!d.audit_lines().is_empty());
    assert_no_pin(&d, &[wrong_pin]);
    assert_eq!(d.terminate().code(), Some(0));

    // Last, because the daemon gets it wrong (see the report): a token the daemon cannot log
    // in to is not a healthy backend.
    assert_eq!(
        b["ok"], false,
        "status must not report pkcs11 ok while every op fails to log in: {b}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. keys list / show

#[test]
fn keys_list_and_show_reflect_every_change() {
    let mut d = hsm_daemon();
    let names_of = |j: &Json| -> Vec<String> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names_of(&cli_json(&d, &["keys", "list"])),
        Vec::<String>::new()
    );

    create(&d, "zeta", "rsa2048-oaep");
    create(&d, "alpha", "rsa2048-sign");
    let l = cli_json(&d, &["keys", "list"]);
    assert_eq!(names_of(&l), ["alpha", "zeta"], "sorted by name: {l}");
    for k in l["keys"].as_array().unwrap() {
        assert_eq!(k["backend"], "pkcs11", "{k}");
        assert_eq!(k["template"], "default", "{k}");
        assert_eq!(k["current_version"], 1, "{k}");
        assert_eq!(states(k), st(&[(1, "active")]));
        assert_eq!(
            k["versions"][0]["thumbprint"].as_array().unwrap().len(),
            32,
            "{k}"
        );
    }
    assert_eq!(l["keys"][0]["kind"], "rsa2048-sign");
    assert_eq!(l["keys"][1]["kind"], "rsa2048-oaep");
    let human = stdout(&cli_ok(&d, &["keys", "list"]));
    assert!(
        human.contains("alpha  kind=rsa2048-sign backend=pkcs11"),
        "{human}"
    );
    assert!(
        human.contains("zeta  kind=rsa2048-oaep backend=pkcs11"),
        "{human}"
    );

    cli_ok(&d, &["keys", "rotate", "zeta"]);
    cli_ok(&d, &["keys", "rotate", "zeta"]);
    let k = show(&d, "zeta");
    assert_eq!(k["current_version"], 3);
    assert_eq!(
        states(&k),
        st(&[(1, "decrypt-only"), (2, "decrypt-only"), (3, "active")])
    );
    cli_ok(&d, &["keys", "retire", "zeta", "--version", "1"]);
    cli_ok(&d, &["keys", "destroy", "zeta", "--version", "2"]);
    let l = cli_json(&d, &["keys", "list"]);
    assert_eq!(
        states(&l["keys"][1]),
        st(&[(1, "retired"), (2, "destroyed"), (3, "active")])
    );
    assert_eq!(l["keys"][1], show(&d, "zeta"));
    let human = stdout(&cli_ok(&d, &["keys", "show", "zeta"]));
    assert!(human.contains("current=v3"), "{human}");
    assert!(human.contains("v1  retired"), "{human}");
    assert!(human.contains("v2  destroyed"), "{human}");
    assert!(human.contains("v3  active"), "{human}");

    // already_exists, whatever the kind.
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "alpha",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::AlreadyExists,
    );
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "zeta",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::AlreadyExists,
    );
    // Bad kind, backend, template, name → bad_request.
    for args in [
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa4096",
            "--backend",
            "pkcs11",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "hsm",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
            "--template",
            "mosip",
        ][..],
        &[
            "keys",
            "create",
            "bad name",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "wrapped",
        ][..],
    ] {
        cli_err(&d, args, ErrorCode::BadRequest);
    }
    // A backend this daemon does not have → backend_unavailable.
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
        ErrorCode::BackendUnavailable,
    );
    cli_err(&d, &["keys", "show", "k1"], ErrorCode::NotFound);
    cli_err(&d, &["keys", "rotate", "k1"], ErrorCode::NotFound);
    cli_err(
        &d,
        &["keys", "destroy", "zeta", "--version", "9"],
        ErrorCode::NotFound,
    );
    // Nothing changed by the failures.
    assert_eq!(
        names_of(&cli_json(&d, &["keys", "list"])),
        ["alpha", "zeta"]
    );

    // The audit log records the admin changes.
    let audit = d.audit_lines();
    for op in ["keys.create", "keys.rotate", "keys.retire", "keys.destroy"] {
        assert!(
            audit.iter().any(|l| l["op"] == op && l["outcome"] == "ok"),
            "no successful {op} in the audit log"
        );
    }
    assert!(audit
        .iter()
        .any(|l| l["op"] == "keys.create" && l["outcome"] == "already_exists"));

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Re-targeting to an external public key needs `rewrap.external` on the source key (it hands the
/// data key to that key's owner); re-targeting between the daemon's keys needs `rewrap` on both.
/// The audit line names the target key too.
#[test]
fn rewrap_to_external_key_is_a_right_of_its_own() {
    let declared = "[[keys.declare]]\nname = \"ida-a\"\nkind = \"rsa2048-oaep\"\nbackend = \"pkcs11\"\n\n\
                    [[keys.declare]]\nname = \"ida-b\"\nkind = \"rsa2048-oaep\"\nbackend = \"pkcs11\"\n";
    let limited = "[[roles]]\nname = \"ida\"\nunix_users = [0]\n\
                   ops = [\"envelope.seal\", \"envelope.open\", \"rewrap\"]\nkeys = [\"ida-*\"]\n";
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .extra(declared)
        .roles(limited)
        .start();
    let data = write(&d, "data", b"datashare for rewrap rights");
    let env = file(&d, "a.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-a",
            "--in",
            p(&data),
            "--out",
            p(&env),
        ],
    );
    let (key, pubf, _) = external_keypair(&d, "partner");

    // Between the daemon's own keys: allowed, and audited with both names.
    let moved = file(&d, "b.env");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            p(&env),
            "--to",
            "ida-b",
            "--out",
            p(&moved),
        ],
    );
    let opened = cli_json(&d, &["envelope", "open", "ida-b", "--in", p(&moved)]);
    assert_eq!(
        b64url_decode(opened["plaintext"].as_str().unwrap()),
        read(&data)
    );
    let audit = d.audit_lines();
    let line = audit
        .iter()
        .rev()
        .find(|l| l["op"] == "rewrap")
        .expect("rewrap audited");
    assert_eq!(
        (line["key"].as_str(), line["target"].as_str()),
        (Some("ida-a"), Some("ida-b"))
    );

    // To an external key: refused without `rewrap.external`…
    let out = file(&d, "ext.env");
    let m = cli_err(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            p(&env),
            "--to-pem",
            p(&pubf),
            "--out",
            p(&out),
        ],
        ErrorCode::PermissionDenied,
    );
    assert!(m.contains("rewrap.external"), "{m}");
    // …and allowed once the role has it (SIGHUP reload).
    d.set_roles(&limited.replace("\"rewrap\"]", "\"rewrap\", \"rewrap.external\"]"));
    d.reload();
    wait_for(Duration::from_secs(10), "reloaded roles", || {
        d.cli(&[
            "rewrap",
            "ida-a",
            "--in",
            p(&env),
            "--to-pem",
            p(&pubf),
            "--out",
            p(&out),
        ])
        .status
        .success()
        .then_some(())
    });
    let plain = file(&d, "ext.plain");
    py_envelope(&[
        "open",
        "--key",
        p(&key),
        "--in",
        p(&out),
        "--out",
        p(&plain),
    ]);
    assert_eq!(read(&plain), read(&data));
    assert_eq!(d.terminate().code(), Some(0));
}

/// A request with the wrong kind of key fails before any automatic rotation could happen.
#[test]
fn wrong_kind_does_not_rotate_an_expired_key() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .extra("[keys.defaults]\nauto_rotate = true\n")
        .start();
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "enc",
            "--kind",
            "rsa2048-oaep",
            "--backend",
            "pkcs11",
            "--validity-days",
            "2",
            "--pre-expire-days",
            "1",
        ],
    );
    d.shift_clock("+30h");
    d.restart();
    let data = write(&d, "data", b"x");
    cli_err(&d, &["sign", "enc", "--in", p(&data)], ErrorCode::WrongKind);
    let k = cli_json(&d, &["keys", "show", "enc"]);
    assert_eq!(k["versions"].as_array().map(Vec::len), Some(1), "{k}");
    // The right kind of use does rotate it.
    let sealed = cli_json(&d, &["envelope", "seal", "enc", "--in", p(&data)]);
    assert_eq!(sealed["version"], 2, "{sealed}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// `pin_env`: the PIN comes from an environment variable; it never reaches a log line.
#[test]
fn pin_from_environment_is_used() {
    let mut d = hsm_daemon();
    let pin = d.hsm().unwrap().pin();
    let pin_file = d.hsm().unwrap().pin_file.to_string_lossy().into_owned();
    let cfg = d.config_text();
    let line = format!("pin_file = {}", toml_str(&pin_file));
    assert!(cfg.contains(&line), "{cfg}");
    d.write_raw_config(&cfg.replace(&line, "pin_env = \"CUSTODY_E2E_PIN\""));
    d.set_env("CUSTODY_E2E_PIN", &pin);
    d.restart();
    create(&d, "envpin", "rsa2048-sign");
    let data = write(&d, "data", b"pin from env");
    cli_ok(&d, &["sign", "envpin", "--in", p(&data)]);
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Every way a decryption can fail gives the same code and the same message: a wrong OAEP label,
/// a corrupted wrapped key, a tampered envelope tag, and an envelope whose (validly wrapped) data
/// key has the wrong length. Otherwise the daemon would be a padding oracle.
#[test]
fn every_decryption_failure_looks_the_same() {
    use rsa::pkcs8::DecodePublicKey;
    let d = hsm_daemon();
    create(&d, "ora", "rsa2048-oaep");
    let pem = file(&d, "ora.pem");
    let der_path = file(&d, "ora.der");
    cli_ok(&d, &["keys", "public", "ora", "--out", p(&pem)]);
    cli_ok(
        &d,
        &[
            "keys",
            "public",
            "ora",
            "--format",
            "der",
            "--out",
            p(&der_path),
        ],
    );
    let der = read(&der_path);
    let key = rsa::RsaPublicKey::from_public_key_der(&der).expect("spki");
    let mut rng = rand_core_rng();

    let secret = write(&d, "secret", &[7u8; 32]);
    let wrapped = file(&d, "wrapped");
    run_ok(Command::new("openssl").args([
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        p(&pem),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        p(&secret),
        "-out",
        p(&wrapped),
    ]));
    let m_label = cli_err(
        &d,
        &["decrypt", "ora", "--in", p(&wrapped), "--label-hex", "01"],
        ErrorCode::Integrity,
    );
    let mut bad = read(&wrapped);
    bad[100] ^= 0x40;
    let corrupted = write(&d, "corrupted", &bad);
    let m_corrupt = cli_err(
        &d,
        &["unwrap", "ora", "--in", p(&corrupted)],
        ErrorCode::Integrity,
    );

    let data = write(&d, "data", b"envelope body");
    let env = file(&d, "env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ora",
            "--in",
            p(&data),
            "--out",
            p(&env),
        ],
    );
    let mut tampered = read(&env);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = write(&d, "tampered.env", &tampered);
    let m_tag = cli_err(
        &d,
        &["envelope", "open", "ora", "--in", p(&tampered)],
        ErrorCode::Integrity,
    );

    // A well-formed envelope whose data key is 16 bytes instead of 32.
    let short_key = key
        .encrypt(&mut rng, rsa::Oaep::new::<Sha256>(), &[9u8; 16])
        .expect("oaep");
    let mut short = b"VER_R2".to_vec();
    short.extend_from_slice(&Sha256::digest(&der));
    short.extend_from_slice(&short_key);
    short.extend_from_slice(b"#KEY_SPLITTER#");
    short.extend_from_slice(&[3u8; 32]);
    short.extend_from_slice(&[0u8; 24]);
    let short = write(&d, "short.env", &short);
    let m_len = cli_err(
        &d,
        &["envelope", "open", "ora", "--in", p(&short)],
        ErrorCode::Integrity,
    );

    let expected = "decryption failed: wrong key, wrong label or tampered data";
    for m in [&m_label, &m_corrupt, &m_tag, &m_len] {
        assert_eq!(m, expected);
    }
}

fn rand_core_rng() -> impl rsa::rand_core::CryptoRngCore {
    rsa::rand_core::OsRng
}
