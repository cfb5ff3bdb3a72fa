//! `keys.cert`, `keys.csr`, `keys.cert-import`, `keys.cert-export`, `keys.import`: X.509
//! certificates for key versions, signed inside the TPM/HSM by an issuer key, and public-only
//! keys for outside recipients. Certificates and requests are built by `format::x509`; the
//! signature comes from the issuer's key version, so no private key leaves its device.

use std::cell::RefCell;

use custody_proto::ops::{
    CertArgs, CertExportArgs, CertExportResult, CertImportArgs, CertResult, CsrArgs, CsrResult,
    KeyImportArgs, KeyInfo, KeysCert, KeysCertExport, KeysCertImport, KeysCsr, KeysImport, Op,
};
use custody_proto::ErrorCode;
use rand::RngCore;

use super::admin::info;
use super::{Ctx, Handle};
use crate::backend::{BackendError, KeyKind, SignScheme};
use crate::error::OpError;
use crate::format::x509::{
    self, build_certificate, build_csr, parse_certificate, parse_public_key, parse_subject,
    CertInfo, CertSpec, Issuer, Usage, X509Error,
};
use crate::keys::{KeyVersion, Selector};
use crate::state::App;

/// Longest validity `days` accepts (100 years).
const MAX_DAYS: u32 = 36_500;

impl From<X509Error> for OpError {
    fn from(e: X509Error) -> Self {
        match e {
            X509Error::Build(_) | X509Error::Signer(_) => OpError::internal(e.to_string()),
            _ => OpError::bad(e.to_string()),
        }
    }
}

/// Signs the to-be-signed digests of `build` with `key` (PKCS#1 v1.5, SHA-256); a device error
/// comes back with its own code (e.g. `backend_unavailable`), not as a build failure.
fn signed_by<T>(
    key: &KeyVersion,
    build: impl FnOnce(&x509::SignFn<'_>) -> Result<T, X509Error>,
) -> Result<T, OpError> {
    let failure: RefCell<Option<BackendError>> = RefCell::new(None);
    let sign = |d: &[u8; 32]| {
        key.sign(d, SignScheme::Pkcs1v15).map_err(|e| {
            let m = e.to_string();
            *failure.borrow_mut() = Some(e);
            m
        })
    };
    build(&sign).map_err(|e| match failure.borrow_mut().take() {
        Some(b) => b.into(),
        None => e.into(),
    })
}

fn version_selector(version: Option<u32>) -> Selector<'static> {
    version.map_or(Selector::Active, Selector::Version)
}

fn random_serial() -> Vec<u8> {
    let mut serial = vec![0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    // Positive, and 16 bytes long: no leading zero byte for DER to strip.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

/// The issuer's key version and newest certificate, checked to be a usable, unexpired CA.
fn issuer_of(app: &App, name: &str) -> Result<(KeyVersion, CertInfo), OpError> {
    let k = app.keys.resolve(
        name,
        KeyKind::Rsa2048Sign,
        KeysCert::NAME,
        Selector::Current,
    )?;
    let cert = k.record().certs.last().cloned().ok_or_else(|| {
        OpError::bad(format!(
            "issuer `{name}` has no certificate; give it one first (e.g. a self-signed CA \
             certificate: keys.cert with self_signed and ca)"
        ))
    })?;
    if !cert.is_ca {
        return Err(OpError::bad(format!(
            "the certificate of issuer `{name}` is not a CA certificate (basicConstraints cA)"
        )));
    }
    if cert.not_after <= x509::now() {
        return Err(OpError::new(
            ErrorCode::KeyExpired,
            format!("the certificate of issuer `{name}` has expired"),
        ));
    }
    Ok((k, cert))
}

impl Handle for KeysCert {
    async fn handle(ctx: &mut Ctx, a: CertArgs) -> Result<CertResult, OpError> {
        let subject = parse_subject(&a.subject)?;
        if a.days.is_some_and(|d| d == 0 || d > MAX_DAYS) {
            return Err(OpError::bad(format!("`days` is 1 to {MAX_DAYS}")));
        }
        let name = a.name.clone();
        let (version, cert) = ctx
            .blocking(move |app| {
                let kind = app.keys.get(&a.name)?.kind;
                let k =
                    app.keys
                        .resolve(&a.name, kind, KeysCert::NAME, version_selector(a.version))?;
                let spki = k.record().public_der.clone().ok_or_else(|| {
                    OpError::new(
                        ErrorCode::WrongKind,
                        format!("`{}` is {kind}: it has no public key to certify", a.name),
                    )
                })?;
                let usage = match (kind, a.ca) {
                    (KeyKind::Rsa2048Sign, true) => Usage::Ca,
                    (KeyKind::Rsa2048Sign, false) => Usage::Signing,
                    (KeyKind::Rsa2048Oaep, false) => Usage::Encryption,
                    (k, _) => {
                        return Err(OpError::new(
                            ErrorCode::WrongKind,
                            format!(
                                "a CA certificate needs an rsa2048-sign key; `{}` is {k}",
                                a.name
                            ),
                        ))
                    }
                };
                let not_before = x509::now();
                let mut not_after = a
                    .days
                    .map_or(k.record().not_after, |d| not_before + i64::from(d) * 86_400);
                // The signer: the key itself, or the issuer (key version, name, public key).
                let issuer = if a.self_signed {
                    if kind != KeyKind::Rsa2048Sign {
                        return Err(OpError::new(
                            ErrorCode::WrongKind,
                            format!(
                                "a self-signed certificate needs an rsa2048-sign key; `{}` is \
                                 {kind} (give an issuer)",
                                a.name
                            ),
                        ));
                    }
                    None
                } else {
                    let (ik, icert) = issuer_of(app, a.issuer.as_deref().unwrap_or_default())?;
                    // A certificate does not outlive its issuer's.
                    not_after = not_after.min(icert.not_after);
                    let ispki =
                        ik.record().public_der.clone().ok_or_else(|| {
                            OpError::internal("issuer has no public key recorded")
                        })?;
                    Some((ik, parse_subject(&icert.subject)?, ispki))
                };
                let spec = CertSpec {
                    subject,
                    spki_der: &spki,
                    usage,
                    not_before,
                    not_after,
                    serial: random_serial(),
                };
                let cert = match &issuer {
                    None => signed_by(&k, |sign| build_certificate(&spec, None, sign))?,
                    Some((ik, name, ispki)) => {
                        let issuer = Issuer {
                            name: name.clone(),
                            spki_der: ispki,
                        };
                        signed_by(ik, |sign| build_certificate(&spec, Some(&issuer), sign))?
                    }
                };
                app.keys
                    .add_certificate(&a.name, k.number(), cert.clone())?;
                Ok((k.number(), cert))
            })
            .await?;
        ctx.version = Some(version);
        Ok(CertResult {
            name,
            version,
            certificate: cert.der,
            thumbprint: cert.thumbprint.to_vec(),
        })
    }
}

impl Handle for KeysCsr {
    async fn handle(ctx: &mut Ctx, a: CsrArgs) -> Result<CsrResult, OpError> {
        let subject = parse_subject(&a.subject)?;
        let name = a.name.clone();
        let (version, csr) = ctx
            .blocking(move |app| {
                let k = app.keys.resolve(
                    &a.name,
                    KeyKind::Rsa2048Sign,
                    KeysCsr::NAME,
                    version_selector(a.version),
                )?;
                let spki = k
                    .record()
                    .public_der
                    .clone()
                    .ok_or_else(|| OpError::internal("no public key recorded"))?;
                let csr = signed_by(&k, |sign| build_csr(subject, &spki, sign))?;
                Ok((k.number(), csr))
            })
            .await?;
        ctx.version = Some(version);
        Ok(CsrResult { name, version, csr })
    }
}

impl Handle for KeysCertImport {
    async fn handle(ctx: &mut Ctx, a: CertImportArgs) -> Result<CertResult, OpError> {
        let cert = parse_certificate(&a.certificate)?;
        x509::rsa2048(&cert.spki_der).map_err(|e| OpError::bad(format!("certificate: {e}")))?;
        let name = a.name.clone();
        let (version, cert) = ctx
            .blocking(move |app| {
                let rec = app.keys.get(&a.name)?;
                let version = match a.version {
                    Some(n) => n,
                    None => {
                        rec.current()
                            .ok_or_else(|| {
                                OpError::new(
                                    ErrorCode::KeyRetired,
                                    format!("key `{}` has no active version", a.name),
                                )
                            })?
                            .version
                    }
                };
                app.keys.add_certificate(&a.name, version, cert.clone())?;
                Ok((version, cert))
            })
            .await?;
        ctx.version = Some(version);
        Ok(CertResult {
            name,
            version,
            certificate: cert.der,
            thumbprint: cert.thumbprint.to_vec(),
        })
    }
}

impl Handle for KeysCertExport {
    async fn handle(ctx: &mut Ctx, a: CertExportArgs) -> Result<CertExportResult, OpError> {
        let rec = ctx.app.keys.get(&a.name)?;
        let v = rec.version_or_current(a.version).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("no such version of `{}`", a.name),
            )
        })?;
        ctx.version = Some(v.version);
        let newest = v.certs.last().ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("version {} of `{}` has no certificate", v.version, a.name),
            )
        })?;
        let certs = if a.chain {
            ctx.app.keys.chain(newest)
        } else {
            vec![newest.clone()]
        };
        Ok(CertExportResult {
            name: a.name,
            version: v.version,
            certificates: certs
                .into_iter()
                .map(|c| serde_bytes::ByteBuf::from(c.der))
                .collect(),
        })
    }
}

impl Handle for KeysImport {
    async fn handle(ctx: &mut Ctx, a: KeyImportArgs) -> Result<KeyInfo, OpError> {
        let kind = match a.kind.as_deref() {
            None => KeyKind::Rsa2048Oaep,
            Some(k) => KeyKind::parse(k).ok_or_else(|| {
                OpError::bad(format!(
                    "unknown kind `{}` (rsa2048-oaep, rsa2048-sign)",
                    k.escape_default()
                ))
            })?,
        };
        let (spki, cert) = parse_public_key(&a.data)?;
        let rec = ctx
            .blocking(move |app| app.keys.import_public(&a.name, kind, spki, cert))
            .await?;
        ctx.version = rec.current().map(|v| v.version);
        Ok(info(&rec))
    }
}
