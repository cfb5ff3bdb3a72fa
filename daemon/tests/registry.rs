//! The key registry (SQLite) with a real SoftHSM token behind it: versions, states and public
//! keys survive reopening; the software backend stores secrets wrapped under an HSM master key,
//! bound to their key version, and unwraps them with the master version they were wrapped under.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod pkcs11_support;

use std::path::Path;
use std::sync::Arc;

use custody_daemon::backend::pkcs11::{OaepMode, Pkcs11Backend};
use custody_daemon::backend::software::SoftwareBackend;
use custody_daemon::backend::{Backend, BackendKind, KeyKind, Template};
use custody_daemon::config::KeyPolicy;
use custody_daemon::keys::{CreateSpec, KeyManager, MasterRef, Selector, VersionState};
use custody_proto::ErrorCode;
use custody_testkit::Hsm;
use pkcs11_support::config;

fn spec(name: &str, kind: KeyKind, backend: BackendKind, master: Option<&str>) -> CreateSpec {
    CreateSpec {
        name: name.into(),
        kind,
        backend,
        template: Template::Default,
        master: master.map(str::to_owned),
        validity_days: None,
        pre_expire_days: None,
    }
}

fn secret_of(km: &KeyManager, name: &str, sel: Selector<'_>) -> Result<Vec<u8>, ErrorCode> {
    let k = km
        .resolve(name, KeyKind::Aes256, "test", sel)
        .map_err(|e| e.code)?;
    k.secret()
        .map(|s| s.to_vec())
        .map_err(|e| custody_daemon::error::OpError::from(e).code)
}

/// Copies the wrapped secret of `from` over the one of `to` in the registry file.
fn swap_blob(db: &Path, from: (&str, u32), to: (&str, u32)) {
    let c = rusqlite::Connection::open(db).expect("open db");
    let blob: Vec<u8> = c
        .query_row(
            "SELECT wrapped FROM versions WHERE name = ?1 AND version = ?2",
            rusqlite::params![from.0, from.1],
            |r| r.get(0),
        )
        .expect("blob");
    let n = c
        .execute(
            "UPDATE versions SET wrapped = ?3 WHERE name = ?1 AND version = ?2",
            rusqlite::params![to.0, to.1, blob],
        )
        .expect("update");
    assert_eq!(n, 1);
}

#[test]
fn registry_versions_and_software_keys_on_softhsm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = Hsm::init(dir.path());
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let pin = hsm.pin();
    let backend: Arc<dyn Backend> = Arc::new(
        Pkcs11Backend::start(config("custody", &pin, 4, OaepMode::Auto)).expect("backend"),
    );
    let db = dir.path().join("registry.db");
    let open = || {
        KeyManager::open(
            &db,
            vec![backend.clone(), Arc::new(SoftwareBackend)],
            KeyPolicy::default(),
        )
        .expect("open")
    };

    let km = open();
    km.create(&spec("master", KeyKind::Aes256, BackendKind::Pkcs11, None))
        .expect("master");
    let w = km
        .create(&spec(
            "pool-key",
            KeyKind::Aes256,
            BackendKind::Software,
            Some("master"),
        ))
        .expect("wrapped key");
    let v1 = w.current().expect("v1").clone();
    let sealed = v1.sealed.as_ref().expect("sealed");
    assert_eq!(sealed.blob.len(), 12 + 32 + 16, "iv ‖ ct ‖ tag");
    assert!(sealed.aad_bound);
    assert_eq!(
        sealed.master,
        MasterRef {
            name: "master".into(),
            version: 1
        }
    );
    let secret = secret_of(&km, "pool-key", Selector::Active).expect("unwrap");
    assert_eq!(secret.len(), 32);
    // A wrapped key needs a master that exists and is a hardware aes256 key.
    let e = km
        .create(&spec(
            "bad",
            KeyKind::Aes256,
            BackendKind::Software,
            Some("nope"),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = km
        .create(&spec(
            "bad2",
            KeyKind::Aes256,
            BackendKind::Software,
            Some("pool-key"),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongKind);

    // Rotate the master: the wrapped key still unwraps (it records master v1), new wrapped keys use v2.
    km.rotate("master").expect("rotate master");
    assert_eq!(
        secret_of(&km, "pool-key", Selector::Active).expect("unwrap after master rotation"),
        secret
    );
    let w2 = km
        .create(&spec(
            "pool-key-2",
            KeyKind::Aes256,
            BackendKind::Software,
            Some("master"),
        ))
        .expect("second wrapped key");
    assert_eq!(
        w2.current()
            .expect("v1")
            .sealed
            .as_ref()
            .expect("sealed")
            .master,
        MasterRef {
            name: "master".into(),
            version: 2
        }
    );
    // Master v1 still wraps pool-key: it can be neither retired nor destroyed.
    for res in [km.retire("master", 1), km.destroy("master", 1)] {
        let e = res.unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("still wraps"), "{}", e.message);
        assert!(!e.message.contains("pool-key"), "{}", e.message);
    }

    let signer = km
        .create(&spec(
            "signer",
            KeyKind::Rsa2048Sign,
            BackendKind::Pkcs11,
            None,
        ))
        .expect("signer");
    km.rotate("signer").expect("rotate");
    km.rotate("signer").expect("rotate again");
    km.retire("signer", 1).expect("retire v1");
    km.destroy("signer", 2).expect("destroy v2");
    assert_eq!(
        km.retire("signer", 3).unwrap_err().code,
        ErrorCode::BadRequest,
        "current"
    );
    let before = km.get("signer").expect("signer");
    drop(km);

    // Reopen: everything as it was, and the wrapped secret is still the same.
    let km = open();
    let after = km.get("signer").expect("signer after reopen");
    let states: Vec<_> = after.versions.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            VersionState::Retired,
            VersionState::Destroyed,
            VersionState::Active
        ]
    );
    for (a, b) in before.versions.iter().zip(&after.versions) {
        assert_eq!(a.public_der, b.public_der);
        assert_eq!(a.thumbprint, b.thumbprint);
        assert_eq!(a.backend_ref, b.backend_ref);
    }
    assert_eq!(signer.versions[0].public_der, after.versions[0].public_der);
    assert_eq!(
        secret_of(&km, "pool-key", Selector::Active).expect("unwrap after reopen"),
        secret
    );
    assert_eq!(km.list().len(), 4);

    // Destroying a wrapped version removes its secret from the registry files for good.
    let blob = km.get("pool-key-2").expect("pool-key-2").versions[0]
        .sealed
        .clone()
        .expect("wrapped blob")
        .blob;
    let on_disk = |db: &Path| {
        let mut all = std::fs::read(db).expect("db");
        if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
            all.extend(wal);
        }
        all.windows(blob.len()).any(|w| w == blob.as_slice())
    };
    assert!(on_disk(&db), "the blob is stored before destroy");
    km.rotate("pool-key-2").expect("rotate wrapped key");
    km.destroy("pool-key-2", 1).expect("destroy v1");
    drop(km);
    let km = open();
    let w = km.get("pool-key-2").expect("after reopen");
    assert_eq!(w.versions[0].state, VersionState::Destroyed);
    assert!(w.versions[0].sealed.is_none());
    assert!(w.versions[1].sealed.is_some());
    assert!(
        !on_disk(&db),
        "a destroyed wrapped secret must not remain in the files"
    );

    // A wrapped secret is bound to its key, version and kind: copied into another row (same
    // master version, so only the binding can tell) it fails `integrity`, never unwraps as the
    // other key.
    km.create(&spec(
        "pool-key-3",
        KeyKind::Aes256,
        BackendKind::Software,
        Some("master"),
    ))
    .expect("third software key");
    km.rotate("pool-key-3").expect("rotate");
    let before3 = secret_of(&km, "pool-key-3", Selector::Version(1)).expect("v1");
    drop(km);
    swap_blob(&db, ("pool-key-2", 2), ("pool-key-3", 1));
    swap_blob(&db, ("pool-key-3", 2), ("pool-key-2", 2));
    let km = open();
    assert_eq!(
        secret_of(&km, "pool-key-3", Selector::Version(1)),
        Err(ErrorCode::Integrity),
        "another key's blob"
    );
    assert_eq!(
        secret_of(&km, "pool-key-2", Selector::Version(2)),
        Err(ErrorCode::Integrity),
        "another key's blob"
    );
    drop(km);
    swap_blob(&db, ("pool-key-3", 2), ("pool-key-3", 1));
    let km = open();
    assert_eq!(
        secret_of(&km, "pool-key-3", Selector::Version(1)),
        Err(ErrorCode::Integrity),
        "the same key's other version"
    );
    assert_ne!(
        secret_of(&km, "pool-key-3", Selector::Version(2)),
        Ok(before3)
    );
    drop(km);

    // The registry file is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).expect("db").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
