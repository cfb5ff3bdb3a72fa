//! `openssl` as the independent implementation: signature verification, RSA-OAEP encryption,
//! key pairs; and PEM from a DER SubjectPublicKeyInfo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;

use crate::data::{path_str, read};
use crate::process::{run_ok, run_with_timeout, stderr, stdout};

/// An RSA signature scheme as openssl names it (digest SHA-256, MGF1-SHA-256 for PSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaSig<'a> {
    /// RSASSA-PKCS1-v1_5.
    Pkcs1v15,
    /// RSASSA-PSS with this `rsa_pss_saltlen` (e.g. `"32"`, `"-2"` = auto).
    Pss(&'a str),
}

/// `openssl ARGS…` run in `dir` (60 s limit); its output, successful or not.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    run_with_timeout(&mut c, Duration::from_secs(60))
}

/// `openssl dgst -sha256 -verify PUB -signature SIG [PSS options] DATA`: `Ok` when openssl
/// exits 0 and prints `Verified OK`, else `Err` with its output.
pub fn openssl_verify(
    pubkey_pem: &Path,
    data: &Path,
    sig: &Path,
    scheme: RsaSig,
) -> Result<(), String> {
    let salt;
    let mut args = vec!["dgst", "-sha256"];
    if let RsaSig::Pss(s) = scheme {
        salt = format!("rsa_pss_saltlen:{s}");
        args.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_mgf1_md:sha256",
            "-sigopt",
            &salt,
        ]);
    }
    args.extend([
        "-verify",
        path_str(pubkey_pem),
        "-signature",
        path_str(sig),
        path_str(data),
    ]);
    let out = openssl(Path::new("/"), &args);
    if out.status.success() && stdout(&out).trim() == "Verified OK" {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?} ({}): {}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        ))
    }
}

/// [`openssl_verify`] on bytes: the public key as DER SPKI, the data and the signature.
pub fn openssl_verify_der(
    spki_der: &[u8],
    data: &[u8],
    sig: &[u8],
    scheme: RsaSig,
) -> Result<(), String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let (pubf, dataf, sigf) = (
        f("pub.pem", pem_from_der(spki_der).as_bytes()),
        f("data", data),
        f("sig", sig),
    );
    openssl_verify(&pubf, &dataf, &sigf, scheme)
}

/// RSA-OAEP encryption by `openssl pkeyutl` with digest and MGF1 digest `md` (`sha256`, `sha1`)
/// and an optional label in hex; asserts success and a ciphertext as long as the modulus.
pub fn openssl_oaep_encrypt(
    pubkey_pem: &Path,
    plaintext: &[u8],
    md: &str,
    label_hex: Option<&str>,
) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, output) = (tmp.path().join("pt"), tmp.path().join("ct"));
    std::fs::write(&input, plaintext).expect("write");
    let (oaep_md, mgf1_md) = (format!("rsa_oaep_md:{md}"), format!("rsa_mgf1_md:{md}"));
    let label = label_hex.map(|l| format!("rsa_oaep_label:{l}"));
    let mut args = vec![
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        path_str(pubkey_pem),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        &oaep_md,
        "-pkeyopt",
        &mgf1_md,
    ];
    if let Some(l) = &label {
        args.extend(["-pkeyopt", l]);
    }
    args.extend(["-in", path_str(&input), "-out", path_str(&output)]);
    let out = openssl(tmp.path(), &args);
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    let ct = read(&output);
    let pem = std::fs::read_to_string(pubkey_pem).expect("read public key");
    let key = RsaPublicKey::from_public_key_pem(&pem).expect("RSA public key PEM");
    assert_eq!(ct.len(), key.size(), "ciphertext length = modulus length");
    ct
}

/// [`openssl_oaep_encrypt`] to a public key given as DER SPKI.
pub fn openssl_oaep_encrypt_der(
    spki_der: &[u8],
    plaintext: &[u8],
    md: &str,
    label_hex: Option<&str>,
) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pubf = tmp.path().join("pub.pem");
    std::fs::write(&pubf, pem_from_der(spki_der)).expect("write");
    openssl_oaep_encrypt(&pubf, plaintext, md, label_hex)
}

/// The PEM (`-----BEGIN PUBLIC KEY-----`, LF line endings) of an RSA DER SubjectPublicKeyInfo.
pub fn pem_from_der(spki_der: &[u8]) -> String {
    RsaPublicKey::from_public_key_der(spki_der)
        .expect("RSA SPKI")
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM")
}

/// An RSA key pair made by openssl, outside the daemon.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key, PKCS#8 PEM.
    pub key: PathBuf,
    /// The public key, SPKI PEM.
    pub public_pem: PathBuf,
    /// The public key, DER SPKI.
    pub public_der: Vec<u8>,
}

/// `openssl genpkey` an RSA key of `bits` bits into `DIR/NAME.key.pem`, with its public key in
/// `DIR/NAME.pub.pem` and `DIR/NAME.pub.der`.
pub fn openssl_keypair(dir: &Path, name: &str, bits: u32) -> KeyPair {
    let key = dir.join(format!("{name}.key.pem"));
    let public_pem = dir.join(format!("{name}.pub.pem"));
    let der = dir.join(format!("{name}.pub.der"));
    let bits = format!("rsa_keygen_bits:{bits}");
    run_ok(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        &bits,
        "-out",
        path_str(&key),
    ]));
    run_ok(Command::new("openssl").args([
        "pkey",
        "-in",
        path_str(&key),
        "-pubout",
        "-out",
        path_str(&public_pem),
    ]));
    run_ok(Command::new("openssl").args([
        "pkey",
        "-in",
        path_str(&key),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        path_str(&der),
    ]));
    KeyPair {
        key,
        public_pem,
        public_der: read(&der),
    }
}
