//! `admin.backup` (`custody admin backup`) while the daemon signs and rotates, and
//! `custodyd --restore` with the daemon stopped: every key and version comes back; a damaged
//! backup, or a restore while the daemon runs, is refused and changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use custody_testkit::proto::ops::{KeyNameArgs, SignArgs};
use custody_testkit::*;
use serde_json::Value as Json;

/// `(name, [(version, state)])` of every key, from `keys list`.
fn inventory(d: &Daemon) -> Vec<(String, Vec<(u64, String)>)> {
    let l = cli_json(d, &["keys", "list"]);
    l["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("{l}"))
        .iter()
        .map(|k| (k["name"].as_str().unwrap().to_owned(), states(k)))
        .collect()
}

fn versions(inv: &[(String, Vec<(u64, String)>)]) -> u64 {
    inv.iter().map(|(_, v)| v.len() as u64).sum()
}

/// `custodyd --config C --restore FILE` (the daemon stopped); its output.
fn restore(d: &Daemon, file: &std::path::Path) -> std::process::Output {
    run_with_timeout(d.command().arg("--restore").arg(file), 60 * SEC)
}

fn backup(d: &Daemon, name: &str) -> (std::path::PathBuf, Json) {
    let f = file(d, name);
    let j = cli_json(d, &["admin", "backup", "--out", path_str(&f)]);
    assert_eq!(j["bytes"].as_u64().unwrap(), read(&f).len() as u64, "{j}");
    assert_eq!(hex::encode(sha256(&read(&f))), j["sha256"], "{j}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&f).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "backup file mode");
    (f, j)
}

#[test]
fn backups_taken_during_signing_and_rotations_restore_every_key_and_version() {
    let mut d = DaemonBuilder::new().with_hsm().start();
    create_pkcs11(&d, "bk-sign", "rsa2048-sign");
    create_pkcs11(&d, "bk-enc", "rsa2048-oaep");
    create_pkcs11(&d, "bk-master", "aes256");
    cli_json(
        &d,
        &[
            "keys",
            "create",
            "bk-soft",
            "--kind",
            "aes256",
            "--backend",
            "software",
            "--master",
            "bk-master",
        ],
    );

    // Load: four signers and a rotator, while backups are taken.
    let socket = d.socket().to_path_buf();
    let stop = AtomicBool::new(false);
    let mut during = Vec::new();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for _ in 0..4 {
            workers.push(s.spawn(|| {
                let c = BlockingClient::connect(&socket).unwrap();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .sign(&SignArgs {
                            key: "bk-sign".into(),
                            data: Some(random(64)),
                            ..Default::default()
                        })
                        .expect("sign during backups");
                    assert_eq!(r.signature.len(), 256);
                    n += 1;
                }
                n
            }));
        }
        let rotator = s.spawn(|| {
            let c = BlockingClient::connect(&socket).unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for key in ["bk-enc", "bk-sign", "bk-master"] {
                    c.keys_rotate(&KeyNameArgs { name: key.into() })
                        .expect("rotate during backups");
                    n += 1;
                }
            }
            n
        });
        for i in 0..4 {
            std::thread::sleep(Duration::from_millis(300));
            during.push(backup(&d, &format!("during-{i}.db")));
        }
        stop.store(true, Ordering::Relaxed);
        let signed: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        let rotated = rotator.join().unwrap();
        assert!(
            signed > 0 && rotated > 0,
            "signed {signed}, rotated {rotated}"
        );
    });

    // A backup at rest, compared with the live registry; then changes the restore must undo.
    let (last, last_j) = backup(&d, "last.db");
    let before = inventory(&d);
    assert_eq!(last_j["keys"], before.len() as u64, "{last_j}");
    assert_eq!(last_j["versions"], versions(&before), "{last_j}");
    cli_json(&d, &["keys", "rotate", "bk-enc"]);
    create_pkcs11(&d, "after-backup", "rsa2048-sign");

    // Not while the daemon runs.
    let out = restore(&d, &last);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("in use by a running custodyd"),
        "{}",
        stderr(&out)
    );

    assert_eq!(d.terminate().code(), Some(0));
    let out = restore(&d, &last);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "restored {} keys, {} versions",
            before.len(),
            versions(&before)
        )) && text.contains("previous registry was kept as"),
        "{text}"
    );
    d.restart();
    assert_eq!(
        inventory(&d),
        before,
        "the restored registry is the backup's"
    );
    // Every version of the restored keys works against the HSM objects it names.
    let (_, enc_versions) = before.iter().find(|(n, _)| n == "bk-enc").unwrap();
    for (v, _) in enc_versions {
        let v = *v as u32;
        let data_key = random(32);
        let wrapped = write(
            &d,
            &format!("wrapped-v{v}"),
            &openssl_oaep_encrypt(&pem(&d, "bk-enc", v), &data_key, "sha256", None),
        );
        let vs = v.to_string();
        let out = cli_ok(
            &d,
            &[
                "unwrap",
                "bk-enc",
                "--version",
                &vs,
                "--in",
                path_str(&wrapped),
            ],
        );
        assert_eq!(out.stdout, data_key, "bk-enc v{v}");
    }
    let data = write(&d, "data", b"signed after restore");
    let sig = file(&d, "data.sig");
    cli_ok(
        &d,
        &[
            "sign",
            "bk-sign",
            "--in",
            path_str(&data),
            "--out",
            path_str(&sig),
        ],
    );
    let (_, sign_versions) = before.iter().find(|(n, _)| n == "bk-sign").unwrap();
    let cur = sign_versions.iter().find(|(_, s)| s == "active").unwrap().0 as u32;
    openssl_verify(&pem(&d, "bk-sign", cur), &data, &sig, RsaSig::Pkcs1v15).unwrap();

    // Each backup taken under load is one consistent state: it restores, and the restored
    // registry holds exactly the keys and versions the backup reported.
    for (f, j) in &during {
        assert_eq!(d.terminate().code(), Some(0));
        let out = restore(&d, f);
        assert!(out.status.success(), "{out:?}");
        d.restart();
        let inv = inventory(&d);
        assert_eq!(inv.len() as u64, j["keys"].as_u64().unwrap(), "{j}");
        assert_eq!(versions(&inv), j["versions"].as_u64().unwrap(), "{j}");
        for (name, vs) in &inv {
            // One current version per key; every asymmetric version's public key is there.
            assert_eq!(
                vs.iter().filter(|(_, s)| s == "active").count(),
                1,
                "{name}: {vs:?}"
            );
            if name != "bk-master" && name != "bk-soft" {
                for (v, _) in vs {
                    thumb(&d, name, *v as u32);
                }
            }
        }
    }
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn a_damaged_backup_is_refused_with_a_clear_message_and_changes_nothing() {
    let mut d = DaemonBuilder::new().with_hsm().start();
    create_pkcs11(&d, "keep-me", "rsa2048-sign");
    let (good, _) = backup(&d, "good.db");
    let bytes = read(&good);
    let before = inventory(&d);
    assert_eq!(d.terminate().code(), Some(0));

    // A key name changed inside the file, the file cut in half, a file that is not SQLite, and a
    // database that is not a registry.
    let at = bytes
        .windows(7)
        .rposition(|w| w == b"keep-me")
        .expect("key name in the backup");
    let mut renamed = bytes.clone();
    renamed[at + 6] = b'X';
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("renamed", renamed, ""),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), ""),
        ("garbage", random(8192), ""),
        ("empty", Vec::new(), "no `keys` table"),
    ];
    for (name, content, detail) in cases {
        let f = write(&d, &format!("{name}.db"), &content);
        let out = restore(&d, &f);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("custodyd: restore: ")
                && err.contains("is not a usable registry backup")
                && err.contains("the registry was not changed")
                && err.contains(detail),
            "{name}: {err}"
        );
    }
    d.restart();
    assert_eq!(
        inventory(&d),
        before,
        "a refused restore changed the registry"
    );
    assert_eq!(d.terminate().code(), Some(0));
}
