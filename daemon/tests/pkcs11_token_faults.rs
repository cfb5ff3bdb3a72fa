//! PKCS#11 backend against a real SoftHSM 2 token that misbehaves: the application is logged out
//! behind the pool's back, the token directory is moved away and back, a token appears while the
//! backend runs. Each of these disturbs what a SoftHSM process sees of every token (handles are
//! invalidated, the module is re-initialised, other processes write the token directory), so they
//! run in this process of their own, apart from `pkcs11_backend.rs`, and one at a time. They fail
//! (they do not skip) when SoftHSM is missing.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod pkcs11_support;

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use custody_daemon::backend::pkcs11::{OaepMode, Pkcs11Backend};
use custody_daemon::backend::{Backend, BackendError, KeyKind, KeyRef, SignScheme};
use custody_testkit::{run_helper_test, Hsm};
use pkcs11_support::{config, new_key, side_session};

/// The token directory of this process: tokens `recover` (logout), `vanish` (moved away) and,
/// created during a test, `later`.
struct Fixture {
    _dir: tempfile::TempDir,
    recover: Hsm,
    vanish: Hsm,
    pin: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let recover = Hsm::init_with_label(dir.path(), "recover");
        let vanish = Hsm::init_with_label(dir.path(), "vanish");
        // Before the first C_Initialize of this process (SoftHSM reads it only then).
        std::env::set_var("SOFTHSM2_CONF", &recover.conf);
        let pin = recover.pin();
        Fixture {
            _dir: dir,
            recover,
            vanish,
            pin,
        }
    })
}

/// One token fault at a time: each of them can disturb the others' tokens in this process.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn logged_out_sessions_are_replaced() {
    let _serial = one_at_a_time();
    let f = fixture();
    let backend =
        Pkcs11Backend::start(config("recover", &f.pin, 2, OaepMode::Auto)).expect("start");
    let key = backend
        .create(&new_key("recover-sign", KeyKind::Rsa2048Sign))
        .expect("create");
    let master = backend
        .create(&new_key("recover-master", KeyKind::Aes256))
        .expect("create");
    backend
        .sign(
            &KeyRef::object(&key.backend_ref),
            &[3u8; 32],
            SignScheme::Pkcs1v15,
        )
        .expect("sign");
    let before = backend.pool_stats();

    // Behind the pool's back: log the application out of the token (login state is per
    // application and token, so every pooled session drops to a public session, and SoftHSM
    // invalidates the handles of private objects).
    for round in 0..3 {
        let s = side_session("recover", &f.pin);
        s.logout().expect("logout");
        drop(s);
        backend
            .sign(
                &KeyRef::object(&key.backend_ref),
                &[3u8; 32],
                SignScheme::Pkcs1v15,
            )
            .unwrap_or_else(|e| panic!("round {round}: sign after logout: {e}"));
        let blob = backend
            .wrap_secret(&KeyRef::object(&master.backend_ref), b"still works", b"aad")
            .expect("wrap");
        assert_eq!(
            &backend
                .unwrap_secret(&KeyRef::object(&master.backend_ref), &blob, b"aad")
                .expect("unwrap")[..],
            b"still works"
        );
    }
    let after = backend.pool_stats();
    println!("recovery after logout: before {before:?}, after {after:?}");
    assert!(after.discarded_total > before.discarded_total, "{after:?}");
    assert!(after.peak <= 2);
    assert!(backend.health().ok);
}

#[test]
fn token_appearing_later_recovers_from_unavailable() {
    let _serial = one_at_a_time();
    let f = fixture();
    let backend = Pkcs11Backend::start(config("later", &f.pin, 2, OaepMode::Auto)).expect("start");
    let h = backend.health();
    assert!(!h.ok, "{}", h.detail);
    assert!(h.detail.contains("not found"), "{}", h.detail);
    match backend.create(&new_key("later-sign", KeyKind::Rsa2048Sign)) {
        Err(BackendError::Unavailable(m)) => assert!(m.contains("later"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        backend.sign(
            &KeyRef::object("id:00112233445566778899aabbccddeeff"),
            &[0; 32],
            SignScheme::Pss
        ),
        Err(BackendError::Unavailable(_))
    ));

    // The token appears (another process initialises it in the same token directory).
    Hsm::init_with_label(&f.recover.dir, "later");
    let h = backend.health();
    if h.ok {
        // A PKCS#11 module that re-scans its slots: recovery in-process.
        let key = backend
            .create(&new_key("later-sign", KeyKind::Rsa2048Sign))
            .expect("create after the token appeared");
        backend
            .sign(
                &KeyRef::object(&key.backend_ref),
                &[5u8; 32],
                SignScheme::Pkcs1v15,
            )
            .expect("sign");
    } else {
        // SoftHSM 2.6.1 reads its token directory only at C_Initialize: this process keeps
        // answering Unavailable (no crash, no other error) ...
        println!("after init-token, same process: {}", h.detail);
        assert!(matches!(
            backend.create(&new_key("later-sign", KeyKind::Rsa2048Sign)),
            Err(BackendError::Unavailable(_))
        ));
        // ... and the next process (a daemon restart) uses the token.
        let out = child("later", None);
        assert!(out.contains("CHILD OK"), "{out}");
    }
}

/// Runs `child_process_uses_token` in a new process (new C_Initialize, same SOFTHSM2_CONF).
fn child(label: &str, sign_ref: Option<&str>) -> String {
    let f = fixture();
    let mut env = vec![
        ("CUSTODY_CHILD_LABEL", label),
        ("CUSTODY_CHILD_PIN", f.pin.as_str()),
    ];
    if let Some(r) = sign_ref {
        env.push(("CUSTODY_CHILD_REF", r));
    }
    run_helper_test("child_process_uses_token", &env)
}

/// Helper process for the recovery tests (ignored: it runs only when a test spawns it).
#[test]
#[ignore]
fn child_process_uses_token() {
    let (Ok(label), Ok(pin)) = (
        std::env::var("CUSTODY_CHILD_LABEL"),
        std::env::var("CUSTODY_CHILD_PIN"),
    ) else {
        return;
    };
    let backend = Pkcs11Backend::start(config(&label, &pin, 2, OaepMode::Auto)).expect("start");
    let h = backend.health();
    assert!(h.ok, "child: {}", h.detail);
    let r = match std::env::var("CUSTODY_CHILD_REF") {
        Ok(r) => r,
        Err(_) => {
            backend
                .create(&new_key("child", KeyKind::Rsa2048Sign))
                .expect("child create")
                .backend_ref
        }
    };
    backend
        .sign(&KeyRef::object(&r), &[6u8; 32], SignScheme::Pkcs1v15)
        .expect("child sign");
    println!("CHILD OK {label} {r}");
}

#[test]
fn token_directory_moved_away_and_back() {
    let _serial = one_at_a_time();
    let f = fixture();
    let backend = Pkcs11Backend::start(config("vanish", &f.pin, 2, OaepMode::Auto)).expect("start");
    let key = backend
        .create(&new_key("vanish-sign", KeyKind::Rsa2048Sign))
        .expect("create");
    let master = backend
        .create(&new_key("vanish-master", KeyKind::Aes256))
        .expect("create");
    backend
        .sign(&KeyRef::object(&key.backend_ref), &[1; 32], SignScheme::Pss)
        .expect("sign");
    let dir = f.vanish.token_object_dir();
    let away = f.vanish.dir.join("vanish-away");
    std::fs::rename(&dir, &away).expect("move away");
    // SoftHSM 2.6.1: objects vanish (handles invalid, finds empty) and C_GetTokenInfo fails with
    // CKR_GENERAL_ERROR; the backend turns that into Unavailable, not NotFound.
    let gone_sign = backend.sign(&KeyRef::object(&key.backend_ref), &[1; 32], SignScheme::Pss);
    let gone_wrap = backend.wrap_secret(&KeyRef::object(&master.backend_ref), b"x", b"aad");
    let gone_create = backend.create(&new_key("vanish-2", KeyKind::Aes256));
    let gone_health = backend.health();
    println!("token dir moved away: sign {gone_sign:?}");
    println!("token dir moved away: wrap {gone_wrap:?}");
    println!(
        "token dir moved away: create {:?}",
        gone_create.as_ref().map(|k| &k.backend_ref)
    );
    println!("token dir moved away: health {gone_health:?}");
    assert!(matches!(gone_sign, Err(BackendError::Unavailable(_))));
    assert!(matches!(gone_wrap, Err(BackendError::Unavailable(_))));
    assert!(matches!(gone_create, Err(BackendError::Unavailable(_))));
    assert!(!gone_health.ok);
    std::fs::rename(&away, &dir).expect("move back");
    let back_sign = backend.sign(&KeyRef::object(&key.backend_ref), &[1; 32], SignScheme::Pss);
    let back_health = backend.health();
    println!("token dir back, same process: sign {back_sign:?}");
    println!("token dir back, same process: health {back_health:?}");
    println!("stats {:?}", backend.pool_stats());
    if back_sign.is_err() {
        // SoftHSM keeps the token marked invalid until C_Finalize/C_Initialize: still
        // Unavailable here; a new process (daemon restart) finds the same key again.
        assert!(matches!(back_sign, Err(BackendError::Unavailable(_))));
        let out = child("vanish", Some(&key.backend_ref));
        assert!(out.contains("CHILD OK"), "{out}");
    }
}
