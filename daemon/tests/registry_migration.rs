//! A registry written by the daemon before the software backend (schema 0: backend `wrapped`,
//! master as `name:vN` text, secrets wrapped with empty AAD) opens with today's daemon: the schema
//! is migrated in one transaction, every secret is re-wrapped bound to its key version, and every
//! key keeps its secret and its public key. Runs on the SoftHSM token that made the fixture.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod pkcs11_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custody_daemon::backend::pkcs11::{OaepMode, Pkcs11Backend};
use custody_daemon::backend::software::SoftwareBackend;
use custody_daemon::backend::{Backend, BackendKind, KeyKind, KeyRef};
use custody_daemon::config::KeyPolicy;
use custody_daemon::keys::{KeyManager, MasterRef, Selector, SCHEMA_VERSION};
use custody_proto::ErrorCode;
use pkcs11_support::config;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry-v0")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// (name, version, master object, wrapped blob) of every wrapped secret, read with plain SQL.
fn legacy_rows(db: &Path) -> Vec<(String, u32, String, Vec<u8>)> {
    let c = rusqlite::Connection::open(db).expect("open");
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(v, 0, "the fixture is a schema-0 registry");
    let mut st = c
        .prepare(
            "SELECT v.name, v.version, m.backend_ref, v.wrapped FROM versions v
             JOIN versions m ON m.name || ':v' || m.version = v.backend_ref
             WHERE v.wrapped IS NOT NULL ORDER BY v.name, v.version",
        )
        .expect("prepare");
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

fn secret_of(km: &KeyManager, name: &str, version: u32) -> Result<Vec<u8>, ErrorCode> {
    let k = km
        .resolve(name, KeyKind::Aes256, "test", Selector::Version(version))
        .map_err(|e| e.code)?;
    k.secret()
        .map(|s| s.to_vec())
        .map_err(|e| custody_daemon::error::OpError::from(e).code)
}

#[test]
fn schema_0_registry_is_migrated_and_its_secrets_bound() {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM missing: install softhsm2"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture(), dir.path());
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.path().join("tokens").display()
        ),
    )
    .expect("conf");
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let pin = std::fs::read_to_string(dir.path().join("user.pin")).expect("pin");
    let hsm: Arc<dyn Backend> = Arc::new(
        Pkcs11Backend::start(config("custody", &pin, 4, OaepMode::Auto)).expect("backend"),
    );
    let db = dir.path().join("registry.db");

    // What the old daemon stored: each secret unwraps under its master with the empty AAD.
    let rows = legacy_rows(&db);
    assert_eq!(rows.len(), 4, "data-a v1, v2, data-b v1, data-c v1");
    let expected: Vec<(String, u32, Vec<u8>)> = rows
        .iter()
        .map(|(name, version, master, blob)| {
            let s = hsm
                .unwrap_secret(&KeyRef::object(master), blob, b"")
                .expect("legacy unwrap");
            assert_eq!(s.len(), 32);
            (name.clone(), *version, s.to_vec())
        })
        .collect();
    let sig_before: Vec<Vec<u8>> = {
        let c = rusqlite::Connection::open(&db).expect("open");
        let mut st = c
            .prepare("SELECT public_der FROM versions WHERE name = 'sig' ORDER BY version")
            .expect("prepare");
        let rows = st
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows
    };

    let open = || {
        KeyManager::open(
            &db,
            vec![hsm.clone(), Arc::new(SoftwareBackend)],
            KeyPolicy::default(),
        )
        .expect("open migrated registry")
    };
    let km = open();
    let names: Vec<_> = km.list().iter().map(|k| k.name.clone()).collect();
    assert_eq!(names, ["data-a", "data-b", "data-c", "master", "sig"]);
    for (name, version, secret) in &expected {
        let rec = km.get(name).expect("key");
        assert_eq!(rec.backend, BackendKind::Software, "{name}");
        assert_eq!(rec.master.as_deref(), Some("master"));
        let v = rec.version(*version).expect("version");
        assert!(
            v.backend_ref.is_empty(),
            "{name} v{version}: no `name:vN` text left"
        );
        let s = v.sealed.as_ref().expect("sealed");
        assert!(s.aad_bound, "{name} v{version} re-wrapped with its AAD");
        let master_version = if (name.as_str(), *version) == ("data-a", 1) || name == "data-b" {
            1
        } else {
            2
        };
        assert_eq!(
            s.master,
            MasterRef {
                name: "master".into(),
                version: master_version
            },
            "{name} v{version}"
        );
        assert_eq!(
            secret_of(&km, name, *version).as_ref(),
            Ok(secret),
            "{name} v{version} keeps its secret"
        );
    }
    let sig = km.get("sig").expect("sig");
    let sig_after: Vec<_> = sig
        .versions
        .iter()
        .map(|v| v.public_der.clone().expect("public"))
        .collect();
    assert_eq!(sig_after, sig_before);
    // Master v1 still wraps data-a v1 and data-b: the typed reference keeps it from retirement.
    assert_eq!(
        km.retire("master", 1).unwrap_err().code,
        ErrorCode::BadRequest
    );
    drop(km);

    let c = rusqlite::Connection::open(&db).expect("open");
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(v, SCHEMA_VERSION);
    let unbound: i64 = c
        .query_row(
            "SELECT count(*) FROM versions WHERE wrapped IS NOT NULL AND aad_bound = 0",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(unbound, 0);
    // Now bound: data-b's blob copied over data-a v1 (same master version) no longer unwraps.
    let blob: Vec<u8> = c
        .query_row(
            "SELECT wrapped FROM versions WHERE name = 'data-b' AND version = 1",
            [],
            |r| r.get(0),
        )
        .expect("blob");
    c.execute(
        "UPDATE versions SET wrapped = ?1 WHERE name = 'data-a' AND version = 1",
        [blob],
    )
    .expect("swap");
    drop(c);

    // Reopening a migrated registry changes nothing else.
    let km = open();
    assert_eq!(secret_of(&km, "data-a", 1), Err(ErrorCode::Integrity));
    for (name, version, secret) in expected
        .iter()
        .filter(|(n, v, _)| (n.as_str(), *v) != ("data-a", 1))
    {
        assert_eq!(secret_of(&km, name, *version).as_ref(), Ok(secret));
    }
}
