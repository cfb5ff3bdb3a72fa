//! Certificates on key versions and public-only keys: appending a certificate (made in the
//! device or imported) to a version, importing an outside recipient's public key or certificate
//! as a key of the `external` backend, and walking a certificate's issuers among the keys the
//! registry knows. Every change is durable before it is published.

use std::sync::Arc;

use custody_proto::ErrorCode;

use super::record::{now, KeyRecord, VersionRecord, VersionState};
use super::KeyManager;
use crate::backend::{validate_key_name, BackendKind, KeyKind, Template};
use crate::error::OpError;
use crate::format::thumbprint::thumbprint;
use crate::format::x509::{rsa2048, same_rsa_key, CertInfo};

/// Longest issuer chain `chain` follows.
const MAX_CHAIN: usize = 8;

impl KeyManager {
    /// Appends `cert` to version `version` of `name`. Refused (`bad_request`) unless the
    /// certificate's public key is the version's; a certificate the version already has is
    /// accepted again without a second copy.
    pub fn add_certificate(
        &self,
        name: &str,
        version: u32,
        cert: CertInfo,
    ) -> Result<Arc<KeyRecord>, OpError> {
        let mut store = self.lock_store();
        let mut rec = (*self.get(name)?).clone();
        let v = rec
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("key `{name}` has no version {version}"),
                )
            })?;
        if !v.is_live() {
            return Err(OpError::new(
                ErrorCode::KeyRetired,
                format!("version {version} of `{name}` is destroyed"),
            ));
        }
        let public = v.public_der.as_deref().ok_or_else(|| {
            OpError::new(
                ErrorCode::WrongKind,
                format!("`{name}` is {}: it has no public key to certify", rec.kind),
            )
        })?;
        if !same_rsa_key(&cert.spki_der, public) {
            return Err(OpError::bad(format!(
                "the certificate is for another key than version {version} of `{name}`"
            )));
        }
        if v.certs.iter().any(|c| c.thumbprint == cert.thumbprint) {
            return self.get(name);
        }
        store.add_cert(name, version, &cert.der)?;
        v.certs.push(cert);
        Ok(self.publish(rec))
    }

    /// Imports a public-only key for an outside recipient: a new key (backend `external`) with
    /// version 1, or a new current version of an existing external key (earlier versions become
    /// decrypt-only, so envelopes sealed to them can still be re-targeted by their owner's
    /// thumbprint). With a certificate, the version carries it and expires with it.
    pub fn import_public(
        &self,
        name: &str,
        kind: KeyKind,
        spki_der: Vec<u8>,
        cert: Option<CertInfo>,
    ) -> Result<Arc<KeyRecord>, OpError> {
        validate_key_name(name).map_err(OpError::bad)?;
        if !BackendKind::External.kinds().contains(&kind) {
            return Err(OpError::bad(format!(
                "an imported public key is rsa2048-oaep or rsa2048-sign, not {kind}"
            )));
        }
        rsa2048(&spki_der).map_err(|e| OpError::bad(e.to_string()))?;
        let mut store = self.lock_store();
        let existing = self.get(name).ok();
        let mut rec = match &existing {
            Some(r) if r.backend != BackendKind::External => {
                return Err(OpError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "key `{name}` exists in the {} backend; imports go to external keys",
                        r.backend
                    ),
                ))
            }
            Some(r) if r.kind != kind => {
                return Err(OpError::new(
                    ErrorCode::WrongKind,
                    format!("`{name}` is {}, not {kind}", r.kind),
                ))
            }
            Some(r) => (**r).clone(),
            None => KeyRecord {
                name: name.to_owned(),
                kind,
                backend: BackendKind::External,
                template: Template::Default,
                master: None,
                validity_days: self.policy.validity_days,
                // An outside party's key is usable until its certificate expires.
                pre_expire_days: 0,
                versions: Vec::new(),
            },
        };
        let created = now();
        let not_after = cert
            .as_ref()
            .map_or(created + i64::from(rec.validity_days) * 86_400, |c| {
                c.not_after
            });
        let v = VersionRecord {
            version: rec.next_version(),
            state: VersionState::Active,
            created,
            not_after,
            backend_ref: String::new(),
            thumbprint: Some(thumbprint(&spki_der)),
            public_der: Some(spki_der),
            public_tpmt: None,
            sealed: None,
            certs: cert.into_iter().collect(),
            adopted: false,
        };
        if existing.is_some() {
            store.rotate(name, &v)?;
            for old in rec.versions.iter_mut() {
                if old.state == VersionState::Active {
                    old.state = VersionState::DecryptOnly;
                }
            }
            rec.versions.push(v);
        } else {
            rec.versions.push(v);
            store.insert_key(&rec)?;
        }
        tracing::info!(key = %name, version = rec.next_version() - 1, "public key imported");
        Ok(self.publish(rec))
    }

    /// `cert` followed by its issuers' newest certificates among the keys the registry knows,
    /// found by issuer name and, where both are present, by key identifier; stops at a
    /// self-issued certificate or an issuer it does not know.
    pub fn chain(&self, cert: &CertInfo) -> Vec<CertInfo> {
        let keys = self.list();
        let mut out = vec![cert.clone()];
        while out.len() < MAX_CHAIN {
            let Some(last) = out.last() else { break };
            if last.self_issued() {
                break;
            }
            let issuer = keys
                .iter()
                .flat_map(|k| k.versions.iter().filter(|v| v.is_live()))
                .filter_map(|v| v.certs.last())
                .find(|c| {
                    c.subject == last.issuer
                        && match (&last.aki, &c.ski) {
                            (Some(a), Some(s)) => a == s,
                            _ => true,
                        }
                        && !out.iter().any(|o| o.thumbprint == c.thumbprint)
                });
            match issuer {
                Some(c) => out.push(c.clone()),
                None => break,
            }
        }
        out
    }
}
