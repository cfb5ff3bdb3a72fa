//! `sign`, `sign.batch` and `sign.jwt` with TPM keys (MOSIP's `machine-sign`, runtime keys) and
//! HSM keys: signatures checked with openssl and the `rsa` crate, batch items failing on their
//! own, the batch deadline, SIGTERM with a batch in flight, and typed errors for bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use custody_testkit::proto::ops::{
    names, DecryptArgs, PlaintextResult, SignArgs, SignBatchArgs, SignBatchResult, SignResult,
};
use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;

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
    openssl_verify(
        &dir.join("pub.pem"),
        &dir.join("data"),
        &dir.join("sig"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");

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
    openssl_verify(
        &dir.join("pub.pem"),
        &dir.join("data"),
        &dir.join("sig2"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");
    // RSASSA-PKCS1-v1_5 is deterministic: same signature both ways.
    assert_eq!(
        std::fs::read(dir.join("sig")).unwrap(),
        std::fs::read(dir.join("sig2")).unwrap()
    );

    // sign.batch through the library: 16 digests, one bad item in the middle.
    let c = d.client();
    let key = rsa_public(&c, "machine-sign");
    let mut digests: Vec<Vec<u8>> = (0..16)
        .map(|i| sha256(format!("item {i}").as_bytes()).to_vec())
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
        &dir.join("rt.pem"),
        &dir.join("data"),
        &dir.join("sig-pss"),
        RsaSig::Pss("32"),
    )
    .expect("openssl verifies the signature");
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
    openssl_verify(
        &dir.join("rt.pem"),
        &dir.join("data"),
        &dir.join("sig-rt"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");
    drop(c);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn hsm_signatures_verify_with_openssl() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "signer", "rsa2048-sign");
    let pubf = pem(&d, "signer", 1);
    let data = write(&d, "data.bin", &random(5000));
    let tampered = write(&d, "tampered.bin", &flip(read(&data), 17));

    let verify = |sig: &Path, data: &Path, pss: bool| -> bool {
        let scheme = if pss {
            RsaSig::Pss("32")
        } else {
            RsaSig::Pkcs1v15
        };
        openssl_verify(&pubf, data, sig, scheme).is_ok()
    };

    // PKCS#1 v1.5 (default scheme).
    let sig = file(&d, "sig.pkcs1");
    cli_ok(
        &d,
        &[
            "sign",
            "signer",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
    );
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
            path_str(&digest),
            "--prehashed",
            "--out",
            path_str(&sig2),
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
            path_str(&data),
            "--out",
            path_str(&sig),
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
            path_str(&digest),
            "--out",
            path_str(&sig3),
        ],
    );
    assert!(verify(&sig3, &data, true), "prehashed PSS does not verify");
    assert_ne!(read(&sig3), read(&sig), "PSS is randomised");

    // --json reports the version; after a rotation v2 signs and verifies with v2's key only.
    let j = cli_json(&d, &["sign", "signer", "--in", path_str(&data)]);
    assert_eq!(j["version"], 1, "{j}");
    cli_ok(&d, &["keys", "rotate", "signer"]);
    let j = cli_json(&d, &["sign", "signer", "--in", path_str(&data)]);
    assert_eq!(j["version"], 2, "{j}");
    let sig4 = write(&d, "sig4", &b64url_decode(j["signature"].as_str().unwrap()));
    assert!(
        !verify(&sig4, &data, false),
        "v2 signature verifies with v1"
    );
    let pub2 = pem(&d, "signer", 2);
    openssl_verify(&pub2, &data, &sig4, RsaSig::Pkcs1v15)
        .unwrap_or_else(|e| panic!("v2 signature: {e}"));

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

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
    openssl_verify(
        &dir.join("pub.pem"),
        &dir.join("jwt.input"),
        &dir.join("jwt.sig"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");

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

/// A batch larger than the TPM can sign within the op timeout is answered in time: the items
/// reached are signed, the rest fail on their own with `backend_unavailable`.
#[test]
fn batch_stops_at_the_op_timeout_and_answers() {
    let d = tpm_builder().server(&["op_timeout_secs = 1"]).start();
    let c = d.client();
    let digests: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| sha256(&i.to_be_bytes()).to_vec())
        .collect();
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

#[test]
fn sigterm_drains_an_in_flight_tpm_batch() {
    const N: usize = 256;
    let mut d = tpm_daemon();
    let key = rsa_public(&d.client(), "machine-sign");
    let digests: Vec<Vec<u8>> = (0..N)
        .map(|i| sha256(format!("drain {i}").as_bytes()).to_vec())
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
    cli_usage_err(&d, &["sign", "machine-sign", "--prehashed", "--in", &d31]);
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
    cli_err(
        &d,
        &["sign", "no-such-key", "--in", &data],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &["decrypt", "no-such-key", "--in", &c256],
        ErrorCode::NotFound,
    );
    cli_err(&d, &["keys", "public", "no-such-key"], ErrorCode::NotFound);

    // Wrong kind (18) both ways.
    cli_err(
        &d,
        &["decrypt", "machine-sign", "--in", &c256],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["sign", "machine-encrypt", "--in", &data],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["sign-jwt", "machine-encrypt", "--payload-file", &data],
        ErrorCode::WrongKind,
    );

    // Oversized ciphertext: bad_request (10).
    cli_err(
        &d,
        &["decrypt", "machine-encrypt", "--in", &c300],
        ErrorCode::BadRequest,
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
        ErrorCode::WrongKind,
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
    let r = sign("machine-sign", Some(sha256(b"x").to_vec()), None).expect("sign after errors");
    verify_pkcs1(&rsa_public(&c, "machine-sign"), &sha256(b"x"), &r.signature);
    drop(c);
    d.assert_running();
    assert_eq!(d.terminate().code(), Some(0));
}
