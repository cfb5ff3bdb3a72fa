//! Secrets hygiene: the demo's stories (and every other op that handles a secret) against a
//! daemon logging at `CUSTODYD_LOG=trace`; then everything the daemon and the CLI wrote — the
//! daemon's log (stderr), the audit log, the CLI's stderr — is searched for every secret the test
//! knows (the user and SO PINs, each plaintext, each data key) in raw, hex and base64 forms.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use custody_testkit::*;

/// A MOSIP `VER_R2` envelope made here, with a data key the test knows, to the current version
/// of `key` (PROTOCOL.md §5.19).
fn envelope_with_known_key(
    d: &Daemon,
    key: &str,
    version: u32,
    data_key: &[u8],
    pt: &[u8],
) -> Vec<u8> {
    let wrapped = openssl_oaep_encrypt(&pem(d, key, version), data_key, "sha256", None);
    let aad = random(32);
    let sealed = Aes256Gcm::new_from_slice(data_key)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&aad[..12]),
            Payload { msg: pt, aad: &aad },
        )
        .unwrap();
    [
        b"VER_R2".as_slice(),
        &thumb(d, key, version),
        &wrapped,
        b"#KEY_SPLITTER#",
        &aad,
        &sealed,
    ]
    .concat()
}

#[test]
fn no_secret_reaches_the_log_the_audit_or_the_cli_at_trace_level() {
    let mut d = DaemonBuilder::new()
        .with_tpm()
        .with_hsm()
        .extra(MOSIP_KEYS)
        .env("CUSTODYD_LOG", "trace")
        .start();
    let hsm = d.hsm().unwrap().clone();
    let pin = hsm.pin().into_bytes();
    let so_pin = std::fs::read_to_string(hsm.dir.join("so.pin"))
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![("user PIN", pin), ("SO PIN", so_pin)];

    // Daemon health and the registration client's public keys.
    cli_ok(&d, &["ping"]);
    cli_ok(&d, &["status"]);
    cli_ok(&d, &["keys", "list"]);
    cli_json(&d, &["keys", "public", "machine-sign", "--format", "tpmt"]);

    // Registration client: a packet and a JWT signed with K10 in the TPM.
    let packet = write(&d, "packet.zip", &random(2048));
    let sig = file(&d, "packet.sig");
    cli_ok(
        &d,
        &[
            "sign",
            "machine-sign",
            "--in",
            path_str(&packet),
            "--out",
            path_str(&sig),
        ],
    );
    openssl_verify(&pem(&d, "machine-sign", 1), &packet, &sig, RsaSig::Pkcs1v15).unwrap();
    let payload = write(&d, "payload.json", br#"{"machine":"m1"}"#);
    cli_ok(
        &d,
        &[
            "sign-jwt",
            "machine-sign",
            "--payload-file",
            path_str(&payload),
        ],
    );

    // Registration client: data addressed to the machine's TPM encryption key (MOSIP label).
    let machine_secret = random(48);
    let ct = write(
        &d,
        "to-machine.bin",
        &openssl_oaep_encrypt(
            &pem(&d, "machine-encrypt", 1),
            &machine_secret,
            "sha256",
            Some("00"),
        ),
    );
    let out = cli_ok(
        &d,
        &[
            "decrypt",
            "machine-encrypt",
            "--mosip-label",
            "--in",
            path_str(&ct),
        ],
    );
    assert_eq!(out.stdout, machine_secret);
    // A wrong label: an error message, which must not carry the plaintext either.
    cli_err(
        &d,
        &["decrypt", "machine-encrypt", "--in", path_str(&ct)],
        proto::ErrorCode::Integrity,
    );
    secrets.push(("TPM-decrypted plaintext", machine_secret));

    // IDA: a partner-wrapped session key unwrapped in the HSM.
    create_pkcs11(&d, "ida-partner", "rsa2048-oaep");
    create_pkcs11(&d, "ida-other", "rsa2048-oaep");
    let session_key = random(32);
    let wrapped = write(
        &d,
        "wrapped.bin",
        &openssl_oaep_encrypt(&pem(&d, "ida-partner", 1), &session_key, "sha256", None),
    );
    let out = cli_ok(&d, &["unwrap", "ida-partner", "--in", path_str(&wrapped)]);
    assert_eq!(out.stdout, session_key);
    secrets.push(("unwrapped session key", session_key));

    // IDA: a datashare envelope with a data key the test knows, opened in the HSM.
    let share_key = random(32);
    let share = random(600);
    let env = write(
        &d,
        "datashare.v1.env",
        &envelope_with_known_key(&d, "ida-partner", 1, &share_key, &share),
    );
    let out = cli_ok(
        &d,
        &["envelope", "open", "ida-partner", "--in", path_str(&env)],
    );
    assert_eq!(out.stdout, share);
    // A damaged envelope: an error, without the key or the data.
    let bad = write(&d, "damaged.env", &flip(read(&env), 400));
    cli_err(
        &d,
        &["envelope", "open", "ida-partner", "--in", path_str(&bad)],
        proto::ErrorCode::Integrity,
    );
    // Re-targeted to another key without the plaintext leaving the daemon; opened there.
    let rewrapped = file(&d, "rewrapped.env");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida-partner",
            "--in",
            path_str(&env),
            "--to",
            "ida-other",
            "--out",
            path_str(&rewrapped),
        ],
    );
    let out = cli_ok(
        &d,
        &[
            "envelope",
            "open",
            "ida-other",
            "--in",
            path_str(&rewrapped),
        ],
    );
    assert_eq!(out.stdout, share);
    secrets.push(("envelope data key", share_key));
    secrets.push(("envelope plaintext", share));

    // Sealed by the daemon (its data key is the daemon's own), opened after a rotation.
    let attrs = random(300);
    let attrs_f = write(&d, "attrs.json", &attrs);
    let sealed = file(&d, "attrs.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-partner",
            "--in",
            path_str(&attrs_f),
            "--out",
            path_str(&sealed),
            "--base64",
        ],
    );
    cli_ok(&d, &["keys", "rotate", "ida-partner"]);
    for f in [&env, &sealed] {
        let mut args = vec!["envelope", "open", "ida-partner", "--in", path_str(f)];
        if f == &sealed {
            args.push("--base64");
        }
        cli_ok(&d, &args);
    }
    secrets.push(("daemon-sealed plaintext", attrs));

    // Software keys wrapped under an HSM master (their secrets never leave the daemon), a
    // backup, a reload and a restart: all logged at trace level.
    create_pkcs11(&d, "master", "aes256");
    cli_json(
        &d,
        &[
            "keys",
            "create",
            "soft",
            "--kind",
            "aes256",
            "--backend",
            "software",
            "--master",
            "master",
        ],
    );
    cli_ok(&d, &["keys", "rotate", "soft"]);
    cli_ok(
        &d,
        &["admin", "backup", "--out", path_str(&file(&d, "backup.db"))],
    );
    d.reload();
    d.restart();
    cli_ok(
        &d,
        &[
            "unwrap",
            "ida-partner",
            "--version",
            "1",
            "--in",
            path_str(&wrapped),
        ],
    );
    assert_eq!(d.terminate().code(), Some(0));

    let log = d.stderr();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "CUSTODYD_LOG=trace did not take effect:\n{log}"
    );
    let places = [
        ("the daemon's log (stderr)", log.into_bytes()),
        ("the audit log", std::fs::read(d.audit_path()).unwrap()),
        ("the CLI's stderr", d.cli_stderr().into_bytes()),
    ];
    assert!(!places[1].1.is_empty() && !places[2].1.is_empty());
    assert_no_secrets(&places, &secrets);
}
