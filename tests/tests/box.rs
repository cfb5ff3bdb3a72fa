//! `box.seal`, `box.open`, `box.reencrypt`, `box.reencrypt.batch`, `box.derive` (idOS's
//! `nacl.box` with custody `x25519` keys) and Ed25519 issuer signatures, end to end: both ways
//! with PyNaCl (libsodium), the rights that keep re-encryption apart from reading, and typed
//! errors for bad input.

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;

const MASTER: &str =
    "[[keys.declare]]\nname = \"master\"\nkind = \"aes256\"\nbackend = \"pkcs11\"\n";

/// A daemon with a SoftHSM token, an HSM master and the user's x25519 key `user`.
fn idos_daemon(builder: DaemonBuilder) -> Daemon {
    let d = builder.with_hsm().extra(MASTER).start();
    create_software(&d, "user", "x25519", "master");
    d
}

/// `keys public NAME` (default text form), decoded from standard base64: 32 bytes.
fn x25519_public(d: &Daemon, name: &str) -> Vec<u8> {
    let text = stdout(&cli_ok(d, &["keys", "public", name]));
    assert!(text.ends_with("=\n") && text.len() == 45, "{text:?}");
    let raw = b64std_decode(&text);
    assert_eq!(raw.len(), 32);
    raw
}

fn py_keygen() -> (String, String) {
    let k = py_idos_json(&["keygen"], None);
    (
        k["secret"].as_str().unwrap().to_owned(),
        k["public"].as_str().unwrap().to_owned(),
    )
}

/// PyNaCl seals `plain` to `to` (base64) with an ephemeral key: (content base64, encryptor).
fn py_seal(d: &Daemon, to: &str, plain: &[u8], tag: &str) -> (String, String) {
    let f = write(d, &format!("{tag}.plain"), plain);
    let s = py_idos_json(&["seal", "--to", to, "--in", path_str(&f)], None);
    (
        s["content"].as_str().unwrap().to_owned(),
        s["encryptor_public_key"].as_str().unwrap().to_owned(),
    )
}

/// PyNaCl opens base64 `content` with `secret`; the plaintext, or the failed output.
fn py_open(
    d: &Daemon,
    secret: &str,
    encryptor: &str,
    content: &str,
    tag: &str,
) -> Result<Vec<u8>, String> {
    let cf = write(d, &format!("{tag}.content"), content.as_bytes());
    let out = file(d, &format!("{tag}.py-out"));
    let o = py_idos(
        &[
            "open",
            "--secret",
            secret,
            "--encryptor",
            encryptor,
            "--in",
            path_str(&cf),
            "--out",
            path_str(&out),
        ],
        None,
    );
    if o.status.success() {
        Ok(read(&out))
    } else {
        Err(stderr(&o))
    }
}

fn cli_code(d: &Daemon, args: &[&str], code: ErrorCode) -> String {
    cli_err(d, args, code)
}

#[test]
fn boxes_interoperate_with_pynacl() {
    require_pynacl();
    let d = idos_daemon(DaemonBuilder::new());
    let user_pub = x25519_public(&d, "user");
    // Raw and DER forms agree with the text form (RFC 8410 SPKI; thumbprint over it).
    let raw = public(&d.client(), "user", "raw");
    assert_eq!(raw.data, user_pub);
    let der = public(&d.client(), "user", "der");
    assert_eq!(hex::encode(&der.data[..12]), "302a300506032b656e032100");
    assert_eq!(&der.data[12..], &user_pub[..]);
    assert_eq!(der.thumbprint, sha256(&der.data));
    let user_b64 = b64std(&user_pub);

    for (i, plain) in [b"{\"name\":\"Ada\"}".to_vec(), Vec::new(), random(5000)]
        .iter()
        .enumerate()
    {
        // PyNaCl encrypts to the custody key in idOS's layout → the daemon opens (base64 file).
        let (content, epk) = py_seal(&d, &user_b64, plain, &format!("p{i}"));
        let cf = write(&d, &format!("c{i}.b64"), content.as_bytes());
        let out = file(&d, &format!("c{i}.out"));
        cli_ok(
            &d,
            &[
                "box",
                "open",
                "user",
                "--encryptor-pubkey",
                &epk,
                "--in",
                path_str(&cf),
                "--out",
                path_str(&out),
            ],
        );
        assert_eq!(&read(&out), plain);
        // The raw content file is accepted too.
        let rawf = write(&d, &format!("c{i}.raw"), &b64std_decode(&content));
        let j = cli_json(
            &d,
            &[
                "box",
                "open",
                "user",
                "--encryptor-pubkey",
                &epk,
                "--in",
                path_str(&rawf),
            ],
        );
        assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), *plain);
    }

    // The daemon seals → PyNaCl opens; every seal has a fresh ephemeral key and nonce.
    let (consumer_sk, consumer_pub) = py_keygen();
    let pf = write(&d, "msg", b"sealed by custodyd");
    let a = cli_json(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&pf),
        ],
    );
    let b = cli_json(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&pf),
        ],
    );
    assert_ne!(a["encryptor_public_key"], b["encryptor_public_key"]);
    let (ca, cb) = (
        b64std_decode(a["content"].as_str().unwrap()),
        b64std_decode(b["content"].as_str().unwrap()),
    );
    assert_eq!(ca.len(), 24 + 16 + 18);
    assert_ne!(ca[..24], cb[..24], "fresh nonce");
    let opened = py_open(
        &d,
        &consumer_sk,
        a["encryptor_public_key"].as_str().unwrap(),
        a["content"].as_str().unwrap(),
        "s1",
    );
    assert_eq!(opened.unwrap(), b"sealed by custodyd");
    // Plain output: content (base64) to --out, the encryptor key on stdout.
    let cout = file(&d, "sealed.b64");
    let epk = stdout(&cli_ok(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&pf),
            "--out",
            path_str(&cout),
        ],
    ));
    let content = String::from_utf8(read(&cout)).unwrap();
    assert_eq!(
        py_open(&d, &consumer_sk, epk.trim(), content.trim(), "s2").unwrap(),
        b"sealed by custodyd"
    );

    // Re-encryption for a grant: PyNaCl content for the user → re-encrypted to the consumer →
    // PyNaCl opens it; the hash is SHA-256 of the plaintext, and an expected hash is checked.
    let cred = b"{\"credential\":\"kyc\",\"level\":\"plus\"}";
    let (content, epk) = py_seal(&d, &user_b64, cred, "g");
    let cf = write(&d, "g.b64", content.as_bytes());
    let want = hex::encode(sha256(cred));
    let r = cli_json(
        &d,
        &[
            "box",
            "reencrypt",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&cf),
            "--expect-sha256",
            &want,
        ],
    );
    assert_eq!(r["content_hash"], want.as_str(), "{r}");
    assert_eq!(r["version"], 1);
    assert_ne!(
        r["encryptor_public_key"].as_str().unwrap(),
        epk,
        "a new ephemeral key"
    );
    let opened = py_open(
        &d,
        &consumer_sk,
        r["encryptor_public_key"].as_str().unwrap(),
        r["content"].as_str().unwrap(),
        "g1",
    );
    assert_eq!(opened.unwrap(), cred);
    // Without --json: new content to --out, key and hash on stdout.
    let gout = file(&d, "g.out");
    let text = stdout(&cli_ok(
        &d,
        &[
            "box",
            "reencrypt",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&cf),
            "--out",
            path_str(&gout),
        ],
    ));
    assert!(text.contains(&format!("content_hash {want}")), "{text}");
    let new_epk = text
        .lines()
        .find_map(|l| l.strip_prefix("encryptor_public_key "))
        .unwrap();
    let gcontent = String::from_utf8(read(&gout)).unwrap();
    assert_eq!(
        py_open(&d, &consumer_sk, new_epk, gcontent.trim(), "g2").unwrap(),
        cred
    );
    // A wrong expected hash: integrity, nothing written.
    let bad_out = file(&d, "g.bad");
    let wrong = hex::encode(sha256(b"another credential"));
    let m = cli_code(
        &d,
        &[
            "box",
            "reencrypt",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&cf),
            "--out",
            path_str(&bad_out),
            "--expect-sha256",
            &wrong,
        ],
        ErrorCode::Integrity,
    );
    assert!(m.contains("content hash"), "{m}");
    assert!(!bad_out.exists());

    // Tampered content and a wrong encryptor key: integrity, for open and reencrypt alike.
    let mut t = b64std_decode(&content);
    let last = t.len() - 1;
    t[last] ^= 1;
    let tf = write(&d, "tampered.b64", b64std(&t).as_bytes());
    let (_, other_pub) = py_keygen();
    for (input, key) in [(&tf, epk.as_str()), (&cf, other_pub.as_str())] {
        cli_code(
            &d,
            &[
                "box",
                "open",
                "user",
                "--encryptor-pubkey",
                key,
                "--in",
                path_str(input),
            ],
            ErrorCode::Integrity,
        );
        cli_code(
            &d,
            &[
                "box",
                "reencrypt",
                "user",
                "--encryptor-pubkey",
                key,
                "--to-pubkey",
                &consumer_pub,
                "--in",
                path_str(input),
            ],
            ErrorCode::Integrity,
        );
    }
    // And PyNaCl refuses what the daemon sealed when it is tampered.
    let mut t = b64std_decode(a["content"].as_str().unwrap());
    t[30] ^= 0x80;
    assert!(py_open(
        &d,
        &consumer_sk,
        a["encryptor_public_key"].as_str().unwrap(),
        &b64std(&t),
        "s3"
    )
    .unwrap_err()
    .contains("CryptoError"));

    // Batch: many credentials for one grantee; each item fails on its own.
    let creds: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("credential {i}").into_bytes())
        .collect();
    let mut items = Vec::new();
    for (i, c) in creds.iter().enumerate() {
        let (content, epk) = py_seal(&d, &user_b64, c, &format!("b{i}"));
        items.push(
            serde_json::json!({"content": content, "encryptor_public_key": epk,
                                      "expect_content_hash": hex::encode(sha256(c))}),
        );
    }
    items[1]["expect_content_hash"] = Json::String(wrong.clone());
    items.push(serde_json::json!({"content": b64std(&t), "encryptor_public_key": a["encryptor_public_key"]}));
    let bf = write(
        &d,
        "batch.json",
        serde_json::to_string(&items).unwrap().as_bytes(),
    );
    let out = stdout(&cli_ok(
        &d,
        &[
            "box",
            "reencrypt-batch",
            "user",
            "--to-pubkey",
            &consumer_pub,
            "--in",
            path_str(&bf),
        ],
    ));
    let res: Vec<Json> = serde_json::from_str(&out).unwrap();
    assert_eq!(res.len(), 4, "{out}");
    for i in [0usize, 2] {
        assert_eq!(
            res[i]["content_hash"],
            hex::encode(sha256(&creds[i])).as_str()
        );
        let o = py_open(
            &d,
            &consumer_sk,
            res[i]["encryptor_public_key"].as_str().unwrap(),
            res[i]["content"].as_str().unwrap(),
            &format!("bo{i}"),
        );
        assert_eq!(o.unwrap(), creds[i]);
    }
    assert_eq!(res[1]["error"]["code"], "integrity", "{out}");
    assert_eq!(res[3]["error"]["code"], "integrity", "{out}");
}

#[test]
fn bad_box_input_gets_typed_errors() {
    let d = idos_daemon(DaemonBuilder::new().server(&["max_frame = 65536"]));
    let (_, good) = py_keygen();
    let pf = write(&d, "p", b"x");
    // Public keys: not base64 (the CLI refuses it: usage), not 32 bytes, a low-order point.
    cli_usage_err(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            "not base64!",
            "--in",
            path_str(&pf),
        ],
    );
    cli_code(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            &b64std(&[1u8; 31]),
            "--in",
            path_str(&pf),
        ],
        ErrorCode::BadRequest,
    );
    cli_code(
        &d,
        &[
            "box",
            "seal",
            "--to-pubkey",
            &b64std(&[0u8; 32]),
            "--in",
            path_str(&pf),
        ],
        ErrorCode::BadRequest,
    );
    // Content shorter than nonce + tag.
    let short = write(&d, "short", &random(39));
    let m = cli_code(
        &d,
        &[
            "box",
            "open",
            "user",
            "--encryptor-pubkey",
            &good,
            "--in",
            path_str(&short),
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("40"), "{m}");
    cli_code(
        &d,
        &[
            "box",
            "open",
            "user",
            "--encryptor-pubkey",
            &b64std(&[7u8; 33]),
            "--in",
            path_str(&short),
        ],
        ErrorCode::BadRequest,
    );
    // Malformed expected hash; the wrong kind of key; no such key.
    let (content, epk) = py_seal(&d, &b64std(&x25519_public(&d, "user")), b"cred", "k");
    let cf = write(&d, "k.b64", content.as_bytes());
    cli_code(
        &d,
        &[
            "box",
            "reencrypt",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--to-pubkey",
            &good,
            "--in",
            path_str(&cf),
            "--expect-sha256",
            "abc",
        ],
        ErrorCode::BadRequest,
    );
    cli_code(
        &d,
        &[
            "box",
            "open",
            "master",
            "--encryptor-pubkey",
            &epk,
            "--in",
            path_str(&cf),
        ],
        ErrorCode::WrongKind,
    );
    cli_code(
        &d,
        &[
            "box",
            "open",
            "nobody",
            "--encryptor-pubkey",
            &epk,
            "--in",
            path_str(&cf),
        ],
        ErrorCode::NotFound,
    );
    // Salt not a UUID; empty password.
    let derive = |salt: &str, pw: &[u8]| d.cli_stdin(&["box", "derive", "--salt", salt], pw);
    let o = derive("user-42", b"pw\n");
    assert_eq!(
        o.status.code(),
        Some(exit_code_of(ErrorCode::BadRequest)),
        "{o:?}"
    );
    let o = derive("550e8400-e29b-41d4-a716-446655440000", b"\n");
    assert_eq!(
        o.status.code(),
        Some(exit_code_of(ErrorCode::BadRequest)),
        "{o:?}"
    );
    assert!(stderr(&o).contains("empty"), "{o:?}");
    // Over the frame limit: the CLI refuses to send it (it knows the daemon's limit); sent
    // anyway, the daemon answers too_large before reading it, and goes on.
    let big = write(&d, "big", &random(70_000));
    let o = d.cli(&["box", "seal", "--to-pubkey", &good, "--in", path_str(&big)]);
    assert!(
        !o.status.success() && stderr(&o).contains("exceeds the limit"),
        "{o:?}"
    );
    let mut raw = d.raw();
    assert!(raw.hello().unwrap().result.is_ok());
    let args = custody_testkit::proto::ops::BoxSealArgs {
        to_public_key: b64std_decode(&good),
        plaintext: random(70_000),
    };
    raw.send_frame(&request_body(7, "box.seal", &args)).unwrap();
    let r = raw.expect_frame(5 * SEC);
    assert_eq!(err_code(&r), Some(ErrorCode::TooLarge), "{r:?}");
    cli_ok(&d, &["ping"]);
    // Nothing secret in the messages: no key bytes, no plaintext.
    assert!(!d.stderr().contains("cred"));
}

#[test]
fn reencrypt_is_a_right_apart_from_open_and_no_plaintext_is_logged() {
    let roles = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "grants"
unix_users = [65534]
ops = ["box.reencrypt", "box.reencrypt.batch"]
keys = ["user"]
"#;
    let d = idos_daemon(
        DaemonBuilder::new()
            .roles(roles)
            .dir_mode(0o755)
            .server(&["socket_mode = \"0666\""])
            .env("CUSTODYD_LOG", "trace"),
    );
    let secret = "PLAINTEXT-CANARY-7f3a9c the user's passport number";
    let (content, epk) = py_seal(
        &d,
        &b64std(&x25519_public(&d, "user")),
        secret.as_bytes(),
        "r",
    );
    let cf = write(&d, "r.b64", content.as_bytes());
    let (_, consumer) = py_keygen();
    // The grant service re-encrypts...
    let (_, out) = d.cli_as(
        "nobody",
        "nogroup",
        &[
            "--json",
            "box",
            "reencrypt",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--to-pubkey",
            &consumer,
            "--in",
            path_str(&cf),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let r: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        r["content_hash"],
        hex::encode(sha256(secret.as_bytes())).as_str()
    );
    assert!(!stdout(&out).contains("CANARY"));
    // ...but may not read.
    let (_, out) = d.cli_as(
        "nobody",
        "nogroup",
        &[
            "box",
            "open",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--in",
            path_str(&cf),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code_of(ErrorCode::PermissionDenied)),
        "{out:?}"
    );
    assert!(stderr(&out).contains("permission_denied"), "{out:?}");
    // Root (admin) opens: the plaintext goes to it, and to no log.
    let j = cli_json(
        &d,
        &[
            "box",
            "open",
            "user",
            "--encryptor-pubkey",
            &epk,
            "--in",
            path_str(&cf),
        ],
    );
    assert_eq!(
        b64url_decode(j["plaintext"].as_str().unwrap()),
        secret.as_bytes()
    );
    let audit = std::fs::read_to_string(d.audit_path()).unwrap();
    let lines = d.audit_lines();
    assert!(
        lines.iter().any(|l| l["op"] == "box.reencrypt"
            && l["uid"] == 65534
            && l["outcome"] == "ok"
            && l["key"] == "user"),
        "{audit}"
    );
    assert!(
        lines.iter().any(|l| l["op"] == "box.open"
            && l["uid"] == 65534
            && l["outcome"] == "permission_denied"),
        "{audit}"
    );
    let log = d.stderr();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the daemon logs at trace level"
    );
    let pt = secret.as_bytes();
    for needle in [
        secret.to_owned(),
        "CANARY".to_owned(),
        hex::encode(pt),
        b64std(pt),
        b64url(pt),
    ] {
        assert!(!log.contains(&needle), "plaintext in the daemon's log");
        assert!(!audit.contains(&needle), "plaintext in the audit log");
    }
}

#[test]
fn password_derived_keys_match_idos_and_can_be_kept() {
    require_pynacl();
    let d = idos_daemon(DaemonBuilder::new());
    let salt = "9f51b3b2-4cbe-4c2b-8ea3-0b0c1b2f1a11";
    let expect = "Y+kNWSnoYhlBrsDQ/01FTfoHQ5CeXyjDEHbQmNDGOjw=";
    let o = d.cli_stdin(
        &["box", "derive", "--salt", salt],
        b"correct horse battery staple\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), expect);
    // The password never is an argument, never in the audit or log.
    // A non-ASCII password (NFKC) agrees with Python's hashlib.scrypt + PyNaCl.
    let pw = "Pa\u{FB01}ss wörd ①\n".as_bytes();
    let py = py_idos_json(&["derive", "--salt", salt], Some(pw));
    let o = d.cli_stdin(&["--json", "box", "derive", "--salt", salt], pw);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["public_key"], py["public"], "{o:?}");
    // --check-pubkey: the right password passes, a wrong one is refused.
    let o = d.cli_stdin(
        &["box", "derive", "--salt", salt, "--check-pubkey", expect],
        b"correct horse battery staple\n",
    );
    assert!(o.status.success(), "{o:?}");
    let o = d.cli_stdin(
        &["box", "derive", "--salt", salt, "--check-pubkey", expect],
        b"correct horse battery stapler\n",
    );
    assert_eq!(
        o.status.code(),
        Some(exit_code_of(ErrorCode::Integrity)),
        "{o:?}"
    );
    assert!(stderr(&o).contains("password"), "{o:?}");
    // --import keeps the secret as a software x25519 key; PyNaCl content for it opens.
    let o = d.cli_stdin(
        &[
            "--json",
            "box",
            "derive",
            "--salt",
            salt,
            "--check-pubkey",
            expect,
            "--import",
            "ada",
            "--master",
            "master",
        ],
        b"correct horse battery staple\n",
    );
    assert!(o.status.success(), "{o:?}");
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["key"]["kind"], "x25519", "{j}");
    assert_eq!(j["key"]["backend"], "software", "{j}");
    assert_eq!(
        stdout(&cli_ok(&d, &["keys", "public", "ada"])).trim(),
        expect
    );
    let (content, epk) = py_seal(&d, expect, b"for ada", "ada");
    let cf = write(&d, "ada.b64", content.as_bytes());
    let j = cli_json(
        &d,
        &[
            "box",
            "open",
            "ada",
            "--encryptor-pubkey",
            &epk,
            "--in",
            path_str(&cf),
        ],
    );
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), b"for ada");
    // Importing twice: already_exists.
    let o = d.cli_stdin(
        &[
            "box", "derive", "--salt", salt, "--import", "ada", "--master", "master",
        ],
        b"correct horse battery staple\n",
    );
    assert_eq!(
        o.status.code(),
        Some(exit_code_of(ErrorCode::AlreadyExists)),
        "{o:?}"
    );
    let audit = std::fs::read_to_string(d.audit_path()).unwrap();
    assert!(!audit.contains("horse") && !d.stderr().contains("horse"));
}

#[test]
fn ed25519_issuer_signatures_verify_with_pynacl() {
    require_pynacl();
    let d = idos_daemon(DaemonBuilder::new());
    let hsm = create_pkcs11(&d, "issuer", "ed25519");
    assert_eq!(
        hsm["versions"][0]["thumbprint"].as_array().map(Vec::len),
        Some(32),
        "{hsm}"
    );
    create_software(&d, "issuer-sw", "ed25519", "master");
    let user_b64 = b64std(&x25519_public(&d, "user"));
    for name in ["issuer", "issuer-sw"] {
        let hexkey = stdout(&cli_ok(&d, &["keys", "public", name]))
            .trim()
            .to_owned();
        assert_eq!(hexkey.len(), 64, "{hexkey}");
        let der = public(&d.client(), name, "der").data;
        assert_eq!(hex::encode(&der[..12]), "302a300506032b6570032100");
        assert_eq!(hex::encode(&der[12..]), hexkey);
        // The issuer writes a credential as idOS does: content sealed to the user,
        // public_notes_signature = sign(utf8(public_notes)),
        // broader_signature = sign(public_notes_signature ‖ content).
        let notes = format!("{{\"id\":\"cred-1\",\"type\":\"KYC\",\"issuer\":\"{name}\"}}");
        let nf = write(&d, &format!("{name}.notes"), notes.as_bytes());
        let sealed = cli_json(
            &d,
            &[
                "box",
                "seal",
                "--to-pubkey",
                &user_b64,
                "--in",
                path_str(&nf),
            ],
        );
        let content = b64std_decode(sealed["content"].as_str().unwrap());
        let nsig = file(&d, &format!("{name}.nsig"));
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&nf),
                "--out",
                path_str(&nsig),
            ],
        );
        assert_eq!(read(&nsig).len(), 64);
        let mut broader = read(&nsig);
        broader.extend_from_slice(&content);
        let bf = write(&d, &format!("{name}.broader"), &broader);
        let bsig = file(&d, &format!("{name}.bsig"));
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&bf),
                "--out",
                path_str(&bsig),
            ],
        );
        for (msg, sig) in [(&nf, &nsig), (&bf, &bsig)] {
            let o = py_idos(
                &[
                    "verify",
                    "--public",
                    &hexkey,
                    "--sig",
                    path_str(sig),
                    "--in",
                    path_str(msg),
                ],
                None,
            );
            assert!(
                o.status.success(),
                "VerifyKey refuses {name}'s signature: {o:?}"
            );
        }
        // A changed message does not verify (the check can fail).
        let o = py_idos(
            &[
                "verify",
                "--public",
                &hexkey,
                "--sig",
                path_str(&nsig),
                "--in",
                path_str(&bf),
            ],
            None,
        );
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        // Pure Ed25519 only: no digest, no scheme.
        let digest = write(&d, "digest", &sha256(b"x"));
        let m = cli_code(
            &d,
            &["sign", name, "--in", path_str(&digest), "--prehashed"],
            ErrorCode::BadRequest,
        );
        assert!(m.contains("Ed25519"), "{m}");
        cli_code(
            &d,
            &["sign", name, "--in", path_str(&nf), "--scheme", "pss"],
            ErrorCode::BadRequest,
        );
    }
    // RSA-only ops refuse ed25519 keys; box ops refuse them too.
    let pf = write(&d, "p", b"{}");
    cli_code(
        &d,
        &["sign-jwt", "issuer", "--payload-file", path_str(&pf)],
        ErrorCode::WrongKind,
    );
    // The TPM holds no x25519/ed25519 keys and pkcs11 no x25519: refused.
    let o = d.cli(&[
        "keys",
        "create",
        "x",
        "--kind",
        "x25519",
        "--backend",
        "pkcs11",
    ]);
    assert_eq!(
        o.status.code(),
        Some(exit_code_of(ErrorCode::WrongKind)),
        "{o:?}"
    );
}
