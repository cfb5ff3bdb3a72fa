//! [`read_back`] against a real SoftHSM token (never a mock): when the public key object of a
//! just-generated key reads back as something other than a 2048-bit RSA public key — what a token
//! disturbed mid-creation answers — the creation fails with `Unavailable`, not `Internal`, and no
//! object with the key's id is left on the token.
//!
//! The bad public key objects are made deterministically with `C_CreateObject` and paired with a
//! freshly generated private key, exactly as [`generate`] returns them.

use std::path::Path;

use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use custody_testkit::{Hsm, SOFTHSM_MODULE};
use secrecy::SecretString;

use super::*;
use crate::backend::pkcs11::shared_context;

/// A logged-in R/W session on a fresh token. This is the only test of this binary that uses
/// SoftHSM, so setting `SOFTHSM2_CONF` before the first `C_Initialize` is safe here.
fn token_session(dir: &Path) -> Session {
    let hsm = Hsm::init(dir);
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let ctx = shared_context(Path::new(SOFTHSM_MODULE)).expect("context");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == hsm.label)
        })
        .expect("token slot");
    let s = ctx.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&SecretString::from(hsm.pin())))
        .expect("login");
    s
}

/// An RSA public key object with this id and these (unchecked) attribute values.
fn fake_public(s: &Session, id: &KeyId, modulus: Vec<u8>) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Modulus(modulus),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Verify(true),
    ])
    .expect("C_CreateObject")
}

fn objects_with(s: &Session, id: &KeyId) -> usize {
    s.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])
        .expect("find")
        .len()
}

#[test]
fn public_key_read_back_wrong_is_unavailable_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = token_session(dir.path());

    // A real generation reads back fine, and an AES key has no public key.
    let id = KeyId::random();
    let g = generate(&s, KeyKind::Rsa2048Sign, &id, "test:good:v1").expect("generate");
    let p = read_back(&s, KeyKind::Rsa2048Sign, &id, &g)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .expect("public key");
    assert_eq!(
        RsaPublicKey::from_public_key_der(&p.spki_der)
            .expect("spki")
            .n()
            .bits(),
        2048
    );
    assert_eq!(objects_with(&s, &id), 2);
    let aes = KeyId::random();
    let g = generate(&s, KeyKind::Aes256, &aes, "test:aes:v1").expect("generate");
    assert!(read_back(&s, KeyKind::Aes256, &aes, &g)
        .expect("aes")
        .is_none());

    // The public key object reads back as garbage: an even modulus ("invalid modulus", what the
    // flaky test saw), or a well-formed but 1024-bit key.
    for (what, modulus, expect) in [
        ("even modulus", vec![0x02; 256], "invalid RSA public key"),
        ("1024-bit modulus", vec![0xc3; 128], "1024-bit modulus"),
    ] {
        let id = KeyId::random();
        let g = generate(&s, KeyKind::Rsa2048Oaep, &id, "test:bad:v1").expect("generate");
        let bad = Generated {
            private: g.private,
            public: Some(fake_public(&s, &id, modulus)),
        };
        assert_eq!(objects_with(&s, &id), 3, "{what}: private, public, fake");
        let err = read_back(&s, KeyKind::Rsa2048Oaep, &id, &bad).expect_err(what);
        assert!(!err.is_broken(), "{what}: not retried as a broken session");
        match err.into_backend() {
            BackendError::Unavailable(m) => {
                assert!(m.contains(expect), "{what}: {m}");
                assert!(m.contains("objects were destroyed"), "{what}: {m}");
            }
            other => panic!("{what}: expected Unavailable, got {other:?}"),
        }
        assert_eq!(objects_with(&s, &id), 0, "{what}: objects left behind");
    }
    // The good key was not touched.
    assert_eq!(objects_with(&s, &id), 2);
}
