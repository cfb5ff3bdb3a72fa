//! MOSIP validity policy through the real daemon on SoftHSM: a version is current while
//! created ≤ now < not_after − pre_expire. Time is moved for the daemon process only, with
//! libfaketime (installed by `make deps`), so the daemon's own clock logic is what is tested.

use custody_e2e::proto::ops::{
    names, OpenArgs, PlaintextResult, SealArgs, SealResult, SignArgs, SignResult,
};
use custody_e2e::DaemonBuilder;

fn code(e: custody_e2e::ClientError) -> String {
    e.server()
        .map(|w| w.code.clone())
        .unwrap_or_else(|| e.to_string())
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
    let sign = |c: &custody_e2e::BlockingClient| {
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
    assert_eq!(code(sign(&c).unwrap_err()), "key_expired");
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
    assert_eq!(code(e), "key_expired");
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
