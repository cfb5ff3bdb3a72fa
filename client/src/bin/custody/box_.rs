//! `box seal | open | reencrypt | reencrypt-batch | derive`: idOS's `nacl.box` with custody
//! `x25519` keys. Keys and content are standard base64 with padding (idOS's storage encoding) in
//! and out; raw content files are accepted too.

use std::io::BufRead;
use std::path::PathBuf;

use clap::Subcommand;
use custody_client::proto::ops::{
    BoxDeriveArgs, BoxOpenArgs, BoxReencryptArgs, BoxReencryptBatchArgs, BoxReencryptItem,
    BoxSealArgs, Password,
};
use custody_client::BlockingClient;
use serde_json::{json, Value as Json};
use zeroize::Zeroizing;

use crate::io::{b64_arg, b64std, plaintext_out, read_b64_or_raw, read_input, write_output};
use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Seal a file to an X25519 public key with a fresh ephemeral key; writes the content
    /// (base64 of nonce ‖ box) and prints the encryptor public key.
    Seal {
        /// Recipient public key, standard base64 (32 bytes).
        #[arg(long, value_name = "B64")]
        to_pubkey: String,
        /// Plaintext file (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Content output (base64 text; `-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// Write the content as raw bytes instead of base64.
        #[arg(long)]
        raw: bool,
    },
    /// Open content sealed to a custody x25519 key; writes the plaintext (needs `box.open`).
    Open {
        /// Key name (x25519).
        name: String,
        /// The encryptor public key stored beside the content, standard base64.
        #[arg(long, value_name = "B64")]
        encryptor_pubkey: String,
        /// Content file: base64 or raw nonce ‖ box (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Plaintext output (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// Key version (default: current).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Re-encrypt content for an access grant, inside the daemon: writes the new content and
    /// prints its encryptor public key and the plaintext's SHA-256 (the grant's content_hash).
    Reencrypt {
        /// Key name (x25519) the content is sealed to.
        name: String,
        /// The encryptor public key stored beside the content, standard base64.
        #[arg(long, value_name = "B64")]
        encryptor_pubkey: String,
        /// The grantee's public key, standard base64.
        #[arg(long, value_name = "B64")]
        to_pubkey: String,
        /// Refuse (integrity) unless the plaintext's SHA-256 is this (64 hex digits).
        #[arg(long, value_name = "HEX")]
        expect_sha256: Option<String>,
        /// Content file: base64 or raw (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// New content output (base64 text; `-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// Write the content as raw bytes instead of base64.
        #[arg(long)]
        raw: bool,
        /// Key version (default: current).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Re-encrypt many credentials for one grantee in one request. Input: a JSON array of
    /// {"content", "encryptor_public_key", "expect_content_hash"?} (base64); prints a JSON
    /// array of {"content", "encryptor_public_key", "content_hash"} or {"error"}.
    ReencryptBatch {
        /// Key name (x25519).
        name: String,
        /// The grantee's public key, standard base64.
        #[arg(long, value_name = "B64")]
        to_pubkey: String,
        /// JSON input file (`-` for stdin).
        #[arg(long = "in", value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Key version (default: current).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Derive idOS's password key (scrypt of the NFKC password, salt = user id); the password is
    /// read from stdin (one line). Prints the public key; --import keeps the secret in custody.
    Derive {
        /// The user id (a UUID), the scrypt salt.
        #[arg(long, value_name = "USER_ID")]
        salt: String,
        /// Refuse (integrity) a password that yields another public key (standard base64).
        #[arg(long, value_name = "B64")]
        check_pubkey: Option<String>,
        /// Keep the derived secret as a new software x25519 key of this name.
        #[arg(long, value_name = "NAME", requires = "master")]
        import: Option<String>,
        /// Master key (aes256 in the HSM) to wrap the imported secret under.
        #[arg(long, requires = "import")]
        master: Option<String>,
    },
}

fn key_arg(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    b64_arg(s, what)
}

fn write_content(out: &std::path::Path, content: &[u8], raw: bool) -> Out {
    if raw {
        write_output(out, content)
    } else {
        let mut text = b64std(content);
        text.push('\n');
        write_output(out, text.as_bytes())
    }
}

/// Reads the password: the first line of stdin, without its line ending.
fn read_password() -> Result<Password, Failure> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Password::new(trimmed.as_bytes().to_vec()))
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Seal {
            to_pubkey,
            input,
            output,
            raw,
        } => {
            let r = c.box_seal(&BoxSealArgs {
                to_public_key: key_arg(&to_pubkey, "--to-pubkey")?,
                plaintext: read_input(&input)?,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"content": b64std(&r.content),
                           "encryptor_public_key": b64std(&r.encryptor_public_key)})
                );
            } else {
                write_content(&output, &r.content, raw)?;
                if output.as_os_str() != "-" {
                    println!("{}", b64std(&r.encryptor_public_key));
                } else {
                    eprintln!("encryptor_public_key {}", b64std(&r.encryptor_public_key));
                }
            }
        }
        Cmd::Open {
            name,
            encryptor_pubkey,
            input,
            output,
            version,
        } => {
            let r = c.box_open(&BoxOpenArgs {
                key: name,
                version,
                encryptor_public_key: key_arg(&encryptor_pubkey, "--encryptor-pubkey")?,
                content: read_b64_or_raw(&input)?,
            })?;
            plaintext_out(json, &output, &r)?;
        }
        Cmd::Reencrypt {
            name,
            encryptor_pubkey,
            to_pubkey,
            expect_sha256,
            input,
            output,
            raw,
            version,
        } => {
            let r = c.box_reencrypt(&BoxReencryptArgs {
                key: name,
                version,
                encryptor_public_key: key_arg(&encryptor_pubkey, "--encryptor-pubkey")?,
                content: read_b64_or_raw(&input)?,
                to_public_key: key_arg(&to_pubkey, "--to-pubkey")?,
                expect_content_hash: expect_sha256,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"key": r.key, "version": r.version,
                           "content": b64std(&r.content),
                           "encryptor_public_key": b64std(&r.encryptor_public_key),
                           "content_hash": r.content_hash})
                );
            } else {
                write_content(&output, &r.content, raw)?;
                let line = format!(
                    "encryptor_public_key {}\ncontent_hash {}",
                    b64std(&r.encryptor_public_key),
                    r.content_hash
                );
                if output.as_os_str() != "-" {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        }
        Cmd::ReencryptBatch {
            name,
            to_pubkey,
            input,
            version,
        } => {
            let list: Vec<Json> = serde_json::from_slice(&read_input(&input)?)
                .map_err(|e| Failure::Usage(format!("batch input is not a JSON array: {e}")))?;
            let field = |v: &Json, f: &str, i: usize| -> Result<Vec<u8>, Failure> {
                let s = v[f].as_str().ok_or_else(|| {
                    Failure::Usage(format!("item {i}: `{f}` (base64 string) is missing"))
                })?;
                b64_arg(s, &format!("item {i}: `{f}`"))
            };
            let items = list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    Ok(BoxReencryptItem {
                        content: field(v, "content", i)?,
                        encryptor_public_key: field(v, "encryptor_public_key", i)?,
                        expect_content_hash: v["expect_content_hash"].as_str().map(str::to_owned),
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let r = c.box_reencrypt_batch(&BoxReencryptBatchArgs {
                key: name,
                version,
                to_public_key: key_arg(&to_pubkey, "--to-pubkey")?,
                items,
            })?;
            let out: Vec<Json> = r
                .results
                .iter()
                .map(|x| match &x.err {
                    Some(e) => json!({"error": {"code": e.code, "message": e.message}}),
                    None => json!({
                        "content": b64std(x.content.as_deref().unwrap_or_default()),
                        "encryptor_public_key":
                            b64std(x.encryptor_public_key.as_deref().unwrap_or_default()),
                        "content_hash": x.content_hash,
                    }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Cmd::Derive {
            salt,
            check_pubkey,
            import,
            master,
        } => {
            let check_public_key = check_pubkey
                .as_deref()
                .map(|k| key_arg(k, "--check-pubkey"))
                .transpose()?;
            let r = c.box_derive(&BoxDeriveArgs {
                salt,
                password: read_password()?,
                check_public_key,
                import,
                master,
            })?;
            if json {
                println!(
                    "{}",
                    json!({"public_key": b64std(&r.public_key), "key": r.key})
                );
            } else {
                println!("{}", b64std(&r.public_key));
            }
        }
    }
    Ok(())
}
