//! `decrypt` (TPM, OAEP labels) and `unwrap` (HSM, by thumbprint or version) of ciphertexts made
//! by openssl, and one indistinguishable error for every kind of decryption failure.

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use sha2::{Digest, Sha256};

#[test]
fn decrypt_openssl_oaep_with_empty_and_mosip_label() {
    let mut d = tpm_daemon();
    let dir = d.dir().to_path_buf();
    cli_public(&d, "machine-encrypt", "pem", "enc.pem");
    let secret = b"0123456789abcdef0123456789ABCDEF session key!";
    let enc_pem = dir.join("enc.pem");
    write(
        &d,
        "ct-empty",
        &openssl_oaep_encrypt(&enc_pem, secret, "sha256", None),
    );
    write(
        &d,
        "ct-mosip",
        &openssl_oaep_encrypt(&enc_pem, secret, "sha256", Some("00")),
    );
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
        ErrorCode::Integrity,
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
        ErrorCode::Integrity,
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
        ErrorCode::Integrity,
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
        ErrorCode::Integrity,
    );
    let out = cli_ok(&d, &["decrypt", "machine-encrypt", "--in", &ct_empty]);
    assert_eq!(out.stdout, secret);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn unwrap_openssl_wrapped_keys_by_thumbprint_and_version() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "ida", "rsa2048-oaep");
    let pem1 = pem(&d, "ida", 1);
    let t1 = thumb(&d, "ida", 1);

    // A bare 256-byte wrapped key (current version).
    let dk1 = random(32);
    let ct1 = openssl_oaep_encrypt(&pem1, &dk1, "sha256", None);
    let w = write(&d, "ct1.bin", &ct1);
    let out = file(&d, "dk1.out");
    cli_ok(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&w),
            "--out",
            path_str(&out),
        ],
    );
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
    let ct2 = openssl_oaep_encrypt(&pem2, &dk2, "sha256", None);

    let w1 = write(&d, "w1.bin", &[t1.clone(), ct1.clone()].concat());
    let w2 = write(&d, "w2.bin", &[t2.clone(), ct2.clone()].concat());
    assert_eq!(read(&w1).len(), 288);
    let j = cli_json(&d, &["unwrap", "ida", "--in", path_str(&w1)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk1);
    let j = cli_json(&d, &["unwrap", "ida", "--in", path_str(&w2)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk2);

    // A bare 256-byte key now goes to the current version (v2): v1's ciphertext fails OAEP.
    cli_err(
        &d,
        &["unwrap", "ida", "--in", path_str(&w)],
        ErrorCode::Integrity,
    );
    let w2bare = write(&d, "ct2.bin", &ct2);
    let j = cli_json(&d, &["unwrap", "ida", "--in", path_str(&w2bare)]);
    assert_eq!(j["version"], 2, "{j}");

    // --thumbprint (a 4-byte prefix, and the full 32 bytes) and --version select v1.
    let prefix = hex::encode(&t1[..4]);
    let j = cli_json(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&w),
            "--thumbprint",
            &prefix,
        ],
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
            path_str(&w),
            "--thumbprint",
            &full,
            "--out",
            path_str(&out),
        ],
    );
    assert_eq!(read(&out), dk1);
    let j = cli_json(
        &d,
        &["unwrap", "ida", "--in", path_str(&w), "--version", "1"],
    );
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), dk1);
    // `version` wins over the embedded thumbprint (no consistency check): v2 cannot open it.
    cli_err(
        &d,
        &["unwrap", "ida", "--in", path_str(&w1), "--version", "2"],
        ErrorCode::Integrity,
    );

    // Wrong thumbprints → not_found; a version that does not exist → not_found.
    let bogus = random(32);
    let wb = write(&d, "wb.bin", &[bogus.clone(), ct1.clone()].concat());
    cli_err(
        &d,
        &["unwrap", "ida", "--in", path_str(&wb)],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&w),
            "--thumbprint",
            &hex::encode(&bogus),
        ],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &["unwrap", "ida", "--in", path_str(&w), "--version", "9"],
        ErrorCode::NotFound,
    );
    // Bad lengths → bad_request.
    let short = write(&d, "short.bin", &ct1[..255]);
    cli_err(
        &d,
        &["unwrap", "ida", "--in", path_str(&short)],
        ErrorCode::BadRequest,
    );
    let thirty_three = hex::encode([0u8; 33]);
    cli_err(
        &d,
        &[
            "unwrap",
            "ida",
            "--in",
            path_str(&w),
            "--thumbprint",
            &thirty_three,
        ],
        ErrorCode::BadRequest,
    );

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
    create_pkcs11(&d, "ora", "rsa2048-oaep");
    let pem = file(&d, "ora.pem");
    let der_path = file(&d, "ora.der");
    cli_ok(&d, &["keys", "public", "ora", "--out", path_str(&pem)]);
    cli_ok(
        &d,
        &[
            "keys",
            "public",
            "ora",
            "--format",
            "der",
            "--out",
            path_str(&der_path),
        ],
    );
    let der = read(&der_path);
    let key = rsa::RsaPublicKey::from_public_key_der(&der).expect("spki");
    let mut rng = rand_core_rng();

    let wrapped = write(
        &d,
        "wrapped",
        &openssl_oaep_encrypt(&pem, &[7u8; 32], "sha256", None),
    );
    let m_label = cli_err(
        &d,
        &[
            "decrypt",
            "ora",
            "--in",
            path_str(&wrapped),
            "--label-hex",
            "01",
        ],
        ErrorCode::Integrity,
    );
    let mut bad = read(&wrapped);
    bad[100] ^= 0x40;
    let corrupted = write(&d, "corrupted", &bad);
    let m_corrupt = cli_err(
        &d,
        &["unwrap", "ora", "--in", path_str(&corrupted)],
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
            path_str(&data),
            "--out",
            path_str(&env),
        ],
    );
    let mut tampered = read(&env);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = write(&d, "tampered.env", &tampered);
    let m_tag = cli_err(
        &d,
        &["envelope", "open", "ora", "--in", path_str(&tampered)],
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
        &["envelope", "open", "ora", "--in", path_str(&short)],
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
