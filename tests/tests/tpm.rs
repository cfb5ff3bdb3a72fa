//! TPM end-to-end tests: each test starts its own swtpm and `custodyd` (MOSIP `machine-sign` and
//! `machine-encrypt` declared in the TPM) and checks real results with openssl, the `rsa` crate and
//! an independent raw-TPM script (`tests/interop/tpm_mosip_primary.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use custody_e2e::proto::ops::{
    names, DecryptArgs, PlaintextResult, PublicKeyArgs, PublicKeyResult, SignArgs, SignBatchArgs,
    SignBatchResult, SignResult,
};
use custody_e2e::proto::ErrorCode;
use custody_e2e::*;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const SEC: Duration = Duration::from_secs(1);

/// The two MOSIP registration-client keys, declared in the TPM.
const MOSIP_KEYS: &str = r#"[[keys.declare]]
name = "machine-sign"
kind = "rsa2048-sign"
backend = "tpm"
template = "mosip"

[[keys.declare]]
name = "machine-encrypt"
kind = "rsa2048-oaep"
backend = "tpm"
template = "mosip"
"#;

/// MOSIP's EK policy digest (authPolicy of the encryption key).
const EK_POLICY: &str = "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa";

fn tpm_builder() -> DaemonBuilder {
    DaemonBuilder::new().with_tpm().extra(MOSIP_KEYS)
}

fn tpm_daemon() -> Daemon {
    tpm_builder().start()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// Runs the CLI and asserts success.
fn cli_ok(d: &Daemon, args: &[&str]) -> Output {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "custody {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Runs the CLI and asserts the exit code and the error code on stderr.
fn cli_err(d: &Daemon, args: &[&str], exit: i32, code: &str) -> Output {
    let out = d.cli(args);
    assert_eq!(
        out.status.code(),
        Some(exit),
        "custody {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("custody: {code}:")),
        "custody {args:?}: expected {code}: {}",
        stderr(&out)
    );
    out
}

/// Runs openssl in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    run_with_timeout(&mut c, 30 * SEC)
}

/// `openssl dgst -sha256 -verify PUB -signature SIG DATA [extra]` must print `Verified OK`.
fn openssl_verify(dir: &Path, pubkey: &str, sig: &str, data: &str, extra: &[&str]) {
    let mut args = vec!["dgst", "-sha256", "-verify", pubkey, "-signature", sig];
    args.extend_from_slice(extra);
    args.push(data);
    let out = openssl(dir, &args);
    assert!(
        out.status.success() && stdout(&out).contains("Verified OK"),
        "openssl {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn file(d: &Daemon, name: &str) -> PathBuf {
    d.dir().join(name)
}

fn server_code(e: ClientError) -> ErrorCode {
    e.server()
        .and_then(|w| w.code())
        .unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

fn public(c: &BlockingClient, name: &str, format: &str) -> PublicKeyResult {
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

fn rsa_public(c: &BlockingClient, name: &str) -> RsaPublicKey {
    RsaPublicKey::from_public_key_der(&public(c, name, "der").data).expect("DER SPKI")
}

fn verify_pkcs1(key: &RsaPublicKey, digest: &[u8], sig: &[u8]) {
    assert_eq!(sig.len(), 256);
    key.verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig)
        .expect("RSASSA-PKCS1-v1_5/SHA-256 signature verifies");
}

/// MOSIP key index: SHA-256 as lowercase hex pairs joined by `:`.
fn key_index(bytes: &[u8]) -> String {
    sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes the public key in `format` to DIR/`out` with the CLI and returns its bytes.
fn cli_public(d: &Daemon, name: &str, format: &str, out: &str) -> Vec<u8> {
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
    std::fs::read(&p).unwrap()
}

/// A parsed RSA `TPMT_PUBLIC`.
#[derive(Debug)]
struct Tpmt {
    name_alg: u16,
    attributes: u32,
    auth_policy: Vec<u8>,
    symmetric: u16,
    scheme: u16,
    scheme_hash: Option<u16>,
    key_bits: u16,
    exponent: u32,
    modulus: Vec<u8>,
}

fn parse_tpmt(b: &[u8]) -> Tpmt {
    let mut at = 0usize;
    let u16_ = |at: &mut usize| {
        let v = u16::from_be_bytes([b[*at], b[*at + 1]]);
        *at += 2;
        v
    };
    let ty = u16_(&mut at);
    assert_eq!(ty, 0x0001, "type TPM_ALG_RSA");
    let name_alg = u16_(&mut at);
    let attributes = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    at += 4;
    let plen = u16_(&mut at) as usize;
    let auth_policy = b[at..at + plen].to_vec();
    at += plen;
    let symmetric = u16_(&mut at);
    if symmetric != 0x0010 {
        at += 4; // keyBits, mode
    }
    let scheme = u16_(&mut at);
    let scheme_hash = match scheme {
        0x0014 | 0x0016 | 0x0017 => Some(u16_(&mut at)),
        _ => None,
    };
    let key_bits = u16_(&mut at);
    let exponent = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    at += 4;
    let mlen = u16_(&mut at) as usize;
    let modulus = b[at..at + mlen].to_vec();
    at += mlen;
    assert_eq!(at, b.len(), "TPMT_PUBLIC has trailing bytes");
    Tpmt {
        name_alg,
        attributes,
        auth_policy,
        symmetric,
        scheme,
        scheme_hash,
        key_bits,
        exponent,
        modulus,
    }
}

/// The swtpm data port from its TCTI string (`swtpm:host=…,port=N`).
fn swtpm_port(d: &mut Daemon) -> u16 {
    let tcti = d.swtpm().expect("swtpm").tcti().to_owned();
    tcti.rsplit("port=")
        .next()
        .and_then(|p| p.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in TCTI {tcti}"))
}

fn status_json(d: &Daemon) -> Json {
    let out = cli_ok(d, &["--json", "status"]);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn tpm_backend_ok(d: &Daemon) -> (bool, String) {
    let s = status_json(d);
    let b = s["backends"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == "tpm"))
        .unwrap_or_else(|| panic!("no tpm backend in status: {s}"))
        .clone();
    (
        b["ok"].as_bool().expect("ok is a bool"),
        b["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. sign / verify

#[test]
fn sign_verifies_with_openssl_prehashed_batch_and_pss() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    cli_public(&d, "machine-sign", "pem", "pub.pem");
    let data = b"registration packet zip bytes \x00\x01\x02 and more".repeat(100);
    std::fs::write(dir.join("data"), &data).unwrap();

    // Data, hashed by the daemon.
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig")),
        ],
    );
    assert_eq!(std::fs::metadata(dir.join("sig")).unwrap().len(), 256);
    openssl_verify(&dir, "pub.pem", "sig", "data", &[]);

    // A digest, signed as is: verifies over the data.
    std::fs::write(dir.join("digest"), sha256(&data)).unwrap();
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--prehashed",
            "--in",
            path_str(&dir.join("digest")),
            "--out",
            path_str(&dir.join("sig2")),
        ],
    );
    openssl_verify(&dir, "pub.pem", "sig2", "data", &[]);
    // RSASSA-PKCS1-v1_5 is deterministic: same signature both ways.
    assert_eq!(
        std::fs::read(dir.join("sig")).unwrap(),
        std::fs::read(dir.join("sig2")).unwrap()
    );

    // sign.batch through the library: 16 digests, one bad item in the middle.
    let c = d.client();
    let key = rsa_public(&c, "machine-sign");
    let mut digests: Vec<Vec<u8>> = (0..16)
        .map(|i| sha256(format!("item {i}").as_bytes()))
        .collect();
    const BAD: usize = 7;
    digests.insert(BAD, vec![0xab; 31]);
    let r: SignBatchResult = c
        .call_untyped(
            names::SIGN_BATCH,
            &SignBatchArgs {
                key: "machine-sign".into(),
                digests: digests
                    .iter()
                    .cloned()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                scheme: None,
            },
        )
        .expect("sign.batch");
    assert_eq!(r.key, "machine-sign");
    assert_eq!(r.version, 1);
    assert_eq!(r.results.len(), 17);
    for (i, item) in r.results.iter().enumerate() {
        if i == BAD {
            assert!(item.signature.is_none(), "bad item has no signature");
            let e = item.err.as_ref().expect("bad item has an error");
            assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e:?}");
        } else {
            assert!(item.err.is_none(), "item {i}: {:?}", item.err);
            verify_pkcs1(
                &key,
                &digests[i],
                item.signature.as_ref().expect("signature"),
            );
        }
    }

    // A runtime-created default-template TPM key signs with PSS (salt 32), openssl verifies.
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "rt-sign",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
    );
    cli_public(&d, "rt-sign", "pem", "rt.pem");
    cli_ok(
        &d,
        &[
            "sign",
            "rt-sign",
            "--scheme",
            "pss",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig-pss")),
        ],
    );
    openssl_verify(
        &dir,
        "rt.pem",
        "sig-pss",
        "data",
        &[
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ],
    );
    // And PKCS#1 v1.5 with the same key.
    cli_ok(
        &d,
        &[
            "sign",
            "rt-sign",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig-rt")),
        ],
    );
    openssl_verify(&dir, "rt.pem", "sig-rt", "data", &[]);
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 2. decrypt

fn openssl_encrypt(dir: &Path, pubkey: &str, input: &str, output: &str, label: Option<&str>) {
    let mut args = vec![
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        pubkey,
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ];
    let l;
    if let Some(label) = label {
        l = format!("rsa_oaep_label:{label}");
        args.push("-pkeyopt");
        args.push(&l);
    }
    args.extend_from_slice(&["-in", input, "-out", output]);
    let out = openssl(dir, &args);
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

#[test]
fn decrypt_openssl_oaep_with_empty_and_mosip_label() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    cli_public(&d, "machine-encrypt", "pem", "enc.pem");
    let secret = b"0123456789abcdef0123456789ABCDEF session key!";
    std::fs::write(dir.join("pt"), secret).unwrap();
    openssl_encrypt(&dir, "enc.pem", "pt", "ct-empty", None);
    openssl_encrypt(&dir, "enc.pem", "pt", "ct-mosip", Some("00"));
    assert_eq!(std::fs::metadata(dir.join("ct-empty")).unwrap().len(), 256);

    let ct_empty = path_str(&dir.join("ct-empty")).to_owned();
    let ct_mosip = path_str(&dir.join("ct-mosip")).to_owned();
    let out = cli_ok(&d, &["decrypt", "machine-encrypt", "--in", &ct_empty]);
    assert_eq!(out.stdout, secret, "empty label");
    let out = cli_ok(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--mosip-label",
            "--in",
            &ct_mosip,
            "--out",
            path_str(&dir.join("pt2")),
        ],
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read(dir.join("pt2")).unwrap(),
        secret,
        "MOSIP label"
    );
    // --label-hex 00 is the same label.
    let out = cli_ok(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--label-hex",
            "00",
            "--in",
            &ct_mosip,
        ],
    );
    assert_eq!(out.stdout, secret);

    // Wrong label either way: integrity (19).
    cli_err(
        &d,
        &["decrypt", "machine-encrypt", "--in", &ct_mosip],
        19,
        "integrity",
    );
    cli_err(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--mosip-label",
            "--in",
            &ct_empty,
        ],
        19,
        "integrity",
    );
    cli_err(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--label-hex",
            "0100",
            "--in",
            &ct_mosip,
        ],
        19,
        "integrity",
    );
    // A tampered ciphertext too; the daemon still works afterwards.
    let mut bad = std::fs::read(dir.join("ct-empty")).unwrap();
    bad[100] ^= 1;
    std::fs::write(dir.join("ct-bad"), &bad).unwrap();
    cli_err(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--in",
            path_str(&dir.join("ct-bad")),
        ],
        19,
        "integrity",
    );
    let out = cli_ok(&d, &["decrypt", "machine-encrypt", "--in", &ct_empty]);
    assert_eq!(out.stdout, secret);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 3. JWT

#[test]
fn sign_jwt_header_kid_payload_and_signature() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    // Exact bytes, with odd spacing and key order: embedded as given.
    let payload =
        b"{ \"iss\":\"reg-client\",\"machine\" : \"10011\", \"iat\":1700000000, \"n\":[1,2] }\n";
    std::fs::write(dir.join("p.json"), payload).unwrap();
    let out = cli_ok(
        &d,
        &[
            "sign-jwt",
            "machine-sign",
            "--payload-file",
            path_str(&dir.join("p.json")),
        ],
    );
    let jwt = stdout(&out).trim().to_owned();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for p in &parts {
        assert!(
            p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "not base64url without padding: {p}"
        );
    }

    // The key index, three ways: from --json, recomputed over the TPMT_PUBLIC bytes, and the kid.
    let out = cli_ok(&d, &["--json", "keys", "public", "machine-sign"]);
    let j: Json = serde_json::from_str(&stdout(&out)).unwrap();
    let kidx = j["key_index"].as_str().expect("key_index").to_owned();
    assert_eq!(kidx.len(), 95, "{kidx}");
    let tpmt = cli_public(&d, "machine-sign", "tpmt", "sign.tpmt");
    assert_eq!(kidx, key_index(&tpmt), "key_index = SHA-256(TPMT_PUBLIC)");
    let der = cli_public(&d, "machine-sign", "der", "sign.der");
    assert_ne!(
        kidx,
        key_index(&der),
        "key index hashes the TPMT, not the SPKI"
    );
    assert_eq!(j["thumbprint"].as_str().unwrap(), hex::encode(sha256(&der)));

    let header = b64.decode(parts[0]).expect("header base64url");
    assert_eq!(
        String::from_utf8(header).unwrap(),
        format!("{{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"{kidx}\"}}")
    );
    assert_eq!(b64.decode(parts[1]).expect("payload base64url"), payload);
    let sig = b64.decode(parts[2]).expect("signature base64url");
    assert_eq!(sig.len(), 256);
    std::fs::write(dir.join("jwt.input"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(dir.join("jwt.sig"), &sig).unwrap();
    cli_public(&d, "machine-sign", "pem", "pub.pem");
    openssl_verify(&dir, "pub.pem", "jwt.sig", "jwt.input", &[]);

    // --json gives the same kid.
    let out = cli_ok(
        &d,
        &[
            "--json",
            "sign-jwt",
            "machine-sign",
            "--payload-file",
            path_str(&dir.join("p.json")),
        ],
    );
    let j: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(j["kid"].as_str(), Some(kidx.as_str()));
    assert_eq!(
        j["jwt"].as_str(),
        Some(jwt.as_str()),
        "RS256 is deterministic"
    );
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 4. TPMT_PUBLIC

#[test]
fn tpmt_public_fields_and_key_index_of_mosip_keys() {
    let mut d = tpm_daemon();
    let c = d.client();
    let common = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6); // fixedTPM fixedParent sDO userWithAuth
    for (name, name_alg, attrs, policy, scheme) in [
        (
            "machine-sign",
            0x0004u16,
            common | (1 << 18),
            String::new(),
            0x0014u16,
        ),
        (
            "machine-encrypt",
            0x000B,
            common | (1 << 17),
            EK_POLICY.to_owned(),
            0x0017,
        ),
    ] {
        let bytes = cli_public(&d, name, "tpmt", &format!("{name}.tpmt"));
        let lib = public(&c, name, "tpmt");
        assert_eq!(lib.format, "tpmt");
        assert_eq!(lib.data, bytes, "{name}: CLI and library agree");
        let t = parse_tpmt(&bytes);
        assert_eq!(t.name_alg, name_alg, "{name}: nameAlg {t:?}");
        assert_eq!(
            t.attributes, attrs,
            "{name}: objectAttributes {:#x}",
            t.attributes
        );
        assert_eq!(hex::encode(&t.auth_policy), policy, "{name}: authPolicy");
        assert_eq!(t.symmetric, 0x0010, "{name}: symmetric NULL");
        assert_eq!(t.scheme, scheme, "{name}: scheme");
        assert_eq!(t.scheme_hash, Some(0x000B), "{name}: scheme hash SHA-256");
        assert_eq!(t.key_bits, 2048, "{name}");
        assert_eq!(t.exponent, 65537, "{name}: exponent written explicitly");
        // The TPMT carries the same modulus as the DER SPKI.
        let key = rsa_public(&c, name);
        assert_eq!(key.n().to_bytes_be(), t.modulus, "{name}: modulus");
        assert_eq!(key.e().to_bytes_be(), vec![1, 0, 1]);
        assert_eq!(lib.key_index, key_index(&bytes), "{name}: key index");
        assert_eq!(lib.thumbprint, sha256(&public(&c, name, "der").data));
    }
    // An unknown format is bad_request.
    let e = c
        .call_untyped::<_, PublicKeyResult>(
            names::KEYS_PUBLIC,
            &PublicKeyArgs {
                name: "machine-sign".into(),
                version: None,
                format: Some("jwk".into()),
            },
        )
        .unwrap_err();
    assert_eq!(server_code(e), ErrorCode::BadRequest);
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 5. MOSIP template independence

const PY_PRIMARY: &str = "tests/interop/tpm_mosip_primary.py";

fn python_primary(port: u16, which: &str) -> Output {
    let mut c = Command::new("python3");
    c.arg(workspace_root().join(PY_PRIMARY))
        .arg(port.to_string())
        .arg(which);
    run_with_timeout(&mut c, 60 * SEC)
}

fn python_tpmt(port: u16, which: &str) -> Vec<u8> {
    let out = python_primary(port, which);
    assert!(
        out.status.success(),
        "tpm_mosip_primary.py {which}: {}",
        stderr(&out)
    );
    hex::decode(stdout(&out).trim()).expect("hex TPMT_PUBLIC")
}

#[test]
fn mosip_templates_match_independent_raw_create_primary() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    let sign = cli_public(&d, "machine-sign", "tpmt", "sign.tpmt");
    let enc = cli_public(&d, "machine-encrypt", "tpmt", "enc.tpmt");
    cli_public(&d, "machine-sign", "pem", "sign.pem");
    cli_public(&d, "machine-encrypt", "pem", "enc.pem");
    let port = swtpm_port(&mut d);
    std::fs::write(dir.join("data"), b"interop").unwrap();
    std::fs::write(dir.join("pt"), b"interop secret").unwrap();
    openssl_encrypt(&dir, "enc.pem", "pt", "ct", Some("00"));
    let use_both_keys = |d: &Daemon, what: &str| {
        let out = d.cli(&[
            "sign",
            "machine-sign",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig")),
        ]);
        assert!(out.status.success(), "sign {what}: {}", stderr(&out));
        openssl_verify(&dir, "sign.pem", "sig", "data", &[]);
        let out = d.cli(&[
            "decrypt",
            "machine-encrypt",
            "--mosip-label",
            "--in",
            path_str(&dir.join("ct")),
        ]);
        assert!(out.status.success(), "decrypt {what}: {}", stderr(&out));
        assert_eq!(out.stdout, b"interop secret");
    };
    let compare = |which: &str, ours: &[u8], when: &str| {
        let py = python_tpmt(port, which);
        assert_eq!(
            hex::encode(&py),
            hex::encode(ours),
            "{which} ({when}): the daemon's TPMT_PUBLIC differs from a raw CreatePrimary \
             with MOSIP's template"
        );
    };

    // (a) While the daemon runs, idle, with both MOSIP primaries cached (2 of swtpm's 3 transient
    // slots): the script's primary takes the last slot and is flushed; the daemon keeps working.
    use_both_keys(&d, "before the script");
    for (which, ours) in [("sign", &sign), ("encrypt", &enc)] {
        compare(which, ours, "daemon running");
        use_both_keys(&d, "after the script");
    }

    // (b) With the daemon stopped (its primaries flushed): the same bytes.
    assert_eq!(d.terminate().code(), Some(0));
    for (which, ours) in [("sign", &sign), ("encrypt", &enc)] {
        compare(which, ours, "daemon stopped");
    }
    // The script's template equals the daemon's public area up to the unique field.
    let out = Command::new("python3")
        .arg(workspace_root().join(PY_PRIMARY))
        .args(["0", "sign", "--template"])
        .output()
        .unwrap();
    let template = hex::decode(stdout(&out).trim()).unwrap();
    assert_eq!(&sign[..template.len() - 2], &template[..template.len() - 2]);

    // The daemon comes back with the same keys and still signs and decrypts.
    d.restart();
    assert_eq!(cli_public(&d, "machine-sign", "tpmt", "sign2.tpmt"), sign);
    assert_eq!(cli_public(&d, "machine-encrypt", "tpmt", "enc2.tpmt"), enc);
    use_both_keys(&d, "after restart");
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 6. stability across restarts

fn all_publics(d: &Daemon, tag: &str) -> Vec<Vec<u8>> {
    ["machine-sign", "machine-encrypt", "rt-key"]
        .iter()
        .flat_map(|k| {
            [
                cli_public(d, k, "der", &format!("{k}.{tag}.der")),
                cli_public(d, k, "tpmt", &format!("{k}.{tag}.tpmt")),
            ]
        })
        .collect()
}

#[test]
fn public_keys_stable_across_daemon_and_swtpm_restarts() {
    let mut d = tpm_daemon();
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "rt-key",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
    );
    let before = all_publics(&d, "0");

    // Daemon restart.
    d.restart();
    assert_eq!(all_publics(&d, "1"), before, "after daemon restart");

    // Daemon and swtpm restart, same TPM state.
    assert_eq!(d.terminate().code(), Some(0));
    d.swtpm().unwrap().stop();
    d.swtpm().unwrap().start_again();
    d.restart();
    assert_eq!(all_publics(&d, "2"), before, "after swtpm restart");

    // The persisted default-template key still signs.
    let dir = d.dir().to_path_buf();
    cli_public(&d, "rt-key", "pem", "rt.pem");
    std::fs::write(dir.join("data"), b"after the TPM restarted").unwrap();
    cli_ok(
        &d,
        &[
            "sign",
            "rt-key",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig")),
        ],
    );
    openssl_verify(&dir, "rt.pem", "sig", "data", &[]);
    cli_public(&d, "machine-sign", "pem", "ms.pem");
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&dir.join("data")),
            "--out",
            path_str(&dir.join("sig2")),
        ],
    );
    openssl_verify(&dir, "ms.pem", "sig2", "data", &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 7. TPM outage

#[test]
fn tpm_outage_is_backend_unavailable_quickly_and_recovers() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    std::fs::write(dir.join("data"), b"outage").unwrap();
    let data = path_str(&dir.join("data")).to_owned();
    cli_ok(
        &d,
        &["sign", "machine-sign", "--in", &data, "--out", "/dev/null"],
    );
    assert!(tpm_backend_ok(&d).0, "TPM healthy at start");
    let tcti = d.swtpm().unwrap().tcti().to_owned();

    d.swtpm().unwrap().stop();
    for _ in 0..2 {
        let t = Instant::now();
        cli_err(
            &d,
            &["sign", "machine-sign", "--in", &data],
            20,
            "backend_unavailable",
        );
        let took = t.elapsed();
        assert!(
            took < 5 * SEC,
            "backend_unavailable took {took:?} (op timeout is 30 s)"
        );
    }
    let (ok, detail) = tpm_backend_ok(&d);
    assert!(!ok, "status shows the TPM down: {detail}");
    // Other ops keep working.
    cli_ok(&d, &["ping"]);
    cli_public(&d, "machine-sign", "pem", "pub.pem");
    d.assert_running();

    d.swtpm().unwrap().start_again();
    assert_eq!(
        d.swtpm().unwrap().tcti(),
        tcti,
        "swtpm came back on another port; the test cannot continue"
    );
    wait_for(15 * SEC, "signing to work again", || {
        d.cli(&[
            "sign",
            "machine-sign",
            "--in",
            &data,
            "--out",
            path_str(&dir.join("sig")),
        ])
        .status
        .success()
        .then_some(())
    });
    openssl_verify(&dir, "pub.pem", "sig", "data", &[]);
    assert!(tpm_backend_ok(&d).0, "TPM healthy again");
    d.assert_running();
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 8. concurrency

#[test]
fn sixty_four_concurrent_signers() {
    const THREADS: usize = 64;
    const PER: usize = 3;
    let mut d = tpm_daemon();
    let key = rsa_public(&d.client(), "machine-sign");
    let socket = d.socket().to_path_buf();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let c = BlockingClient::connect(&socket).expect("connect");
                barrier.wait();
                (0..PER)
                    .map(|i| {
                        let data = format!("thread {t} message {i}").into_bytes();
                        let r: SignResult = c
                            .call_untyped(
                                names::SIGN,
                                &SignArgs {
                                    key: "machine-sign".into(),
                                    data: Some(data.clone()),
                                    ..Default::default()
                                },
                            )
                            .unwrap_or_else(|e| panic!("thread {t} sign {i}: {e}"));
                        (data, r.signature)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        for (data, sig) in h.join().expect("signer thread") {
            verify_pkcs1(&key, &sha256(&data), &sig);
            n += 1;
        }
    }
    assert_eq!(n, THREADS * PER);
    let s = status_json(&d);
    assert!(
        s["ops"]["sign"]["ok"].as_u64().unwrap() >= (THREADS * PER) as u64,
        "{s}"
    );
    assert_eq!(s["ops"]["sign"]["err"].as_u64().unwrap_or(0), 0, "{s}");
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 9. bad input

#[test]
fn bad_input_gives_typed_errors() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    std::fs::write(dir.join("d31"), [7u8; 31]).unwrap();
    std::fs::write(dir.join("data"), b"x").unwrap();
    std::fs::write(dir.join("c256"), [1u8; 256]).unwrap();
    std::fs::write(dir.join("c300"), [1u8; 300]).unwrap();
    let d31 = path_str(&dir.join("d31")).to_owned();
    let data = path_str(&dir.join("data")).to_owned();
    let c256 = path_str(&dir.join("c256")).to_owned();
    let c300 = path_str(&dir.join("c300")).to_owned();

    // Digest length: the CLI refuses it itself (usage, exit 2), the daemon with bad_request.
    cli_err(
        &d,
        &["sign", "machine-sign", "--prehashed", "--in", &d31],
        2,
        "usage",
    );
    let c = d.client();
    let sign = |key: &str, digest: Option<Vec<u8>>, scheme: Option<&str>| {
        c.call_untyped::<_, SignResult>(
            names::SIGN,
            &SignArgs {
                key: key.into(),
                data: digest.is_none().then(|| b"x".to_vec()),
                digest,
                scheme: scheme.map(str::to_owned),
            },
        )
        .map_err(server_code)
    };
    assert_eq!(
        sign("machine-sign", Some(vec![7; 31]), None).unwrap_err(),
        ErrorCode::BadRequest
    );
    assert_eq!(
        sign("machine-sign", Some(vec![7; 33]), None).unwrap_err(),
        ErrorCode::BadRequest
    );

    // Unknown key: not_found (14).
    cli_err(&d, &["sign", "no-such-key", "--in", &data], 14, "not_found");
    cli_err(
        &d,
        &["decrypt", "no-such-key", "--in", &c256],
        14,
        "not_found",
    );
    cli_err(&d, &["keys", "public", "no-such-key"], 14, "not_found");

    // Wrong kind (18) both ways.
    cli_err(
        &d,
        &["decrypt", "machine-sign", "--in", &c256],
        18,
        "wrong_kind",
    );
    cli_err(
        &d,
        &["sign", "machine-encrypt", "--in", &data],
        18,
        "wrong_kind",
    );
    cli_err(
        &d,
        &["sign-jwt", "machine-encrypt", "--payload-file", &data],
        18,
        "wrong_kind",
    );

    // Oversized ciphertext: bad_request (10).
    cli_err(
        &d,
        &["decrypt", "machine-encrypt", "--in", &c300],
        10,
        "bad_request",
    );
    let e = c
        .call_untyped::<_, PlaintextResult>(
            names::DECRYPT,
            &DecryptArgs {
                key: "machine-encrypt".into(),
                ciphertext: vec![1; 300],
                label: None,
                version: None,
            },
        )
        .unwrap_err();
    assert_eq!(server_code(e), ErrorCode::BadRequest);

    // PSS with MOSIP's signing key (scheme fixed to RSASSA by its template): wrong_kind.
    cli_err(
        &d,
        &["sign", "machine-sign", "--scheme", "pss", "--in", &data],
        18,
        "wrong_kind",
    );
    assert_eq!(
        sign("machine-sign", None, Some("pss")).unwrap_err(),
        ErrorCode::WrongKind
    );
    // Unknown scheme: bad_request.
    assert_eq!(
        sign("machine-sign", None, Some("pkcs1")).unwrap_err(),
        ErrorCode::BadRequest
    );

    // The daemon is fine afterwards.
    let r = sign("machine-sign", Some(sha256(b"x")), None).expect("sign after errors");
    verify_pkcs1(&rsa_public(&c, "machine-sign"), &sha256(b"x"), &r.signature);
    drop(c);
    d.assert_running();
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 10. authorization

const SIGNER_ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "signer"
unix_users = ["nobody"]
ops = ["sign", "keys.public"]
keys = ["machine-*"]
"#;

#[test]
fn signer_role_can_sign_but_not_create_or_decrypt() {
    let mut d = tpm_builder()
        .roles(SIGNER_ROLES)
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .start();
    let dir = d.dir().to_path_buf();
    let data = dir.join("data");
    std::fs::write(&data, b"signed by nobody").unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ct = dir.join("ct");
    std::fs::write(&ct, [3u8; 256]).unwrap();
    std::fs::set_permissions(&ct, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let (_, out) = d.cli_as(
        "nobody",
        "nogroup",
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&data),
            "--out",
            "-",
        ],
    );
    assert!(out.status.success(), "nobody signs: {}", stderr(&out));
    assert_eq!(out.stdout.len(), 256);
    std::fs::write(dir.join("sig"), &out.stdout).unwrap();
    let (_, out) = d.cli_as("nobody", "nogroup", &["keys", "public", "machine-sign"]);
    assert!(
        out.status.success(),
        "nobody reads the public key: {}",
        stderr(&out)
    );
    std::fs::write(dir.join("pub.pem"), &out.stdout).unwrap();
    openssl_verify(&dir, "pub.pem", "sig", "data", &[]);

    for args in [
        vec![
            "keys",
            "create",
            "evil",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
        vec![
            "keys",
            "create",
            "machine-x",
            "--backend",
            "tpm",
            "--kind",
            "rsa2048-sign",
        ],
        vec!["decrypt", "machine-encrypt", "--in", path_str(&ct)],
        vec![
            "sign-jwt",
            "machine-sign",
            "--payload-file",
            path_str(&data),
        ],
    ] {
        let (_, out) = d.cli_as("nobody", "nogroup", &args);
        assert_eq!(out.status.code(), Some(13), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("permission_denied"),
            "{}",
            stderr(&out)
        );
    }
    // Nothing was created.
    let out = cli_ok(&d, &["--json", "keys", "list"]);
    let j: Json = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["machine-encrypt", "machine-sign"]);

    let audit = d.audit_lines();
    assert!(audit.iter().any(|l| l["uid"] == 65534
        && l["op"] == "sign"
        && l["role"] == "signer"
        && l["outcome"] == "ok"));
    assert!(audit
        .iter()
        .any(|l| l["uid"] == 65534 && l["op"] == "decrypt" && l["outcome"] == "permission_denied"));
    assert_eq!(d.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 11. SIGTERM drain with TPM work in flight

#[test]
fn sigterm_drains_an_in_flight_tpm_batch() {
    const N: usize = 256;
    let mut d = tpm_daemon();
    let key = rsa_public(&d.client(), "machine-sign");
    let digests: Vec<Vec<u8>> = (0..N)
        .map(|i| sha256(format!("drain {i}").as_bytes()))
        .collect();
    let mut conn = d.raw();
    assert!(conn.hello().unwrap().result.is_ok());
    let t0 = Instant::now();
    conn.send(
        42,
        names::SIGN_BATCH,
        &SignBatchArgs {
            key: "machine-sign".into(),
            digests: digests
                .iter()
                .cloned()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            scheme: None,
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let t_sig = t0.elapsed();
    let r = conn.expect_frame(60 * SEC);
    let t_resp = t0.elapsed();
    assert_eq!(r.id, 42);
    let res: SignBatchResult = r.into_result().expect("batch answered after SIGTERM");
    assert_eq!(res.results.len(), N);
    for (i, item) in res.results.iter().enumerate() {
        assert!(item.err.is_none(), "item {i}: {:?}", item.err);
        verify_pkcs1(&key, &digests[i], item.signature.as_ref().unwrap());
    }
    eprintln!("batch of {N}: SIGTERM at {t_sig:?}, response at {t_resp:?}");
    assert!(
        t_resp > t_sig,
        "the batch finished before SIGTERM ({t_resp:?}); it was not in flight"
    );
    conn.expect_closed(30 * SEC);
    let st = d.wait_exit(30 * SEC);
    assert_eq!(st.code(), Some(0), "{}", d.stderr());
}

/// MOSIP-template keys are the machine's identity for the TPM's lifetime: a rotation would derive
/// the same key again, so it is refused, and they never expire (checked 4 years ahead with
/// libfaketime on the daemon process), while a default-template TPM key does expire.
#[test]
fn mosip_keys_cannot_rotate_and_do_not_expire() {
    let mut d = tpm_builder()
        .extra("[keys.defaults]\nvalidity_days = 1095\npre_expire_days = 60\n")
        .start();
    cli_err(&d, &["keys", "rotate", "machine-sign"], 10, "bad_request");
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "plain-sign",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
    );
    let show = cli_ok(&d, &["--json", "keys", "show", "machine-sign"]);
    let v: Json = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(1));

    d.shift_clock("+1200d");
    d.restart();
    let data = file(&d, "data");
    std::fs::write(&data, b"packet four years later").expect("write");
    let sig = file(&d, "sig");
    let pem = file(&d, "machine-sign.pem");
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
    );
    cli_ok(
        &d,
        &["keys", "public", "machine-sign", "--out", path_str(&pem)],
    );
    openssl_verify(
        d.dir(),
        path_str(&pem),
        path_str(&sig),
        path_str(&data),
        &[],
    );
    cli_err(
        &d,
        &[
            "sign",
            "plain-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
        16,
        "key_expired",
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// Destroying a default-template version frees its persistent handle; a key created next reuses
/// the handle and must work at once (the TSS must not remember the evicted object).
#[test]
fn persistent_handle_reused_after_destroy_works() {
    let mut d = tpm_builder().start();
    let data = file(&d, "data");
    std::fs::write(&data, b"reuse").expect("write");
    let sig = file(&d, "sig");
    for name in ["first", "second", "third"] {
        cli_ok(
            &d,
            &[
                "keys",
                "create",
                name,
                "--kind",
                "rsa2048-sign",
                "--backend",
                "tpm",
            ],
        );
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&data),
                "--out",
                path_str(&sig),
            ],
        );
        cli_ok(&d, &["keys", "rotate", name]);
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&data),
                "--out",
                path_str(&sig),
            ],
        );
        cli_ok(&d, &["keys", "destroy", name, "--version", "1"]);
        let pem = file(&d, &format!("{name}.pem"));
        cli_ok(&d, &["keys", "public", name, "--out", path_str(&pem)]);
        openssl_verify(
            d.dir(),
            path_str(&pem),
            path_str(&sig),
            path_str(&data),
            &[],
        );
    }
    // Each destroy freed the handle the next create took: six keys were made, three remain.
    let list = cli_ok(&d, &["--json", "keys", "list"]);
    let v: Json = serde_json::from_slice(&list.stdout).expect("json");
    let destroyed = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["versions"][0]["state"] == "destroyed")
        .count();
    assert!(destroyed >= 3, "{v}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// A batch larger than the TPM can sign within the op timeout is answered in time: the items
/// reached are signed, the rest fail on their own with `backend_unavailable`.
#[test]
fn batch_stops_at_the_op_timeout_and_answers() {
    let d = tpm_builder().server(&["op_timeout_secs = 1"]).start();
    let c = d.client();
    let digests: Vec<Vec<u8>> = (0..1024u32).map(|i| sha256(&i.to_be_bytes())).collect();
    let t = Instant::now();
    let r: SignBatchResult = c
        .call_untyped(
            names::SIGN_BATCH,
            &SignBatchArgs {
                key: "machine-sign".into(),
                digests: digests
                    .iter()
                    .map(|d| serde_bytes::ByteBuf::from(d.clone()))
                    .collect(),
                scheme: None,
            },
        )
        .expect("the batch is answered, not timed out as a whole");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let done = r
        .results
        .iter()
        .take_while(|i| i.signature.is_some())
        .count();
    assert!(done > 0, "some items are signed before the limit");
    assert!(done < 1024, "swtpm cannot sign 1024 digests in 0.9 s");
    for item in &r.results[done..] {
        let e = item.err.as_ref().expect("unreached items fail");
        assert_eq!(e.code, "backend_unavailable");
        assert!(e.message.contains("batch time limit"), "{}", e.message);
    }
    let key = rsa_public(&c, "machine-sign");
    for (i, item) in r.results[..done].iter().enumerate() {
        verify_pkcs1(&key, &digests[i], item.signature.as_ref().unwrap());
    }
}
