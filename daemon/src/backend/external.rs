//! The external backend: public-only keys that stand for outside recipients (a partner's
//! certificate, IDA's K22 certificate). They are imported (`keys.import`), never generated, and
//! hold no private key: every private-key capability stays `Unsupported`, so encrypting or sealing
//! to them works and signing or decrypting with them is refused (`wrong_kind`).

use super::{Backend, BackendError, BackendKind, CreatedKey, Health, KeyRef, NewKey};

/// The external backend. Stateless: the public keys live in the registry.
#[derive(Debug, Default)]
pub struct ExternalBackend;

impl Backend for ExternalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }

    fn health(&self) -> Health {
        Health {
            ok: true,
            detail: "public keys of outside recipients (no private keys)".into(),
        }
    }

    fn create(&self, _spec: &NewKey<'_>) -> Result<CreatedKey, BackendError> {
        Err(BackendError::Unsupported(
            "external keys are imported with keys.import, not generated".into(),
        ))
    }

    fn destroy(&self, _key: &KeyRef<'_>) -> Result<(), BackendError> {
        // Nothing outside the registry.
        Ok(())
    }
}
