//! Key templates (`TPMT_PUBLIC` inputs to CreatePrimary / Create).
//!
//! The MOSIP templates reproduce the registration client's templates bit for bit: any difference
//! (even writing the RSA exponent as 0 instead of 65537) yields a different primary key from the
//! same endorsement seed, i.e. a key the MOSIP server never registered.

use tss_esapi::{
    attributes::ObjectAttributesBuilder,
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        key_bits::RsaKeyBits,
    },
    structures::{
        Digest, HashScheme, Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
        RsaExponent, RsaScheme, SymmetricDefinitionObject,
    },
};

use crate::backend::BackendError;

/// The TCG standard EK policy digest, `PolicySecret(TPM_RH_ENDORSEMENT)` with SHA-256, which MOSIP
/// sets as the encryption key's authPolicy.
pub const EK_POLICY_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// The RSA public exponent MOSIP writes explicitly into its templates.
pub const MOSIP_EXPONENT: u32 = 65537;

fn internal(what: &str, e: tss_esapi::Error) -> BackendError {
    BackendError::Internal(format!("building {what} template: {e}"))
}

/// MOSIP registration client's signing key (K10): endorsement-hierarchy primary, nameAlg SHA-1,
/// fixedTPM|fixedParent|sign|sensitiveDataOrigin|userWithAuth, RSA-2048, exponent 65537,
/// symmetric NULL, scheme RSASSA-SHA256, empty unique, empty authPolicy.
pub fn mosip_sign() -> Result<Public, BackendError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(|e| internal("mosip sign", e))?;
    let params = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(exponent(MOSIP_EXPONENT)?)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(false)
        .build()
        .map_err(|e| internal("mosip sign", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha1)
        .with_object_attributes(attrs)
        .with_auth_policy(Digest::default())
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
        .map_err(|e| internal("mosip sign", e))
}

/// MOSIP registration client's encryption key: endorsement-hierarchy primary, nameAlg SHA-256,
/// fixedTPM|fixedParent|decrypt|sensitiveDataOrigin|userWithAuth, authPolicy = EK policy,
/// RSA-2048, exponent 65537, symmetric NULL, scheme OAEP-SHA256, empty unique.
pub fn mosip_encrypt() -> Result<Public, BackendError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .build()
        .map_err(|e| internal("mosip encrypt", e))?;
    let params = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(RsaScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(exponent(MOSIP_EXPONENT)?)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(false)
        .build()
        .map_err(|e| internal("mosip encrypt", e))?;
    let policy =
        Digest::try_from(EK_POLICY_SHA256.to_vec()).map_err(|e| internal("mosip encrypt", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_auth_policy(policy)
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
        .map_err(|e| internal("mosip encrypt", e))
}

/// Owner-hierarchy storage primary (the TCG "SRK" template: RSA-2048, AES-128-CFB, restricted
/// decrypt, noDA, zero unique of 256 bytes). Deterministic: the same owner seed gives the same key,
/// so it is recreated when needed and never persisted.
pub fn storage_primary() -> Result<Public, BackendError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(|e| internal("storage primary", e))?;
    let params = PublicRsaParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        RsaKeyBits::Rsa2048,
        RsaExponent::default(),
    )
    .build()
    .map_err(|e| internal("storage primary", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::new_empty_with_size(RsaKeyBits::Rsa2048))
        .build()
        .map_err(|e| internal("storage primary", e))
}

/// Default signing key (child of the storage primary): RSA-2048, scheme NULL so the caller picks
/// RSASSA or RSAPSS per signature, nameAlg SHA-256, noDA.
pub fn default_sign() -> Result<Public, BackendError> {
    default_child(true)
}

/// Default decryption key (child of the storage primary): RSA-2048, scheme OAEP-SHA256 (so the key
/// cannot be used for raw RSA or PKCS#1 v1.5 decryption), nameAlg SHA-256, noDA.
pub fn default_oaep() -> Result<Public, BackendError> {
    default_child(false)
}

fn default_child(sign: bool) -> Result<Public, BackendError> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(sign)
        .with_decrypt(!sign)
        .build()
        .map_err(|e| internal("default key", e))?;
    let scheme = if sign {
        RsaScheme::Null
    } else {
        RsaScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256))
    };
    let params = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(scheme)
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(RsaExponent::default())
        .with_is_signing_key(sign)
        .with_is_decryption_key(!sign)
        .with_restricted(false)
        .build()
        .map_err(|e| internal("default key", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
        .map_err(|e| internal("default key", e))
}

fn exponent(value: u32) -> Result<RsaExponent, BackendError> {
    RsaExponent::create(value).map_err(|e| internal("rsa exponent", e))
}
