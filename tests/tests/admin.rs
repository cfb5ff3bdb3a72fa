//! Key administration: `keys.create`, `keys.list`, `keys.show`, `keys.rotate`, `keys.retire`,
//! `keys.destroy` — states and versions, objects on the token, concurrent rotations, reuse of a
//! TPM persistent handle, and everything surviving a restart (clean or SIGKILL).

use std::path::PathBuf;
use std::time::Duration;

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;

#[test]
fn rotation_retire_destroy_and_token_objects() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "rot", "rsa2048-oaep");
    let t1 = thumb(&d, "rot", 1);
    let plain = random(500);
    let plainf = write(&d, "plain", &plain);
    let env1 = file(&d, "v1.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "rot",
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env1),
        ],
    );
    let j = cli_json(&d, &["envelope", "seal", "rot", "--in", path_str(&plainf)]);
    assert_eq!(j["version"], 1, "{j}");

    let k = cli_json(&d, &["keys", "rotate", "rot"]);
    assert_eq!(k["current_version"], 2, "{k}");
    assert_eq!(states(&k), st(&[(1, "decrypt-only"), (2, "active")]));
    let t2 = thumb(&d, "rot", 2);
    assert_ne!(t1, t2);

    // Old envelopes still open, reporting version 1.
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", path_str(&env1)]);
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    // New seals use version 2 and carry its thumbprint.
    let j = cli_json(&d, &["envelope", "seal", "rot", "--in", path_str(&plainf)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["thumbprint"], hex::encode(&t2), "{j}");
    let env2b = b64url_decode(j["envelope"].as_str().unwrap());
    assert_eq!(&env2b[6..38], &t2[..]);
    let env2 = write(&d, "v2.env", &env2b);
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", path_str(&env2)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Human `keys show`.
    let o = cli_ok(&d, &["keys", "show", "rot"]);
    let text = stdout(&o);
    assert!(text.contains("current=v2"), "{text}");
    assert!(text.contains("v1  decrypt-only"), "{text}");
    assert!(text.contains("v2  active"), "{text}");
    assert!(text.contains(&hex::encode(&t1)), "{text}");

    // Both versions are on the token.
    let labels = token_labels(&d);
    assert!(labels.iter().any(|l| l == "custodyd:rot:v1"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");

    // The current version can be neither retired nor destroyed.
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "2"],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "destroy", "rot", "--version", "2"],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "3"],
        ErrorCode::NotFound,
    );

    // Retire v1: old envelopes are refused with key_retired; v2 keeps working.
    let k = cli_json(&d, &["keys", "retire", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "retired"), (2, "active")]));
    cli_err(
        &d,
        &["envelope", "open", "rot", "--in", path_str(&env1)],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", path_str(&env2)]);
    assert_eq!(j["version"], 2, "{j}");
    // Retiring again is a no-op success.
    let k = cli_json(&d, &["keys", "retire", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "retired"), (2, "active")]));
    // The retired object is still on the token.
    assert!(token_labels(&d).iter().any(|l| l == "custodyd:rot:v1"));

    // Destroy v1: state destroyed, the object is gone from the token, v2's remains.
    let k = cli_json(&d, &["keys", "destroy", "rot", "--version", "1"]);
    assert_eq!(states(&k), st(&[(1, "destroyed"), (2, "active")]));
    assert_eq!(
        states(&show(&d, "rot")),
        st(&[(1, "destroyed"), (2, "active")])
    );
    let labels = token_labels(&d);
    assert!(
        !labels.iter().any(|l| l == "custodyd:rot:v1"),
        "v1 still on the token: {labels:?}"
    );
    assert!(labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");
    // The recorded public key of v1 is still returned.
    assert_eq!(thumb(&d, "rot", 1), t1);
    // Further use of v1 and a second retire/destroy → key_retired.
    cli_err(
        &d,
        &["envelope", "open", "rot", "--in", path_str(&env1)],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["keys", "retire", "rot", "--version", "1"],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["keys", "destroy", "rot", "--version", "1"],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "rot", "--in", path_str(&env2)]);
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Destroying a decrypt-only version directly (no retire first) also works.
    cli_ok(&d, &["keys", "rotate", "rot"]);
    let k = cli_json(&d, &["keys", "destroy", "rot", "--version", "2"]);
    assert_eq!(
        states(&k),
        st(&[(1, "destroyed"), (2, "destroyed"), (3, "active")])
    );
    let labels = token_labels(&d);
    assert!(!labels.iter().any(|l| l == "custodyd:rot:v2"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "custodyd:rot:v3"), "{labels:?}");

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn concurrent_rotations_all_succeed_with_distinct_versions() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "spin", "rsa2048-oaep");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let mut c = d.cli_command(&["--json", "keys", "rotate", "spin"]);
            std::thread::spawn(move || run_with_timeout(&mut c, Duration::from_secs(30)))
        })
        .collect();
    let outcomes: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let o = h.join().unwrap();
            if o.status.success() {
                "ok".to_owned()
            } else {
                format!("{}: {}", o.status, stdout(&o).trim())
            }
        })
        .collect();
    let k = show(&d, "spin");
    let sts = states(&k);
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
    assert!(
        outcomes.iter().all(|o| o == "ok"),
        "concurrent keys.rotate must all succeed: {outcomes:?}"
    );
    assert_eq!(k["current_version"], 7, "{k}");
    let mut expect: Vec<(u64, &str)> = (1..=6).map(|v| (v, "decrypt-only")).collect();
    expect.push((7, "active"));
    assert_eq!(sts, st(&expect));
}

#[test]
fn keys_list_and_show_reflect_every_change() {
    let mut d = hsm_daemon();
    let names_of = |j: &Json| -> Vec<String> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names_of(&cli_json(&d, &["keys", "list"])),
        Vec::<String>::new()
    );

    create_pkcs11(&d, "zeta", "rsa2048-oaep");
    create_pkcs11(&d, "alpha", "rsa2048-sign");
    let l = cli_json(&d, &["keys", "list"]);
    assert_eq!(names_of(&l), ["alpha", "zeta"], "sorted by name: {l}");
    for k in l["keys"].as_array().unwrap() {
        assert_eq!(k["backend"], "pkcs11", "{k}");
        assert_eq!(k["template"], "default", "{k}");
        assert_eq!(k["current_version"], 1, "{k}");
        assert_eq!(states(k), st(&[(1, "active")]));
        assert_eq!(
            k["versions"][0]["thumbprint"].as_array().unwrap().len(),
            32,
            "{k}"
        );
    }
    assert_eq!(l["keys"][0]["kind"], "rsa2048-sign");
    assert_eq!(l["keys"][1]["kind"], "rsa2048-oaep");
    let human = stdout(&cli_ok(&d, &["keys", "list"]));
    assert!(
        human.contains("alpha  kind=rsa2048-sign backend=pkcs11"),
        "{human}"
    );
    assert!(
        human.contains("zeta  kind=rsa2048-oaep backend=pkcs11"),
        "{human}"
    );

    cli_ok(&d, &["keys", "rotate", "zeta"]);
    cli_ok(&d, &["keys", "rotate", "zeta"]);
    let k = show(&d, "zeta");
    assert_eq!(k["current_version"], 3);
    assert_eq!(
        states(&k),
        st(&[(1, "decrypt-only"), (2, "decrypt-only"), (3, "active")])
    );
    cli_ok(&d, &["keys", "retire", "zeta", "--version", "1"]);
    cli_ok(&d, &["keys", "destroy", "zeta", "--version", "2"]);
    let l = cli_json(&d, &["keys", "list"]);
    assert_eq!(
        states(&l["keys"][1]),
        st(&[(1, "retired"), (2, "destroyed"), (3, "active")])
    );
    assert_eq!(l["keys"][1], show(&d, "zeta"));
    let human = stdout(&cli_ok(&d, &["keys", "show", "zeta"]));
    assert!(human.contains("current=v3"), "{human}");
    assert!(human.contains("v1  retired"), "{human}");
    assert!(human.contains("v2  destroyed"), "{human}");
    assert!(human.contains("v3  active"), "{human}");

    // already_exists, whatever the kind.
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "alpha",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::AlreadyExists,
    );
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "zeta",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ],
        ErrorCode::AlreadyExists,
    );
    // Bad kind, backend, template, name → bad_request.
    for args in [
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa4096",
            "--backend",
            "pkcs11",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "hsm",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
            "--template",
            "mosip",
        ][..],
        &[
            "keys",
            "create",
            "bad name",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "pkcs11",
        ][..],
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "wrapped",
        ][..],
    ] {
        cli_err(&d, args, ErrorCode::BadRequest);
    }
    // A backend this daemon does not have → backend_unavailable.
    cli_err(
        &d,
        &[
            "keys",
            "create",
            "k1",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
        ErrorCode::BackendUnavailable,
    );
    cli_err(&d, &["keys", "show", "k1"], ErrorCode::NotFound);
    cli_err(&d, &["keys", "rotate", "k1"], ErrorCode::NotFound);
    cli_err(
        &d,
        &["keys", "destroy", "zeta", "--version", "9"],
        ErrorCode::NotFound,
    );
    // Nothing changed by the failures.
    assert_eq!(
        names_of(&cli_json(&d, &["keys", "list"])),
        ["alpha", "zeta"]
    );

    // The audit log records the admin changes.
    let audit = d.audit_lines();
    for op in ["keys.create", "keys.rotate", "keys.retire", "keys.destroy"] {
        assert!(
            audit.iter().any(|l| l["op"] == op && l["outcome"] == "ok"),
            "no successful {op} in the audit log"
        );
    }
    assert!(audit
        .iter()
        .any(|l| l["op"] == "keys.create" && l["outcome"] == "already_exists"));

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn restart_keeps_keys_versions_states_and_public_keys() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "r-enc", "rsa2048-oaep");
    create_pkcs11(&d, "r-sign", "rsa2048-sign");
    let plainf = write(&d, "plain", &random(700));
    let seal = |name: &str| -> PathBuf {
        let f = file(&d, name);
        cli_ok(
            &d,
            &[
                "envelope",
                "seal",
                "r-enc",
                "--in",
                path_str(&plainf),
                "--out",
                path_str(&f),
            ],
        );
        f
    };
    let env1 = seal("v1.env");
    cli_ok(&d, &["keys", "rotate", "r-enc"]);
    let env2 = seal("v2.env");
    cli_ok(&d, &["keys", "rotate", "r-enc"]);
    let env3 = seal("v3.env");
    cli_ok(&d, &["keys", "retire", "r-enc", "--version", "1"]);
    cli_ok(&d, &["keys", "rotate", "r-sign"]);
    cli_ok(&d, &["keys", "destroy", "r-sign", "--version", "1"]);
    let data = write(&d, "data", b"restart");
    let sig = file(&d, "sig");
    cli_ok(
        &d,
        &[
            "sign",
            "r-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
    );

    let pems = |d: &Daemon| -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for (name, n) in [("r-enc", 3), ("r-sign", 2)] {
            for ver in 1..=n {
                let o = cli_ok(d, &["keys", "public", name, "--version", &ver.to_string()]);
                v.push(o.stdout);
            }
        }
        v
    };
    let list_before = cli_json(&d, &["keys", "list"]);
    let pems_before = pems(&d);
    let labels_before = {
        let mut l = token_labels(&d);
        l.sort();
        l
    };
    assert_eq!(
        states(&list_before["keys"][0]),
        st(&[(1, "retired"), (2, "decrypt-only"), (3, "active")])
    );
    assert_eq!(
        states(&list_before["keys"][1]),
        st(&[(1, "destroyed"), (2, "active")])
    );

    d.restart();

    assert_eq!(cli_json(&d, &["keys", "list"]), list_before);
    assert_eq!(pems(&d), pems_before);
    let mut labels = token_labels(&d);
    labels.sort();
    assert_eq!(labels, labels_before);
    let plain = read(&plainf);
    for (env, v) in [(&env2, 2), (&env3, 3)] {
        let j = cli_json(&d, &["envelope", "open", "r-enc", "--in", path_str(env)]);
        assert_eq!(j["version"], v, "{j}");
        assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    }
    cli_err(
        &d,
        &["envelope", "open", "r-enc", "--in", path_str(&env1)],
        ErrorCode::KeyRetired,
    );
    // Same private key: the deterministic PKCS#1 v1.5 signature is identical.
    let sig2 = file(&d, "sig2");
    cli_ok(
        &d,
        &[
            "sign",
            "r-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig2),
        ],
    );
    assert_eq!(read(&sig2), read(&sig));
    // Rotation continues numbering after the restart.
    let k = cli_json(&d, &["keys", "rotate", "r-enc"]);
    assert_eq!(k["current_version"], 4, "{k}");

    // A SIGKILL (no clean shutdown) loses nothing either: changes are durable when acknowledged.
    let list = cli_json(&d, &["keys", "list"]);
    d.kill();
    d.restart();
    assert_eq!(cli_json(&d, &["keys", "list"]), list);
    let j = cli_json(&d, &["envelope", "open", "r-enc", "--in", path_str(&env3)]);
    assert_eq!(j["version"], 3, "{j}");

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Destroying a default-template version frees its persistent handle; a key created next reuses
/// the handle and must work at once (the TSS must not remember the evicted object).
#[test]
fn persistent_handle_reused_after_destroy_works() {
    let mut d = tpm_builder().start();
    let data = file(&d, "data");
    std::fs::write(&data, b"reuse").expect("write");
    let sig = file(&d, "sig");
    for name in ["first", "second", "third"] {
        cli_ok(
            &d,
            &[
                "keys",
                "create",
                name,
                "--kind",
                "rsa2048-sign",
                "--backend",
                "tpm",
            ],
        );
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&data),
                "--out",
                path_str(&sig),
            ],
        );
        cli_ok(&d, &["keys", "rotate", name]);
        cli_ok(
            &d,
            &[
                "sign",
                name,
                "--in",
                path_str(&data),
                "--out",
                path_str(&sig),
            ],
        );
        cli_ok(&d, &["keys", "destroy", name, "--version", "1"]);
        let pem = file(&d, &format!("{name}.pem"));
        cli_ok(&d, &["keys", "public", name, "--out", path_str(&pem)]);
        openssl_verify(&pem, &data, &sig, RsaSig::Pkcs1v15)
            .expect("openssl verifies the signature");
    }
    // Each destroy freed the handle the next create took: six keys were made, three remain.
    let list = cli_ok(&d, &["--json", "keys", "list"]);
    let v: Json = serde_json::from_slice(&list.stdout).expect("json");
    let destroyed = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["versions"][0]["state"] == "destroyed")
        .count();
    assert!(destroyed >= 3, "{v}");
    assert_eq!(d.terminate().code(), Some(0));
}
