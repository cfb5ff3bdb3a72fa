//! X.509 certificates on key versions (`keys cert`, `csr`, `cert-import`, `cert-export`) and
//! public-only keys (`keys import`), against real SoftHSM tokens and a swtpm, checked by
//! independent tools: openssl verifies chains and requests, Python `cryptography` seals and opens
//! MOSIP envelopes with certificate thumbprints and acts as a partner's CA.

use std::path::{Path, PathBuf};

use custody_testkit::proto::ErrorCode;
use custody_testkit::{
    cli_err, cli_json, cli_ok, create_pkcs11, file, hsm_daemon, openssl, openssl_keypair, path_str,
    pem, py_ca, py_envelope, random, read, sha256, show, stdout, tpm_builder, write, Daemon,
};
use serde_json::Value as Json;

/// A partner's certificate authority, made by the independent Python implementation
/// (`x509_ca.py`), as MOSIP's partner management would hold it.
struct PartnerCa {
    key: PathBuf,
    cert: PathBuf,
}

impl PartnerCa {
    fn new(d: &Daemon) -> Self {
        let ca = PartnerCa {
            key: file(d, "pca.key"),
            cert: file(d, "pca.pem"),
        };
        py_ca(&[
            "ca",
            "--key",
            path_str(&ca.key),
            "--cert",
            path_str(&ca.cert),
        ]);
        ca
    }

    /// A certificate for the public key `public` (PEM) into `out`; `extra`: `--ca`,
    /// `--expired`, `--subject S`.
    fn issue(&self, public: &Path, out: &Path, extra: &[&str]) {
        let mut args = vec![
            "issue",
            "--ca-key",
            path_str(&self.key),
            "--ca-cert",
            path_str(&self.cert),
            "--pub",
            path_str(public),
            "--out",
            path_str(out),
        ];
        args.extend_from_slice(extra);
        py_ca(&args);
    }
}

/// `keys cert NAME ARGS… --out NAME.pem`: the answer, and the PEM file.
fn cert(d: &Daemon, name: &str, args: &[&str]) -> (Json, PathBuf) {
    let out = file(d, &format!("{name}.cert.pem"));
    let mut all = vec!["keys", "cert", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", path_str(&out)]);
    let j = cli_json(d, &all);
    assert_eq!(j["name"], name, "{j}");
    (j, out)
}

/// SHA-256 of the DER form of a PEM certificate, as openssl converts it (hex).
fn openssl_thumbprint(dir: &Path, pem: &Path) -> String {
    let der = dir.join("thumb.der");
    let o = openssl(
        dir,
        &[
            "x509",
            "-in",
            path_str(pem),
            "-outform",
            "der",
            "-out",
            path_str(&der),
        ],
    );
    assert!(o.status.success(), "openssl x509: {}", stdout(&o));
    hex::encode(sha256(&read(&der)))
}

fn x509_text(dir: &Path, pem: &Path) -> String {
    let o = openssl(dir, &["x509", "-in", path_str(pem), "-noout", "-text"]);
    assert!(o.status.success());
    stdout(&o)
}

/// The certificate thumbprints `keys show` lists for a version (hex), oldest first.
fn cert_thumbprints(d: &Daemon, name: &str, version: u64) -> Vec<String> {
    let k = show(d, name);
    let v = k["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["version"] == version))
        .cloned()
        .unwrap_or_else(|| panic!("no version {version}: {k}"));
    v["thumbprints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| t["over"] == "certificate")
                .map(|t| {
                    let bytes: Vec<u8> = t["thumbprint"]
                        .as_array()
                        .expect("bytes")
                        .iter()
                        .map(|b| b.as_u64().expect("byte") as u8)
                        .collect();
                    hex::encode(bytes)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The two thumbprints `mosip_envelope.py thumbprint` prints: the envelope's and the
/// certificate's (hex).
fn py_thumbprints(env: &Path, cert: &Path) -> (String, String) {
    let o = py_envelope(&[
        "thumbprint",
        "--in",
        path_str(env),
        "--cert",
        path_str(cert),
    ]);
    let text = stdout(&o);
    let get = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in {text}"))
            .trim()
            .to_owned()
    };
    (get("envelope "), get("certificate "))
}

/// `custody envelope seal KEY --in INPUT --out NAME`: the envelope file.
fn seal_with_custody(d: &Daemon, key: &str, input: &Path, name: &str) -> PathBuf {
    let out = file(d, name);
    cli_ok(
        d,
        &[
            "envelope",
            "seal",
            key,
            "--in",
            path_str(input),
            "--out",
            path_str(&out),
        ],
    );
    out
}

fn open_with_custody(d: &Daemon, key: &str, env: &Path, expected: &[u8]) {
    let out = file(d, "opened.bin");
    cli_ok(
        d,
        &[
            "envelope",
            "open",
            key,
            "--in",
            path_str(env),
            "--out",
            path_str(&out),
        ],
    );
    assert_eq!(read(&out), expected);
}

#[test]
fn three_level_hsm_chain_and_csr_verify_with_openssl() {
    let d = hsm_daemon();
    create_pkcs11(&d, "root", "rsa2048-sign");
    create_pkcs11(&d, "module", "rsa2048-sign");
    create_pkcs11(&d, "base", "rsa2048-oaep");
    let (root_j, root) = cert(
        &d,
        "root",
        &["--self-signed", "--ca", "--subject", "CN=Root,O=MOSIP,C=IN"],
    );
    let (_, module) = cert(
        &d,
        "module",
        &[
            "--issuer",
            "root",
            "--ca",
            "--subject",
            "CN=ID_REPO,O=MOSIP,C=IN",
        ],
    );
    let (base_j, base) = cert(
        &d,
        "base",
        &[
            "--issuer",
            "module",
            "--subject",
            "CN=IDA partner,O=MOSIP,C=IN",
            "--days",
            "30",
        ],
    );
    let dir = d.dir();
    let o = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            path_str(&root),
            "-untrusted",
            path_str(&module),
            path_str(&base),
        ],
    );
    assert!(o.status.success(), "openssl verify: {}", stdout(&o));
    assert!(stdout(&o).contains(": OK"), "{}", stdout(&o));

    // The thumbprint custodyd reports is SHA-256 of the DER certificate, as openssl makes it.
    assert_eq!(base_j["thumbprint"], openssl_thumbprint(dir, &base));
    assert_eq!(root_j["thumbprint"], openssl_thumbprint(dir, &root));
    assert_eq!(
        cert_thumbprints(&d, "base", 1),
        [openssl_thumbprint(dir, &base)]
    );

    // Extensions right for each kind.
    let root_text = x509_text(dir, &root);
    assert!(
        root_text.contains("CA:TRUE") && root_text.contains("Certificate Sign"),
        "{root_text}"
    );
    let base_text = x509_text(dir, &base);
    assert!(base_text.contains("CA:FALSE"), "{base_text}");
    assert!(base_text.contains("Key Encipherment"), "{base_text}");
    assert!(!base_text.contains("Digital Signature"), "{base_text}");
    assert!(base_text.contains("Subject Key Identifier"));
    assert!(base_text.contains("Authority Key Identifier"));

    // cert-export: the newest certificate, and with --chain the issuers up to the root.
    let one = file(&d, "one.pem");
    cli_ok(
        &d,
        &["keys", "cert-export", "base", "--out", path_str(&one)],
    );
    assert_eq!(read(&one), read(&base));
    let chain = file(&d, "chain.pem");
    cli_ok(
        &d,
        &[
            "keys",
            "cert-export",
            "base",
            "--chain",
            "--out",
            path_str(&chain),
        ],
    );
    let expected = [read(&base), read(&module), read(&root)].concat();
    assert_eq!(read(&chain), expected);

    // A PKCS#10 request signed in the HSM verifies with openssl.
    let csr = file(&d, "module.csr");
    cli_ok(
        &d,
        &[
            "keys",
            "csr",
            "module",
            "--subject",
            "CN=module-req,O=MOSIP",
            "--out",
            path_str(&csr),
        ],
    );
    let o = openssl(
        dir,
        &[
            "req",
            "-in",
            path_str(&csr),
            "-verify",
            "-noout",
            "-subject",
        ],
    );
    let all = format!("{}{}", stdout(&o), custody_testkit::stderr(&o));
    assert!(o.status.success() && all.contains("verify OK"), "{all}");
    assert!(all.contains("module-req"), "{all}");
}

#[test]
fn tpm_key_issues_for_an_hsm_key() {
    let d = tpm_builder().with_hsm().start();
    cli_ok(
        &d,
        &[
            "keys",
            "create",
            "tpm-ca",
            "--kind",
            "rsa2048-sign",
            "--backend",
            "tpm",
        ],
    );
    create_pkcs11(&d, "hsm-leaf", "rsa2048-oaep");
    let (_, ca) = cert(
        &d,
        "tpm-ca",
        &[
            "--self-signed",
            "--ca",
            "--subject",
            "CN=Machine CA,O=MOSIP",
        ],
    );
    let (_, leaf) = cert(
        &d,
        "hsm-leaf",
        &["--issuer", "tpm-ca", "--subject", "CN=leaf"],
    );
    let o = openssl(
        d.dir(),
        &["verify", "-CAfile", path_str(&ca), path_str(&leaf)],
    );
    assert!(o.status.success(), "openssl verify: {}", stdout(&o));
    // The MOSIP machine key can certify itself too (a signing certificate, in the TPM).
    let (j, m) = cert(
        &d,
        "machine-sign",
        &["--self-signed", "--subject", "CN=machine-1,O=MOSIP"],
    );
    assert_eq!(j["thumbprint"], openssl_thumbprint(d.dir(), &m));
    assert!(x509_text(d.dir(), &m).contains("Digital Signature"));
}

#[test]
fn envelopes_addressed_to_certificates_open() {
    let d = hsm_daemon();
    create_pkcs11(&d, "ca", "rsa2048-sign");
    create_pkcs11(&d, "ida", "rsa2048-oaep");
    cert(
        &d,
        "ca",
        &["--self-signed", "--ca", "--subject", "CN=MOSIP CA"],
    );
    let (_, ida_cert) = cert(&d, "ida", &["--issuer", "ca", "--subject", "CN=IDA"]);
    let plain = random(700);
    let pf = write(&d, "plain.bin", &plain);

    // Sealed by the Python MOSIP implementation with the certificate's thumbprint.
    let env_cert = file(&d, "env.cert");
    py_envelope(&[
        "seal",
        "--cert",
        path_str(&ida_cert),
        "--in",
        path_str(&pf),
        "--out",
        path_str(&env_cert),
    ]);
    open_with_custody(&d, "ida", &env_cert, &plain);
    // And with the SPKI thumbprint.
    let env_spki = file(&d, "env.spki");
    let ida_pub = pem(&d, "ida", 1);
    py_envelope(&[
        "seal",
        "--pub",
        path_str(&ida_pub),
        "--in",
        path_str(&pf),
        "--out",
        path_str(&env_spki),
    ]);
    open_with_custody(&d, "ida", &env_spki, &plain);

    // MOSIP's partner management re-signs the partner certificate with its own CA (Python).
    let ca = PartnerCa::new(&d);
    let resigned = file(&d, "resigned.pem");
    ca.issue(&ida_pub, &resigned, &[]);
    cli_ok(
        &d,
        &["keys", "cert-import", "ida", "--in", path_str(&resigned)],
    );
    let env_resigned = file(&d, "env.resigned");
    py_envelope(&[
        "seal",
        "--cert",
        path_str(&resigned),
        "--in",
        path_str(&pf),
        "--out",
        path_str(&env_resigned),
    ]);
    open_with_custody(&d, "ida", &env_resigned, &plain);
    assert_eq!(cert_thumbprints(&d, "ida", 1).len(), 2);

    // `custody envelope seal` to a certified key writes the newest certificate's thumbprint.
    let sealed = seal_with_custody(&d, "ida", &pf, "sealed.env");
    let (in_env, of_cert) = py_thumbprints(&sealed, &resigned);
    assert_eq!(in_env, of_cert);
    open_with_custody(&d, "ida", &sealed, &plain);

    // A certificate for another key is refused, and nothing changes.
    let other = openssl_keypair(d.dir(), "other", 2048);
    let wrong = file(&d, "wrong.pem");
    ca.issue(&other.public_pem, &wrong, &[]);
    let before = show(&d, "ida");
    let m = cli_err(
        &d,
        &["keys", "cert-import", "ida", "--in", path_str(&wrong)],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("another key"), "{m}");
    assert_eq!(show(&d, "ida"), before);

    // After a rotation the envelopes sealed to v1's certificates still open.
    cli_ok(&d, &["keys", "rotate", "ida"]);
    open_with_custody(&d, "ida", &env_resigned, &plain);
    open_with_custody(&d, "ida", &env_cert, &plain);
}

#[test]
fn bad_certificate_requests_are_typed_and_change_nothing() {
    let d = hsm_daemon();
    create_pkcs11(&d, "ca", "rsa2048-sign");
    create_pkcs11(&d, "leaf", "rsa2048-oaep");
    create_pkcs11(&d, "plain-signer", "rsa2048-sign");
    let before: Vec<Json> = ["ca", "leaf", "plain-signer"]
        .iter()
        .map(|k| show(&d, k))
        .collect();
    let unchanged = |d: &Daemon| {
        let now: Vec<Json> = ["ca", "leaf", "plain-signer"]
            .iter()
            .map(|k| show(d, k))
            .collect();
        assert_eq!(now, before);
    };
    // Issuer without a certificate; issuer that is not a signing key; a subject that does not
    // parse; self-signed on an encryption key; neither or both of --issuer / --self-signed.
    let m = cli_err(
        &d,
        &[
            "keys",
            "cert",
            "leaf",
            "--issuer",
            "ca",
            "--subject",
            "CN=x",
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("no certificate"), "{m}");
    cli_err(
        &d,
        &[
            "keys",
            "cert",
            "ca",
            "--issuer",
            "leaf",
            "--subject",
            "CN=x",
        ],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &[
            "keys",
            "cert",
            "ca",
            "--self-signed",
            "--subject",
            "not a name",
        ],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "cert", "leaf", "--self-signed", "--subject", "CN=x"],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &[
            "keys",
            "cert",
            "leaf",
            "--self-signed",
            "--ca",
            "--subject",
            "CN=x",
        ],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["keys", "csr", "leaf", "--subject", "CN=x"],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["keys", "cert", "nope", "--self-signed", "--subject", "CN=x"],
        ErrorCode::NotFound,
    );
    unchanged(&d);
    // A certificate that does not parse, and one that is not RSA-2048.
    let junk = write(
        &d,
        "junk.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    cli_err(
        &d,
        &["keys", "cert-import", "leaf", "--in", path_str(&junk)],
        ErrorCode::BadRequest,
    );
    let ec = file(&d, "ec.pem");
    py_ca(&["ec", "--out", path_str(&ec)]);
    let m = cli_err(
        &d,
        &["keys", "cert-import", "leaf", "--in", path_str(&ec)],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("RSA"), "{m}");
    unchanged(&d);

    // An issuer whose certificate is not a CA certificate.
    cert(
        &d,
        "plain-signer",
        &["--self-signed", "--subject", "CN=signer"],
    );
    let m = cli_err(
        &d,
        &[
            "keys",
            "cert",
            "leaf",
            "--issuer",
            "plain-signer",
            "--subject",
            "CN=x",
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("not a CA"), "{m}");
    // An expired issuer: its newest certificate (issued by a Python CA) has expired.
    let ca = PartnerCa::new(&d);
    let expired = file(&d, "expired.pem");
    let ca_pub = pem(&d, "ca", 1);
    ca.issue(
        &ca_pub,
        &expired,
        &["--ca", "--expired", "--subject", "CN=old CA"],
    );
    cli_ok(
        &d,
        &["keys", "cert-import", "ca", "--in", path_str(&expired)],
    );
    let leaf_before = show(&d, "leaf");
    cli_err(
        &d,
        &[
            "keys",
            "cert",
            "leaf",
            "--issuer",
            "ca",
            "--subject",
            "CN=x",
        ],
        ErrorCode::KeyExpired,
    );
    assert_eq!(show(&d, "leaf"), leaf_before);
    // Export of a version without a certificate.
    cli_err(&d, &["keys", "cert-export", "leaf"], ErrorCode::NotFound);
}

#[test]
fn public_only_keys_stand_for_outside_recipients() {
    let d = hsm_daemon();
    let partner = openssl_keypair(d.dir(), "partner", 2048);
    let k = cli_json(
        &d,
        &[
            "keys",
            "import",
            "partner",
            "--in",
            path_str(&partner.public_pem),
        ],
    );
    assert_eq!(k["backend"], "external", "{k}");
    assert_eq!(k["kind"], "rsa2048-oaep");
    assert_eq!(k["current_version"], 1);
    let plain = random(300);
    let pf = write(&d, "plain.bin", &plain);
    // Sealed to it: the partner opens with its private key (Python).
    let env = seal_with_custody(&d, "partner", &pf, "to-partner.env");
    let opened = file(&d, "opened.bin");
    py_envelope(&[
        "open",
        "--key",
        path_str(&partner.key),
        "--in",
        path_str(&env),
        "--out",
        path_str(&opened),
    ]);
    assert_eq!(read(&opened), plain);
    // No private key: signing and decrypting are refused.
    cli_err(
        &d,
        &["sign", "partner", "--in", path_str(&pf)],
        ErrorCode::WrongKind,
    );
    cli_err(
        &d,
        &["envelope", "open", "partner", "--in", path_str(&env)],
        ErrorCode::WrongKind,
    );

    // Importing the partner's certificate (issued by its CA) makes a new version; sealing then
    // writes the certificate's thumbprint, and a re-targeted envelope reaches the partner too.
    let ca = PartnerCa::new(&d);
    let pcert = file(&d, "partner.cert.pem");
    ca.issue(&partner.public_pem, &pcert, &[]);
    let k = cli_json(&d, &["keys", "import", "partner", "--in", path_str(&pcert)]);
    assert_eq!(k["current_version"], 2, "{k}");
    let env2 = seal_with_custody(&d, "partner", &pf, "to-partner2.env");
    let (in_env, of_cert) = py_thumbprints(&env2, &pcert);
    assert_eq!(in_env, of_cert);
    py_envelope(&[
        "open",
        "--key",
        path_str(&partner.key),
        "--cert",
        path_str(&pcert),
        "--in",
        path_str(&env2),
        "--out",
        path_str(&opened),
    ]);
    assert_eq!(read(&opened), plain);

    create_pkcs11(&d, "ida", "rsa2048-oaep");
    let to_ida = seal_with_custody(&d, "ida", &pf, "to-ida.env");
    let moved = file(&d, "moved.env");
    cli_ok(
        &d,
        &[
            "rewrap",
            "ida",
            "--to",
            "partner",
            "--in",
            path_str(&to_ida),
            "--out",
            path_str(&moved),
        ],
    );
    py_envelope(&[
        "open",
        "--key",
        path_str(&partner.key),
        "--cert",
        path_str(&pcert),
        "--in",
        path_str(&moved),
        "--out",
        path_str(&opened),
    ]);
    assert_eq!(read(&opened), plain);

    // Refusals: not RSA, a name held by the HSM, a kind an external key cannot be.
    let ec = file(&d, "ec.pem");
    py_ca(&["ec", "--out", path_str(&ec)]);
    cli_err(
        &d,
        &["keys", "import", "ec-partner", "--in", path_str(&ec)],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "import", "ida", "--in", path_str(&pcert)],
        ErrorCode::AlreadyExists,
    );
    cli_err(
        &d,
        &[
            "keys",
            "import",
            "x",
            "--in",
            path_str(&pcert),
            "--kind",
            "aes256",
        ],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["keys", "import", "ec-partner", "--in", path_str(&pf)],
        ErrorCode::BadRequest,
    );
    assert!(custody_testkit::cli_json(&d, &["keys", "list"])["keys"]
        .as_array()
        .is_some_and(|ks| !ks
            .iter()
            .any(|k| k["name"] == "ec-partner" || k["name"] == "x")));
}
