//! `envelope seal | open` and `rewrap`.

use std::path::PathBuf;

use clap::Subcommand;
use custody_client::proto::ops::{OpenArgs, RewrapArgs, SealArgs};
use custody_client::BlockingClient;
use serde_json::json;

use crate::io::{b64url, plaintext_out, read_binary, read_input, read_pem_spki, write_binary, Io};
use crate::Out;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Seal data into, or open, MOSIP VER_R2 envelopes (hybrid RSA-OAEP + AES-GCM).
    #[command(subcommand)]
    Envelope(EnvelopeCmd),
    /// Re-target a wrapped key or envelope to another key without the data key leaving the daemon.
    Rewrap {
        /// Key that can open the input now.
        name: String,
        #[command(flatten)]
        io: Io,
        /// Target key name (its current version).
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "to_pem",
            conflicts_with = "to_pem"
        )]
        to: Option<String>,
        /// Target external RSA-2048 public key (PEM SubjectPublicKeyInfo).
        #[arg(long, value_name = "FILE")]
        to_pem: Option<PathBuf>,
        /// Input and output are base64url (envelopes).
        #[arg(long)]
        base64: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvelopeCmd {
    /// Seal data to a key (current version) or to an external public key.
    Seal {
        /// Recipient key name.
        #[arg(required_unless_present = "to_pem", conflicts_with = "to_pem")]
        name: Option<String>,
        /// Recipient external RSA-2048 public key (PEM SubjectPublicKeyInfo).
        #[arg(long, value_name = "FILE")]
        to_pem: Option<PathBuf>,
        #[command(flatten)]
        io: Io,
        /// Write base64url without padding instead of raw bytes.
        #[arg(long)]
        base64: bool,
    },
    /// Open an envelope; the key version is chosen by the thumbprint inside.
    Open {
        /// Key name.
        name: String,
        #[command(flatten)]
        io: Io,
        /// Read base64url (or standard base64) instead of raw bytes.
        #[arg(long)]
        base64: bool,
    },
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Envelope(EnvelopeCmd::Seal {
            name,
            to_pem,
            io,
            base64,
        }) => {
            let public_key = to_pem.as_deref().map(read_pem_spki).transpose()?;
            let r = c.envelope_seal(&SealArgs {
                key: name,
                public_key,
                plaintext: read_input(&io.input)?,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"envelope": b64url(&r.envelope), "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
                Ok(())
            } else {
                write_binary(&io.output, &r.envelope, base64)
            }
        }
        Cmd::Envelope(EnvelopeCmd::Open { name, io, base64 }) => {
            let envelope = read_binary(&io.input, base64)?;
            let r = c.envelope_open(&OpenArgs {
                key: name,
                envelope,
            })?;
            plaintext_out(json, &io.output, &r)
        }
        Cmd::Rewrap {
            name,
            io,
            to,
            to_pem,
            base64,
        } => {
            let input = read_binary(&io.input, base64)?;
            let r = c.rewrap(&RewrapArgs {
                key: name,
                input,
                to_key: to,
                to_public_key: to_pem.as_deref().map(read_pem_spki).transpose()?,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"form": r.form, "output": b64url(&r.output), "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
                Ok(())
            } else {
                write_binary(&io.output, &r.output, base64)
            }
        }
    }
}
