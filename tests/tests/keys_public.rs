//! `keys.public` of TPM keys: the MOSIP `TPMT_PUBLIC` field by field and its key index, the same
//! bytes as an independent raw CreatePrimary with MOSIP's template, and public keys that stay
//! the same across daemon and swtpm restarts.

use custody_testkit::proto::ops::{names, PublicKeyArgs, PublicKeyResult};
use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use rsa::traits::PublicKeyParts;

/// MOSIP's EK policy digest (authPolicy of the encryption key).
const EK_POLICY: &str = "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa";

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

#[test]
fn mosip_templates_match_independent_raw_create_primary() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    let sign = cli_public(&d, "machine-sign", "tpmt", "sign.tpmt");
    let enc = cli_public(&d, "machine-encrypt", "tpmt", "enc.tpmt");
    cli_public(&d, "machine-sign", "pem", "sign.pem");
    cli_public(&d, "machine-encrypt", "pem", "enc.pem");
    let port = d.swtpm().expect("swtpm").port();
    std::fs::write(dir.join("data"), b"interop").unwrap();
    write(
        &d,
        "ct",
        &openssl_oaep_encrypt(
            &dir.join("enc.pem"),
            b"interop secret",
            "sha256",
            Some("00"),
        ),
    );
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
        openssl_verify(
            &dir.join("sign.pem"),
            &dir.join("data"),
            &dir.join("sig"),
            RsaSig::Pkcs1v15,
        )
        .expect("openssl verifies the signature");
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
        let py = python_tpm_primary(port, which);
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
    let out = python(TPM_PRIMARY_PY, &["0", "sign", "--template"]);
    let template = hex::decode(stdout(&out).trim()).unwrap();
    assert_eq!(&sign[..template.len() - 2], &template[..template.len() - 2]);

    // The daemon comes back with the same keys and still signs and decrypts.
    d.restart();
    assert_eq!(cli_public(&d, "machine-sign", "tpmt", "sign2.tpmt"), sign);
    assert_eq!(cli_public(&d, "machine-encrypt", "tpmt", "enc2.tpmt"), enc);
    use_both_keys(&d, "after restart");
    assert_eq!(d.terminate().code(), Some(0));
}

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
    openssl_verify(
        &dir.join("rt.pem"),
        &dir.join("data"),
        &dir.join("sig"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");
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
    openssl_verify(
        &dir.join("ms.pem"),
        &dir.join("data"),
        &dir.join("sig2"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");
    assert_eq!(d.terminate().code(), Some(0));
}
