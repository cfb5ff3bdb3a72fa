//! `custody`: command-line client for custodyd.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use custody_client::proto::ops::*;
use custody_client::proto::ErrorCode;
use custody_client::{BlockingClient, ClientError};
use serde_json::json;

/// Command-line client for custodyd, the hardware-backed key custody daemon.
///
/// Binary inputs and outputs use `--in FILE` / `--out FILE`; `-` means stdin / stdout.
/// Exit codes: 0 success; 1 other failure; 2 usage error; 3 cannot reach the daemon;
/// 10 bad_request, 11 unsupported_version, 12 unknown_op, 13 permission_denied, 14 not_found,
/// 15 already_exists, 16 key_expired, 17 key_retired, 18 wrong_kind, 19 integrity,
/// 20 backend_unavailable, 21 busy, 22 too_large, 23 internal.
#[derive(Parser, Debug)]
#[command(name = "custody", version)]
struct Cli {
    /// Daemon socket [default: $CUSTODY_SOCKET, else /run/custodyd/custodyd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that the daemon answers.
    Ping,
    /// Daemon version, uptime, backend health and per-op counters.
    Status,
    /// Manage keys (create, list, show, rotate, retire, destroy, public).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Sign data (the daemon hashes it with SHA-256) or a 32-byte digest; writes the raw signature.
    Sign(SignArgsCli),
    /// Sign a JWT payload (a JSON object) as compact JWS RS256 with `kid` = the key index.
    SignJwt {
        /// Key name (rsa2048-sign).
        name: String,
        /// File holding the JSON payload (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        payload_file: PathBuf,
    },
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
    /// MOSIP VER_R2 envelopes.
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

#[derive(Args, Debug)]
struct Io {
    /// Input file (`-` for stdin).
    #[arg(long = "in", value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Output file (`-` for stdout).
    #[arg(long = "out", value_name = "FILE", default_value = "-")]
    output: PathBuf,
}

#[derive(Args, Debug)]
struct SignArgsCli {
    /// Key name (rsa2048-sign).
    name: String,
    #[command(flatten)]
    io: Io,
    /// The input is a 32-byte SHA-256 digest, signed as is.
    #[arg(long)]
    prehashed: bool,
    /// Signature scheme.
    #[arg(long, value_parser = ["pkcs1v15", "pss"], default_value = "pkcs1v15")]
    scheme: String,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Create a key (admin).
    Create {
        /// Key name: 1–64 of A-Z a-z 0-9 . _ -
        name: String,
        /// rsa2048-sign, rsa2048-oaep or aes256.
        #[arg(long)]
        kind: String,
        /// tpm, pkcs11 or wrapped.
        #[arg(long)]
        backend: String,
        /// default or mosip (TPM: MOSIP registration-client template).
        #[arg(long)]
        template: Option<String>,
        /// Master key (aes256) for the wrapped backend.
        #[arg(long)]
        master: Option<String>,
        /// Validity of each version, days.
        #[arg(long)]
        validity_days: Option<u32>,
        /// Days before expiry at which a new version must take over.
        #[arg(long)]
        pre_expire_days: Option<u32>,
    },
    /// List keys.
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
        /// pem, der, or tpmt (TPM keys: marshalled TPMT_PUBLIC).
        #[arg(long, value_parser = ["pem", "der", "tpmt"], default_value = "pem")]
        format: String,
        /// Version (default: current).
        #[arg(long)]
        version: Option<u32>,
        /// Output file (`-` for stdout).
        #[arg(long = "out", value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EnvelopeCmd {
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

enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

type Out = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(custody_client::default_socket);
    let json = cli.json;
    let result = BlockingClient::connect(&socket)
        .map_err(Failure::from)
        .and_then(|c| run(&c, cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            report(json, "usage", &m);
            ExitCode::from(2)
        }
        Err(Failure::Client(ClientError::Server(e))) => {
            report(json, &e.code, &e.message);
            ExitCode::from(exit_code(e.code()))
        }
        Err(Failure::Client(ClientError::Io(e))) => {
            report(json, "connect", &e.to_string());
            ExitCode::from(3)
        }
        Err(Failure::Client(e)) => {
            report(json, "protocol", &e.to_string());
            ExitCode::from(1)
        }
    }
}

fn report(json: bool, code: &str, message: &str) {
    if json {
        println!("{}", json!({"error": {"code": code, "message": message}}));
    } else {
        eprintln!("custody: {code}: {message}");
    }
}

fn exit_code(code: Option<ErrorCode>) -> u8 {
    code.and_then(|c| ErrorCode::ALL.iter().position(|x| *x == c))
        .map(|i| 10 + i as u8)
        .unwrap_or(1)
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut buf)?;
    } else {
        buf = std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(buf)
}

fn write_output(path: &PathBuf, data: &[u8]) -> Out {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()?;
    } else {
        std::fs::write(path, data)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Reads an input, decoding base64/base64url when `base64` is set.
fn read_binary(path: &PathBuf, base64: bool) -> Result<Vec<u8>, Failure> {
    let raw = read_input(path)?;
    if base64 {
        b64_decode(&raw)
    } else {
        Ok(raw)
    }
}

/// Writes an output, as base64url without padding when `base64` is set.
fn write_binary(path: &PathBuf, data: &[u8], base64: bool) -> Out {
    if base64 {
        write_output(path, b64url(data).as_bytes())
    } else {
        write_output(path, data)
    }
}

fn hex_arg(s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    hex::decode(s.replace(':', "")).map_err(|_| Failure::Usage(format!("{what}: not hex")))
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn b64_decode(text: &[u8]) -> Result<Vec<u8>, Failure> {
    let t: String = String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let t = t.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .map_err(|_| Failure::Usage("input is not base64 / base64url".into()))
}

/// Reads a PEM SubjectPublicKeyInfo and returns its DER.
fn read_pem_spki(path: &PathBuf) -> Result<Vec<u8>, Failure> {
    let text = String::from_utf8(read_input(path)?)
        .map_err(|_| Failure::Usage(format!("{}: not a PEM file", path.display())))?;
    if text.contains("BEGIN RSA PUBLIC KEY") {
        return Err(Failure::Usage(format!(
            "{}: PKCS#1 RSA PUBLIC KEY; convert with `openssl rsa -RSAPublicKey_in -pubout`",
            path.display()
        )));
    }
    let start = text
        .find("-----BEGIN PUBLIC KEY-----")
        .ok_or_else(|| Failure::Usage(format!("{}: no BEGIN PUBLIC KEY block", path.display())))?;
    let body: String = text[start + 26..]
        .lines()
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| Failure::Usage(format!("{}: PEM body is not base64", path.display())))
}

fn fmt_time(secs: i64) -> String {
    // Civil date from Unix seconds (UTC), without a date library.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (z, era_adj) = (days + 719_468, 0);
    let era = z.div_euclid(146_097) + era_adj;
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
    }
}

fn run(c: &BlockingClient, cli: Cli) -> Out {
    let json = cli.json;
    match cli.cmd {
        Cmd::Ping => {
            let t = Instant::now();
            let r: PingResult = c.call_untyped(
                names::PING,
                &PingArgs {
                    data: b"ping".to_vec(),
                },
            )?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if r.data != b"ping" {
                return Err(Failure::Client(ClientError::Protocol(
                    "ping echo mismatch".into(),
                )));
            }
            let server = &c.inner().server_hello().server;
            if json {
                println!("{}", json!({"pong": true, "server": server, "rtt_ms": ms}));
            } else {
                println!("pong from {server} in {ms:.2} ms");
            }
        }
        Cmd::Status => {
            let s: StatusResult = c.call_untyped(names::STATUS, &StatusArgs {})?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                println!("{} (protocol {})", s.server, s.protocol);
                println!("uptime {}s, {} connection(s)", s.uptime_secs, s.connections);
                for b in &s.backends {
                    println!(
                        "backend {:<8} {}  {}",
                        b.name,
                        if b.ok { "ok  " } else { "DOWN" },
                        b.detail
                    );
                }
                for (op, n) in &s.ops {
                    println!("op {op:<14} ok {:>8}  err {:>6}", n.ok, n.err);
                }
            }
        }
        Cmd::Keys(k) => keys(c, json, k)?,
        Cmd::Sign(a) => {
            let input = read_input(&a.io.input)?;
            let mut args = SignArgs {
                key: a.name,
                scheme: Some(a.scheme),
                ..Default::default()
            };
            if a.prehashed {
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
            let r: SignResult = c.call_untyped(names::SIGN, &args)?;
            if json {
                println!(
                    "{}",
                    json!({"key": r.key, "version": r.version, "signature": b64url(&r.signature)})
                );
            } else {
                write_output(&a.io.output, &r.signature)?;
            }
        }
        Cmd::SignJwt { name, payload_file } => {
            let payload = read_input(&payload_file)?;
            let r: SignJwtResult =
                c.call_untyped(names::SIGN_JWT, &SignJwtArgs { key: name, payload })?;
            if json {
                println!(
                    "{}",
                    json!({"key": r.key, "version": r.version, "kid": r.kid, "jwt": r.jwt})
                );
            } else {
                println!("{}", r.jwt);
            }
        }
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
            let r: PlaintextResult = c.call_untyped(
                names::DECRYPT,
                &DecryptArgs {
                    key: name,
                    ciphertext: read_input(&io.input)?,
                    label,
                    version,
                },
            )?;
            plaintext_out(json, &io.output, &r)?;
        }
        Cmd::Unwrap {
            name,
            io,
            thumbprint,
            version,
        } => {
            let r: PlaintextResult = c.call_untyped(
                names::UNWRAP,
                &UnwrapArgs {
                    key: name,
                    wrapped: read_input(&io.input)?,
                    thumbprint: thumbprint
                        .map(|t| hex_arg(&t, "--thumbprint"))
                        .transpose()?,
                    version,
                },
            )?;
            plaintext_out(json, &io.output, &r)?;
        }
        Cmd::Envelope(EnvelopeCmd::Seal {
            name,
            to_pem,
            io,
            base64,
        }) => {
            let public_key = to_pem.as_ref().map(read_pem_spki).transpose()?;
            let r: SealResult = c.call_untyped(
                names::ENVELOPE_SEAL,
                &SealArgs {
                    key: name,
                    public_key,
                    plaintext: read_input(&io.input)?,
                },
            )?;
            if json {
                println!(
                    "{}",
                    json!({"envelope": b64url(&r.envelope), "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
            } else {
                write_binary(&io.output, &r.envelope, base64)?;
            }
        }
        Cmd::Envelope(EnvelopeCmd::Open { name, io, base64 }) => {
            let envelope = read_binary(&io.input, base64)?;
            let r: PlaintextResult = c.call_untyped(
                names::ENVELOPE_OPEN,
                &OpenArgs {
                    key: name,
                    envelope,
                },
            )?;
            plaintext_out(json, &io.output, &r)?;
        }
        Cmd::Rewrap {
            name,
            io,
            to,
            to_pem,
            base64,
        } => {
            let input = read_binary(&io.input, base64)?;
            let r: RewrapResult = c.call_untyped(
                names::REWRAP,
                &RewrapArgs {
                    key: name,
                    input,
                    to_key: to,
                    to_public_key: to_pem.as_ref().map(read_pem_spki).transpose()?,
                },
            )?;
            if json {
                println!(
                    "{}",
                    json!({"form": r.form, "output": b64url(&r.output), "thumbprint": hex::encode(&r.thumbprint), "version": r.version})
                );
            } else {
                write_binary(&io.output, &r.output, base64)?;
            }
        }
    }
    Ok(())
}

fn plaintext_out(json: bool, out: &PathBuf, r: &PlaintextResult) -> Out {
    if json {
        println!(
            "{}",
            json!({"key": r.key, "version": r.version, "plaintext": b64url(&r.plaintext)})
        );
        Ok(())
    } else {
        write_output(out, &r.plaintext)
    }
}

fn keys(c: &BlockingClient, json: bool, cmd: KeysCmd) -> Out {
    let show = |k: KeyInfo| {
        if json {
            println!("{}", serde_json::to_string_pretty(&k).unwrap_or_default());
        } else {
            print_key(&k);
        }
    };
    match cmd {
        KeysCmd::Create {
            name,
            kind,
            backend,
            template,
            master,
            validity_days,
            pre_expire_days,
        } => show(c.call_untyped(
            names::KEYS_CREATE,
            &KeyCreateArgs {
                name,
                kind,
                backend,
                template,
                master,
                validity_days,
                pre_expire_days,
            },
        )?),
        KeysCmd::List => {
            let r: KeyListResult = c.call_untyped(names::KEYS_LIST, &KeyListArgs {})?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                r.keys.iter().for_each(print_key);
            }
        }
        KeysCmd::Show { name } => show(c.call_untyped(names::KEYS_SHOW, &KeyNameArgs { name })?),
        KeysCmd::Rotate { name } => {
            show(c.call_untyped(names::KEYS_ROTATE, &KeyNameArgs { name })?)
        }
        KeysCmd::Retire { name, version } => {
            show(c.call_untyped(names::KEYS_RETIRE, &KeyVersionArgs { name, version })?)
        }
        KeysCmd::Destroy { name, version } => {
            show(c.call_untyped(names::KEYS_DESTROY, &KeyVersionArgs { name, version })?)
        }
        KeysCmd::Public {
            name,
            format,
            version,
            output,
        } => {
            let r: PublicKeyResult = c.call_untyped(
                names::KEYS_PUBLIC,
                &PublicKeyArgs {
                    name,
                    version,
                    format: Some(format),
                },
            )?;
            if json {
                let data = if r.format == "pem" {
                    String::from_utf8_lossy(&r.data).into_owned()
                } else {
                    b64url(&r.data)
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "name": r.name, "version": r.version, "format": r.format, "data": data,
                        "thumbprint": hex::encode(&r.thumbprint), "key_index": r.key_index,
                    }))
                    .unwrap_or_default()
                );
            } else {
                write_output(&output, &r.data)?;
            }
        }
    }
    Ok(())
}
