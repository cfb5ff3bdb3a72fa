//! `rewrap`: wrapped keys and envelopes re-targeted to another of the daemon's keys, to a newer
//! version of the same key, or to an external public key (a right of its own,
//! `rewrap.external`), without the data key ever leaving the daemon.

use std::process::Output;
use std::time::Duration;

use base64::Engine;
use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;

#[test]
fn rewrap_retargets_wrapped_keys_and_envelopes() {
    let mut d = hsm_daemon();
    create_pkcs11(&d, "ida-a", "rsa2048-oaep");
    create_pkcs11(&d, "ida-b", "rsa2048-oaep");
    create_pkcs11(&d, "signer", "rsa2048-sign");
    let ta = thumb(&d, "ida-a", 1);
    let tb = thumb(&d, "ida-b", 1);
    let pema = pem(&d, "ida-a", 1);

    let dk = random(32);
    let ct = openssl_oaep_encrypt(&pema, &dk, "sha256", None);
    let forbidden: Vec<String> = vec![
        hex::encode(&dk),
        b64url(&dk),
        base64::engine::general_purpose::STANDARD.encode(&dk),
    ];
    let check_no_dk = |o: &Output| {
        for out in [&o.stdout, &o.stderr] {
            assert!(
                !out.windows(dk.len()).any(|w| w == dk.as_slice()),
                "the data key appears in rewrap's output"
            );
            let text = String::from_utf8_lossy(out);
            for f in &forbidden {
                assert!(!text.contains(f.as_str()), "encoded data key in output");
            }
        }
    };

    // Wrapped key thumbprint(A) ‖ 256 → B; B unwraps it to the same data key.
    for (name, input) in [
        ("wa288", [ta.clone(), ct.clone()].concat()),
        ("wa256", ct.clone()),
    ] {
        let inf = write(&d, name, &input);
        let outf = file(&d, &format!("{name}.to-b"));
        let o = cli_ok(
            &d,
            &[
                "rewrap",
                "ida-a",
                "--in",
                path_str(&inf),
                "--to",
                "ida-b",
                "--out",
                path_str(&outf),
            ],
        );
        check_no_dk(&o);
        let w = read(&outf);
        assert_eq!(w.len(), 288, "{name}");
        assert_eq!(&w[..32], &tb[..], "{name}");
        let o = cli_ok(&d, &["unwrap", "ida-b", "--in", path_str(&outf)]);
        assert_eq!(o.stdout, dk, "{name}");
        // --json form.
        let o = cli_ok(
            &d,
            &[
                "--json",
                "rewrap",
                "ida-a",
                "--in",
                path_str(&inf),
                "--to",
                "ida-b",
            ],
        );
        check_no_dk(&o);
        let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(j["form"], "wrapped_key", "{j}");
        assert_eq!(j["version"], 1, "{j}");
        assert_eq!(j["thumbprint"], hex::encode(&tb), "{j}");
    }

    // An envelope for A re-targeted to an external public key opens in Python.
    let KeyPair {
        key,
        public_pem: extpub,
        public_der: extder,
    } = openssl_keypair(d.dir(), "partner", 2048);
    let plain = random(1500);
    let plainf = write(&d, "plain", &plain);
    let env = file(&d, "a.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-a",
            "--in",
            path_str(&plainf),
            "--out",
            path_str(&env),
        ],
    );
    let ext_env = file(&d, "ext.env");
    let o = cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to-pem",
            path_str(&extpub),
            "--out",
            path_str(&ext_env),
        ],
    );
    check_no_dk(&o);
    let e_in = read(&env);
    let e_out = read(&ext_env);
    assert_eq!(e_out.len(), e_in.len());
    assert_eq!(&e_out[6..38], &sha256(&extder)[..]);
    assert_eq!(
        &e_out[294..],
        &e_in[294..],
        "AAD, ciphertext and tag are copied"
    );
    let out = file(&d, "ext.out");
    py_envelope(&[
        "open",
        "--key",
        path_str(&key),
        "--in",
        path_str(&ext_env),
        "--out",
        path_str(&out),
    ]);
    assert_eq!(read(&out), plain);
    let j = cli_json(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to-pem",
            path_str(&extpub),
        ],
    );
    assert_eq!(j["form"], "envelope", "{j}");
    assert!(j["version"].is_null(), "{j}");
    // The base64url round trip: envelope in and out as base64url.
    let env64 = write(&d, "a.env64", b64url(&e_in).as_bytes());
    let outb64 = file(&d, "b.env64");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--base64",
            "--in",
            path_str(&env64),
            "--to",
            "ida-b",
            "--out",
            path_str(&outb64),
        ],
    );
    let out = file(&d, "b.out");
    cli_ok(
        &d,
        &[
            "envelope",
            "open",
            "ida-b",
            "--base64",
            "--in",
            path_str(&outb64),
            "--out",
            path_str(&out),
        ],
    );
    assert_eq!(read(&out), plain);

    // Rotation re-wrap: an old envelope → the same key, now v2.
    cli_ok(&d, &["keys", "rotate", "ida-a"]);
    let ta2 = thumb(&d, "ida-a", 2);
    let o = cli_ok(
        &d,
        &[
            "--json",
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to",
            "ida-a",
        ],
    );
    check_no_dk(&o);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["form"], "envelope", "{j}");
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["thumbprint"], hex::encode(&ta2), "{j}");
    let renv = b64url_decode(j["output"].as_str().unwrap());
    assert_eq!(&renv[6..38], &ta2[..]);
    let renvf = write(&d, "a2.env", &renv);
    let j = cli_json(&d, &["envelope", "open", "ida-a", "--in", path_str(&renvf)]);
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);
    // After the re-wrap v1 can be retired and the re-wrapped envelope still opens.
    cli_ok(&d, &["keys", "retire", "ida-a", "--version", "1"]);
    cli_err(
        &d,
        &["envelope", "open", "ida-a", "--in", path_str(&env)],
        ErrorCode::KeyRetired,
    );
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", path_str(&env), "--to", "ida-b"],
        ErrorCode::KeyRetired,
    );
    let j = cli_json(&d, &["envelope", "open", "ida-a", "--in", path_str(&renvf)]);
    assert_eq!(b64url_decode(j["plaintext"].as_str().unwrap()), plain);

    // Targets of the wrong kind, unknown targets.
    let inf = write(&d, "wb288", &[tb.clone(), ct.clone()].concat());
    cli_err(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&renvf),
            "--to",
            "signer",
        ],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&renvf),
            "--to",
            "nosuch",
        ],
        ErrorCode::NotFound,
    );
    // A wrapped key with B's thumbprint cannot be re-wrapped with A.
    cli_err(
        &d,
        &["rewrap", "ida-a", "--in", path_str(&inf), "--to", "ida-b"],
        ErrorCode::NotFound,
    );

    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Re-targeting to an external public key needs `rewrap.external` on the source key (it hands the
/// data key to that key's owner); re-targeting between the daemon's keys needs `rewrap` on both.
/// The audit line names the target key too.
#[test]
fn rewrap_to_external_key_is_a_right_of_its_own() {
    let declared = "[[keys.declare]]\nname = \"ida-a\"\nkind = \"rsa2048-oaep\"\nbackend = \"pkcs11\"\n\n\
                    [[keys.declare]]\nname = \"ida-b\"\nkind = \"rsa2048-oaep\"\nbackend = \"pkcs11\"\n";
    let limited = "[[roles]]\nname = \"ida\"\nunix_users = [0]\n\
                   ops = [\"envelope.seal\", \"envelope.open\", \"rewrap\"]\nkeys = [\"ida-*\"]\n";
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .extra(declared)
        .roles(limited)
        .start();
    let data = write(&d, "data", b"datashare for rewrap rights");
    let env = file(&d, "a.env");
    cli_ok(
        &d,
        &[
            "envelope",
            "seal",
            "ida-a",
            "--in",
            path_str(&data),
            "--out",
            path_str(&env),
        ],
    );
    let KeyPair {
        key,
        public_pem: pubf,
        ..
    } = openssl_keypair(d.dir(), "partner", 2048);

    // Between the daemon's own keys: allowed, and audited with both names.
    let moved = file(&d, "b.env");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to",
            "ida-b",
            "--out",
            path_str(&moved),
        ],
    );
    let opened = cli_json(&d, &["envelope", "open", "ida-b", "--in", path_str(&moved)]);
    assert_eq!(
        b64url_decode(opened["plaintext"].as_str().unwrap()),
        read(&data)
    );
    let audit = d.audit_lines();
    let line = audit
        .iter()
        .rev()
        .find(|l| l["op"] == "rewrap")
        .expect("rewrap audited");
    assert_eq!(
        (line["key"].as_str(), line["target"].as_str()),
        (Some("ida-a"), Some("ida-b"))
    );

    // To an external key: refused without `rewrap.external`…
    let out = file(&d, "ext.env");
    let m = cli_err(
        &d,
        &[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to-pem",
            path_str(&pubf),
            "--out",
            path_str(&out),
        ],
        ErrorCode::PermissionDenied,
    );
    assert!(m.contains("rewrap.external"), "{m}");
    // …and allowed once the role has it (SIGHUP reload).
    d.set_roles(&limited.replace("\"rewrap\"]", "\"rewrap\", \"rewrap.external\"]"));
    d.reload();
    wait_for(Duration::from_secs(10), "reloaded roles", || {
        d.cli(&[
            "rewrap",
            "ida-a",
            "--in",
            path_str(&env),
            "--to-pem",
            path_str(&pubf),
            "--out",
            path_str(&out),
        ])
        .status
        .success()
        .then_some(())
    });
    let plain = file(&d, "ext.plain");
    py_envelope(&[
        "open",
        "--key",
        path_str(&key),
        "--in",
        path_str(&out),
        "--out",
        path_str(&plain),
    ]);
    assert_eq!(read(&plain), read(&data));
    assert_eq!(d.terminate().code(), Some(0));
}
