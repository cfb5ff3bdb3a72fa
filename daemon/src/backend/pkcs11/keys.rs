//! Key objects: references, creation templates, lookup and the handle cache.
//!
//! A key version is addressed as `id:<hex of CKA_ID>` (16 random bytes for the keys custodyd
//! generates, 1 to 64 bytes for adopted ones). The private (or secret)
//! and public objects of one key share the `CKA_ID`. Object handles are cached per (id, role):
//! PKCS#11 handles stay valid for the application while the token stays, and looking objects up
//! with `C_FindObjects*` on every operation is what exhausted MOSIP's HSM. The cache is bounded.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};

use super::errors::{describe, OpError};
use crate::backend::{BackendError, KeyKind, PublicKeyInfo};

/// Length of the `CKA_ID` custodyd gives the keys it generates.
pub(crate) const ID_LEN: usize = 16;

/// Longest `CKA_ID` of an adopted key (keys made by other software may use any length).
pub(crate) const MAX_ID_LEN: usize = 64;

/// Most cached handles; the cache is emptied when full (it refills on use).
const CACHE_CAP: usize = 4096;

/// The `CKA_ID` of a key version, parsed from its `backend_ref`: 1 to [`MAX_ID_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyId {
    len: u8,
    bytes: [u8; MAX_ID_LEN],
}

impl KeyId {
    /// Parses `id:<hex>` (1 to [`MAX_ID_LEN`] bytes).
    pub(crate) fn parse(backend_ref: &str) -> Result<Self, BackendError> {
        let bad = || BackendError::BadInput(format!("not a pkcs11 key reference: {backend_ref:?}"));
        let hex_part = backend_ref.strip_prefix("id:").ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        KeyId::from_bytes(&bytes).ok_or_else(bad)
    }

    /// The id with these bytes; `None` when empty or longer than [`MAX_ID_LEN`].
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.is_empty() || b.len() > MAX_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..b.len()].copy_from_slice(b);
        Some(KeyId {
            len: b.len() as u8,
            bytes,
        })
    }

    /// A fresh random id of [`ID_LEN`] bytes.
    pub(crate) fn random() -> Self {
        use rand::RngCore;
        let mut id = [0u8; ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut id);
        // ID_LEN is within 1..=MAX_ID_LEN.
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..ID_LEN].copy_from_slice(&id);
        KeyId {
            len: ID_LEN as u8,
            bytes,
        }
    }

    /// The `CKA_ID` bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The `backend_ref` string.
    pub(crate) fn to_ref(self) -> String {
        format!("id:{}", hex::encode(self.as_bytes()))
    }
}

/// What an operation needs from a key; each role is one object with the right capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// RSA private key with `CKA_SIGN`.
    Sign,
    /// RSA private key with `CKA_DECRYPT`.
    Decrypt,
    /// RSA public key.
    Public,
    /// AES secret key with `CKA_ENCRYPT`/`CKA_DECRYPT`.
    Secret,
    /// Ed25519 (`CKK_EC_EDWARDS`) private key with `CKA_SIGN`.
    EdSign,
    /// Ed25519 public key.
    EdPublic,
}

impl Role {
    fn template(self, id: &KeyId) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Id(id.as_bytes().to_vec()),
        ];
        match self {
            Role::Sign => t.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Sign(true),
            ]),
            Role::Decrypt => t.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Decrypt(true),
            ]),
            Role::Public => t.extend([
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
            ]),
            Role::Secret => t.extend([
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Encrypt(true),
            ]),
            Role::EdSign => t.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Sign(true),
            ]),
            Role::EdPublic => t.extend([
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
            ]),
        }
        t
    }

    /// True for the RSA roles (whose modulus length is cached).
    fn is_rsa(self) -> bool {
        matches!(self, Role::Sign | Role::Decrypt | Role::Public)
    }

    fn describe(self) -> &'static str {
        match self {
            Role::Sign => "an rsa2048-sign",
            Role::Decrypt => "an rsa2048-oaep",
            Role::Public => "an RSA",
            Role::Secret => "an aes256",
            Role::EdSign => "an ed25519",
            Role::EdPublic => "an Ed25519 public",
        }
    }
}

/// A cached object: its handle and, for RSA keys, the modulus length in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cached {
    pub(crate) handle: ObjectHandle,
    pub(crate) modulus_len: usize,
}

/// Handle cache keyed by (id, role).
#[derive(Default)]
pub(crate) struct HandleCache {
    map: Mutex<HashMap<(KeyId, Role), Cached>>,
}

impl HandleCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<(KeyId, Role), Cached>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The object for `(id, role)`: from the cache, or found on the token and cached.
    pub(crate) fn lookup(&self, s: &Session, id: &KeyId, role: Role) -> Result<Cached, OpError> {
        if let Some(c) = self.lock().get(&(*id, role)) {
            return Ok(*c);
        }
        let c = find(s, id, role)?;
        self.insert(*id, role, c);
        Ok(c)
    }

    pub(crate) fn insert(&self, id: KeyId, role: Role, c: Cached) {
        let mut map = self.lock();
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert((id, role), c);
    }

    /// Drops one entry (its handle looked stale).
    pub(crate) fn forget(&self, id: &KeyId, role: Role) {
        self.lock().remove(&(*id, role));
    }

    /// Drops every entry of a key.
    pub(crate) fn forget_id(&self, id: &KeyId) {
        self.lock().retain(|(k, _), _| k != id);
    }

    /// Drops everything (token re-attached or logged out: handles are gone).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Number of cached handles.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Errors unless the session is logged in as the user (a logged-out session sees no private
/// objects, which would otherwise look like "not found").
pub(crate) fn ensure_logged_in(s: &Session) -> Result<(), OpError> {
    let info = s.get_session_info()?;
    match info.session_state() {
        SessionState::RwUser | SessionState::RoUser => Ok(()),
        other => Err(OpError::Broken(format!(
            "session is not logged in (state {other:?})"
        ))),
    }
}

fn find(s: &Session, id: &KeyId, role: Role) -> Result<Cached, OpError> {
    let found = s.find_objects(&role.template(id))?;
    let handle = match found.as_slice() {
        [h] => *h,
        [] => return Err(missing(s, id, role)),
        _ => {
            return Err(OpError::Backend(BackendError::Internal(format!(
                "{} objects match key {} as {}",
                found.len(),
                id.to_ref(),
                role.describe()
            ))))
        }
    };
    let modulus_len = if role.is_rsa() {
        read_modulus(s, handle)?.len()
    } else {
        0
    };
    Ok(Cached {
        handle,
        modulus_len,
    })
}

/// Why no object matched: logged out (broken session), wrong kind, or no such key.
fn missing(s: &Session, id: &KeyId, role: Role) -> OpError {
    if let Err(e) = ensure_logged_in(s) {
        return e;
    }
    match s.find_objects(&[
        Attribute::Token(true),
        Attribute::Id(id.as_bytes().to_vec()),
    ]) {
        Ok(any) if !any.is_empty() => OpError::Backend(BackendError::Unsupported(format!(
            "key {} is not {} key",
            id.to_ref(),
            role.describe()
        ))),
        Ok(_) => OpError::Backend(BackendError::NotFound(id.to_ref())),
        Err(e) => OpError::Ck(e),
    }
}

fn read_modulus(s: &Session, handle: ObjectHandle) -> Result<Vec<u8>, OpError> {
    let attrs = s.get_attributes(handle, &[AttributeType::Modulus])?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Modulus(m) => Some(m),
            _ => None,
        })
        .ok_or_else(|| OpError::Backend(BackendError::Internal("key has no CKA_MODULUS".into())))
}

/// Reads an RSA public key object into a DER SubjectPublicKeyInfo.
pub(crate) fn read_public(s: &Session, handle: ObjectHandle) -> Result<PublicKeyInfo, OpError> {
    let attrs = s.get_attributes(
        handle,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(m) => n = Some(m),
            Attribute::PublicExponent(x) => e = Some(x),
            _ => {}
        }
    }
    // Attributes that do not make an RSA public key come from a token in trouble (SoftHSM answers
    // with empty values while its token files are being moved or rewritten): retryable, not a bug.
    let unreadable = |m: String| OpError::Backend(BackendError::Unavailable(m));
    let (n, e) = match (n, e) {
        (Some(n), Some(e)) => (n, e),
        _ => return Err(unreadable("public key lacks modulus or exponent".into())),
    };
    let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
        .map_err(|err| unreadable(format!("token returned an invalid RSA public key: {err}")))?;
    let spki = key.to_public_key_der().map_err(|err| {
        OpError::Backend(BackendError::Internal(format!("cannot encode SPKI: {err}")))
    })?;
    Ok(PublicKeyInfo {
        spki_der: spki.as_bytes().to_vec(),
        tpmt: None,
    })
}

/// DER of `id-Ed25519` (1.3.101.112), the `CKA_EC_PARAMS` of an Ed25519 key (PKCS#11 3.0
/// §2.3.5 accepts the OID for curves of RFC 8410).
const ED25519_EC_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// Reads an Ed25519 public key object (`CKA_EC_POINT`: the 32-byte key, DER OCTET STRING
/// wrapped as SoftHSM writes it, or bare) into a DER SubjectPublicKeyInfo.
pub(crate) fn read_ed25519_public(
    s: &Session,
    handle: ObjectHandle,
) -> Result<PublicKeyInfo, OpError> {
    let attrs = s.get_attributes(handle, &[AttributeType::EcPoint])?;
    let point = attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    });
    let unreadable = |m: &str| OpError::Backend(BackendError::Unavailable(m.to_owned()));
    let point = point.ok_or_else(|| unreadable("Ed25519 public key lacks CKA_EC_POINT"))?;
    let raw: [u8; 32] = match point.as_slice() {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.try_into(),
        raw => raw.try_into(),
    }
    .map_err(|_| unreadable("token returned an Ed25519 CKA_EC_POINT that is not 32 bytes"))?;
    let spki_der = crate::format::okp::spki_der(KeyKind::Ed25519, &raw).ok_or_else(|| {
        OpError::Backend(BackendError::Internal(
            "cannot encode an Ed25519 SPKI".into(),
        ))
    })?;
    Ok(PublicKeyInfo {
        spki_der,
        tpmt: None,
    })
}

/// Objects created for a new key version.
pub(crate) struct Generated {
    /// Private key (RSA) or secret key (AES).
    pub(crate) private: ObjectHandle,
    /// Public key (RSA only).
    pub(crate) public: Option<ObjectHandle>,
}

/// Generates the objects of a new key version on the token.
///
/// Leftovers with the same id (from an attempt interrupted by a broken session) are destroyed
/// first, so a retried creation never leaves two objects with one id.
pub(crate) fn generate(
    s: &Session,
    kind: KeyKind,
    id: &KeyId,
    label: &str,
) -> Result<Generated, OpError> {
    for h in s.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])? {
        s.destroy_object(h)?;
    }
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let protected = [Attribute::Sensitive(true), Attribute::Extractable(false)];
    match kind {
        KeyKind::Rsa2048Sign | KeyKind::Rsa2048Oaep => {
            let sign = kind == KeyKind::Rsa2048Sign;
            let mut public = common(false);
            public.extend([
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Verify(sign),
                Attribute::Encrypt(!sign),
                Attribute::Wrap(false),
            ]);
            let mut private = common(true);
            private.extend(protected.clone());
            private.extend([
                Attribute::Sign(sign),
                Attribute::Decrypt(!sign),
                Attribute::Unwrap(false),
            ]);
            let (pub_h, priv_h) =
                s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
            Ok(Generated {
                private: priv_h,
                public: Some(pub_h),
            })
        }
        KeyKind::Ed25519 => {
            let mut public = common(false);
            public.extend([
                Attribute::EcParams(ED25519_EC_PARAMS.to_vec()),
                Attribute::Verify(true),
            ]);
            let mut private = common(true);
            private.extend(protected);
            private.extend([Attribute::Sign(true)]);
            let (pub_h, priv_h) =
                s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)?;
            Ok(Generated {
                private: priv_h,
                public: Some(pub_h),
            })
        }
        KeyKind::X25519 => Err(OpError::Backend(BackendError::Unsupported(
            "x25519 keys are held by the software backend, not pkcs11".into(),
        ))),
        KeyKind::Aes256 => {
            let mut t = common(true);
            t.extend(protected);
            t.extend([
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
            ]);
            let h = s.generate_key(&Mechanism::AesKeyGen, &t)?;
            Ok(Generated {
                private: h,
                public: None,
            })
        }
    }
}

/// Reads back the public key of the objects [`generate`] just made for `kind`.
///
/// When the token answers with attributes that are not a 2048-bit RSA public key, or fails to
/// answer without breaking the session, the new objects are destroyed (nothing is left
/// half-created) and the creation fails with `Unavailable`: a token fault, retryable, never
/// `Internal`. A broken session is passed on unchanged: [`super::Pkcs11Backend`] retries on a
/// fresh session, where [`generate`] first removes leftovers with the same id.
pub(crate) fn read_back(
    s: &Session,
    kind: KeyKind,
    id: &KeyId,
    g: &Generated,
) -> Result<Option<PublicKeyInfo>, OpError> {
    let Some(h) = g.public else {
        return Ok(None);
    };
    if kind == KeyKind::Ed25519 {
        return match read_ed25519_public(s, h) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_broken() => Err(e),
            Err(e) => {
                let _ = discard_generated(s, id, g);
                Err(e)
            }
        };
    }
    let checked = read_public(s, h).and_then(|p| {
        let bits = RsaPublicKey::from_public_key_der(&p.spki_der).map_or(0, |k| k.n().bits());
        if bits == 2048 {
            Ok(p)
        } else {
            Err(OpError::Backend(BackendError::Unavailable(format!(
                "token returned a {bits}-bit modulus for a new {kind} key"
            ))))
        }
    });
    match checked {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.is_broken() => Err(e),
        Err(e) => {
            let why = match e {
                OpError::Ck(ck) => describe(&ck),
                OpError::Backend(b) => b.to_string(),
                OpError::Broken(m) | OpError::Gone(m) => m,
            };
            let cleanup = match discard_generated(s, id, g) {
                Ok(()) => "its objects were destroyed".to_owned(),
                Err(m) => format!("destroying its objects failed: {m}"),
            };
            tracing::warn!(
                backend_ref = %id.to_ref(),
                %why,
                %cleanup,
                "pkcs11 key creation failed on read-back"
            );
            Err(OpError::Backend(BackendError::Unavailable(format!(
                "the token did not give back the public key of new key {} ({why}); {cleanup}",
                id.to_ref()
            ))))
        }
    }
}

/// Destroys the objects of a creation that failed half-way: by handle, then anything left with
/// the id.
fn discard_generated(s: &Session, id: &KeyId, g: &Generated) -> Result<(), String> {
    for h in [Some(g.private), g.public].into_iter().flatten() {
        let _ = s.destroy_object(h);
    }
    let left = s
        .find_objects(&[Attribute::Id(id.as_bytes().to_vec())])
        .map_err(|e| describe(&e))?;
    for h in left {
        s.destroy_object(h).map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// Destroys every object with this id; errors with `NotFound` when there is none.
pub(crate) fn destroy_all(s: &Session, id: &KeyId) -> Result<usize, OpError> {
    ensure_logged_in(s)?;
    let objects = s.find_objects(&[
        Attribute::Token(true),
        Attribute::Id(id.as_bytes().to_vec()),
    ])?;
    if objects.is_empty() {
        return Err(OpError::Backend(BackendError::NotFound(id.to_ref())));
    }
    for h in &objects {
        s.destroy_object(*h)?;
    }
    Ok(objects.len())
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
