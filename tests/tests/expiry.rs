//! Validity policy (MOSIP): a version is current while created <= now < not_after - pre_expire.
//! Time is moved for the daemon process only, with libfaketime (`Daemon::shift_clock`), so the
//! daemon's own clock logic is what is tested: expired keys are refused or rotated by policy,
//! decryption never expires, MOSIP TPM keys never expire and cannot be rotated.

use std::time::Duration;

use custody_testkit::proto::ops::{
    names, OpenArgs, PlaintextResult, SealArgs, SealResult, SignArgs, SignResult,
};
use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;

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
    let s = cli_json(&d, &["sign", "short", "--in", path_str(&data)]);
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
            path_str(&data),
            "--out",
            path_str(&env),
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
    cli_json(&d, &["sign", "tight", "--in", path_str(&data)]);
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
        &["sign", "short", "--in", path_str(&data)],
        ErrorCode::KeyExpired,
    );
    cli_err(
        &d,
        &["envelope", "seal", "short-enc", "--in", path_str(&data)],
        ErrorCode::KeyExpired,
    );
    cli_err(
        &d,
        &[
            "rewrap",
            "short-enc",
            "--in",
            path_str(&env),
            "--to",
            "short-enc",
        ],
        ErrorCode::KeyExpired,
    );
    // Decryption never checks expiry.
    let j = cli_json(
        &d,
        &["envelope", "open", "short-enc", "--in", path_str(&env)],
    );
    assert_eq!(
        b64url_decode(j["plaintext"].as_str().unwrap()),
        b"expiry test"
    );
    cli_json(&d, &["keys", "public", "short"]);
    // An administrator's rotation makes the key usable again.
    cli_ok(&d, &["keys", "rotate", "short"]);
    let s = cli_json(&d, &["sign", "short", "--in", path_str(&data)]);
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
            let mut c = d.cli_command(&[
                "--json",
                "envelope",
                "seal",
                "short-enc",
                "--in",
                path_str(&data),
            ]);
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
    let j = cli_json(
        &d,
        &["envelope", "open", "short-enc", "--in", path_str(&env)],
    );
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
fn expired_current_version_is_refused_or_rotated_by_policy() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .extra("[keys.defaults]\nvalidity_days = 1095\npre_expire_days = 60\nauto_rotate = false\n")
        .start();
    for (name, kind) in [
        ("short-sign", "rsa2048-sign"),
        ("short-enc", "rsa2048-oaep"),
    ] {
        let out = d.cli(&[
            "keys",
            "create",
            name,
            "--kind",
            kind,
            "--backend",
            "pkcs11",
            "--validity-days",
            "2",
            "--pre-expire-days",
            "1",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c = d.client();
    let sign = |c: &BlockingClient| {
        c.call_untyped::<_, SignResult>(
            names::SIGN,
            &SignArgs {
                key: "short-sign".into(),
                data: Some(b"packet".to_vec()),
                ..Default::default()
            },
        )
    };
    assert_eq!(sign(&c).expect("sign while current").version, 1);
    let sealed: SealResult = c
        .call_untyped(
            names::ENVELOPE_SEAL,
            &SealArgs {
                key: Some("short-enc".into()),
                plaintext: b"datashare".to_vec(),
                ..Default::default()
            },
        )
        .expect("seal while current");
    assert_eq!(sealed.version, Some(1));
    drop(c);

    // 30 hours later: past not_after − pre_expire (created + 1 day), before not_after.
    d.shift_clock("+30h");
    d.restart();
    let c = d.client();
    assert_eq!(server_code(sign(&c).unwrap_err()), ErrorCode::KeyExpired);
    let e = c
        .call_untyped::<_, SealResult>(
            names::ENVELOPE_SEAL,
            &SealArgs {
                key: Some("short-enc".into()),
                plaintext: b"x".to_vec(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(server_code(e), ErrorCode::KeyExpired);
    // Decryption with an expired version still works (old data stays readable).
    let opened: PlaintextResult = c
        .call_untyped(
            names::ENVELOPE_OPEN,
            &OpenArgs {
                key: "short-enc".into(),
                envelope: sealed.envelope.clone(),
            },
        )
        .expect("open with the expired version");
    assert_eq!(
        (opened.version, opened.plaintext.as_slice()),
        (1, &b"datashare"[..])
    );
    let out = d.cli(&["sign", "short-sign", "--in", "-"]);
    assert_eq!(out.status.code(), Some(16), "CLI exit code for key_expired");
    drop(c);

    // Same moment, policy auto_rotate = true: the next use rotates, once.
    let cfg = d
        .config_text()
        .replace("auto_rotate = false", "auto_rotate = true");
    d.write_raw_config(&cfg);
    d.restart();
    let c = d.client();
    let s = sign(&c).expect("sign rotates the expired key");
    assert_eq!(s.version, 2);
    assert_eq!(
        sign(&c).expect("second sign").version,
        2,
        "rotated only once"
    );
    let show = d.cli(&["--json", "keys", "show", "short-sign"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    let states: Vec<_> = v["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(states, ["decrypt-only", "active"]);
    let sealed2: SealResult = c
        .call_untyped(
            names::ENVELOPE_SEAL,
            &SealArgs {
                key: Some("short-enc".into()),
                plaintext: b"y".to_vec(),
                ..Default::default()
            },
        )
        .expect("seal rotates the expired key");
    assert_eq!(sealed2.version, Some(2));
    let opened: PlaintextResult = c
        .call_untyped(
            names::ENVELOPE_OPEN,
            &OpenArgs {
                key: "short-enc".into(),
                envelope: sealed.envelope,
            },
        )
        .expect("v1 envelope still opens after auto-rotation");
    assert_eq!(opened.version, 1);
    let audit = d.audit_lines();
    assert!(audit
        .iter()
        .any(|l| l["op"] == "sign" && l["outcome"] == "key_expired"));
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
    cli_err(
        &d,
        &["sign", "enc", "--in", path_str(&data)],
        ErrorCode::WrongKind,
    );
    let k = cli_json(&d, &["keys", "show", "enc"]);
    assert_eq!(k["versions"].as_array().map(Vec::len), Some(1), "{k}");
    // The right kind of use does rotate it.
    let sealed = cli_json(&d, &["envelope", "seal", "enc", "--in", path_str(&data)]);
    assert_eq!(sealed["version"], 2, "{sealed}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// MOSIP-template keys are the machine's identity for the TPM's lifetime: a rotation would derive
/// the same key again, so it is refused, and they never expire (checked 4 years ahead with
/// libfaketime on the daemon process), while a default-template TPM key does expire.
#[test]
fn mosip_keys_cannot_rotate_and_do_not_expire() {
    let mut d = tpm_builder()
        .extra("[keys.defaults]\nvalidity_days = 1095\npre_expire_days = 60\n")
        .start();
    cli_err(
        &d,
        &["keys", "rotate", "machine-sign"],
        ErrorCode::BadRequest,
    );
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
    openssl_verify(&pem, &data, &sig, RsaSig::Pkcs1v15).expect("openssl verifies the signature");
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
        ErrorCode::KeyExpired,
    );
    assert_eq!(d.terminate().code(), Some(0));
}
