//! `decrypt` and `unwrap`.

use clap::Subcommand;
use custody_client::proto::ops::{DecryptArgs, UnwrapArgs};
use custody_client::BlockingClient;

use crate::io::{hex_arg, plaintext_out, read_input, Io};
use crate::Out;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// RSA-OAEP-SHA256 decrypt with an rsa2048-oaep key.
    Decrypt {
        /// Key name.
        name: String,
        #[command(flatten)]
        io: Io,
        /// OAEP label as hex (default: empty).
        #[arg(long, value_name = "HEX", conflicts_with = "mosip_label")]
        label_hex: Option<String>,
        /// Use MOSIP's TPM label convention (one 0x00 byte).
        #[arg(long)]
        mosip_label: bool,
        /// Key version (default: current).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Unwrap an RSA-OAEP-SHA256 wrapped data key (256 bytes, or thumbprint ‖ 256 bytes).
    Unwrap {
        /// Key name.
        name: String,
        #[command(flatten)]
        io: Io,
        /// Thumbprint (prefix) of the key version, hex.
        #[arg(long, value_name = "HEX")]
        thumbprint: Option<String>,
        /// Key version.
        #[arg(long)]
        version: Option<u32>,
    },
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Decrypt {
            name,
            io,
            label_hex,
            mosip_label,
            version,
        } => {
            let label = match (label_hex, mosip_label) {
                (Some(h), _) => Some(hex_arg(&h, "--label-hex")?),
                (None, true) => Some(vec![0u8]),
                (None, false) => None,
            };
            let r = c.decrypt(&DecryptArgs {
                key: name,
                ciphertext: read_input(&io.input)?,
                label,
                version,
            })?;
            plaintext_out(json, &io.output, &r)
        }
        Cmd::Unwrap {
            name,
            io,
            thumbprint,
            version,
        } => {
            let wrapped = read_input(&io.input)?;
            let thumbprint = thumbprint
                .map(|t| hex_arg(&t, "--thumbprint"))
                .transpose()?;
            let r = c.unwrap(&UnwrapArgs {
                key: name,
                wrapped,
                thumbprint,
                version,
            })?;
            plaintext_out(json, &io.output, &r)
        }
    }
}
