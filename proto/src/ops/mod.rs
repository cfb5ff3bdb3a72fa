//! Every operation, declared once: its wire name, its argument and result types, and the keys its
//! arguments name (what authorization checks before the handler runs). Field names are the CBOR
//! map keys; byte fields are CBOR byte strings; optional fields may be omitted. PROTOCOL.md
//! documents each one.
//!
//! The daemon's dispatch table and the client's typed methods are generated from the single list
//! in [`for_each_op!`](crate::for_each_op), so an op's name and its types cannot disagree.

mod admin;
mod basic;
mod boxes;
mod certs;
mod decrypt;
mod envelope;
mod keys;
mod sign;
mod tpm;
mod zk;

pub use admin::*;
pub use basic::*;
pub use boxes::*;
pub use certs::*;
pub use decrypt::*;
pub use envelope::*;
pub use keys::*;
pub use sign::*;
pub use tpm::*;
pub use zk::*;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{ErrorCode, WireError};

/// One operation: a wire name with its argument and result types.
pub trait Op {
    /// The `op` string on the wire.
    const NAME: &'static str;
    /// The request's `args` map.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The response's `ok` map.
    type Result: Serialize + DeserializeOwned + Send + 'static;

    /// The rights a request needs, in the order they are checked: each names a right (usually
    /// [`Op::NAME`]) and the key it is exercised on (`None` for ops that touch no key). A request
    /// whose arguments are contradictory (e.g. two recipients) is refused here, before
    /// authorization, with `bad_request`.
    fn access(args: &Self::Args) -> Result<Vec<Access<'_>>, WireError>;
}

/// One right a request needs: `right` on `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access<'a> {
    /// The right: an op name, or a right of its own such as [`names::REWRAP_EXTERNAL`].
    pub right: &'static str,
    /// The key it is exercised on; `None` for ops that touch no key.
    pub key: Option<&'a str>,
}

impl<'a> Access<'a> {
    /// `right` on `key`.
    pub fn on(right: &'static str, key: &'a str) -> Self {
        Access {
            right,
            key: Some(key),
        }
    }

    /// `right` on no key.
    pub fn keyless(right: &'static str) -> Self {
        Access { right, key: None }
    }
}

/// Arbitrary `Vec<ByteBuf>` (serde_bytes has no `Arbitrary`).
#[cfg(feature = "arbitrary")]
fn arbitrary_byte_bufs(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<Vec<serde_bytes::ByteBuf>> {
    let v: Vec<Vec<u8>> = u.arbitrary()?;
    Ok(v.into_iter().map(serde_bytes::ByteBuf::from).collect())
}

fn exactly_one(a: bool, b: bool, what: &str) -> Result<(), WireError> {
    if a == b {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("give exactly one of {what}"),
        ));
    }
    Ok(())
}

/// Calls `$m!` with the list of every dispatched operation (all but `hello`, which the
/// connection itself answers). Each entry is
/// `(Type, method, NAME_CONST, "wire.name", Args, Result, |args| access-expression)`:
/// the type implementing [`Op`], the client method's name, the constant in [`names`], the wire
/// name, the argument and result types, and how the rights are computed from the arguments.
#[macro_export]
macro_rules! for_each_op {
    ($m:ident) => {
        $m! {
            (Ping, ping, PING, "ping", PingArgs, PingResult,
                |_a| Ok(vec![Access::keyless(Ping::NAME)]));
            (Status, status, STATUS, "status", StatusArgs, StatusResult,
                |_a| Ok(vec![Access::keyless(Status::NAME)]));
            (KeysCreate, keys_create, KEYS_CREATE, "keys.create", KeyCreateArgs, KeyInfo,
                // Wrapping under a master key is a use of that key.
                |a| Ok(std::iter::once(Access::on(KeysCreate::NAME, &a.name))
                    .chain(a.master.as_deref().map(|m| Access::on(KeysCreate::NAME, m)))
                    .collect()));
            (KeysList, keys_list, KEYS_LIST, "keys.list", KeyListArgs, KeyListResult,
                // The handler lists only the keys the caller's roles cover.
                |_a| Ok(vec![Access::keyless(KeysList::NAME)]));
            (KeysShow, keys_show, KEYS_SHOW, "keys.show", KeyNameArgs, KeyInfo,
                |a| Ok(vec![Access::on(KeysShow::NAME, &a.name)]));
            (KeysRotate, keys_rotate, KEYS_ROTATE, "keys.rotate", KeyNameArgs, KeyInfo,
                |a| Ok(vec![Access::on(KeysRotate::NAME, &a.name)]));
            (KeysRetire, keys_retire, KEYS_RETIRE, "keys.retire", KeyVersionArgs, KeyInfo,
                |a| Ok(vec![Access::on(KeysRetire::NAME, &a.name)]));
            (KeysDestroy, keys_destroy, KEYS_DESTROY, "keys.destroy", KeyVersionArgs, KeyInfo,
                |a| Ok(vec![Access::on(KeysDestroy::NAME, &a.name)]));
            (KeysPublic, keys_public, KEYS_PUBLIC, "keys.public", PublicKeyArgs, PublicKeyResult,
                |a| Ok(vec![Access::on(KeysPublic::NAME, &a.name)]));
            (KeysCert, keys_cert, KEYS_CERT, "keys.cert", CertArgs, CertResult,
                |a| {
                    exactly_one(a.issuer.is_some(), a.self_signed, "`issuer` and `self_signed`")?;
                    // Signing a certificate with the issuer key is a use of that key.
                    Ok(std::iter::once(Access::on(KeysCert::NAME, &a.name))
                        .chain(a.issuer.as_deref().map(|i| Access::on(KeysCert::NAME, i)))
                        .collect())
                });
            (KeysCsr, keys_csr, KEYS_CSR, "keys.csr", CsrArgs, CsrResult,
                |a| Ok(vec![Access::on(KeysCsr::NAME, &a.name)]));
            (KeysCertImport, keys_cert_import, KEYS_CERT_IMPORT, "keys.cert-import",
                CertImportArgs, CertResult,
                |a| Ok(vec![Access::on(KeysCertImport::NAME, &a.name)]));
            (KeysCertExport, keys_cert_export, KEYS_CERT_EXPORT, "keys.cert-export",
                CertExportArgs, CertExportResult,
                |a| Ok(vec![Access::on(KeysCertExport::NAME, &a.name)]));
            (KeysImport, keys_import, KEYS_IMPORT, "keys.import", KeyImportArgs, KeyInfo,
                |a| Ok(vec![Access::on(KeysImport::NAME, &a.name)]));
            (AdminBackup, admin_backup, ADMIN_BACKUP, "admin.backup", BackupArgs, BackupResult,
                |_a| Ok(vec![Access::keyless(AdminBackup::NAME)]));
            (Sign, sign, SIGN, "sign", SignArgs, SignResult,
                |a| Ok(vec![Access::on(Sign::NAME, &a.key)]));
            (SignBatch, sign_batch, SIGN_BATCH, "sign.batch", SignBatchArgs, SignBatchResult,
                |a| Ok(vec![Access::on(SignBatch::NAME, &a.key)]));
            (SignJwt, sign_jwt, SIGN_JWT, "sign.jwt", SignJwtArgs, SignJwtResult,
                |a| Ok(vec![Access::on(SignJwt::NAME, &a.key)]));
            (Decrypt, decrypt, DECRYPT, "decrypt", DecryptArgs, PlaintextResult,
                |a| Ok(vec![Access::on(Decrypt::NAME, &a.key)]));
            (Unwrap, unwrap, UNWRAP, "unwrap", UnwrapArgs, PlaintextResult,
                |a| Ok(vec![Access::on(Unwrap::NAME, &a.key)]));
            (EnvelopeSeal, envelope_seal, ENVELOPE_SEAL, "envelope.seal", SealArgs, SealResult,
                |a| {
                    exactly_one(a.key.is_some(), a.public_key.is_some(), "`key` and `public_key`")?;
                    Ok(vec![Access { right: EnvelopeSeal::NAME, key: a.key.as_deref() }])
                });
            (EnvelopeOpen, envelope_open, ENVELOPE_OPEN, "envelope.open", OpenArgs, PlaintextResult,
                |a| Ok(vec![Access::on(EnvelopeOpen::NAME, &a.key)]));
            (Rewrap, rewrap, REWRAP, "rewrap", RewrapArgs, RewrapResult,
                |a| {
                    exactly_one(
                        a.to_key.is_some(),
                        a.to_public_key.is_some(),
                        "`to_key` and `to_public_key`",
                    )?;
                    Ok(vec![
                        Access::on(Rewrap::NAME, &a.key),
                        match &a.to_key {
                            Some(t) => Access::on(Rewrap::NAME, t),
                            // Re-targeting to a key the daemon does not hold hands the data key
                            // to whoever holds that key: as strong as `unwrap`, so it is a right
                            // of its own, checked on the source key.
                            None => Access::on(names::REWRAP_EXTERNAL, &a.key),
                        },
                    ])
                });
            (BoxSeal, box_seal, BOX_SEAL, "box.seal", BoxSealArgs, BoxSealResult,
                |_a| Ok(vec![Access::keyless(BoxSeal::NAME)]));
            (BoxOpen, box_open, BOX_OPEN, "box.open", BoxOpenArgs, PlaintextResult,
                |a| Ok(vec![Access::on(BoxOpen::NAME, &a.key)]));
            // A right of its own, separate from `box.open`: a grant service re-encrypts without
            // the plaintext ever reaching it.
            (BoxReencrypt, box_reencrypt, BOX_REENCRYPT, "box.reencrypt", BoxReencryptArgs,
                BoxReencryptResult,
                |a| Ok(vec![Access::on(BoxReencrypt::NAME, &a.key)]));
            (BoxReencryptBatch, box_reencrypt_batch, BOX_REENCRYPT_BATCH, "box.reencrypt.batch",
                BoxReencryptBatchArgs, BoxReencryptBatchResult,
                |a| Ok(vec![Access::on(BoxReencryptBatch::NAME, &a.key)]));
            (BoxDerive, box_derive, BOX_DERIVE, "box.derive", BoxDeriveArgs, BoxDeriveResult,
                // Keeping the secret creates a key wrapped under a master: the rights of
                // `keys.create` on both.
                |a| {
                    if a.import.is_some() != a.master.is_some() {
                        return Err(WireError::new(
                            ErrorCode::BadRequest,
                            "`import` and `master` go together",
                        ));
                    }
                    Ok(std::iter::once(Access::keyless(BoxDerive::NAME))
                        .chain(a.import.as_deref().map(|k| Access::on(KeysCreate::NAME, k)))
                        .chain(a.master.as_deref().map(|m| Access::on(KeysCreate::NAME, m)))
                        .collect())
                });
            (KeysAdopt, keys_adopt, KEYS_ADOPT, "keys.adopt", KeyAdoptArgs, KeyInfo,
                |a| {
                    exactly_one(a.label.is_some(), a.id.is_some(), "`label` and `id`")?;
                    Ok(vec![Access::on(KeysAdopt::NAME, &a.name)])
                });
            // Pools are named like keys; roles match pool names against their `keys` patterns.
            (ZkInit, zk_init, ZK_INIT, "zk.init", ZkInitArgs, ZkPoolInfo,
                // Wrapping under the master is a use of it.
                |a| Ok(vec![Access::on(ZkInit::NAME, &a.pool), Access::on(ZkInit::NAME, &a.master)]));
            (ZkShow, zk_show, ZK_SHOW, "zk.show", ZkShowArgs, ZkPoolInfo,
                |a| Ok(vec![Access::on(ZkShow::NAME, &a.pool)]));
            (ZkEncrypt, zk_encrypt, ZK_ENCRYPT, "zk.encrypt", ZkCryptArgs, ZkEncryptResult,
                |a| Ok(vec![Access::on(ZkEncrypt::NAME, &a.pool)]));
            (ZkDecrypt, zk_decrypt, ZK_DECRYPT, "zk.decrypt", ZkCryptArgs, ZkDecryptResult,
                |a| Ok(vec![Access::on(ZkDecrypt::NAME, &a.pool)]));
            (ZkShare, zk_share, ZK_SHARE, "zk.share", ZkShareArgs, ZkShareResult,
                |a| {
                    exactly_one(a.to.is_some(), a.to_public_key.is_some(), "`to` and `to_public_key`")?;
                    Ok(std::iter::once(Access::on(ZkShare::NAME, &a.pool))
                        .chain(a.to.as_deref().map(|t| Access::on(ZkShare::NAME, t)))
                        .collect())
                });
            (ZkImport, zk_import, ZK_IMPORT, "zk.import", ZkImportArgs, ZkImportResult,
                // Decrypting the share is a use of `key`.
                |a| Ok(vec![Access::on(ZkImport::NAME, &a.pool), Access::on(ZkImport::NAME, &a.key)]));
            (ZkRotateMaster, zk_rotate_master, ZK_ROTATE_MASTER, "zk.rotate-master", ZkPoolArgs,
                ZkPoolInfo,
                |a| Ok(vec![Access::on(ZkRotateMaster::NAME, &a.pool)]));
            (ZkImportMosip, zk_import_mosip, ZK_IMPORT_MOSIP, "zk.import-mosip", ZkImportMosipArgs,
                ZkImportMosipResult,
                |a| Ok(vec![
                    Access::on(ZkImportMosip::NAME, &a.pool),
                    Access::on(ZkImportMosip::NAME, &a.master),
                ]));
            // Touches no key: the right is the op itself (an administrator's).
            (TpmClearLockout, tpm_clear_lockout, TPM_CLEAR_LOCKOUT, "tpm.clear-lockout",
                TpmClearLockoutArgs, TpmClearLockoutResult,
                |_a| Ok(vec![Access::keyless(TpmClearLockout::NAME)]));
        }
    };
}

macro_rules! declare_ops {
    ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
         |$a:ident| $access:expr); )*) => {
        $(
            #[doc = concat!("The `", $name, "` operation.")]
            #[derive(Clone, Copy, Debug)]
            pub struct $ty;

            impl Op for $ty {
                const NAME: &'static str = $name;
                type Args = $args;
                type Result = $res;
                fn access($a: &$args) -> Result<Vec<Access<'_>>, WireError> {
                    $access
                }
            }
        )*

        /// Operation names.
        pub mod names {
            /// Protocol version negotiation; must be the first request on a connection.
            pub const HELLO: &str = "hello";
            /// Not an op: the right, checked on the source key, to `rewrap` to an external
            /// public key.
            pub const REWRAP_EXTERNAL: &str = "rewrap.external";
            $(
                #[doc = concat!("`", $name, "`.")]
                pub const $cname: &str = $name;
            )*
            /// Every op the server knows (`hello` first).
            pub const ALL: &[&str] = &[HELLO, $($name),*];
        }
    };
}

for_each_op!(declare_ops);

/// The ops a client may send again after the connection was lost before their answer came:
/// reads, signatures, decryptions and encryptions (a repeat changes no state). Admin changes
/// (`keys.create`, `keys.rotate`, `zk.init`, …) are not in the list: a lost answer leaves
/// unknown whether the change happened, so the caller decides.
pub const RETRY_SAFE: &[&str] = &[
    names::PING,
    names::STATUS,
    names::KEYS_LIST,
    names::KEYS_SHOW,
    names::KEYS_PUBLIC,
    names::KEYS_CSR,
    names::KEYS_CERT_EXPORT,
    names::SIGN,
    names::SIGN_BATCH,
    names::SIGN_JWT,
    names::DECRYPT,
    names::UNWRAP,
    names::ENVELOPE_SEAL,
    names::ENVELOPE_OPEN,
    names::REWRAP,
    names::BOX_SEAL,
    names::BOX_OPEN,
    names::BOX_REENCRYPT,
    names::BOX_REENCRYPT_BATCH,
    names::ZK_SHOW,
    names::ZK_ENCRYPT,
    names::ZK_DECRYPT,
    names::ZK_SHARE,
    names::ADMIN_BACKUP,
];

/// The `hello` operation: protocol version negotiation, answered by the connection itself.
#[derive(Clone, Copy, Debug)]
pub struct Hello;

impl Op for Hello {
    const NAME: &'static str = names::HELLO;
    type Args = HelloArgs;
    type Result = HelloResult;
    fn access(_: &HelloArgs) -> Result<Vec<Access<'_>>, WireError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_hello_first() {
        let mut seen = std::collections::HashSet::new();
        for n in names::ALL {
            assert!(seen.insert(*n), "duplicate op name {n}");
        }
        assert_eq!(names::ALL[0], Hello::NAME);
        assert_eq!(Sign::NAME, names::SIGN);
    }

    #[test]
    fn contradictory_recipients_are_refused_before_authorization() {
        let both = RewrapArgs {
            key: "a".into(),
            to_key: Some("b".into()),
            to_public_key: Some(vec![1]),
            ..Default::default()
        };
        let e = Rewrap::access(&both).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest));
        let ext = RewrapArgs {
            key: "a".into(),
            to_public_key: Some(vec![1]),
            ..Default::default()
        };
        assert_eq!(
            Rewrap::access(&ext).unwrap(),
            vec![
                Access::on("rewrap", "a"),
                Access::on(names::REWRAP_EXTERNAL, "a")
            ]
        );
        let none = SealArgs::default();
        assert!(EnvelopeSeal::access(&none).is_err());
    }
}
