//! Wrapping software secrets under an `aes256` master key on the token: AES-256-GCM computed by
//! the token with a fresh random IV. Blob: `iv(12) ‖ ciphertext ‖ tag(16)`; the AAD (binding the
//! secret to its key version, see `backend::software::aad`) is authenticated, not stored.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use rand::RngCore;
use zeroize::Zeroizing;

use super::errors::{integrity_on, OpError};
use super::keys::Role;
use super::Pkcs11Backend;
use crate::backend::{BackendError, KeyRef};

const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

impl Pkcs11Backend {
    pub(super) fn gcm_wrap(
        &self,
        master: &KeyRef<'_>,
        secret: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.with_key(master, Role::Secret, |s, key| {
            let mut iv = [0u8; IV_LEN];
            rand::rngs::OsRng.fill_bytes(&mut iv);
            let mut blob = Vec::with_capacity(IV_LEN + secret.len() + TAG_LEN);
            blob.extend_from_slice(&iv);
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())?;
            let ct = s.encrypt(&Mechanism::AesGcm(params), key.handle, secret)?;
            blob.extend_from_slice(&ct);
            Ok(blob)
        })
    }

    pub(super) fn gcm_unwrap(
        &self,
        master: &KeyRef<'_>,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        if wrapped.len() < IV_LEN + TAG_LEN {
            return Err(BackendError::BadInput(format!(
                "wrapped secret is {} bytes, shorter than iv + tag",
                wrapped.len()
            )));
        }
        let (iv, ct) = wrapped.split_at(IV_LEN);
        self.with_key(master, Role::Secret, |s, key| {
            let mut iv = <[u8; IV_LEN]>::try_from(iv)
                .map_err(|_| OpError::Backend(BackendError::BadInput("bad iv".into())))?;
            let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())?;
            s.decrypt(&Mechanism::AesGcm(params), key.handle, ct)
                .map(Zeroizing::new)
                .map_err(|e| integrity_on(e, "AES-GCM authentication"))
        })
    }
}
