//! `custody-peers`: custodyd against Parsec on the same SoftHSM token (run by
//! `make bench-peers`).
//!
//! One run provisions one SoftHSM token and starts custodyd (the release binary next to this
//! executable) and two Parsec services with the PKCS#11 provider on that token: one with
//! Parsec's default config, one with `idle_listener_sleep_duration = 1`. Each side gets its own
//! RSA-2048 key on the token (the direct path a third). Then, for 1, 2 and 4 callers, rounds of
//! direct → custodyd → Parsec (default) → Parsec (tuned), each measuring RSA-2048 PKCS#1 v1.5
//! signatures of a 32-byte SHA-256 digest for `PEERS_SECS`; the medians over `PEERS_ROUNDS`
//! rounds make the table, with a `ping` row per daemon. Every path's signature is verified
//! against its key's public key first. The table is printed, written into `BENCHMARKS.md`
//! between `<!-- peers:begin -->` and `<!-- peers:end -->` (or `PEERS_OUT`) and, every figure, to
//! `target/bench/peers.json` (or `PEERS_JSON`).
//!
//! Environment: `PEERS_SECS` (one measurement, default 1.5), `PEERS_ROUNDS` (default 5),
//! `PARSEC_BIN` (default `target/peers/parsec/bin/parsec`), `PARSEC_VERSION` (for the report;
//! default: read from the cargo install record beside the binary).
//!
//! A benchmark, not a test: nothing here asserts on timings.

mod parsec;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custody_bench::measure::{cpu_secs, daemon_rate, median, percentile, thread_run, DaemonRun};
use custody_daemon::backend::{Backend, KeyKind, KeyRef, NewKey, SignScheme, Template};
use custody_testkit::proto::ops::{
    names, KeyCreateArgs, PingArgs, PublicKeyArgs, PublicKeyResult, SignArgs, SignResult,
};
use custody_testkit::{workspace_root, Client, DaemonBuilder, Hsm, SOFTHSM_MODULE};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::parsec::{rsa_pkcs1v15_sha256, Parsec};

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// One measurement.
    pub dur: Duration,
    /// Rounds (each measures every path once); medians are reported.
    pub rounds: usize,
    /// Caller counts.
    pub callers: Vec<usize>,
    /// The Parsec binary.
    pub parsec_bin: PathBuf,
    /// Parsec's version, for the report.
    pub parsec_version: String,
    /// Markdown file whose peer section is replaced.
    pub out_md: PathBuf,
    /// JSON output.
    pub out_json: PathBuf,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `parsec-service X.Y.Z` from `cargo install`'s record (`.crates.toml` in the install root).
fn installed_version(bin: &std::path::Path) -> Option<String> {
    let root = bin.parent()?.parent()?;
    let text = std::fs::read_to_string(root.join(".crates.toml")).ok()?;
    let at = text.find("\"parsec-service ")? + 1;
    let rest = &text[at..];
    let end = rest.find(" (")?;
    Some(rest[..end].to_owned())
}

impl Settings {
    fn from_env() -> Settings {
        let root = workspace_root();
        let parsec_bin = std::env::var_os("PARSEC_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/peers/parsec/bin/parsec"));
        Settings {
            dur: Duration::from_secs_f64(
                env_num::<f64>("PEERS_SECS")
                    .filter(|s| *s > 0.0)
                    .unwrap_or(1.5),
            ),
            rounds: env_num("PEERS_ROUNDS").filter(|r| *r > 0).unwrap_or(5),
            callers: vec![1, 2, 4],
            parsec_version: std::env::var("PARSEC_VERSION")
                .ok()
                .or_else(|| installed_version(&parsec_bin))
                .unwrap_or_else(|| "parsec-service (version unknown)".into()),
            parsec_bin,
            out_md: std::env::var_os("PEERS_OUT")
                .map(Into::into)
                .unwrap_or_else(|| root.join("BENCHMARKS.md")),
            out_json: std::env::var_os("PEERS_JSON")
                .map(Into::into)
                .unwrap_or_else(|| root.join("target/bench/peers.json")),
        }
    }
}

/// Progress on stderr.
fn log(msg: &str) {
    eprintln!("custody-peers: {msg}");
}

/// One path of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Path {
    /// `C_Sign` through the daemon's own PKCS#11 backend, in this process.
    Direct,
    /// custodyd `sign` over its socket.
    Custodyd,
    /// Parsec `PsaSignHash`, default config.
    ParsecDefault,
    /// Parsec `PsaSignHash`, `idle_listener_sleep_duration = 1`.
    ParsecTuned,
}

impl Path {
    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct (in-process `C_Sign`)",
            Path::Custodyd => "custodyd",
            Path::ParsecDefault => "Parsec, default config",
            Path::ParsecTuned => "Parsec, listener sleep 1 ms",
        }
    }
}

/// One row: a path, an operation and a caller count, medians over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `sign` or `ping`.
    pub op: &'static str,
    /// The path.
    pub path: Path,
    /// Callers: threads (direct, Parsec) or connections (custodyd), one request each at a time.
    pub callers: usize,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Rate of this path / direct rate at the same callers (sign only).
    pub ratio: Option<f64>,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// CPU (user + system) per operation of the process doing the work: the daemon, or this
    /// process for the direct path, µs.
    pub cpu_us_per_op: f64,
    /// That minus the direct path's CPU per operation (sign only): what the daemon costs beyond
    /// the token.
    pub beyond_direct_cpu_us: Option<f64>,
    /// Every round's rate, for the record.
    pub round_rates: Vec<f64>,
}

/// One measurement.
struct Sample {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
}

fn sample(mut run: DaemonRun, cpu_s: f64) -> Sample {
    Sample {
        rate: run.rate,
        p50: percentile(&mut run.lat_us, 50.0),
        p99: percentile(&mut run.lat_us, 99.0),
        cpu_us: cpu_s * 1e6 / run.ops.max(1) as f64,
    }
}

fn row(op: &'static str, path: Path, callers: usize, s: Vec<Sample>) -> Row {
    let r = Row {
        op,
        path,
        callers,
        ops_per_s: median(s.iter().map(|x| x.rate).collect()),
        ratio: None,
        p50_us: median(s.iter().map(|x| x.p50).collect()),
        p99_us: median(s.iter().map(|x| x.p99).collect()),
        cpu_us_per_op: median(s.iter().map(|x| x.cpu_us).collect()),
        beyond_direct_cpu_us: None,
        round_rates: s.iter().map(|x| (x.rate * 10.0).round() / 10.0).collect(),
    };
    log(&format!(
        "{op} {} ×{callers}: {:.0}/s p50 {:.0} µs p99 {:.0} µs cpu {:.0} µs/op (rounds {:?})",
        path.label(),
        r.ops_per_s,
        r.p50_us,
        r.p99_us,
        r.cpu_us_per_op,
        r.round_rates
    ));
    r
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The rows: sign at each caller count (direct, custodyd, Parsec ×2), then ping.
    pub rows: Vec<Row>,
    /// When.
    pub date: String,
    /// `nproc`.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// 1-minute load average before and after the run.
    pub load_before: f64,
    /// …
    pub load_after: f64,
    /// The two Parsec configs, as generated (PIN elided).
    pub parsec_configs: Vec<(String, String)>,
    /// Whole run, s.
    pub elapsed_s: f64,
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The slot of `hsm`'s token. Run before any other PKCS#11 use in this process: the library is
/// finalized again afterwards.
fn slot_of(hsm: &Hsm) -> u64 {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let p = Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            p.get_token_info(*s)
                .is_ok_and(|t| t.label().trim() == hsm.label)
        })
        .unwrap_or_else(|| panic!("no token labelled {}", hsm.label));
    let _ = p.finalize();
    slot.id()
}

fn verify(what: &str, key: &RsaPublicKey, digest: &[u8; 32], sig: &[u8]) {
    key.verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig)
        .unwrap_or_else(|e| panic!("{what}: the signature does not verify: {e}"));
    log(&format!("{what}: signature verified"));
}

fn run(s: &Settings) -> Results {
    let t0 = std::time::Instant::now();
    let load_before = load1();
    assert!(
        s.parsec_bin.is_file(),
        "{} is missing: `make bench-peers` builds it",
        s.parsec_bin.display()
    );
    log("starting a SoftHSM token and custodyd");
    let daemon = DaemonBuilder::new().with_hsm().start();
    let hsm = daemon.hsm().expect("hsm").clone();
    let slot = slot_of(&hsm);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let x_pid = daemon.pid().expect("daemon pid");
    let max_callers = s.callers.iter().copied().max().unwrap_or(1);
    let clients: Vec<Arc<Client>> = (0..max_callers)
        .map(|_| Arc::new(rt.block_on(daemon.async_client())))
        .collect();

    log(&format!(
        "starting Parsec ({}) twice on slot {slot}",
        s.parsec_version
    ));
    let mut parsecs = [
        Parsec::start(
            &s.parsec_bin,
            &daemon.dir().join("parsec-default"),
            &hsm,
            slot,
            None,
            Path::ParsecDefault.label(),
        ),
        Parsec::start(
            &s.parsec_bin,
            &daemon.dir().join("parsec-tuned"),
            &hsm,
            slot,
            Some(1),
            Path::ParsecTuned.label(),
        ),
    ];

    // The keys: one per path, all RSA-2048 on the one token.
    let digest: [u8; 32] = Sha256::digest(b"custody-peers").into();
    let p11 = custody_bench::direct::hsm_backend(&hsm);
    let d_key = p11
        .create(&NewKey {
            name: "peers-direct",
            version: 1,
            kind: KeyKind::Rsa2048Sign,
            template: Template::Default,
            master: None,
        })
        .expect("direct key");
    let d_pub = RsaPublicKey::from_public_key_der(&d_key.public.as_ref().expect("public").spki_der)
        .expect("direct SPKI");
    let d_ref = KeyRef::object(&d_key.backend_ref);
    let sign_direct = || {
        p11.sign(&d_ref, &digest, SignScheme::Pkcs1v15)
            .expect("direct sign")
    };
    verify("direct", &d_pub, &digest, &sign_direct());

    let c0 = &clients[0];
    let _: ciborium::Value = rt
        .block_on(c0.call_untyped(
            names::KEYS_CREATE,
            &KeyCreateArgs {
                name: "peers-sign".into(),
                kind: "rsa2048-sign".into(),
                backend: "pkcs11".into(),
                ..Default::default()
            },
        ))
        .expect("custodyd keys.create");
    let x_pub: PublicKeyResult = rt
        .block_on(c0.call_untyped(
            names::KEYS_PUBLIC,
            &PublicKeyArgs {
                name: "peers-sign".into(),
                version: None,
                format: Some("der".into()),
            },
        ))
        .expect("custodyd keys.public");
    let x_pub = RsaPublicKey::from_public_key_der(&x_pub.data).expect("custodyd SPKI");
    let sign_args = Arc::new(SignArgs {
        key: "peers-sign".into(),
        digest: Some(digest.to_vec()),
        ..Default::default()
    });
    let x_sig: SignResult = rt
        .block_on(c0.call_untyped(names::SIGN, &*sign_args))
        .expect("custodyd sign");
    verify("custodyd", &x_pub, &digest, &x_sig.signature);

    let mut p_clients: Vec<Vec<parsec_client::BasicClient>> = Vec::new();
    for p in &parsecs {
        p.generate_sign_key("peers-sign");
        let cs: Vec<_> = (0..max_callers).map(|_| p.client()).collect();
        let der = cs[0]
            .psa_export_public_key("peers-sign")
            .expect("Parsec psa_export_public_key");
        let key = RsaPublicKey::from_pkcs1_der(&der).expect("Parsec RSAPublicKey");
        let sig = cs[0]
            .psa_sign_hash("peers-sign", &digest, rsa_pkcs1v15_sha256())
            .expect("Parsec psa_sign_hash");
        verify(&p.label, &key, &digest, &sig);
        p_clients.push(cs);
    }
    for p in &mut parsecs {
        p.pause();
    }

    let parsec_sign = |cs: &[parsec_client::BasicClient], i: usize| {
        let sig = cs[i]
            .psa_sign_hash("peers-sign", &digest, rsa_pkcs1v15_sha256())
            .expect("Parsec psa_sign_hash");
        assert_eq!(sig.len(), 256, "Parsec signature length");
    };
    // One measurement of `path` with `n` callers for `dur`.
    let mut measure = |path: Path, op: &'static str, n: usize, dur: Duration| -> Sample {
        match path {
            Path::Direct => {
                let c = cpu_secs(None);
                let r = thread_run(n, dur, &|_| {
                    assert_eq!(sign_direct().len(), 256, "direct signature length");
                });
                sample(r, cpu_secs(None) - c)
            }
            Path::Custodyd => {
                let c = cpu_secs(Some(x_pid));
                let r = if op == "ping" {
                    let args = Arc::new(PingArgs {
                        data: b"ping".to_vec(),
                    });
                    rt.block_on(daemon_rate(&clients[..n], 1, dur, names::PING, &args))
                } else {
                    rt.block_on(daemon_rate(&clients[..n], 1, dur, names::SIGN, &sign_args))
                };
                sample(r, cpu_secs(Some(x_pid)) - c)
            }
            Path::ParsecDefault | Path::ParsecTuned => {
                let k = usize::from(path == Path::ParsecTuned);
                let p = &mut parsecs[k];
                p.resume();
                let pid = p.pid();
                let cs = &p_clients[k];
                let c = cpu_secs(Some(pid));
                let r = if op == "ping" {
                    thread_run(n, dur, &|i| {
                        cs[i].ping().expect("Parsec ping");
                    })
                } else {
                    thread_run(n, dur, &|i| parsec_sign(cs, i))
                };
                let sm = sample(r, cpu_secs(Some(pid)) - c);
                parsecs[k].pause();
                sm
            }
        }
    };

    let paths = [
        Path::Direct,
        Path::Custodyd,
        Path::ParsecDefault,
        Path::ParsecTuned,
    ];
    let mut rows = Vec::new();
    for &n in &s.callers {
        log(&format!("sign, {n} caller(s), {} rounds", s.rounds));
        for &p in &paths {
            measure(p, "sign", n, Duration::from_millis(200));
        }
        let mut samples: Vec<Vec<Sample>> = paths.iter().map(|_| Vec::new()).collect();
        for _ in 0..s.rounds {
            for (i, &p) in paths.iter().enumerate() {
                samples[i].push(measure(p, "sign", n, s.dur));
            }
        }
        let mut these: Vec<Row> = paths
            .iter()
            .zip(samples)
            .map(|(&p, v)| row("sign", p, n, v))
            .collect();
        let direct = these[0].ops_per_s;
        let direct_cpu = these[0].cpu_us_per_op;
        for r in &mut these {
            r.ratio = Some(r.ops_per_s / direct.max(f64::MIN_POSITIVE));
            if r.path != Path::Direct {
                r.beyond_direct_cpu_us = Some(r.cpu_us_per_op - direct_cpu);
            }
        }
        rows.extend(these);
    }
    log("ping, 1 caller");
    let daemons = &paths[1..];
    for &p in daemons {
        measure(p, "ping", 1, Duration::from_millis(200));
    }
    let mut samples: Vec<Vec<Sample>> = daemons.iter().map(|_| Vec::new()).collect();
    for _ in 0..s.rounds {
        for (i, &p) in daemons.iter().enumerate() {
            samples[i].push(measure(p, "ping", 1, s.dur));
        }
    }
    rows.extend(
        daemons
            .iter()
            .zip(samples)
            .map(|(&p, v)| row("ping", p, 1, v)),
    );

    let parsec_configs = parsecs
        .iter()
        .map(|p| (p.label.clone(), p.config.clone()))
        .collect();
    drop(parsecs);
    drop(daemon);
    Results {
        rows,
        date: today(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        load_before,
        load_after: load1(),
        parsec_configs,
        elapsed_s: t0.elapsed().as_secs_f64(),
    }
}

fn main() {
    let s = Settings::from_env();
    let r = run(&s);
    let section = report::section(&r, &s);
    print!("{section}");
    let old = std::fs::read_to_string(&s.out_md).unwrap_or_default();
    let text = custody_bench::sections::replace(
        &old,
        custody_bench::sections::PEERS_BEGIN,
        custody_bench::sections::PEERS_END,
        &section,
    );
    std::fs::write(&s.out_md, text).expect("write BENCHMARKS.md");
    if let Some(dir) = s.out_json.parent() {
        std::fs::create_dir_all(dir).expect("report directory");
    }
    std::fs::write(&s.out_json, report::json(&r, &s)).expect("write peers.json");
    log(&format!(
        "wrote the peer section of {} and {}",
        s.out_md.display(),
        s.out_json.display()
    ));
}
