//! `sign` and `sign-jwt`.

use std::path::PathBuf;

use clap::Subcommand;
use custody_client::proto::ops::{SignArgs, SignJwtArgs};
use custody_client::BlockingClient;
use serde_json::json;

use crate::io::{b64url, read_input, write_output, Io};
use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Sign data (RSA: the daemon hashes it with SHA-256, or a 32-byte digest; ed25519: pure
    /// Ed25519 over the data); writes the raw signature.
    Sign {
        /// Key name (rsa2048-sign or ed25519).
        name: String,
        #[command(flatten)]
        io: Io,
        /// The input is a 32-byte SHA-256 digest, signed as is.
        #[arg(long)]
        prehashed: bool,
        /// RSA signature scheme [default: pkcs1v15]; not for ed25519 keys.
        #[arg(long, value_parser = ["pkcs1v15", "pss"])]
        scheme: Option<String>,
    },
    /// Sign a JWT payload (a JSON object) as compact JWS RS256 with `kid` = the key index.
    SignJwt {
        /// Key name (rsa2048-sign).
        name: String,
        /// File holding the JSON payload (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        payload_file: PathBuf,
    },
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Sign {
            name,
            io,
            prehashed,
            scheme,
        } => {
            let input = read_input(&io.input)?;
            let mut args = SignArgs {
                key: name,
                scheme,
                ..Default::default()
            };
            if prehashed {
                if input.len() != 32 {
                    return Err(Failure::Usage(format!(
                        "--prehashed takes a 32-byte SHA-256 digest; got {} bytes",
                        input.len()
                    )));
                }
                args.digest = Some(input);
            } else {
                args.data = Some(input);
            }
            let r = c.sign(&args)?;
            if json {
                println!(
                    "{}",
                    json!({"key": r.key, "version": r.version, "signature": b64url(&r.signature)})
                );
            } else {
                write_output(&io.output, &r.signature)?;
            }
        }
        Cmd::SignJwt { name, payload_file } => {
            let payload = read_input(&payload_file)?;
            let r = c.sign_jwt(&SignJwtArgs { key: name, payload })?;
            if json {
                println!(
                    "{}",
                    json!({"key": r.key, "version": r.version, "kid": r.kid, "jwt": r.jwt})
                );
            } else {
                println!("{}", r.jwt);
            }
        }
    }
    Ok(())
}
