//! `keys cert | csr | cert-import | cert-export | import`: X.509 certificates for key versions
//! (signed inside the TPM/HSM), and public-only keys for outside recipients.

use std::path::PathBuf;

use clap::{ArgGroup, Subcommand};
use custody_client::proto::ops::{
    CertArgs, CertExportArgs, CertImportArgs, CertResult, CsrArgs, KeyImportArgs,
};
use custody_client::BlockingClient;
use serde_json::json;

use crate::io::{read_input, write_output};
use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Certify a version's public key: signed inside the TPM/HSM by an issuer key, or by the key
    /// itself (--self-signed, signing keys only). Prints the certificate thumbprint.
    #[command(group(ArgGroup::new("signer").required(true).args(["self_signed", "issuer"])))]
    Cert {
        /// Key to certify.
        name: String,
        /// Self-signed by the key itself (an rsa2048-sign key).
        #[arg(long)]
        self_signed: bool,
        /// Issuer: an rsa2048-sign key whose certificate is a CA certificate.
        #[arg(long, value_name = "CAKEY")]
        issuer: Option<String>,
        /// Subject, e.g. "CN=IDA partner,O=MOSIP,C=IN".
        #[arg(long)]
        subject: String,
        /// A CA certificate (cA=true, keyCertSign): it can issue others.
        #[arg(long)]
        ca: bool,
        /// Validity in days (default: until the version's not-after).
        #[arg(long)]
        days: Option<u32>,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
        /// Also write the certificate (PEM) to FILE (`-` for stdout).
        #[arg(long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a PKCS#10 certification request (PEM) signed by a signing key.
    Csr {
        /// An rsa2048-sign key.
        name: String,
        /// Subject, e.g. "CN=machine-1,O=MOSIP".
        #[arg(long)]
        subject: String,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
        /// Output file (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
    /// Attach a certificate issued elsewhere (PEM or DER) to a version; its key must be the
    /// version's.
    CertImport {
        /// Key name.
        name: String,
        /// The certificate file (`-` for stdin).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Write a version's newest certificate as PEM; with --chain also its issuers' certificates
    /// that the daemon knows.
    CertExport {
        /// Key name.
        name: String,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
        /// Include the issuers' certificates, up to a self-issued one.
        #[arg(long)]
        chain: bool,
        /// Output file (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
    /// Import an outside recipient's certificate or public key (PEM or DER) as a public-only key
    /// (backend external); importing again adds a version.
    Import {
        /// Key name.
        name: String,
        /// The certificate or public key file (`-` for stdin).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// rsa2048-oaep (a recipient, default) or rsa2048-sign.
        #[arg(long)]
        kind: Option<String>,
    },
}

fn pem(label: &str, der: &[u8]) -> Result<String, Failure> {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der)
        .map_err(|e| Failure::Usage(format!("cannot encode PEM: {e}")))
}

fn print_cert(json: bool, r: &CertResult, output: Option<&PathBuf>) -> Out {
    let text = pem("CERTIFICATE", &r.certificate)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": r.name, "version": r.version,
                "thumbprint": hex::encode(&r.thumbprint), "certificate": text,
            }))
            .unwrap_or_default()
        );
    } else {
        println!(
            "{} v{} certificate thumbprint {}",
            r.name,
            r.version,
            hex::encode(&r.thumbprint)
        );
    }
    if let Some(out) = output {
        write_output(out, text.as_bytes())?;
    }
    Ok(())
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Cert {
            name,
            self_signed,
            issuer,
            subject,
            ca,
            days,
            version,
            output,
        } => {
            let r = c.keys_cert(&CertArgs {
                name,
                version,
                issuer,
                self_signed,
                ca,
                subject,
                days,
            })?;
            print_cert(json, &r, output.as_ref())
        }
        Cmd::Csr {
            name,
            subject,
            version,
            output,
        } => {
            let r = c.keys_csr(&CsrArgs {
                name,
                version,
                subject,
            })?;
            write_output(&output, pem("CERTIFICATE REQUEST", &r.csr)?.as_bytes())
        }
        Cmd::CertImport {
            name,
            input,
            version,
        } => {
            let r = c.keys_cert_import(&CertImportArgs {
                name,
                version,
                certificate: read_input(&input)?,
            })?;
            print_cert(json, &r, None)
        }
        Cmd::CertExport {
            name,
            version,
            chain,
            output,
        } => {
            let r = c.keys_cert_export(&CertExportArgs {
                name,
                version,
                chain,
            })?;
            let mut text = String::new();
            for der in &r.certificates {
                text.push_str(&pem("CERTIFICATE", der)?);
            }
            write_output(&output, text.as_bytes())
        }
        Cmd::Import { name, input, kind } => {
            let k = c.keys_import(&KeyImportArgs {
                name,
                kind,
                data: read_input(&input)?,
            })?;
            crate::keys::show(json, k);
            Ok(())
        }
    }
}
