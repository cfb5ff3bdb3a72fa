//! kill -9 at random moments during every admin change that writes the registry or a device —
//! `keys create` (HSM, TPM, software), `keys rotate`, `zk init`, `zk rotate-master`, certificate
//! issue and `admin backup` — against a real swtpm and SoftHSM token. After each restart: the
//! registry passes SQLite's integrity and foreign-key checks; every key version that existed
//! before still has the same public key; every ciphertext made before decrypts; every signing key
//! still signs verifiably; and re-running the interrupted command completes.
//!
//! `FAULT_TRIALS` sets the trials per command (default 5, TPM key generation in the first two;
//! `make faults` runs 20 of each).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use custody_testkit::proto::ops::{SignArgs, SignResult};
use custody_testkit::proto::ErrorCode;
use custody_testkit::{
    cli_json, cli_ok, create_pkcs11, create_software, exit_code_of, file, path_str, pem, random,
    rsa_public, sha256, verify_pkcs1, write, Daemon, DaemonBuilder,
};

/// `envelope seal KEY` of `plain` into `DIR/NAME`; its path.
fn seal(d: &Daemon, key: &str, plain: &[u8], name: &str) -> PathBuf {
    let p = write(d, &format!("{name}.plain"), plain);
    let env = file(d, name);
    cli_ok(
        d,
        &[
            "envelope",
            "seal",
            key,
            "--in",
            path_str(&p),
            "--out",
            path_str(&env),
        ],
    );
    env
}

fn trials() -> usize {
    std::env::var("FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// What must survive every crash.
struct World {
    d: Daemon,
    /// (key, version) → DER SubjectPublicKeyInfo.
    publics: BTreeMap<(String, u64), Vec<u8>>,
    /// (envelope file, key, plaintext).
    envelopes: Vec<(PathBuf, String, Vec<u8>)>,
    /// (pool, id, attribute file, plaintext).
    attributes: Vec<(String, String, PathBuf, Vec<u8>)>,
    signers: Vec<String>,
}

impl World {
    fn new() -> Self {
        let d = DaemonBuilder::new().with_tpm().with_hsm().start();
        create_pkcs11(&d, "hsm-sign", "rsa2048-sign");
        create_pkcs11(&d, "hsm-oaep", "rsa2048-oaep");
        create_pkcs11(&d, "master", "aes256");
        create_software(&d, "user", "x25519", "master");
        cli_json(
            &d,
            &[
                "keys",
                "create",
                "tpm-sign",
                "--kind",
                "rsa2048-sign",
                "--backend",
                "tpm",
            ],
        );
        cli_json(
            &d,
            &["zk", "init", "pool", "--master", "master", "--size", "2000"],
        );
        let mut w = World {
            d,
            publics: BTreeMap::new(),
            envelopes: Vec::new(),
            attributes: Vec::new(),
            signers: vec!["hsm-sign".into(), "tpm-sign".into()],
        };
        w.record_publics();
        w.add_data();
        w
    }

    /// Records the public key of every version of every key.
    fn record_publics(&mut self) {
        let list = cli_json(&self.d, &["keys", "list"]);
        for k in list["keys"].as_array().unwrap() {
            let name = k["name"].as_str().unwrap();
            if k["kind"] == "aes256" {
                continue;
            }
            for v in k["versions"].as_array().unwrap() {
                if v["state"] == "destroyed" {
                    continue;
                }
                let n = v["version"].as_u64().unwrap();
                let der = self.public_der(name, n);
                let before = self.publics.insert((name.to_owned(), n), der.clone());
                if let Some(b) = before {
                    assert_eq!(b, der, "public key of {name} v{n} changed");
                }
            }
        }
    }

    fn public_der(&self, name: &str, version: u64) -> Vec<u8> {
        std::fs::read(pem(&self.d, name, version as u32)).unwrap()
    }

    /// An envelope to the current hsm-oaep version and a zk attribute, to be opened after
    /// every crash.
    fn add_data(&mut self) {
        let n = self.envelopes.len();
        let plain = random(100);
        let env = seal(&self.d, "hsm-oaep", &plain, &format!("env-{n}"));
        let p = write(&self.d, &format!("plain-{n}"), &plain);
        self.envelopes.push((env, "hsm-oaep".into(), plain.clone()));
        let attr = file(&self.d, &format!("attr-{n}"));
        let id = format!("UIN-{n}");
        cli_ok(
            &self.d,
            &[
                "zk",
                "encrypt",
                "pool",
                "--id",
                &id,
                "--in",
                path_str(&p),
                "--out",
                path_str(&attr),
            ],
        );
        self.attributes.push(("pool".into(), id, attr, plain));
    }

    /// Everything that must hold after a restart.
    fn check(&mut self, what: &str) {
        self.d.assert_registry_intact();
        let known: Vec<(String, u64)> = self.publics.keys().cloned().collect();
        for (name, v) in known {
            assert_eq!(
                self.public_der(&name, v),
                self.publics[&(name.clone(), v)],
                "{what}: public key of {name} v{v}"
            );
        }
        for (env, key, plain) in &self.envelopes {
            let out = cli_ok(&self.d, &["envelope", "open", key, "--in", path_str(env)]);
            assert_eq!(&out.stdout, plain, "{what}: envelope {}", env.display());
        }
        for (pool, id, attr, plain) in &self.attributes {
            let out = cli_ok(
                &self.d,
                &["zk", "decrypt", pool, "--id", id, "--in", path_str(attr)],
            );
            assert_eq!(&out.stdout, plain, "{what}: attribute {}", attr.display());
        }
        let c = self.d.client();
        let digest = sha256(what.as_bytes());
        for s in &self.signers {
            let r: SignResult = c
                .sign(&SignArgs {
                    key: s.clone(),
                    digest: Some(digest.to_vec()),
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{what}: sign with {s}: {e}"));
            verify_pkcs1(&rsa_public(&c, s), &digest, &r.signature);
        }
        let z = cli_json(&self.d, &["zk", "show", "pool", "--verify"]);
        assert_eq!(z["failed"], serde_json::json!([]), "{what}: {z}");
    }

    /// Runs `args` in the background, kills the daemon after a random delay below `max_ms`,
    /// restarts it, checks, and runs `args` again to completion (`already_exists` accepted for a
    /// creation that had committed). Returns true when the kill interrupted the command.
    fn crash_during(&mut self, args: &[&str], max_ms: u64) -> bool {
        let r = random(2);
        let delay = u64::from(u16::from_be_bytes([r[0], r[1]])) % max_ms.max(1);
        let mut child = self.d.cli_command(args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = matches!(child.try_wait(), Ok(Some(_)));
        self.d.kill();
        let _ = child.wait();
        self.d.restart();
        let what = format!("{args:?} killed after {delay} ms");
        self.check(&what);
        let again = self.d.cli(args);
        let ok = again.status.success()
            || again.status.code() == Some(exit_code_of(ErrorCode::AlreadyExists));
        assert!(
            ok,
            "{what}: re-run failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        self.record_publics();
        self.check(&format!("{what}, re-run"));
        !finished
    }
}

#[test]
fn kill_9_during_admin_changes_loses_nothing() {
    let mut w = World::new();
    let n = trials();
    let mut interrupted = BTreeMap::<&str, usize>::new();
    for t in 0..n {
        let name = format!("new-{t}");
        let created_hsm = format!("{name}-hsm");
        let created_tpm = format!("{name}-tpm");
        let created_sw = format!("{name}-sw");
        let pool = format!("pool-{t}");
        let cert = file(&w.d, &format!("cert-{t}.pem"));
        let backup = file(&w.d, &format!("backup-{t}.db"));
        let cases: Vec<(&str, Vec<&str>, u64)> = vec![
            (
                "keys create (pkcs11)",
                vec![
                    "keys",
                    "create",
                    &created_hsm,
                    "--kind",
                    "rsa2048-oaep",
                    "--backend",
                    "pkcs11",
                ],
                600,
            ),
            (
                "keys create (tpm)",
                vec![
                    "keys",
                    "create",
                    &created_tpm,
                    "--kind",
                    "rsa2048-sign",
                    "--backend",
                    "tpm",
                ],
                1500,
            ),
            (
                "keys create (software)",
                vec![
                    "keys",
                    "create",
                    &created_sw,
                    "--kind",
                    "x25519",
                    "--backend",
                    "software",
                    "--master",
                    "master",
                ],
                150,
            ),
            (
                "keys rotate (pkcs11)",
                vec!["keys", "rotate", "hsm-oaep"],
                600,
            ),
            (
                "keys rotate (tpm)",
                vec!["keys", "rotate", "tpm-sign"],
                1500,
            ),
            (
                "zk init",
                vec!["zk", "init", &pool, "--master", "master", "--size", "5000"],
                600,
            ),
            ("zk rotate-master", vec!["zk", "rotate-master", "pool"], 400),
            (
                "keys cert",
                vec![
                    "keys",
                    "cert",
                    "hsm-sign",
                    "--self-signed",
                    "--subject",
                    "CN=fault",
                    "--out",
                    path_str(&cert),
                ],
                200,
            ),
            (
                "admin backup",
                vec!["admin", "backup", "--out", path_str(&backup)],
                100,
            ),
        ];
        for (label, args, max_ms) in cases {
            // TPM key generation takes seconds in swtpm: every trial in `make faults`
            // (FAULT_TRIALS ≥ 20), the first two in `make test`.
            if label.contains("(tpm)") && t >= 2 && n < 20 {
                continue;
            }
            if w.crash_during(&args, max_ms) {
                *interrupted.entry(label).or_default() += 1;
            }
        }
        // New data under whatever the keys are now, for the next trials to keep opening.
        w.add_data();
    }
    let total: usize = interrupted.values().sum();
    eprintln!(
        "kills that interrupted the command: {interrupted:?} (total {total} of {})",
        n * 9
    );
    assert!(
        total >= n,
        "too few kills landed inside a command: {interrupted:?}"
    );
}

/// The registry on a tiny tmpfs that runs full: admin changes fail with a clear error, reads and
/// key use go on, nothing is corrupted, and once space is freed changes work again.
#[test]
fn full_registry_file_system_refuses_changes_and_keeps_serving() {
    let mut d = DaemonBuilder::new().with_hsm().prepare();
    let fs = custody_testkit::Tmpfs::mount(&d.dir().join("regfs"), "4m");
    let registry = d.dir().join("regfs/keys.db");
    let text = d.config_text().replace(
        &format!(
            "path = {}",
            custody_testkit::toml_str(path_str(&d.dir().join("keys.db")))
        ),
        &format!("path = {}", custody_testkit::toml_str(path_str(&registry))),
    );
    assert!(text.contains("regfs/keys.db"), "{text}");
    d.write_raw_config(&text);
    d.spawn();
    d.wait_ready(custody_testkit::READY_TIMEOUT);
    assert_eq!(d.registry_path(), registry);
    create_pkcs11(&d, "hsm-sign", "rsa2048-sign");
    create_pkcs11(&d, "hsm-oaep", "rsa2048-oaep");
    let plain = random(300);
    let env = seal(&d, "hsm-oaep", &plain, "env");

    fs.fill("filler");
    // A change needs registry space: refused, with the reason.
    let mut refused = None;
    for i in 0..20 {
        let name = format!("more-{i}");
        let out = d.cli(&[
            "keys",
            "create",
            &name,
            "--kind",
            "aes256",
            "--backend",
            "pkcs11",
        ]);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let msg = refused.expect("a key creation on a full registry file system must fail");
    assert!(msg.contains("full"), "{msg}");
    // Reads and key use go on.
    let out = cli_ok(
        &d,
        &["envelope", "open", "hsm-oaep", "--in", path_str(&env)],
    );
    assert_eq!(out.stdout, plain);
    let c = d.client();
    let digest = sha256(b"full");
    let r = c
        .sign(&SignArgs {
            key: "hsm-sign".into(),
            digest: Some(digest.to_vec()),
            ..Default::default()
        })
        .unwrap();
    verify_pkcs1(&rsa_public(&c, "hsm-sign"), &digest, &r.signature);
    cli_json(&d, &["keys", "list"]);

    // Space again: changes work, the registry is intact, and so after a restart.
    std::fs::remove_file(d.dir().join("regfs/filler")).unwrap();
    cli_json(
        &d,
        &[
            "keys",
            "create",
            "after",
            "--kind",
            "aes256",
            "--backend",
            "pkcs11",
        ],
    );
    cli_json(&d, &["keys", "rotate", "hsm-oaep"]);
    d.assert_registry_intact();
    d.restart();
    d.assert_registry_intact();
    let out = cli_ok(
        &d,
        &["envelope", "open", "hsm-oaep", "--in", path_str(&env)],
    );
    assert_eq!(out.stdout, plain);
    cli_json(&d, &["keys", "show", "after"]);
    assert_eq!(d.terminate().code(), Some(0));
}
