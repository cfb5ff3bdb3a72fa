//! `keys create | adopt | list | show | rotate | retire | destroy | public`, and the certificate
//! commands of [`crate::certs`].

use std::path::PathBuf;

use clap::Subcommand;
use custody_client::proto::ops::{
    KeyAdoptArgs, KeyCreateArgs, KeyInfo, KeyListArgs, KeyNameArgs, KeyVersionArgs, PublicKeyArgs,
};
use custody_client::BlockingClient;
use serde_json::json;

use crate::io::{b64url, hex_arg, write_output};
use crate::Out;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    #[command(flatten)]
    Certs(crate::certs::Cmd),
    /// Create a key with its first version (admin).
    Create {
        /// Key name: 1–64 of A-Z a-z 0-9 . _ -
        name: String,
        /// rsa2048-sign, rsa2048-oaep, aes256, x25519 (software) or ed25519 (pkcs11, software).
        #[arg(long)]
        kind: String,
        /// tpm, pkcs11 or software (`wrapped` is the old name of software).
        #[arg(long)]
        backend: String,
        /// default or mosip (TPM: MOSIP registration-client template).
        #[arg(long)]
        template: Option<String>,
        /// Master key (an aes256 key in the HSM) for the software backend.
        #[arg(long)]
        master: Option<String>,
        /// Validity of each version, days.
        #[arg(long)]
        validity_days: Option<u32>,
        /// Days before expiry at which a new version must take over.
        #[arg(long)]
        pre_expire_days: Option<u32>,
    },
    /// Take custody of a key that already exists in the HSM (e.g. MOSIP's K9 or a partner key)
    /// instead of generating one: checked to be of that kind, sensitive and non-extractable
    /// (admin). Destroying an adopted version later leaves the token object in place.
    Adopt {
        /// Name to register it under: 1–64 of A-Z a-z 0-9 . _ -
        name: String,
        /// aes256, rsa2048-oaep or rsa2048-sign.
        #[arg(long)]
        kind: String,
        /// The object's CKA_LABEL.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        label: Option<String>,
        /// The object's CKA_ID, hex.
        #[arg(long, value_name = "HEX")]
        id: Option<String>,
    },
    /// List the keys your roles cover, with their versions.
    List,
    /// Show a key and its versions.
    Show {
        /// Key name.
        name: String,
    },
    /// Make a new current version; older versions keep decrypting until retired.
    Rotate {
        /// Key name.
        name: String,
    },
    /// Retire a non-current version: it is refused from now on.
    Retire {
        /// Key name.
        name: String,
        /// Version.
        #[arg(long)]
        version: u32,
    },
    /// Destroy a non-current version, in the TPM/HSM too.
    Destroy {
        /// Key name.
        name: String,
        /// Version.
        #[arg(long)]
        version: u32,
    },
    /// Write a public key; with --json also its SHA-256 thumbprint and MOSIP key index.
    Public {
        /// Key name.
        name: String,
        /// text (RSA: PEM; x25519: standard base64 of the 32 bytes, as idOS stores it;
        /// ed25519: hex of the 32 bytes, idOS's issuer_auth_public_key), pem, der, raw (the 32
        /// bytes of an x25519/ed25519 key) or tpmt (TPM keys: marshalled TPMT_PUBLIC).
        #[arg(long, value_parser = ["text", "pem", "der", "raw", "tpmt"], default_value = "text")]
        format: String,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
        /// Output file (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
}

/// Prints a key: JSON, or one line per version.
pub fn show(json: bool, k: KeyInfo) {
    if json {
        println!("{}", serde_json::to_string_pretty(&k).unwrap_or_default());
    } else {
        print_key(&k);
    }
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    let show = |k: KeyInfo| show(json, k);
    match cmd {
        Cmd::Certs(cmd) => return crate::certs::run(c, json, cmd),
        Cmd::Create {
            name,
            kind,
            backend,
            template,
            master,
            validity_days,
            pre_expire_days,
        } => show(c.keys_create(&KeyCreateArgs {
            name,
            kind,
            backend,
            template,
            master,
            validity_days,
            pre_expire_days,
        })?),
        Cmd::Adopt {
            name,
            kind,
            label,
            id,
        } => show(c.keys_adopt(&KeyAdoptArgs {
            name,
            kind,
            label,
            id: id.map(|h| hex_arg(&h, "--id")).transpose()?,
        })?),
        Cmd::List => {
            let r = c.keys_list(&KeyListArgs {})?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                r.keys.iter().for_each(print_key);
            }
        }
        Cmd::Show { name } => show(c.keys_show(&KeyNameArgs { name })?),
        Cmd::Rotate { name } => show(c.keys_rotate(&KeyNameArgs { name })?),
        Cmd::Retire { name, version } => show(c.keys_retire(&KeyVersionArgs { name, version })?),
        Cmd::Destroy { name, version } => show(c.keys_destroy(&KeyVersionArgs { name, version })?),
        Cmd::Public {
            name,
            format,
            version,
            output,
        } => {
            let r = c.keys_public(&PublicKeyArgs {
                name,
                version,
                format: Some(format),
            })?;
            if json {
                let data = if r.format == "pem" || r.format == "text" {
                    String::from_utf8_lossy(&r.data).into_owned()
                } else {
                    b64url(&r.data)
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "name": r.name, "version": r.version, "format": r.format, "data": data,
                        "thumbprint": hex::encode(&r.thumbprint), "key_index": r.key_index,
                        "thumbprints": r.thumbprints.iter().map(|t| json!({
                            "thumbprint": hex::encode(&t.thumbprint), "over": t.over,
                            "subject": t.subject, "issuer": t.issuer, "not_after": t.not_after,
                        })).collect::<Vec<_>>(),
                    }))
                    .unwrap_or_default()
                );
            } else if r.format == "text" && !r.data.ends_with(b"\n") {
                let mut line = r.data;
                line.push(b'\n');
                write_output(&output, &line)?;
            } else {
                write_output(&output, &r.data)?;
            }
        }
    }
    Ok(())
}

fn print_key(k: &KeyInfo) {
    println!(
        "{}  kind={} backend={} template={} current=v{}",
        k.name, k.kind, k.backend, k.template, k.current_version
    );
    for v in &k.versions {
        println!(
            "  v{}  {:<12} created {}  not-after {}{}",
            v.version,
            v.state,
            fmt_time(v.created),
            fmt_time(v.not_after),
            v.thumbprint
                .as_ref()
                .map(|t| format!("  thumbprint {}", hex::encode(t)))
                .unwrap_or_default()
        );
        for t in v.thumbprints.iter().filter(|t| t.over == "certificate") {
            println!(
                "      certificate {}  subject {}  issuer {}",
                hex::encode(&t.thumbprint),
                t.subject.as_deref().unwrap_or("?"),
                t.issuer.as_deref().unwrap_or("?")
            );
        }
    }
}

/// RFC 3339 UTC time from Unix seconds, without a date library (civil-from-days).
fn fmt_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::fmt_time;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_time(-1), "1969-12-31T23:59:59Z");
    }
}
