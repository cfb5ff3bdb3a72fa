//! Backends that fail while the daemon runs: the TPM stops and comes back, the SoftHSM token
//! directory disappears and comes back, the token label or PIN is wrong, the PIN comes from the
//! environment. Operations report `backend_unavailable` quickly (also under a load of signing
//! clients, which resume by themselves), the daemon stays up, never
//! leaks the PIN, and recovers without a restart where the backend can.

use std::time::{Duration, Instant};

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;

fn tpm_backend_ok(d: &Daemon) -> (bool, String) {
    let b = status_backend(d, "tpm");
    (
        b["ok"].as_bool().expect("ok is a bool"),
        b["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

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
    // Load through the outage: four connections signing all along. Every answer is a signature
    // or `backend_unavailable`, nothing else.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let c = d.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut unavailable, mut ok_after_outage) = (0u32, 0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let args = proto::ops::SignArgs {
                        key: "machine-sign".into(),
                        digest: Some(sha256(&[i]).to_vec()),
                        ..Default::default()
                    };
                    match c.sign(&args) {
                        Ok(_) if unavailable > 0 => ok_after_outage += 1,
                        Ok(_) => ok += 1,
                        Err(e) => {
                            let code = e.server().and_then(|w| w.code());
                            assert_eq!(code, Some(ErrorCode::BackendUnavailable), "{e}");
                            unavailable += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                (ok, unavailable, ok_after_outage)
            })
        })
        .collect();
    std::thread::sleep(SEC / 2);

    d.swtpm().unwrap().stop();
    for _ in 0..2 {
        let t = Instant::now();
        cli_err(
            &d,
            &["sign", "machine-sign", "--in", &data],
            ErrorCode::BackendUnavailable,
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
    openssl_verify(
        &dir.join("pub.pem"),
        &dir.join("data"),
        &dir.join("sig"),
        RsaSig::Pkcs1v15,
    )
    .expect("openssl verifies the signature");
    assert!(tpm_backend_ok(&d).0, "TPM healthy again");
    std::thread::sleep(SEC);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (i, h) in load.into_iter().enumerate() {
        let (ok, unavailable, after) = h.join().expect("load thread");
        assert!(
            ok > 0 && unavailable > 0 && after > 0,
            "load {i}: {ok} ok, {unavailable} unavailable, {after} ok after"
        );
    }
    d.assert_running();
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn token_removed_then_back_recovers_without_restart() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .server(&["op_timeout_secs = 5"])
        .start();
    let out = d.cli(&[
        "keys",
        "create",
        "k",
        "--kind",
        "rsa2048-sign",
        "--backend",
        "pkcs11",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = d.dir().to_path_buf();
    std::fs::write(dir.join("m"), b"packet").expect("write");
    let sign = |d: &Daemon| {
        d.cli(&[
            "sign",
            "k",
            "--in",
            dir.join("m").to_str().unwrap(),
            "--out",
            dir.join("sig").to_str().unwrap(),
        ])
    };
    assert!(sign(&d).status.success());

    let tokens = d.hsm().expect("hsm").dir.join("tokens");
    let away = d.hsm().expect("hsm").dir.join("tokens.away");
    std::fs::rename(&tokens, &away).expect("move token away");
    let t = Instant::now();
    let out = sign(&d);
    assert_eq!(
        out.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "unavailable must be quick"
    );
    let st = d.cli(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    let p11 = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "pkcs11")
        .cloned();
    assert_eq!(p11.expect("pkcs11 listed")["ok"], false);
    d.assert_running();

    std::fs::rename(&away, &tokens).expect("move token back");
    // Re-initialisation is rate-limited to once a second: allow a few attempts.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sign(&d);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < end,
            "no recovery: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let pem = dir.join("k.pem");
    assert!(d
        .cli(&["keys", "public", "k", "--out", pem.to_str().unwrap()])
        .status
        .success());
    openssl_verify(&pem, &dir.join("m"), &dir.join("sig"), RsaSig::Pkcs1v15)
        .expect("openssl verifies the signature");
    let st = d.cli(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert!(v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .any(|b| b["name"] == "pkcs11" && b["ok"] == true));
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn wrong_token_label_gives_backend_unavailable_and_daemon_stays_up() {
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .env("CUSTODYD_LOG", "debug")
        .start();
    let pin = d.hsm().unwrap().pin();
    create_pkcs11(&d, "tp", "rsa2048-sign");
    let data = write(&d, "data", b"token problems");
    cli_ok(&d, &["sign", "tp", "--in", path_str(&data)]);
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
        &["sign", "tp", "--in", path_str(&data)],
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
    cli_ok(&d, &["sign", "tp", "--in", path_str(&data)]);
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
    create_pkcs11(&d, "tp", "rsa2048-sign");
    let data = write(&d, "data", b"token problems");
    cli_ok(&d, &["sign", "tp", "--in", path_str(&data)]);
    let good_config = d.config_text();

    // (b) A wrong PIN: backend_unavailable, and no message contains either PIN.
    assert_eq!(d.terminate().code(), Some(0));
    let wrong_pin = "b4d00b4d00b4d00b4d00b4d0";
    let wrong_file = write(&d, "wrong.pin", format!("{wrong_pin}\n").as_bytes());
    // A PIN file others can read is refused outright (issue 11); this one is only wrong.
    std::fs::set_permissions(
        &wrong_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pin_file = d.hsm().unwrap().pin_file.to_string_lossy().into_owned();
    assert!(good_config.contains(&pin_file));
    d.write_raw_config(&good_config.replace(&pin_file, path_str(&wrong_file)));
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    for _ in 0..2 {
        let m = cli_err(
            &d,
            &["sign", "tp", "--in", path_str(&data)],
            ErrorCode::BackendUnavailable,
        );
        assert!(
            !m.contains(wrong_pin) && !m.contains(&pin),
            "PIN in message: {m}"
        );
        let o = d.cli(&["--json", "sign", "tp", "--in", path_str(&data)]);
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
        &["sign", "tp", "--in", path_str(&data)],
        ErrorCode::BackendUnavailable,
    );
    assert!(m.contains("not retried"), "{m}");
    let logins = d.stderr().matches("login to token").count();
    assert!(logins <= 2, "login retried {logins} times:\n{}", d.stderr());

    // The right PIN again: everything works (the failed logins did not lock the token).
    assert_eq!(d.terminate().code(), Some(0));
    d.write_raw_config(&good_config);
    d.restart();
    cli_ok(&d, &["sign", "tp", "--in", path_str(&data)]);
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
    create_pkcs11(&d, "envpin", "rsa2048-sign");
    let data = write(&d, "data", b"pin from env");
    cli_ok(&d, &["sign", "envpin", "--in", path_str(&data)]);
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}
