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
    cli_json, cli_ok, create_pkcs11, create_software, exit_code_of, file, path_str, random, read,
    rsa_public, sha256, verify_pkcs1, write, Daemon, DaemonBuilder,
};

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
        let out = file(&self.d, "pub.der");
        let v = version.to_string();
        cli_ok(
            &self.d,
            &[
                "keys",
                "public",
                name,
                "--version",
                &v,
                "--format",
                "der",
                "--out",
                path_str(&out),
            ],
        );
        read(&out)
    }

    /// An envelope to the current hsm-oaep version and a zk attribute, to be opened after
    /// every crash.
    fn add_data(&mut self) {
        let n = self.envelopes.len();
        let plain = random(100);
        let p = write(&self.d, &format!("plain-{n}"), &plain);
        let env = file(&self.d, &format!("env-{n}"));
        cli_ok(
            &self.d,
            &[
                "envelope",
                "seal",
                "hsm-oaep",
                "--in",
                path_str(&p),
                "--out",
                path_str(&env),
            ],
        );
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
