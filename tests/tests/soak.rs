//! Soak: 64 connections under three uids with different roles run a mix of every operation for
//! `SOAK_SECS` seconds (60 in `make test`, `make soak` sets 600) against a real swtpm and SoftHSM
//! token, while an administrator rotates keys and the zero-knowledge master and issues
//! certificates. Every result is checked (signatures verify, decryptions equal their plaintexts,
//! permission denials exactly where the roles say). The report: operations per type, errors, RSS
//! sampled over time, open fds, HSM sessions and TPM transient objects at the end, p50/p99 per op.
//!
//! The non-root clients are this test executable run again under `setpriv` (`soak_worker`), so
//! the daemon sees their uid.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_testkit::proto::ops::*;
use custody_testkit::proto::ErrorCode;
use custody_testkit::{
    b64url_decode, cli_json, create_pkcs11, create_software, ensure_system_user, random, sha256,
    status_json, tpm_builder, Client, ClientError, Daemon,
};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, Pkcs1v15Sign, RsaPublicKey};
use serde_json::{json, Value as Json};

const REG_USER: &str = "custody-soak-reg";
const IDA_USER: &str = "custody-soak-ida";

fn roles() -> String {
    format!(
        r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "regclient"
unix_users = ["{REG_USER}"]
ops = ["sign", "sign.jwt", "keys.public"]
keys = ["machine-sign", "hsm-sign"]

[[roles]]
name = "ida"
unix_users = ["{IDA_USER}"]
ops = ["envelope.seal", "envelope.open", "unwrap", "rewrap", "zk.encrypt", "zk.decrypt", "zk.import", "box.*", "sign", "keys.public"]
keys = ["hsm-oaep", "hsm-oaep2", "pool", "ida-pool", "ida-k22", "idos-user", "issuer"]
"#
    )
}

fn secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Per-op latencies (µs), unexpected errors, expected denials.
#[derive(Default)]
struct Stats {
    lat: BTreeMap<String, Vec<u64>>,
    errors: BTreeMap<String, Vec<String>>,
    denied: BTreeMap<String, u64>,
}

impl Stats {
    fn to_json(&self) -> Json {
        let ops: BTreeMap<&String, Json> = self
            .lat
            .iter()
            .map(|(op, v)| {
                let mut v = v.clone();
                v.sort_unstable();
                let pct = |p: f64| {
                    v.get(((v.len() as f64 - 1.0) * p) as usize)
                        .copied()
                        .unwrap_or(0)
                };
                (
                    op,
                    json!({"n": v.len(), "p50_us": pct(0.5), "p99_us": pct(0.99)}),
                )
            })
            .collect();
        json!({"ops": ops, "errors": self.errors, "denied": self.denied})
    }
}

type Shared = Arc<Mutex<Stats>>;

/// Times one call; an error is recorded against `op`, as expected only when `expect_denied`.
async fn timed<T>(
    stats: &Shared,
    op: &str,
    expect_denied: bool,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Option<T> {
    let t = Instant::now();
    let r = f.await;
    let us = t.elapsed().as_micros() as u64;
    let mut s = stats.lock().unwrap();
    match r {
        Ok(v) if !expect_denied => {
            s.lat.entry(op.to_owned()).or_default().push(us);
            Some(v)
        }
        Ok(_) => {
            s.errors
                .entry(op.to_owned())
                .or_default()
                .push("allowed but should be denied".into());
            None
        }
        Err(e) => {
            let code = e.server().and_then(|w| w.code());
            if expect_denied && code == Some(ErrorCode::PermissionDenied) {
                *s.denied.entry(op.to_owned()).or_default() += 1;
            } else {
                let list = s.errors.entry(op.to_owned()).or_default();
                if list.len() < 5 {
                    list.push(e.to_string());
                }
            }
            None
        }
    }
}

fn fail(stats: &Shared, op: &str, why: String) {
    let mut s = stats.lock().unwrap();
    let list = s.errors.entry(op.to_owned()).or_default();
    if list.len() < 5 {
        list.push(why);
    }
}

/// Public keys by (key, version), fetched once.
#[derive(Default, Clone)]
struct Publics(Arc<Mutex<PublicMap>>);

/// DER public keys by (key, version).
type PublicMap = BTreeMap<(String, u32), Vec<u8>>;

impl Publics {
    async fn der(&self, c: &Client, key: &str, version: u32) -> Vec<u8> {
        if let Some(d) = self.0.lock().unwrap().get(&(key.to_owned(), version)) {
            return d.clone();
        }
        let r = c
            .keys_public(&PublicKeyArgs {
                name: key.into(),
                version: Some(version),
                format: Some("der".into()),
            })
            .await
            .expect("keys.public");
        self.0
            .lock()
            .unwrap()
            .insert((key.to_owned(), version), r.data.clone());
        r.data
    }
}

fn rsa(der: &[u8]) -> RsaPublicKey {
    RsaPublicKey::from_public_key_der(der).expect("RSA SPKI")
}

/// The registration client's mix: TPM and HSM signatures, request JWTs, public keys; an
/// envelope it may not open.
async fn regclient_loop(c: Client, stats: Shared, end: Instant, publics: Publics) {
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let key = if i % 3 == 0 {
            "machine-sign"
        } else {
            "hsm-sign"
        };
        let digest = sha256(&i.to_be_bytes());
        let args = SignArgs {
            key: key.into(),
            digest: Some(digest.to_vec()),
            ..Default::default()
        };
        if let Some(r) = timed(&stats, &format!("sign ({key})"), false, c.sign(&args)).await {
            let der = publics.der(&c, key, r.version).await;
            if rsa(&der)
                .verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &r.signature)
                .is_err()
            {
                fail(
                    &stats,
                    "sign",
                    format!("{key} v{} signature does not verify", r.version),
                );
            }
        }
        if i % 5 == 0 {
            let payload = format!("{{\"n\":{i}}}").into_bytes();
            let args = SignJwtArgs {
                key: "machine-sign".into(),
                payload,
            };
            if let Some(r) = timed(&stats, "sign.jwt", false, c.sign_jwt(&args)).await {
                let (input, sig) = r.jwt.rsplit_once('.').unwrap();
                let der = publics.der(&c, "machine-sign", r.version).await;
                let h = sha256(input.as_bytes());
                if rsa(&der)
                    .verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &h, &b64url_decode(sig))
                    .is_err()
                {
                    fail(&stats, "sign.jwt", "JWT signature does not verify".into());
                }
            }
        }
        if i % 7 == 0 {
            let args = OpenArgs {
                key: "hsm-oaep".into(),
                envelope: vec![0u8; 400],
            };
            timed(
                &stats,
                "envelope.open (denied)",
                true,
                c.envelope_open(&args),
            )
            .await;
        }
    }
}

/// IDA's and idOS's mix: envelopes, unwrap, rewrap, the zk pool and its shares, boxes,
/// Ed25519; a TPM signature it may not make.
async fn ida_loop(c: Client, stats: Shared, end: Instant, publics: Publics, user_pub: Vec<u8>) {
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let plain = random(200 + (i % 50) as usize);
        match i % 6 {
            0 => {
                let a = SealArgs {
                    key: Some("hsm-oaep".into()),
                    plaintext: plain.clone(),
                    ..Default::default()
                };
                let Some(s) = timed(&stats, "envelope.seal", false, c.envelope_seal(&a)).await
                else {
                    continue;
                };
                let o = OpenArgs {
                    key: "hsm-oaep".into(),
                    envelope: s.envelope.clone(),
                };
                if let Some(p) = timed(&stats, "envelope.open", false, c.envelope_open(&o)).await {
                    if p.plaintext != plain {
                        fail(&stats, "envelope.open", "plaintext differs".into());
                    }
                }
                let rw = RewrapArgs {
                    key: "hsm-oaep".into(),
                    input: s.envelope,
                    to_key: Some("hsm-oaep2".into()),
                    ..Default::default()
                };
                if let Some(r) = timed(&stats, "rewrap", false, c.rewrap(&rw)).await {
                    let o = OpenArgs {
                        key: "hsm-oaep2".into(),
                        envelope: r.output,
                    };
                    if let Some(p) =
                        timed(&stats, "envelope.open", false, c.envelope_open(&o)).await
                    {
                        if p.plaintext != plain {
                            fail(&stats, "rewrap", "re-targeted plaintext differs".into());
                        }
                    }
                }
            }
            1 => {
                let pk = c
                    .keys_public(&PublicKeyArgs {
                        name: "hsm-oaep".into(),
                        version: None,
                        format: Some("der".into()),
                    })
                    .await;
                let Ok(pk) = pk else {
                    fail(&stats, "keys.public", "failed".into());
                    continue;
                };
                let dk = random(32);
                let wrapped = rsa(&pk.data)
                    .encrypt(&mut rsa::rand_core::OsRng, Oaep::new::<sha2::Sha256>(), &dk)
                    .unwrap();
                let a = UnwrapArgs {
                    key: "hsm-oaep".into(),
                    wrapped,
                    thumbprint: None,
                    version: Some(pk.version),
                };
                if let Some(p) = timed(&stats, "unwrap", false, c.unwrap(&a)).await {
                    if p.plaintext != dk {
                        fail(&stats, "unwrap", "data key differs".into());
                    }
                }
            }
            2 | 3 => {
                let id = format!("UIN-{}", i % 97);
                let a = ZkCryptArgs {
                    pool: "pool".into(),
                    id: id.clone(),
                    attributes: vec![ZkAttribute {
                        identifier: "dob".into(),
                        value: plain.clone(),
                    }],
                };
                let Some(e) = timed(&stats, "zk.encrypt", false, c.zk_encrypt(&a)).await else {
                    continue;
                };
                let imp = ZkImportArgs {
                    pool: "ida-pool".into(),
                    key: "ida-k22".into(),
                    share: e.share.clone(),
                    index: e.index,
                };
                timed(&stats, "zk.import", false, c.zk_import(&imp)).await;
                for pool in ["pool", "ida-pool"] {
                    let d = ZkCryptArgs {
                        pool: pool.into(),
                        id: id.clone(),
                        attributes: e.attributes.clone(),
                    };
                    if let Some(p) = timed(&stats, "zk.decrypt", false, c.zk_decrypt(&d)).await {
                        if p.attributes[0].value != plain {
                            fail(&stats, "zk.decrypt", format!("{pool}: plaintext differs"));
                        }
                    }
                }
            }
            4 => {
                let a = BoxSealArgs {
                    to_public_key: user_pub.clone(),
                    plaintext: plain.clone(),
                };
                let Some(s) = timed(&stats, "box.seal", false, c.box_seal(&a)).await else {
                    continue;
                };
                let r = BoxReencryptArgs {
                    key: "idos-user".into(),
                    version: None,
                    encryptor_public_key: s.encryptor_public_key.clone(),
                    content: s.content.clone(),
                    to_public_key: user_pub.clone(),
                    expect_content_hash: Some(hex::encode(sha256(&plain))),
                };
                let Some(g) = timed(&stats, "box.reencrypt", false, c.box_reencrypt(&r)).await
                else {
                    continue;
                };
                let o = BoxOpenArgs {
                    key: "idos-user".into(),
                    version: None,
                    encryptor_public_key: g.encryptor_public_key,
                    content: g.content,
                };
                if let Some(p) = timed(&stats, "box.open", false, c.box_open(&o)).await {
                    if p.plaintext != plain {
                        fail(&stats, "box.open", "plaintext differs".into());
                    }
                }
            }
            _ => {
                let a = SignArgs {
                    key: "issuer".into(),
                    data: Some(plain.clone()),
                    ..Default::default()
                };
                if let Some(r) = timed(&stats, "sign (ed25519)", false, c.sign(&a)).await {
                    let der = publics.der(&c, "issuer", r.version).await;
                    let raw: [u8; 32] = der[der.len() - 32..].try_into().unwrap();
                    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
                    let sig = ed25519_dalek::Signature::from_slice(&r.signature).unwrap();
                    if vk.verify_strict(&plain, &sig).is_err() {
                        fail(&stats, "sign (ed25519)", "signature does not verify".into());
                    }
                }
                let a = SignArgs {
                    key: "machine-sign".into(),
                    digest: Some(vec![1; 32]),
                    ..Default::default()
                };
                timed(&stats, "sign (denied)", true, c.sign(&a)).await;
            }
        }
    }
}

/// The worker process: `SOAK_ROLE` (regclient, ida) clients on `SOAK_CONNS` connections to
/// `SOAK_SOCKET` for `SOAK_SECS`; prints `SOAK_RESULT <json>`.
#[test]
#[ignore = "run by soak_64_clients_three_uids_nothing_lost under another uid"]
fn soak_worker() {
    let Ok(role) = std::env::var("SOAK_ROLE") else {
        return;
    };
    let socket = std::env::var("SOAK_SOCKET").unwrap();
    let conns: usize = std::env::var("SOAK_CONNS").unwrap().parse().unwrap();
    let end = Instant::now() + Duration::from_secs(secs());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats: Shared = Arc::default();
    rt.block_on(async {
        let publics = Publics::default();
        let mut set = tokio::task::JoinSet::new();
        let first = Client::connect(&socket).await.unwrap();
        let user_pub = if role == "ida" {
            first
                .keys_public(&PublicKeyArgs {
                    name: "idos-user".into(),
                    version: None,
                    format: Some("raw".into()),
                })
                .await
                .unwrap()
                .data
        } else {
            Vec::new()
        };
        for _ in 0..conns {
            let c = Client::connect(&socket).await.unwrap();
            let (stats, publics, user_pub, role) = (
                stats.clone(),
                publics.clone(),
                user_pub.clone(),
                role.clone(),
            );
            set.spawn(async move {
                if role == "ida" {
                    ida_loop(c, stats, end, publics, user_pub).await
                } else {
                    regclient_loop(c, stats, end, publics).await
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    println!("SOAK_RESULT {}", stats.lock().unwrap().to_json());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Objects loaded in the TPM now, from `status`.
fn transient(d: &Daemon) -> u64 {
    let s = status_json(d);
    let detail = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "tpm")
        .map(|b| b["detail"].as_str().unwrap().to_owned())
        .unwrap();
    detail
        .rsplit_once(": ")
        .and_then(|(_, t)| t.strip_suffix(" transient objects loaded"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transient count in {detail:?}"))
}

fn spawn_worker(d: &Daemon, user: &str, role: &str, conns: usize) -> std::process::Child {
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--clear-groups")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "soak_worker", "--ignored", "--nocapture"])
        .env("SOAK_ROLE", role)
        .env("SOAK_SOCKET", d.socket())
        .env("SOAK_CONNS", conns.to_string())
        .env("SOAK_SECS", secs().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn worker_result(child: std::process::Child) -> Json {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "worker failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("SOAK_RESULT "))
        .unwrap_or_else(|| panic!("no result: {text}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn soak_64_clients_three_uids_nothing_lost() {
    ensure_system_user(REG_USER);
    ensure_system_user(IDA_USER);
    let d = tpm_builder()
        .with_hsm()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .roles(&roles())
        .start();
    create_pkcs11(&d, "hsm-sign", "rsa2048-sign");
    create_pkcs11(&d, "hsm-oaep", "rsa2048-oaep");
    create_pkcs11(&d, "hsm-oaep2", "rsa2048-oaep");
    create_pkcs11(&d, "ida-k22", "rsa2048-oaep");
    create_pkcs11(&d, "issuer", "ed25519");
    create_pkcs11(&d, "k9", "aes256");
    create_pkcs11(&d, "k18", "aes256");
    create_software(&d, "idos-user", "x25519", "k9");
    cli_json(
        &d,
        &[
            "zk",
            "init",
            "pool",
            "--master",
            "k9",
            "--size",
            "1000",
            "--share-to",
            "ida-k22",
        ],
    );
    cli_json(
        &d,
        &["zk", "init", "ida-pool", "--master", "k18", "--size", "0"],
    );
    // Both MOSIP TPM keys used once, so what the TPM holds loaded for them is there from now on.
    let c = d.client();
    c.sign(&SignArgs {
        key: "machine-sign".into(),
        digest: Some(vec![0; 32]),
        ..Default::default()
    })
    .unwrap();
    let transient_start = transient(&d);
    let pid = d.pid().unwrap();
    let fds_start = fds(pid);
    let end = Instant::now() + Duration::from_secs(secs());

    let reg = spawn_worker(&d, REG_USER, "regclient", 16);
    let ida = spawn_worker(&d, IDA_USER, "ida", 40);
    // Root: 8 connections of reads while the admin changes keys.
    let admin_stats: Shared = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let c = rt.block_on(Client::connect(d.socket())).unwrap();
            let stats = admin_stats.clone();
            rt.spawn(async move {
                while Instant::now() < end {
                    timed(&stats, "keys.list", false, c.keys_list(&KeyListArgs {})).await;
                    timed(&stats, "status", false, c.status(&StatusArgs::default())).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let mut rss = Vec::new();
    let mut admin_ops = BTreeMap::<&str, u64>::new();
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let (label, args): (&str, Vec<&str>) = match n % 4 {
            0 => ("keys.rotate hsm-oaep", vec!["keys", "rotate", "hsm-oaep"]),
            1 => ("keys.rotate hsm-sign", vec!["keys", "rotate", "hsm-sign"]),
            2 => ("zk.rotate-master", vec!["zk", "rotate-master", "pool"]),
            _ => (
                "keys.cert",
                vec![
                    "keys",
                    "cert",
                    "hsm-sign",
                    "--self-signed",
                    "--subject",
                    "CN=soak",
                ],
            ),
        };
        cli_json(&d, &args);
        *admin_ops.entry(label).or_default() += 1;
        rss.push(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(1500));
    }
    for r in readers {
        rt.block_on(r).unwrap();
    }
    let reg = worker_result(reg);
    let ida = worker_result(ida);
    let admin = admin_stats.lock().unwrap().to_json();
    std::thread::sleep(Duration::from_millis(500));
    let fds_end = fds(pid);
    let status = status_json(&d);
    let details: Vec<String> = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["detail"].as_str().unwrap().to_owned())
        .collect();
    let transient_end = transient(&d);
    let report = json!({
        "seconds": secs(),
        "regclient": reg,
        "ida": ida,
        "admin_reads": admin,
        "admin_changes": admin_ops,
        "rss_summary_kib": {
            "start": rss.first(),
            "warm": rss.get(rss.len() / 4),
            "end": rss.last(),
        },
        "rss_kib": rss,
        "fds": {"start": fds_start, "end": fds_end},
        "tpm_transient": {"start": transient_start, "end": transient_end},
        "backends": details,
    });
    eprintln!(
        "soak report: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );

    for (who, r) in [("regclient", &reg), ("ida", &ida), ("admin", &admin)] {
        assert_eq!(r["errors"], json!({}), "{who}: unexpected errors");
    }
    for op in ["sign (machine-sign)", "sign (hsm-sign)", "sign.jwt"] {
        assert!(
            reg["ops"][op]["n"].as_u64().unwrap_or(0) > 0,
            "regclient never ran {op}"
        );
    }
    for op in [
        "envelope.seal",
        "envelope.open",
        "unwrap",
        "rewrap",
        "zk.encrypt",
        "zk.decrypt",
        "zk.import",
        "box.seal",
        "box.reencrypt",
        "box.open",
        "sign (ed25519)",
    ] {
        assert!(
            ida["ops"][op]["n"].as_u64().unwrap_or(0) > 0,
            "ida never ran {op}"
        );
    }
    assert!(
        reg["denied"]["envelope.open (denied)"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(ida["denied"]["sign (denied)"].as_u64().unwrap_or(0) > 0);
    // No fd leak: the daemon holds what it held before the clients came.
    assert!(fds_end <= fds_start + 4, "fds {fds_start} → {fds_end}");
    // No TPM object left loaded beyond what was loaded before the clients came.
    assert_eq!(
        transient_end, transient_start,
        "TPM transient objects: {details:?}"
    );
    // Memory flat: the last sample at most 1.2 × the one after warm-up (a quarter of the run).
    // Before the heap was trimmed (daemon/src/memory.rs) a 10-minute run
    // went 48.5 → 60.8 MiB (1.25 ×).
    if rss.len() >= 4 {
        let warm = rss[rss.len() / 4];
        let last = *rss.last().unwrap();
        assert!(
            last * 5 <= warm * 6,
            "RSS grew from {warm} KiB after warm-up to {last} KiB: {rss:?}"
        );
    }
}
