//! `envelope.seal` and `envelope.open` (MOSIP `VER_R2`) with HSM keys and external public keys,
//! both ways with the independent Python implementation, and precise errors for bad envelopes.

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;

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
            path_str(&pubf),
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env),
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
                path_str(&env),
                "--out",
                path_str(&out),
            ],
        );
        assert_eq!(&read(&out), plain);

        // Python seals base64url → the daemon opens with --base64.
        let env64 = file(&d, &format!("py{i}.env64"));
        py_envelope(&[
            "seal",
            "--pub",
            path_str(&pubf),
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env64),
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
                path_str(&env64),
                "--out",
                path_str(&out),
            ],
        );
        assert_eq!(&read(&out), plain);
    }

    // The daemon seals to an external key made by openssl → Python opens with the private key.
    let KeyPair {
        key,
        public_pem: extpub,
        public_der: extder,
    } = openssl_keypair(d.dir(), "partner", 2048);
    let plain = random(2048);
    let plainf = write(&d, "ext.plain", &plain);
    let env = file(&d, "ext.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            path_str(&extpub),
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env),
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
    py_envelope(&[
        "open",
        "--key",
        path_str(&key),
        "--in",
        path_str(&env),
        "--out",
        path_str(&out),
    ]);
    assert_eq!(read(&out), plain);
    // Base64url form, and --json (no version for an external key).
    let env64 = file(&d, "ext.env64");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            path_str(&extpub),
            "--base64",
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env64),
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
        path_str(&key),
        "--in",
        path_str(&env64),
        "--out",
        path_str(&out),
        "--base64",
    ]);
    assert_eq!(read(&out), plain);
    let j = cli_json(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            path_str(&extpub),
            "--in",
            path_str(&plainf),
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
            path_str(&plainf),
            "--out",
            path_str(&env),
        ],
    );
    assert_eq!(&read(&env)[6..38], &t1[..]);
    let j = cli_json(
        &d,
        &["envelope", "open", "ida-partner", "--in", path_str(&env)],
    );
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
            path_str(&plainf),
            "--out",
            path_str(&env2),
        ],
    );
    assert_ne!(read(&env)[38..340], read(&env2)[38..340]);

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn bad_envelopes_and_wrong_keys_get_precise_errors() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "bad", "rsa2048-oaep");
    create_pkcs11(&d, "other", "rsa2048-oaep");
    create_pkcs11(&d, "signer", "rsa2048-sign");
    let plainf = write(&d, "plain", &random(100));
    let seal = |key: &str, name: &str| -> Vec<u8> {
        let f = file(&d, name);
        cli_ok(
            &d,
            &[
                "envelope",
                "seal",
                key,
                "--in",
                path_str(&plainf),
                "--out",
                path_str(&f),
            ],
        );
        read(&f)
    };
    let env = seal("bad", "bad.env");
    let open = |bytes: &[u8], key: &str, code: ErrorCode| -> String {
        let f = write(&d, "case.env", bytes);
        cli_err(&d, &["envelope", "open", key, "--in", path_str(&f)], code)
    };

    // Sanity: the untouched envelope opens.
    let f = write(&d, "good.env", &env);
    cli_ok(&d, &["envelope", "open", "bad", "--in", path_str(&f)]);

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
            path_str(&signpem),
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&f),
        ],
    );
    open(&read(&f), "signer", ErrorCode::WrongKind);
    let ct = write(&d, "ct", &random(256));
    cli_err(
        &d,
        &["unwrap", "signer", "--in", path_str(&ct)],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["envelope", "seal", "signer", "--in", path_str(&plainf)],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["sign", "bad", "--in", path_str(&plainf)],
        ErrorCode::WrongKind,
    );
    // Random ciphertext is not valid OAEP → integrity.
    cli_err(
        &d,
        &["unwrap", "bad", "--in", path_str(&ct)],
        ErrorCode::Integrity,
    );
    // Not an RSA-2048 external key → bad_request.
    let smallpub = openssl_keypair(d.dir(), "small", 1024).public_pem;
    cli_err(
        &d,
        &[
            "envelope",
            "seal",
            "--to-pem",
            path_str(&smallpub),
            "--in",
            path_str(&plainf),
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
