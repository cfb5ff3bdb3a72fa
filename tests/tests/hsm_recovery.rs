//! A SoftHSM token that disappears and comes back while the daemon runs: operations report
//! `backend_unavailable` meanwhile and work again afterwards, without a restart.

use std::time::{Duration, Instant};

use custody_e2e::DaemonBuilder;

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
    let sign = |d: &custody_e2e::Daemon| {
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
    let v = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(dir.join("sig"))
        .arg(dir.join("m"))
        .output()
        .expect("openssl");
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");
    let st = d.cli(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert!(v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .any(|b| b["name"] == "pkcs11" && b["ok"] == true));
    assert_eq!(d.terminate().code(), Some(0));
}
