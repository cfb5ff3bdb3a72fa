//! Adopting keys that already exist on the token (MOSIP's K9 and partner keys): find the one
//! object by label or id, check that it is the kind asked for, sensitive and non-extractable,
//! and address it by its `CKA_ID` from then on. Nothing is generated or changed on the token.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};

use super::errors::OpError;
use super::keys::{self, Cached, KeyId, Role};
use super::Pkcs11Backend;
use crate::backend::{BackendError, CreatedKey, ExistingKey, KeyKind, PublicKeyInfo};

/// What an adopted object must be, by kind: its class, key type and the role operations use.
fn expected(kind: KeyKind) -> Result<(ObjectClass, KeyType, Role), BackendError> {
    Ok(match kind {
        KeyKind::Aes256 => (ObjectClass::SECRET_KEY, KeyType::AES, Role::Secret),
        KeyKind::Rsa2048Sign => (ObjectClass::PRIVATE_KEY, KeyType::RSA, Role::Sign),
        KeyKind::Rsa2048Oaep => (ObjectClass::PRIVATE_KEY, KeyType::RSA, Role::Decrypt),
        other => {
            return Err(BackendError::Unsupported(format!(
                "adopting {other} keys (aes256, rsa2048-sign and rsa2048-oaep can be adopted)"
            )))
        }
    })
}

fn bad(m: String) -> OpError {
    OpError::Backend(BackendError::BadInput(m))
}

/// The attributes checked on an adopted object.
#[derive(Default)]
struct Seen {
    id: Vec<u8>,
    sensitive: bool,
    extractable: bool,
    encrypt: bool,
    decrypt: bool,
    sign: bool,
    value_len: u64,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

fn read(s: &Session, h: ObjectHandle, kind: KeyKind) -> Result<Seen, OpError> {
    let mut want = vec![
        AttributeType::Id,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
    ];
    if kind == KeyKind::Aes256 {
        want.push(AttributeType::ValueLen);
    } else {
        want.extend([
            AttributeType::Sign,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ]);
    }
    let mut seen = Seen::default();
    for a in s.get_attributes(h, &want)? {
        match a {
            Attribute::Id(v) => seen.id = v,
            Attribute::Sensitive(b) => seen.sensitive = b,
            Attribute::Extractable(b) => seen.extractable = b,
            Attribute::Encrypt(b) => seen.encrypt = b,
            Attribute::Decrypt(b) => seen.decrypt = b,
            Attribute::Sign(b) => seen.sign = b,
            Attribute::ValueLen(n) => seen.value_len = u64::from(n),
            Attribute::Modulus(m) => seen.modulus = m,
            Attribute::PublicExponent(e) => seen.exponent = e,
            _ => {}
        }
    }
    Ok(seen)
}

fn check(kind: KeyKind, what: &str, seen: &Seen) -> Result<(), OpError> {
    if !seen.sensitive || seen.extractable {
        return Err(bad(format!(
            "{what} is not protected (CKA_SENSITIVE must be true and CKA_EXTRACTABLE false): \
             refusing to take custody of a key that can leave the token"
        )));
    }
    let ok = match kind {
        KeyKind::Aes256 => seen.value_len == 32 && seen.encrypt && seen.decrypt,
        KeyKind::Rsa2048Sign => seen.sign && seen.modulus.len() == 256,
        KeyKind::Rsa2048Oaep => seen.decrypt && seen.modulus.len() == 256,
        _ => false,
    };
    if !ok {
        let detail = match kind {
            KeyKind::Aes256 => format!(
                "a {}-byte AES key with encrypt={} decrypt={}",
                seen.value_len, seen.encrypt, seen.decrypt
            ),
            _ => format!(
                "a {}-bit RSA key with sign={} decrypt={}",
                seen.modulus.len() * 8,
                seen.sign,
                seen.decrypt
            ),
        };
        return Err(OpError::Backend(BackendError::Unsupported(format!(
            "{what} is {detail}, not a usable {kind} key"
        ))));
    }
    Ok(())
}

fn public_of(seen: &Seen) -> Result<PublicKeyInfo, OpError> {
    let key = RsaPublicKey::new(
        BigUint::from_bytes_be(&seen.modulus),
        BigUint::from_bytes_be(&seen.exponent),
    )
    .map_err(|e| bad(format!("the token's RSA public key is not valid: {e}")))?;
    if key.size() != 256 {
        return Err(bad("the key is not RSA-2048".into()));
    }
    let spki = key.to_public_key_der().map_err(|e| {
        OpError::Backend(BackendError::Internal(format!("cannot encode SPKI: {e}")))
    })?;
    Ok(PublicKeyInfo {
        spki_der: spki.as_bytes().to_vec(),
        tpmt: None,
    })
}

impl Pkcs11Backend {
    /// Finds, checks and registers an existing key (see [`crate::backend::Backend::adopt`]).
    pub(super) fn adopt_existing(
        &self,
        kind: KeyKind,
        at: &ExistingKey,
    ) -> Result<CreatedKey, BackendError> {
        let (class, key_type, role) = expected(kind)?;
        let (what, locator) = match at {
            ExistingKey::Label(l) => (
                format!("the object labelled {l:?}"),
                Attribute::Label(l.as_bytes().to_vec()),
            ),
            ExistingKey::Id(id) => (
                format!("the object with id {}", hex::encode(id)),
                Attribute::Id(id.clone()),
            ),
        };
        let (id, public) = self.run(|s| {
            keys::ensure_logged_in(s)?;
            let found = s.find_objects(&[
                Attribute::Token(true),
                Attribute::Class(class),
                Attribute::KeyType(key_type),
                locator.clone(),
            ])?;
            let h = match found.as_slice() {
                [h] => *h,
                [] => {
                    return Err(OpError::Backend(BackendError::NotFound(format!(
                        "no {kind} key object: {what}"
                    ))))
                }
                many => {
                    return Err(bad(format!(
                        "{} {kind} key objects match {what}; name one by its id",
                        many.len()
                    )))
                }
            };
            let seen = read(s, h, kind)?;
            check(kind, &what, &seen)?;
            let id = KeyId::from_bytes(&seen.id).ok_or_else(|| {
                bad(format!(
                    "{what} has a CKA_ID of {} bytes; adoption needs 1 to 64 (set one with the \
                     token's tools)",
                    seen.id.len()
                ))
            })?;
            // Operations find the object by id and role: exactly this one must answer.
            let by_id = s.find_objects(&[
                Attribute::Token(true),
                Attribute::Class(class),
                Attribute::KeyType(key_type),
                Attribute::Id(id.as_bytes().to_vec()),
            ])?;
            if by_id.len() != 1 {
                return Err(bad(format!(
                    "{} {kind} key objects share the id of {what}; it cannot be addressed alone",
                    by_id.len()
                )));
            }
            let public = match kind {
                KeyKind::Aes256 => None,
                _ => Some(public_of(&seen)?),
            };
            self.keys.insert(
                id,
                role,
                Cached {
                    handle: h,
                    modulus_len: seen.modulus.len(),
                },
            );
            Ok((id, public))
        })?;
        tracing::info!(kind = %kind, backend_ref = %id.to_ref(), "pkcs11 key adopted");
        Ok(CreatedKey {
            backend_ref: id.to_ref(),
            public,
            sealed: None,
        })
    }
}
