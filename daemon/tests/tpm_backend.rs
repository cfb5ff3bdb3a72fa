//! TPM backend against a real swtpm (never a mock). Each test starts its own swtpm under a temporary
//! directory with `swtpm/swtpm-start` and stops it on drop; a missing swtpm fails the test.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use custody_daemon::backend::{
    tpm::{TpmBackend, TpmConfig},
    Backend, BackendError, KeyKind, KeyRef, NewKey, PublicKeyInfo, SignScheme, Template,
};
use custody_testkit::{
    openssl_oaep_encrypt_der, openssl_verify_der, python_tpm_primary, sha256, RsaSig, Swtpm,
};
use rsa::{pkcs8::DecodePublicKey, RsaPublicKey};
use sha2::Sha256;

/// Verifies `sig` over `data` with openssl; `pss_salt` selects RSA-PSS with that salt length.
fn verifies(info: &PublicKeyInfo, data: &[u8], sig: &[u8], pss_salt: Option<&str>) -> bool {
    let scheme = pss_salt.map_or(RsaSig::Pkcs1v15, RsaSig::Pss);
    openssl_verify_der(&info.spki_der, data, sig, scheme).is_ok()
}

/// RSA-OAEP-SHA256 encryption by openssl, with an optional hex label.
fn oaep_encrypt(info: &PublicKeyInfo, msg: &[u8], label_hex: Option<&str>) -> Vec<u8> {
    openssl_oaep_encrypt_der(&info.spki_der, msg, "sha256", label_hex)
}

fn backend(tcti: &str, timeout: Duration) -> TpmBackend {
    let mut cfg = TpmConfig::new(tcti);
    cfg.op_timeout = timeout;
    TpmBackend::start(cfg)
}

fn new_key(kind: KeyKind, template: Template) -> NewKey<'static> {
    NewKey {
        name: "test",
        version: 1,
        kind,
        template,
        master: None,
    }
}

fn create(b: &TpmBackend, kind: KeyKind, template: Template) -> (String, PublicKeyInfo) {
    let t = Instant::now();
    let k = b.create(&new_key(kind, template)).expect("create key");
    eprintln!(
        "create {kind} {} -> {} in {:?}",
        template.as_str(),
        k.backend_ref,
        t.elapsed()
    );
    (k.backend_ref, k.public.expect("public key"))
}

#[test]
fn sign_with_both_templates_verifies_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tmp.path().join("swtpm"));
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    let (mosip_ref, mosip_pub) = create(&b, KeyKind::Rsa2048Sign, Template::Mosip);
    assert_eq!(mosip_ref, "mosip:sign");
    let (def_ref, def_pub) = create(&b, KeyKind::Rsa2048Sign, Template::Default);
    assert!(def_ref.starts_with("persistent:0x81010100:"), "{def_ref}");

    let data = b"registration packet to be signed";
    let digest = sha256(data);
    for (r, info) in [(&mosip_ref, &mosip_pub), (&def_ref, &def_pub)] {
        let sig = b
            .sign(&KeyRef::object(r), &digest, SignScheme::Pkcs1v15)
            .expect("pkcs1 sign");
        assert_eq!(sig.len(), 256);
        assert!(verifies(info, data, &sig, None), "{r} PKCS#1 v1.5");
        assert!(!verifies(info, b"other data", &sig, None));
    }

    // PSS with the default key: the TPM uses a salt of 32 bytes (= digest length).
    let sig = b
        .sign(&KeyRef::object(&def_ref), &digest, SignScheme::Pss)
        .expect("pss sign");
    assert_eq!(sig.len(), 256);
    assert!(verifies(&def_pub, data, &sig, Some("32")), "PSS salt 32");
    assert!(verifies(&def_pub, data, &sig, Some("-2")), "PSS salt auto");
    assert!(!verifies(&def_pub, data, &sig, Some("222")), "not max salt");

    // MOSIP's template fixes RSASSA: PSS is refused with a typed error.
    match b.sign(&KeyRef::object(&mosip_ref), &digest, SignScheme::Pss) {
        Err(BackendError::Unsupported(m)) => eprintln!("mosip PSS: {m}"),
        other => panic!("mosip PSS must be Unsupported, got {other:?}"),
    }
}

#[test]
fn decrypt_openssl_oaep_ciphertexts_with_both_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tmp.path().join("swtpm"));
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    let (mosip_ref, mosip_pub) = create(&b, KeyKind::Rsa2048Oaep, Template::Mosip);
    assert_eq!(mosip_ref, "mosip:encrypt");
    let (def_ref, def_pub) = create(&b, KeyKind::Rsa2048Oaep, Template::Default);

    let msg = b"32-byte session key for packets!";
    for (r, info) in [(&mosip_ref, &mosip_pub), (&def_ref, &def_pub)] {
        // Empty label (MOSIP's envelope convention).
        let ct = oaep_encrypt(info, msg, None);
        let pt = b
            .decrypt_oaep(&KeyRef::object(r), &ct, b"")
            .expect("decrypt, empty label");
        assert_eq!(pt.as_slice(), msg, "{r} empty label");
        // The wrong label fails the OAEP check.
        match b.decrypt_oaep(&KeyRef::object(r), &ct, &[0]) {
            Err(BackendError::Integrity(m)) => eprintln!("{r} wrong label: {m}"),
            other => panic!("wrong label must be Integrity, got {other:?}"),
        }

        // The registration client's label, one zero byte, is OpenSSL's rsa_oaep_label:00.
        let ct0 = oaep_encrypt(info, msg, Some("00"));
        let pt = b
            .decrypt_oaep(&KeyRef::object(r), &ct0, &[0])
            .expect("decrypt, label 00");
        assert_eq!(pt.as_slice(), msg, "{r} label 00");
        assert!(matches!(
            b.decrypt_oaep(&KeyRef::object(r), &ct0, b""),
            Err(BackendError::Integrity(_))
        ));

        // A TPM label must end with a zero byte, which is part of the OAEP label L.
        let ct_abc0 = oaep_encrypt(info, msg, Some("61626300"));
        let pt = b
            .decrypt_oaep(&KeyRef::object(r), &ct_abc0, b"abc\0")
            .expect("decrypt, label abc\\0");
        assert_eq!(pt.as_slice(), msg);
        assert!(matches!(
            b.decrypt_oaep(&KeyRef::object(r), &ct_abc0, b"abc"),
            Err(BackendError::BadInput(_))
        ));
    }
    // The backend still works after the failures (no TPM failure mode, no leaked slots).
    let ct = oaep_encrypt(&mosip_pub, msg, None);
    assert_eq!(
        b.decrypt_oaep(&KeyRef::object(&mosip_ref), &ct, b"")
            .unwrap()
            .as_slice(),
        msg
    );
}

/// The RSA exponent field of a marshalled RSA TPMT_PUBLIC.
fn tpmt_exponent(tpmt: &[u8]) -> u32 {
    // type(2) nameAlg(2) objectAttributes(4) authPolicy(2+n) symmetric(2, NULL) scheme(2+2)
    // keyBits(2) exponent(4)
    let policy_len = u16::from_be_bytes([tpmt[8], tpmt[9]]) as usize;
    let at = 10 + policy_len;
    assert_eq!(&tpmt[at..at + 2], &[0x00, 0x10], "symmetric NULL");
    let e = at + 2 + 4 + 2;
    u32::from_be_bytes([tpmt[e], tpmt[e + 1], tpmt[e + 2], tpmt[e + 3]])
}

#[test]
fn mosip_templates_match_independent_raw_tpm_commands() {
    use rsa::traits::PublicKeyParts;
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tmp.path().join("swtpm"));

    // tpm2-tools' own template for "the same" key writes exponent 0 (meaning 65537): a different
    // template, hence a different primary. tpm2-tools leaves its primary loaded: doing it three
    // times fills all 3 transient slots, like a crashed client would, and the backend must flush
    // those leftovers when it connects.
    for _ in 0..3 {
        let out = tpm.tool(
            tmp.path(),
            &[
                "tpm2_createprimary",
                "-C",
                "e",
                "-G",
                "rsa2048:rsassa-sha256:null",
                "-g",
                "sha1",
                "-a",
                "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
                "-c",
                "tools.ctx",
                "-o",
                "tools.pem",
                "-f",
                "pem",
            ],
        );
        assert!(
            out.status.success(),
            "tpm2_createprimary: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(transient_count(&tpm, tmp.path()), 3);
    let tools_pem = std::fs::read_to_string(tmp.path().join("tools.pem")).unwrap();
    let tools_key = RsaPublicKey::from_public_key_pem(&tools_pem).expect("tools PEM");

    let b = backend(tpm.tcti(), Duration::from_secs(30));
    for (kind, which) in [
        (KeyKind::Rsa2048Sign, "sign"),
        (KeyKind::Rsa2048Oaep, "encrypt"),
    ] {
        let (_, info) = create(&b, kind, Template::Mosip);
        let tpmt = info.tpmt.clone().expect("tpmt");
        let py = python_tpm_primary(tpm.port(), which);
        assert_eq!(
            hex::encode(&py),
            hex::encode(&tpmt),
            "{which}: TPMT_PUBLIC differs"
        );
        assert_eq!(tpmt_exponent(&tpmt), 65537, "{which}: explicit exponent");

        // The SPKI carries the same modulus as the TPMT_PUBLIC.
        let key = RsaPublicKey::from_public_key_der(&info.spki_der).unwrap();
        assert_eq!(key.e().to_bytes_be(), vec![1, 0, 1]);
        assert!(hex::encode(&tpmt).ends_with(&hex::encode(key.n().to_bytes_be())));
        if which == "sign" {
            assert_eq!(tools_key.e().to_bytes_be(), vec![1, 0, 1]);
            assert_ne!(
                tools_key.n(),
                key.n(),
                "exponent 0 vs 65537 must give another key"
            );
        }
    }
    // The script flushed its objects: only the backend's two cached primaries are loaded.
    let d = sha256(b"x");
    b.sign(&KeyRef::object("mosip:sign"), &d, SignScheme::Pkcs1v15)
        .expect("sign after interop");
    assert_eq!(transient_count(&tpm, tmp.path()), 2);
    drop(b);
    assert_eq!(
        transient_count(&tpm, tmp.path()),
        0,
        "dropped backend flushes its primaries"
    );
}

/// Number of transient objects loaded in the TPM.
fn transient_count(tpm: &Swtpm, dir: &Path) -> usize {
    let out = tpm.tool(dir, &["tpm2_getcap", "handles-transient"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("0x80"))
        .count()
}

#[test]
fn public_keys_survive_backend_and_swtpm_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("swtpm");
    let mut tpm = Swtpm::start(&dir);
    let specs = [
        (KeyKind::Rsa2048Sign, Template::Mosip),
        (KeyKind::Rsa2048Oaep, Template::Mosip),
        (KeyKind::Rsa2048Sign, Template::Default),
        (KeyKind::Rsa2048Oaep, Template::Default),
    ];
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    let keys: Vec<(KeyKind, String, PublicKeyInfo)> = specs
        .iter()
        .map(|(k, t)| {
            let (r, p) = create(&b, *k, *t);
            (*k, r, p)
        })
        .collect();
    assert!(
        keys[2].1.starts_with("persistent:0x81010100:"),
        "{}",
        keys[2].1
    );
    assert!(
        keys[3].1.starts_with("persistent:0x81010101:"),
        "{}",
        keys[3].1
    );
    drop(b);

    let check = |b: &TpmBackend, when: &str| {
        for (kind, r, info) in &keys {
            let t = Instant::now();
            let now = b
                .public_key(&KeyRef::object(r), *kind)
                .unwrap_or_else(|e| panic!("{when} {r}: {e}"));
            eprintln!("{when}: public_key {r} in {:?}", t.elapsed());
            assert_eq!(&now, info, "{when}: {r} public key changed");
        }
    };
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    check(&b, "new backend");
    drop(b);

    tpm.restart();
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    check(&b, "after swtpm restart");
    let data = b"still signing after a TPM restart";
    for (kind, r, info) in &keys {
        match kind {
            KeyKind::Rsa2048Sign => {
                let sig = b
                    .sign(&KeyRef::object(r), &sha256(data), SignScheme::Pkcs1v15)
                    .expect("sign");
                assert!(verifies(info, data, &sig, None), "{r}");
            }
            _ => {
                let ct = oaep_encrypt(info, data, None);
                assert_eq!(
                    b.decrypt_oaep(&KeyRef::object(r), &ct, b"")
                        .expect("decrypt")
                        .as_slice(),
                    data
                );
            }
        }
    }

    // Destroy evicts the persisted key; its handle is then free for the next key.
    b.destroy(&KeyRef::object(&keys[2].1)).expect("destroy");
    assert!(matches!(
        b.public_key(&KeyRef::object(&keys[2].1), KeyKind::Rsa2048Sign),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        b.sign(
            &KeyRef::object(&keys[2].1),
            &sha256(data),
            SignScheme::Pkcs1v15
        ),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        b.destroy(&KeyRef::object(&keys[2].1)),
        Err(BackendError::NotFound(_))
    ));
    // The next key takes the freed handle. The old reference names the same handle but a
    // different key: it must not reach the new key (no signature, no eviction).
    let (r, new_pub) = create(&b, KeyKind::Rsa2048Sign, Template::Default);
    assert!(r.starts_with("persistent:0x81010100:"), "{r}");
    assert_ne!(r, keys[2].1);
    assert!(matches!(
        b.sign(
            &KeyRef::object(&keys[2].1),
            &sha256(data),
            SignScheme::Pkcs1v15
        ),
        Err(BackendError::NotFound(_))
    ));
    assert!(matches!(
        b.destroy(&KeyRef::object(&keys[2].1)),
        Err(BackendError::NotFound(_))
    ));
    let sig = b
        .sign(&KeyRef::object(&r), &sha256(data), SignScheme::Pkcs1v15)
        .expect("new key signs");
    assert!(verifies(&new_pub, data, &sig, None));
}

#[test]
fn tpm_down_is_unavailable_quickly_and_recovers_without_new_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("swtpm");
    let mut tpm = Swtpm::start(&dir);
    // Keys are created with a generous timeout: RSA key generation on swtpm can take seconds
    // while the other tests load the machine. The short timeout is for the outage itself.
    let (def_ref, def_pub, mosip_ref, mosip_pub) = {
        let setup = backend(tpm.tcti(), Duration::from_secs(60));
        let (def_ref, def_pub) = create(&setup, KeyKind::Rsa2048Sign, Template::Default);
        let (mosip_ref, mosip_pub) = create(&setup, KeyKind::Rsa2048Sign, Template::Mosip);
        (def_ref, def_pub, mosip_ref, mosip_pub)
    };
    let timeout = Duration::from_secs(5);
    let b = backend(tpm.tcti(), timeout);
    let data = b"data";
    let d = sha256(data);
    b.sign(&KeyRef::object(&mosip_ref), &d, SignScheme::Pkcs1v15)
        .expect("sign while up");
    assert!(b.health().ok);

    tpm.stop();
    for r in [&mosip_ref, &def_ref] {
        let t = Instant::now();
        let res = b.sign(&KeyRef::object(r), &d, SignScheme::Pkcs1v15);
        eprintln!("sign with TPM down: {res:?} after {:?}", t.elapsed());
        assert!(matches!(res, Err(BackendError::Unavailable(_))), "{res:?}");
        assert!(t.elapsed() <= timeout + Duration::from_millis(200));
    }
    let h = b.health();
    eprintln!("health while down: {h:?}");
    assert!(!h.ok && h.detail.contains(tpm.tcti()));

    let before = tpm.tcti().to_owned();
    tpm.restart();
    assert_eq!(before, tpm.tcti(), "swtpm-start reuses the port");
    for (r, info) in [(&mosip_ref, &mosip_pub), (&def_ref, &def_pub)] {
        let sig = b
            .sign(&KeyRef::object(r), &d, SignScheme::Pkcs1v15)
            .expect("sign after recovery");
        assert!(verifies(info, data, &sig, None));
    }
    assert!(b.health().ok);

    // A TPM that hangs (stopped process, connection accepted by the kernel but never answered):
    // requests give up after op_timeout instead of blocking, and it recovers when it resumes.
    let pid = std::fs::read_to_string(dir.join("swtpm.pid")).unwrap();
    let pid = pid.trim();
    assert!(Command::new("kill")
        .args(["-STOP", pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    let res = b.sign(&KeyRef::object(&mosip_ref), &d, SignScheme::Pkcs1v15);
    eprintln!("sign with TPM hung: {res:?} after {:?}", t.elapsed());
    assert!(matches!(res, Err(BackendError::Unavailable(_))), "{res:?}");
    assert!(t.elapsed() < timeout + Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-CONT", pid])
        .status()
        .unwrap()
        .success());
    let mut ok = false;
    for _ in 0..10 {
        if let Ok(sig) = b.sign(&KeyRef::object(&mosip_ref), &d, SignScheme::Pkcs1v15) {
            assert!(verifies(&mosip_pub, data, &sig, None));
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok, "no recovery after the TPM resumed");
}

#[test]
fn sixty_four_threads_sign_concurrently() {
    use rsa::{Pkcs1v15Sign, Pss};
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tmp.path().join("swtpm"));
    let b = Arc::new(backend(tpm.tcti(), Duration::from_secs(60)));
    let (mosip_ref, mosip_pub) = create(&b, KeyKind::Rsa2048Sign, Template::Mosip);
    let (def_ref, def_pub) = create(&b, KeyKind::Rsa2048Sign, Template::Default);

    // Sequential rate through the backend (one caller).
    let n = 50;
    let t = Instant::now();
    for i in 0..n {
        let d = sha256(format!("seq {i}").as_bytes());
        b.sign(&KeyRef::object(&mosip_ref), &d, SignScheme::Pkcs1v15)
            .expect("sign");
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("sequential mosip:sign {n} signs: {:.0}/s", n as f64 / secs);
    let t = Instant::now();
    for i in 0..n {
        let d = sha256(format!("seq {i}").as_bytes());
        b.sign(&KeyRef::object(&def_ref), &d, SignScheme::Pkcs1v15)
            .expect("sign");
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "sequential persistent sign {n} signs: {:.0}/s",
        n as f64 / secs
    );

    let per_thread = 4;
    let t = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let b = Arc::clone(&b);
            let (mosip_ref, def_ref) = (mosip_ref.clone(), def_ref.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for j in 0..per_thread {
                    let d = sha256(format!("thread {i} digest {j}").as_bytes());
                    let (r, scheme) = match (i + j) % 3 {
                        0 => (&mosip_ref, SignScheme::Pkcs1v15),
                        1 => (&def_ref, SignScheme::Pkcs1v15),
                        _ => (&def_ref, SignScheme::Pss),
                    };
                    let sig = b
                        .sign(&KeyRef::object(r), &d, scheme)
                        .expect("concurrent sign");
                    out.push((r.clone(), scheme, d, sig));
                }
                out
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "64 threads x {per_thread}: {} signs in {secs:.2}s = {:.0}/s",
        results.len(),
        results.len() as f64 / secs
    );
    assert_eq!(results.len(), 64 * per_thread);
    let mosip_key = RsaPublicKey::from_public_key_der(&mosip_pub.spki_der).unwrap();
    let def_key = RsaPublicKey::from_public_key_der(&def_pub.spki_der).unwrap();
    for (r, scheme, d, sig) in &results {
        let key = if *r == mosip_ref {
            &mosip_key
        } else {
            &def_key
        };
        let ok = match scheme {
            SignScheme::Pkcs1v15 => key.verify(Pkcs1v15Sign::new::<Sha256>(), d, sig),
            SignScheme::Pss => key.verify(Pss::new_with_salt::<Sha256>(32), d, sig),
        };
        assert!(ok.is_ok(), "{r} {scheme:?} signature does not verify");
    }
}

#[test]
fn bad_input_and_wrong_kind_give_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tmp.path().join("swtpm"));
    let b = backend(tpm.tcti(), Duration::from_secs(30));
    let (sign_ref, _) = create(&b, KeyKind::Rsa2048Sign, Template::Default);
    let (oaep_ref, oaep_pub) = create(&b, KeyKind::Rsa2048Oaep, Template::Default);
    let d = sha256(b"x");

    for r in ["mosip:encrypt", oaep_ref.as_str()] {
        for len in [0, 255, 257] {
            let res = b.decrypt_oaep(&KeyRef::object(r), &vec![1u8; len], b"");
            assert!(
                matches!(res, Err(BackendError::BadInput(_))),
                "{r} {len}: {res:?}"
            );
        }
        let res = b.sign(&KeyRef::object(r), &d, SignScheme::Pkcs1v15);
        assert!(
            matches!(res, Err(BackendError::Unsupported(_))),
            "sign with {r}: {res:?}"
        );
        let res = b.public_key(&KeyRef::object(r), KeyKind::Rsa2048Sign);
        assert!(
            matches!(res, Err(BackendError::Unsupported(_))),
            "{r}: {res:?}"
        );
    }
    for r in ["mosip:sign", sign_ref.as_str()] {
        let res = b.decrypt_oaep(&KeyRef::object(r), &[1u8; 256], b"");
        assert!(
            matches!(res, Err(BackendError::Unsupported(_))),
            "decrypt with {r}: {res:?}"
        );
    }
    // Garbage ciphertext of the right size: an integrity failure, not a crash or a TPM fault.
    let mut ct = oaep_encrypt(&oaep_pub, b"secret", None);
    ct[100] ^= 1;
    let res = b.decrypt_oaep(&KeyRef::object(&oaep_ref), &ct, b"");
    assert!(matches!(res, Err(BackendError::Integrity(_))), "{res:?}");
    // A label the TPM cannot take (no terminating zero byte).
    let res = b.decrypt_oaep(&KeyRef::object(&oaep_ref), &[1u8; 256], b"label");
    assert!(matches!(res, Err(BackendError::BadInput(_))), "{res:?}");

    for r in [
        "persistent:0x81010180",
        "persistent:0x81000001",
        "nonsense",
        "mosip:other",
    ] {
        let res = b.sign(&KeyRef::object(r), &d, SignScheme::Pkcs1v15);
        assert!(
            matches!(res, Err(BackendError::NotFound(_))),
            "{r}: {res:?}"
        );
    }
    let res = b.create(&new_key(KeyKind::Aes256, Template::Default));
    assert!(matches!(res, Err(BackendError::Unsupported(_))), "{res:?}");
    assert!(matches!(
        b.wrap_secret(&KeyRef::object("x"), b"s", b"aad"),
        Err(BackendError::Unsupported(_))
    ));
    assert!(matches!(
        b.unwrap_secret(&KeyRef::object("x"), b"s", b"aad"),
        Err(BackendError::Unsupported(_))
    ));
    assert!(matches!(
        b.destroy(&KeyRef::object("mosip:sign")),
        Err(BackendError::Unsupported(_))
    ));

    // After all the failures the keys still work.
    let ct = oaep_encrypt(&oaep_pub, b"secret", None);
    assert_eq!(
        b.decrypt_oaep(&KeyRef::object(&oaep_ref), &ct, b"")
            .unwrap()
            .as_slice(),
        b"secret"
    );
    b.sign(&KeyRef::object(&sign_ref), &d, SignScheme::Pss)
        .expect("sign");
    let h = b.health();
    assert!(h.ok && h.detail.contains(tpm.tcti()), "{h:?}");
}
