//! The phases of a run: rows (daemon vs direct), flood, memory, key pool, stage timing,
//! callgrind.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_daemon::backend::pkcs11::Pkcs11Backend;
use custody_daemon::backend::software::{aad, SoftwareBackend};
use custody_daemon::backend::tpm::{TpmBackend, TpmConfig};
use custody_daemon::backend::{
    Backend, KeyKind, KeyRef, Master, NewKey, Sealed, SignScheme, Template,
};
use custody_daemon::crypto::idos;
use custody_daemon::format::envelope;
use custody_testkit::proto::ops::{
    names, BoxOpenArgs, BoxReencryptArgs, KeyCreateArgs, OpenArgs, PingArgs, PublicKeyArgs,
    PublicKeyResult, SignArgs, UnwrapArgs,
};
use custody_testkit::{Client, Daemon, DaemonBuilder, Flood, FloodCounts};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::measure::{
    call_us, cpu_secs, ctx_switches, daemon_rate, direct_rate, median, percentile, rss_mib, threads,
};
use crate::{log, Settings};

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Operation, for humans.
    pub op: &'static str,
    /// Callers: threads directly, connections through the daemon.
    pub callers: usize,
    /// Requests in flight on each connection.
    pub depth: usize,
    /// Direct rate, ops/s.
    pub direct: Option<f64>,
    /// Daemon rate, ops/s.
    pub daemon: f64,
    /// Daemon latency, median of the repetitions' p50, µs.
    pub p50_us: f64,
    /// Daemon latency, median of the repetitions' p99, µs.
    pub p99_us: f64,
    /// Daemon process CPU per operation, µs.
    pub daemon_cpu_us: f64,
    /// This process's CPU per direct operation, µs (the token's own work).
    pub direct_cpu_us: Option<f64>,
    /// The caller's CPU per daemon operation (this process: encode, socket, decode), µs.
    pub caller_cpu_us: f64,
    /// The daemon's context switches per operation (all its threads).
    pub switches_per_op: f64,
    /// One caller only: the direct call's median duration back to back, and after the calling
    /// thread slept [`IDLE_GAP`] (µs).
    pub direct_call_us: Option<(f64, f64)>,
}

/// The sleep before each call of the idle-gap measurement: about a `ping` round trip, the time a
/// daemon's thread waits between the requests of one caller.
pub const IDLE_GAP: Duration = Duration::from_micros(50);

impl Row {
    /// Daemon rate / direct rate.
    pub fn ratio(&self) -> Option<f64> {
        self.direct.map(|d| self.daemon / d)
    }
    /// Daemon CPU per operation outside the token's work: daemon CPU − direct CPU.
    pub fn outside_token_us(&self) -> Option<f64> {
        self.direct_cpu_us.map(|d| self.daemon_cpu_us - d)
    }
    /// The highest daemon/direct ratio the CPUs allow when both paths keep every CPU busy:
    /// direct CPU per operation ÷ (daemon CPU + caller CPU per operation), the caller and the
    /// daemon sharing the same CPUs the direct threads have to themselves.
    /// Only for rows that can keep every CPU busy (callers × in flight ≥ CPUs), and not for the
    /// TPM, whose work is done by another process (swtpm).
    pub fn cpu_ceiling(&self) -> Option<f64> {
        let total = self.daemon_cpu_us + self.caller_cpu_us;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        self.direct_cpu_us
            .filter(|_| total > 0.0)
            .filter(|_| self.callers * self.depth >= cpus && !self.op.starts_with("TPM"))
            .map(|d| d / total)
    }
}

/// The flood phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fairness {
    /// Flood connections (one uid), large `envelope.open`.
    pub flood_conns: usize,
    /// Envelope plaintext size, bytes.
    pub flood_bytes: usize,
    /// The other uid's `sign` latencies without the flood: p50, p99 (µs).
    pub unloaded_p50_us: f64,
    /// …
    pub unloaded_p99_us: f64,
    /// The same under the flood.
    pub loaded_p50_us: f64,
    /// …
    pub loaded_p99_us: f64,
    /// Signatures per probe.
    pub samples: usize,
    /// The flood's answers.
    pub flood_ok: u64,
    /// Flood requests answered busy or timed out.
    pub flood_refused: u64,
    /// CPUs the daemon kept busy while the other uid's signatures were measured under the flood.
    pub loaded_daemon_cpus: f64,
    /// CPUs this process (the flood's clients and the prober) kept busy meanwhile.
    pub loaded_client_cpus: f64,
}

/// Instruction counts per request (callgrind).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Callgrind {
    /// Requests in the difference.
    pub requests: u64,
    /// Instructions per `ping`.
    pub ping_ir: f64,
    /// Instructions per HSM `sign`, all objects.
    pub sign_ir: f64,
    /// Per HSM `sign`, by object (self cost).
    pub sign_by_object: BTreeMap<String, f64>,
    /// Per `ping`, by object.
    pub ping_by_object: BTreeMap<String, f64>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// The cases.
    pub rows: Vec<Row>,
    /// RSS after start, MiB.
    pub rss_idle_mib: f64,
    /// RSS after the warm-up (ping and one-caller sign), MiB.
    pub rss_warm_mib: f64,
    /// RSS after every daemon-vs-direct row (ping, HSM, Ed25519, boxes), MiB.
    pub rss_full_mib: f64,
    /// The daemon's threads after the warm-up and after those rows.
    pub threads_warm: u64,
    /// …
    pub threads_full: u64,
    /// RSS of the restarted daemon (after the stage timing and callgrind runs), MiB.
    pub rss_restart_mib: f64,
    /// RSS of that daemon after the zk rows, the TPM rows and the flood, MiB.
    pub rss_flood_mib: f64,
    /// Keys in the start-up pool (a MOSIP zero-knowledge pool).
    pub pool_keys: usize,
    /// `zk.init` of that pool, s.
    pub zk_init_s: f64,
    /// The pool's share segments, made in the background after `zk.init`, s.
    pub zk_shares_s: f64,
    /// Start to ready with that pool, s.
    pub pool_ready_s: f64,
    /// RSS right after that start, MiB.
    pub pool_rss_mib: f64,
    /// The flood phase.
    pub fairness: Fairness,
    /// The daemon's stage timing for one-caller HSM sign (mean µs by stage).
    pub stages: BTreeMap<String, f64>,
    /// Mean direct HSM sign time, µs (one thread).
    pub direct_sign_us: f64,
    /// callgrind, when run.
    pub callgrind: Option<Callgrind>,
    /// Direct one-thread HSM sign rate, against the reference machine's.
    pub noisy: bool,
    /// Whole run, s.
    pub elapsed_s: f64,
    /// When.
    pub date: String,
}

/// The registration-client-like second uid of the flood phase.
const PROBE_USER: (&str, &str) = ("nobody", "nogroup");

const ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "probe"
unix_users = ["nobody"]
ops = ["sign"]
keys = ["hsm-sign"]
"#;

struct Bench {
    rt: tokio::runtime::Runtime,
    daemon: Daemon,
    s: Settings,
}

impl Bench {
    fn pid(&self) -> u32 {
        self.daemon.pid().expect("daemon pid")
    }

    fn clients(&self, n: usize) -> Vec<Arc<Client>> {
        (0..n)
            .map(|_| Arc::new(self.rt.block_on(self.daemon.async_client())))
            .collect()
    }

    fn call<A: Serialize, R: serde::de::DeserializeOwned>(&self, op: &str, args: &A) -> R {
        let c = self.rt.block_on(self.daemon.async_client());
        self.rt
            .block_on(c.call_untyped(op, args))
            .unwrap_or_else(|e| panic!("{op}: {e}\n{}", self.daemon.stderr()))
    }

    fn create_key(&self, name: &str, kind: &str, backend: &str, template: Option<&str>) {
        let _: ciborium::Value = self.call(
            names::KEYS_CREATE,
            &KeyCreateArgs {
                name: name.into(),
                kind: kind.into(),
                backend: backend.into(),
                template: template.map(str::to_owned),
                ..Default::default()
            },
        );
    }

    fn public(&self, name: &str, format: &str) -> Vec<u8> {
        let r: PublicKeyResult = self.call(
            names::KEYS_PUBLIC,
            &PublicKeyArgs {
                name: name.into(),
                version: None,
                format: Some(format.into()),
            },
        );
        r.data
    }

    /// Warm-up, then `reps` × (direct, daemon) interleaved; medians of rates, percentiles and
    /// CPU per operation.
    fn row<A, F>(
        &self,
        op: &'static str,
        callers: usize,
        depth: usize,
        wire_op: &'static str,
        args: A,
        direct: Option<F>,
    ) -> Option<Row>
    where
        A: Serialize + Send + Sync + 'static,
        F: Fn() + Sync,
    {
        if !self.s.only.is_empty() && !self.s.only.iter().any(|o| op.contains(o.as_str())) {
            return None;
        }
        let args = Arc::new(args);
        let clients = self.clients(callers);
        if let Some(f) = &direct {
            for _ in 0..5 {
                f();
            }
        }
        self.rt.block_on(daemon_rate(
            &clients,
            depth,
            Duration::from_millis(100),
            wire_op,
            &args,
        ));
        let (mut d, mut dcpu, mut x, mut xcpu, mut p50, mut p99) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut ccpu, mut sw) = (vec![], vec![]);
        for _ in 0..self.s.reps {
            if let Some(f) = &direct {
                let c0 = cpu_secs(None);
                let (rate, n) = direct_rate(callers, self.s.dur, f);
                dcpu.push((cpu_secs(None) - c0) * 1e6 / n.max(1) as f64);
                d.push(rate);
            }
            let (c0, me0, s0) = (
                cpu_secs(Some(self.pid())),
                cpu_secs(None),
                ctx_switches(self.pid()),
            );
            let mut run = self
                .rt
                .block_on(daemon_rate(&clients, depth, self.s.dur, wire_op, &args));
            let ops = run.ops.max(1) as f64;
            xcpu.push((cpu_secs(Some(self.pid())) - c0) * 1e6 / ops);
            ccpu.push((cpu_secs(None) - me0) * 1e6 / ops);
            sw.push(ctx_switches(self.pid()).saturating_sub(s0) as f64 / ops);
            x.push(run.rate);
            p50.push(percentile(&mut run.lat_us, 50.0));
            p99.push(percentile(&mut run.lat_us, 99.0));
        }
        // One caller: does the same call take longer on a thread that sleeps between calls?
        let direct_call_us = match (&direct, callers, depth) {
            (Some(f), 1, 1) => {
                let one = median(d.clone()).max(1.0);
                let n = ((self.s.dur.as_secs_f64() * one) as usize).clamp(20, 5000);
                Some((call_us(f, None, n), call_us(f, Some(IDLE_GAP), n)))
            }
            _ => None,
        };
        let row = Row {
            op,
            callers,
            depth,
            direct: direct.as_ref().map(|_| median(d)),
            daemon: median(x),
            p50_us: median(p50),
            p99_us: median(p99),
            daemon_cpu_us: median(xcpu),
            direct_cpu_us: direct.as_ref().map(|_| median(dcpu)),
            caller_cpu_us: median(ccpu),
            switches_per_op: median(sw),
            direct_call_us,
        };
        log(&format!(
            "{op} ×{callers}{}: direct {:?} daemon {:.0}/s ratio {:?} p50 {:.0} µs p99 {:.0} µs \
             cpu {:.0}/{:?} µs/op caller {:.0} µs/op switches {:.1}/op",
            if depth > 1 {
                format!(" ({depth} in flight)")
            } else {
                String::new()
            },
            row.direct.map(|v| v.round()),
            row.daemon,
            row.ratio().map(|r| (r * 100.0).round() / 100.0),
            row.p50_us,
            row.p99_us,
            row.daemon_cpu_us,
            row.direct_cpu_us.map(|v| v.round()),
            row.caller_cpu_us,
            row.switches_per_op,
        ));
        if let Some((busy, idle)) = row.direct_call_us {
            log(&format!(
                "{op}: direct call {busy:.0} µs back to back, {idle:.0} µs after a sleep"
            ));
        }
        Some(row)
    }
}

/// No direct counterpart.
const NO_DIRECT: Option<fn()> = None;

fn oaep_wrap(spki: &[u8], secret: &[u8]) -> Vec<u8> {
    let pk = RsaPublicKey::from_public_key_der(spki).expect("SPKI");
    pk.encrypt(&mut rsa::rand_core::OsRng, Oaep::new::<Sha256>(), secret)
        .expect("OAEP encrypt")
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs every phase.
pub fn run(s: &Settings) -> Results {
    let t0 = Instant::now();
    let mut res = Results {
        date: today(),
        ..Default::default()
    };
    log("starting swtpm, SoftHSM token and custodyd");
    let mut builder = DaemonBuilder::new()
        .with_tpm()
        .with_hsm()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\""])
        .roles(ROLES);
    // For A/B runs while tuning, e.g. "[scheduler]\nworkers = 2".
    if let Ok(extra) = std::env::var("BENCH_CONFIG_EXTRA") {
        builder = builder.extra(&extra.replace("\\n", "\n"));
    }
    let daemon = builder.start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut b = Bench {
        rt,
        daemon,
        s: s.clone(),
    };
    std::thread::sleep(Duration::from_millis(200));
    res.rss_idle_mib = rss_mib(b.pid());
    let hsm = b.daemon.hsm().expect("hsm").clone();
    let tcti = b
        .daemon
        .config_text()
        .lines()
        .find_map(|l| l.strip_prefix("tcti = "))
        .map(|s| s.trim_matches('"').to_owned())
        .expect("tcti in config");

    // The direct PKCS#11 backend uses the daemon's token.
    let p11 = Arc::new(custody_bench::direct::hsm_backend(&hsm));
    let new = |name, kind| NewKey {
        name,
        version: 1,
        kind,
        template: Template::Default,
        master: None,
    };
    let d_sign = p11
        .create(&new("bench-direct-sign", KeyKind::Rsa2048Sign))
        .expect("direct sign key");
    let d_oaep = p11
        .create(&new("bench-direct-oaep", KeyKind::Rsa2048Oaep))
        .expect("direct oaep key");
    let d_oaep_spki = d_oaep.public.as_ref().expect("public").spki_der.clone();

    b.create_key("hsm-sign", "rsa2048-sign", "pkcs11", None);
    b.create_key("hsm-oaep", "rsa2048-oaep", "pkcs11", None);
    b.create_key("tpm-sign", "rsa2048-sign", "tpm", Some("mosip"));
    let x_oaep_spki = b.public("hsm-oaep", "der");

    let digest: [u8; 32] = Sha256::digest(b"custody-bench").into();
    let sign_args = || SignArgs {
        key: "hsm-sign".into(),
        digest: Some(digest.to_vec()),
        ..Default::default()
    };
    let rows = &mut res.rows;

    // Ping (no backend): one request in flight, then pipelined on one connection, then 8.
    log("ping");
    let ping = || PingArgs {
        data: b"ping".to_vec(),
    };
    rows.extend(b.row("ping", 1, 1, names::PING, ping(), NO_DIRECT));
    for depth in [16, 64] {
        rows.extend(b.row("ping", 1, depth, names::PING, ping(), NO_DIRECT));
    }
    rows.extend(b.row("ping", 8, 4, names::PING, ping(), NO_DIRECT));

    // HSM RSA-2048 sign, PKCS#1 v1.5.
    let sign_direct = || {
        p11.sign(
            &KeyRef::object(&d_sign.backend_ref),
            &digest,
            SignScheme::Pkcs1v15,
        )
        .expect("direct HSM sign");
    };
    for &n in &s.callers {
        log(&format!("HSM sign, {n} caller(s)"));
        rows.extend(b.row(
            "HSM RSA-2048 sign",
            n,
            1,
            names::SIGN,
            sign_args(),
            Some(sign_direct),
        ));
        if n == 1 {
            res.rss_warm_mib = rss_mib(b.pid());
            res.threads_warm = threads(b.pid());
            res.direct_sign_us = rows.last().and_then(|r| r.direct).map_or(0.0, |d| 1e6 / d);
        }
    }

    if s.quick {
        drop(p11);
        res.stages = stage_timing(&mut b);
        if std::env::var("BENCH_CALLGRIND").is_ok_and(|v| v == "1") {
            res.callgrind = callgrind(&mut b);
        }
        b.daemon.spawn();
        b.daemon.wait_ready(Duration::from_secs(120));
        res.fairness = fairness(&b, &x_oaep_spki);
        b.daemon.terminate();
        res.elapsed_s = t0.elapsed().as_secs_f64();
        return res;
    }

    // HSM RSA-OAEP-SHA256 unwrap of a 32-byte key.
    let secret = [7u8; 32];
    let d_wrapped = oaep_wrap(&d_oaep_spki, &secret);
    let x_wrapped = oaep_wrap(&x_oaep_spki, &secret);
    let unwrap_direct = || {
        let k = p11
            .decrypt_oaep(&KeyRef::object(&d_oaep.backend_ref), &d_wrapped, &[])
            .expect("direct unwrap");
        assert_eq!(k.len(), 32);
    };
    for &n in &s.callers {
        log(&format!("HSM unwrap, {n} caller(s)"));
        rows.extend(b.row(
            "HSM RSA-OAEP-SHA256 unwrap",
            n,
            1,
            names::UNWRAP,
            UnwrapArgs {
                key: "hsm-oaep".into(),
                wrapped: x_wrapped.clone(),
                ..Default::default()
            },
            Some(unwrap_direct),
        ));
    }

    // Envelope open (MOSIP VER_R2, 1 KiB).
    let plaintext = vec![0x5au8; 1024];
    let d_env = envelope::seal_to_public_key(&plaintext, &d_oaep_spki).expect("seal");
    let x_env = envelope::seal_to_public_key(&plaintext, &x_oaep_spki).expect("seal");
    let env_direct = || {
        let parsed = envelope::parse(&d_env).expect("parse");
        let key = p11
            .decrypt_oaep(
                &KeyRef::object(&d_oaep.backend_ref),
                parsed.wrapped_key,
                &[],
            )
            .expect("direct envelope key");
        let pt = envelope::open_with(&parsed, &key).expect("open");
        assert_eq!(pt.len(), 1024);
    };
    for &n in &s.callers {
        log(&format!("envelope open, {n} caller(s)"));
        rows.extend(b.row(
            "Envelope open (1 KiB)",
            n,
            1,
            names::ENVELOPE_OPEN,
            OpenArgs {
                key: "hsm-oaep".into(),
                envelope: x_env.clone(),
            },
            Some(env_direct),
        ));
    }

    // HSM Ed25519 sign.
    let d_ed = p11
        .create(&new("bench-direct-ed25519", KeyKind::Ed25519))
        .expect("direct ed25519 key");
    b.create_key("hsm-ed25519", "ed25519", "pkcs11", None);
    let notes = vec![0x42u8; 256];
    let ed_direct = || {
        let sig = p11
            .sign_ed25519(&KeyRef::object(&d_ed.backend_ref), &notes)
            .expect("direct Ed25519 sign");
        assert_eq!(sig.len(), 64);
    };
    for &n in s.callers.iter().filter(|n| **n <= 4) {
        log(&format!("HSM Ed25519 sign, {n} caller(s)"));
        rows.extend(b.row(
            "HSM Ed25519 sign (256 B)",
            n,
            1,
            names::SIGN,
            SignArgs {
                key: "hsm-ed25519".into(),
                data: Some(notes.clone()),
                ..Default::default()
            },
            Some(ed_direct),
        ));
    }

    // idOS boxes: x25519 software key wrapped under an HSM master (every operation unwraps the
    // secret on the token); one caller, then pipelined.
    log("idOS boxes");
    let d_master = p11
        .create(&new("bench-direct-master", KeyKind::Aes256))
        .expect("direct master");
    let master = Master {
        backend: p11.clone(),
        object: d_master.backend_ref.clone(),
    };
    let sw = SoftwareBackend;
    let a = aad("bench-direct-x25519", 1, KeyKind::X25519);
    let d_x = sw
        .create(&NewKey {
            name: "bench-direct-x25519",
            version: 1,
            kind: KeyKind::X25519,
            template: Template::Default,
            master: Some((&master, &a)),
        })
        .expect("direct x25519 key");
    let d_pub: [u8; 32] = d_x.public.as_ref().expect("public").spki_der[12..]
        .try_into()
        .expect("32 bytes");
    let sealed = Sealed {
        blob: d_x.sealed.clone().expect("sealed"),
        aad: a.clone(),
        master: master.clone(),
    };
    let d_ref = KeyRef {
        object: "",
        sealed: Some(&sealed),
    };
    b.create_key("idos-master", "aes256", "pkcs11", None);
    let _: ciborium::Value = b.call(
        names::KEYS_CREATE,
        &KeyCreateArgs {
            name: "idos-user".into(),
            kind: "x25519".into(),
            backend: "software".into(),
            master: Some("idos-master".into()),
            ..Default::default()
        },
    );
    let x_pub: [u8; 32] = b.public("idos-user", "raw").try_into().expect("32 bytes");
    let to = |pk: [u8; 32]| idos::Recipient::new(pk).expect("a full-order key");
    let d_box = idos::seal(&to(d_pub), &plaintext).expect("seal");
    let x_box = idos::seal(&to(x_pub), &plaintext).expect("seal");
    let grantee = idos::seal(&to(d_pub), b"")
        .expect("a key")
        .encryptor_public_key;
    let d_open = || {
        let c = idos::parse_content(&d_box.content).expect("content");
        let pt = sw
            .box_open(&d_ref, &d_box.encryptor_public_key, &c.nonce, c.boxed)
            .expect("direct box open");
        assert_eq!(pt.len(), 1024);
    };
    let d_reencrypt = || {
        let c = idos::parse_content(&d_box.content).expect("content");
        let pt = sw
            .box_open(&d_ref, &d_box.encryptor_public_key, &c.nonce, c.boxed)
            .expect("direct box open");
        let hash = idos::content_hash(&pt);
        // The grantee's key is checked on each call, as the daemon checks each request's.
        let s = idos::seal(&to(grantee), &pt).expect("seal");
        assert_eq!((hash.len(), s.content.len()), (64, 1064));
    };
    let open_args = || BoxOpenArgs {
        key: "idos-user".into(),
        version: None,
        encryptor_public_key: x_box.encryptor_public_key.to_vec(),
        content: x_box.content.clone(),
    };
    let reencrypt_args = || BoxReencryptArgs {
        key: "idos-user".into(),
        version: None,
        encryptor_public_key: x_box.encryptor_public_key.to_vec(),
        content: x_box.content.clone(),
        to_public_key: grantee.to_vec(),
        expect_content_hash: Some(idos::content_hash(&plaintext)),
    };
    for (callers, depth) in [(1, 1), (2, 16)] {
        rows.extend(b.row(
            "idOS box.open (1 KiB)",
            callers,
            depth,
            names::BOX_OPEN,
            open_args(),
            Some(d_open),
        ));
        rows.extend(b.row(
            "idOS box.reencrypt (1 KiB)",
            callers,
            depth,
            names::BOX_REENCRYPT,
            reencrypt_args(),
            Some(d_reencrypt),
        ));
    }

    // RSS after every daemon-vs-direct row so far, then the daemon's own breakdown (stage timing,
    // callgrind) on restarted daemons, before the zk pool exists: its background share warm-up
    // after a start would be counted too.
    res.rss_full_mib = rss_mib(b.pid());
    res.threads_full = threads(b.pid());
    if !s.only.is_empty() {
        if s.only.iter().any(|o| o.contains("zk")) {
            zk_rows(&b, &p11, &mut res);
        }
        b.daemon.terminate();
        return res;
    }
    res.stages = stage_timing(&mut b);
    if s.callgrind {
        res.callgrind = callgrind(&mut b);
    }
    b.daemon.spawn();
    b.daemon.wait_ready(Duration::from_secs(120));
    res.rss_restart_mib = rss_mib(b.pid());
    zk_rows(&b, &p11, &mut res);

    // TPM RSA-2048 sign, MOSIP key: daemon first, then the direct backend, never both at once
    // (one swtpm), so these two are not interleaved.
    let tpm_callers: Vec<usize> = s.callers.iter().copied().filter(|n| *n <= 4).collect();
    let mut tpm_rows = Vec::new();
    for &n in &tpm_callers {
        log(&format!("TPM sign through the daemon, {n} caller(s)"));
        tpm_rows.extend(b.row(
            "TPM RSA-2048 sign (MOSIP key)",
            n,
            1,
            names::SIGN,
            SignArgs {
                key: "tpm-sign".into(),
                digest: Some(digest.to_vec()),
                ..Default::default()
            },
            NO_DIRECT,
        ));
    }

    // The flood: one uid (root here) opens large envelopes on 64 connections while another
    // (`nobody`, in a child process) signs with an HSM key.
    res.fairness = fairness(&b, &x_oaep_spki);
    res.rss_flood_mib = rss_mib(b.pid());

    log("TPM sign direct");
    {
        let tpm = TpmBackend::start(TpmConfig::new(tcti));
        let k = tpm
            .create(&NewKey {
                name: "bench-direct-tpm",
                version: 1,
                kind: KeyKind::Rsa2048Sign,
                template: Template::Mosip,
                master: None,
            })
            .expect("direct MOSIP key");
        let f = || {
            tpm.sign(
                &KeyRef::object(&k.backend_ref),
                &digest,
                SignScheme::Pkcs1v15,
            )
            .expect("direct TPM sign");
        };
        for _ in 0..3 {
            f();
        }
        for mut r in tpm_rows {
            let (mut d, mut c) = (vec![], vec![]);
            for _ in 0..s.reps {
                let c0 = cpu_secs(None);
                let (rate, n) = direct_rate(r.callers, s.dur, &f);
                c.push((cpu_secs(None) - c0) * 1e6 / n.max(1) as f64);
                d.push(rate);
            }
            r.direct = Some(median(d));
            r.direct_cpu_us = Some(median(c));
            log(&format!(
                "TPM sign ×{}: direct {:.0}/s daemon {:.0}/s",
                r.callers,
                r.direct.unwrap_or(0.0),
                r.daemon
            ));
            res.rows.push(r);
        }
    }
    drop(p11);

    pool(&mut b, &mut res);
    let mut daemon = b.daemon;
    if daemon.is_running() {
        daemon.terminate();
    }
    res.noisy = crate::report::is_noisy(&res);
    res.elapsed_s = t0.elapsed().as_secs_f64();
    res
}

/// Latencies of `n` signatures by the probe user, µs.
fn probe(b: &Bench, n: usize) -> Vec<f64> {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", PROBE_USER.0))
        .arg(format!("--regid={}", PROBE_USER.1))
        .arg("--clear-groups")
        .arg(exe)
        .arg("--probe")
        .arg(b.daemon.socket())
        .arg("hsm-sign")
        .arg(n.to_string())
        .output()
        .expect("run the probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// `--probe SOCKET KEY N`: signs N digests one after the other; prints each latency in µs.
pub fn probe_main(args: &[String]) {
    let (Some(socket), Some(key), Some(n)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: custody-bench --probe SOCKET KEY N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lat = rt.block_on(async {
        let c = Client::connect(socket).await.expect("connect");
        let args = SignArgs {
            key: key.clone(),
            digest: Some(vec![1u8; 32]),
            ..Default::default()
        };
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = c.call_raw(names::SIGN, &args).await.expect("sign");
            if let Err(e) = r.result {
                panic!("probe sign: {e:?}");
            }
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat
    });
    let s: Vec<String> = lat.iter().map(|v| format!("{v:.1}")).collect();
    println!("{}", s.join(" "));
}

fn fairness(b: &Bench, spki: &[u8]) -> Fairness {
    let (conns, bytes, samples) = if b.s.smoke {
        (4, 64 * 1024, 20)
    } else {
        (64, 1024 * 1024, 300)
    };
    log(&format!(
        "flood: {conns} connections of {bytes}-byte envelope.open vs another uid's sign"
    ));
    let mut unloaded = probe(b, samples);
    let env = envelope::seal_to_public_key(&vec![0x33u8; bytes], spki).expect("seal");
    let flood = Flood::start(
        b.daemon.socket(),
        conns,
        1,
        names::ENVELOPE_OPEN,
        OpenArgs {
            key: "hsm-oaep".into(),
            envelope: env,
        },
    );
    std::thread::sleep(b.s.dur.min(Duration::from_millis(500)));
    let (t0, d0, c0) = (Instant::now(), cpu_secs(Some(b.pid())), cpu_secs(None));
    let mut loaded = probe(b, samples);
    let wall = t0.elapsed().as_secs_f64().max(1e-6);
    let (daemon_cpus, client_cpus) = (
        (cpu_secs(Some(b.pid())) - d0) / wall,
        (cpu_secs(None) - c0) / wall,
    );
    let counts: FloodCounts = flood.stop();
    let f = Fairness {
        flood_conns: conns,
        flood_bytes: bytes,
        unloaded_p50_us: percentile(&mut unloaded, 50.0),
        unloaded_p99_us: percentile(&mut unloaded, 99.0),
        loaded_p50_us: percentile(&mut loaded, 50.0),
        loaded_p99_us: percentile(&mut loaded, 99.0),
        samples,
        flood_ok: counts.ok,
        flood_refused: counts.busy + counts.timed_out,
        loaded_daemon_cpus: daemon_cpus,
        loaded_client_cpus: client_cpus,
    };
    log(&format!("flood: {f:?}"));
    f
}

/// MOSIP zero-knowledge pool (cache off): `zk.init` of `pool_keys` keys under an HSM master with
/// one share recipient, its background share segments, then `zk.encrypt` / `zk.decrypt` of 1 KiB
/// (pipelined) against the same work done directly here: unwrap the pool key with the HSM
/// master, derive, AES-GCM (the share segment is made once per pool key and recipient, in both).
fn zk_rows(b: &Bench, p11: &Arc<Pkcs11Backend>, res: &mut Results) {
    use custody_daemon::format::zk;
    use custody_daemon::keys::pool::pool_aad;
    use custody_testkit::proto::ops::{
        ZkAttribute, ZkCryptArgs, ZkEncryptResult, ZkInitArgs, ZkPoolInfo, ZkShowArgs,
    };
    let n = b.s.pool_keys;
    log(&format!("zk pool: init {n} keys"));
    b.create_key("zk-k9", "aes256", "pkcs11", None);
    b.create_key("zk-ida", "rsa2048-oaep", "pkcs11", None);
    let t = Instant::now();
    let info: ZkPoolInfo = b.call(
        names::ZK_INIT,
        &ZkInitArgs {
            pool: "zk-bench".into(),
            master: "zk-k9".into(),
            size: Some(u32::try_from(n).expect("pool size")),
            share_to: Some(vec!["zk-ida".into()]),
        },
    );
    res.zk_init_s = t.elapsed().as_secs_f64();
    res.pool_keys = n;
    assert_eq!(info.size, n as u64);
    // Wait for the share segments so the rows below measure the steady state.
    let t = Instant::now();
    loop {
        let s: ZkPoolInfo = b.call(
            names::ZK_SHOW,
            &ZkShowArgs {
                pool: "zk-bench".into(),
                verify: false,
            },
        );
        if s.shares_cached >= n as u64 || t.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    res.zk_shares_s = t.elapsed().as_secs_f64();
    let d_master = p11
        .create(&NewKey {
            name: "bench-direct-zk-master",
            version: 1,
            kind: KeyKind::Aes256,
            template: Template::Default,
            master: None,
        })
        .expect("direct master");
    let m_ref = KeyRef::object(&d_master.backend_ref);
    let pool_key = [0x17u8; 32];
    let z_aad = pool_aad("direct", 5, "m", 1);
    let blob = p11
        .wrap_secret(&m_ref, &pool_key, &z_aad)
        .expect("wrap pool key");
    let value = vec![0x33u8; 1024];
    let derived = |p11: &Pkcs11Backend| {
        let k = p11
            .unwrap_secret(&m_ref, &blob, &z_aad)
            .expect("unwrap pool key");
        let k: [u8; 32] = k[..].try_into().expect("32 bytes");
        zk::derive(&k, "4827615930")
    };
    let crypt = |count: usize| ZkCryptArgs {
        pool: "zk-bench".into(),
        id: "4827615930".into(),
        attributes: (0..count)
            .map(|i| ZkAttribute {
                identifier: format!("a{i}"),
                value: value.clone(),
            })
            .collect(),
    };
    for count in [1usize, 16] {
        let depth = if count == 1 { 16 } else { 8 };
        let op = if count == 1 {
            "zk.encrypt 1 × 1 KiB"
        } else {
            "zk.encrypt batch 16 × 1 KiB"
        };
        log(op);
        res.rows.extend(b.row(
            op,
            2,
            depth,
            names::ZK_ENCRYPT,
            crypt(count),
            Some(|| {
                let d = derived(p11);
                for _ in 0..count {
                    let a = zk::encrypt_attribute(&d, 5, &value).expect("encrypt");
                    assert_eq!(a.len(), 1024 + zk::OVERHEAD);
                }
            }),
        ));
    }
    log("zk.decrypt 1 × 1 KiB");
    let enc: ZkEncryptResult = b.call(names::ZK_ENCRYPT, &crypt(1));
    let d_attr = zk::encrypt_attribute(&derived(p11), 5, &value).expect("encrypt");
    res.rows.extend(b.row(
        "zk.decrypt 1 × 1 KiB",
        2,
        16,
        names::ZK_DECRYPT,
        ZkCryptArgs {
            pool: "zk-bench".into(),
            id: "4827615930".into(),
            attributes: enc.attributes,
        },
        Some(|| {
            let pt = zk::decrypt_attribute(&derived(p11), &d_attr).expect("decrypt");
            assert_eq!(pt.len(), 1024);
        }),
    ));
}

/// Restarts the daemon (its registry holds the zk pool) and times it until it answers `hello`.
fn pool(b: &mut Bench, res: &mut Results) {
    b.daemon.terminate();
    let t = Instant::now();
    b.daemon.spawn();
    b.daemon.wait_ready(Duration::from_secs(120));
    res.pool_ready_s = t.elapsed().as_secs_f64();
    res.pool_rss_mib = rss_mib(b.pid());
    log(&format!(
        "restart: ready in {:.3} s with a {}-key zk pool",
        res.pool_ready_s, res.pool_keys
    ));
}

/// Restarts the daemon with `CUSTODYD_STAGE_TIMING=1`, runs one-caller HSM signatures, stops it
/// and reads the stage means it printed.
fn stage_timing(b: &mut Bench) -> BTreeMap<String, f64> {
    log("stage timing: one-caller HSM sign");
    b.daemon.terminate();
    b.daemon.set_env("CUSTODYD_STAGE_TIMING", "1");
    b.daemon.spawn();
    b.daemon.wait_ready(Duration::from_secs(120));
    let clients = b.clients(1);
    let args = Arc::new(SignArgs {
        key: "hsm-sign".into(),
        digest: Some(vec![2u8; 32]),
        ..Default::default()
    });
    b.rt.block_on(daemon_rate(
        &clients,
        1,
        b.s.dur * b.s.reps as u32,
        names::SIGN,
        &args,
    ));
    drop(clients);
    b.daemon.terminate();
    b.daemon.remove_env("CUSTODYD_STAGE_TIMING");
    let stderr = b.daemon.stderr();
    let Some(line) = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("custodyd stage timing: "))
    else {
        log("stage timing: the daemon printed none");
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(line).expect("stage timing JSON");
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v["mean_us"].as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Self cost by object (library) in a callgrind output file, and the total.
fn callgrind_costs(path: &std::path::Path) -> (f64, BTreeMap<String, f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let mut ob = String::from("?");
    let mut skip_next = false;
    let mut total = 0.0;
    let short = |n: &str| {
        let base = n.rsplit('/').next().unwrap_or(n);
        let base = base.split(".so").next().unwrap_or(base);
        base.to_owned()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ob=") {
            // `(id) name` defines, `(id)` refers.
            let (id, name) = match rest.split_once(") ") {
                Some((id, name)) => (id.trim_start_matches('(').to_owned(), Some(name)),
                None => (rest.trim_matches(|c| c == '(' || c == ')').to_owned(), None),
            };
            if let Some(name) = name {
                names.insert(id.clone(), short(name));
            }
            ob = names.get(&id).cloned().unwrap_or_else(|| short(rest));
        } else if let Some(rest) = line.strip_prefix("cob=") {
            // Define names seen only as call targets.
            if let Some((id, name)) = rest.split_once(") ") {
                names.insert(id.trim_start_matches('(').to_owned(), short(name));
            }
        } else if line.starts_with("calls=") {
            skip_next = true;
        } else if line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        {
            if skip_next {
                skip_next = false;
                continue;
            }
            if let Some(v) = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
            {
                *by.entry(ob.clone()).or_default() += v;
                total += v;
            }
        }
    }
    (total, by)
}

/// `callgrind_control ARG PID`.
fn callgrind_control(arg: &str, pid: u32) -> bool {
    Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One daemon under callgrind: after a warm-up, the counters are zeroed, `n` pings run and are
/// dumped, zeroed again, `n` HSM signatures run and are dumped (so start-up, session log-ins and
/// the warm-up are not counted); the costs of each dump.
type Costs = (f64, BTreeMap<String, f64>);
fn callgrind_run(b: &mut Bench, n: usize) -> Option<(Costs, Costs)> {
    let out = b.daemon.dir().join("callgrind.out");
    let base = b.daemon.command();
    let mut c = Command::new("valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(base.get_program())
        .args(base.get_args());
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let mut child = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let socket = b.daemon.socket().to_owned();
    let ready = Instant::now() + Duration::from_secs(180);
    let client = loop {
        if let Ok(c) = b.rt.block_on(Client::connect(&socket)) {
            break c;
        }
        if Instant::now() > ready {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ping = PingArgs { data: vec![1; 4] };
    let sign = SignArgs {
        key: "hsm-sign".into(),
        digest: Some(vec![3u8; 32]),
        ..Default::default()
    };
    let run = |op: &'static str, k: usize| {
        b.rt.block_on(async {
            for _ in 0..k {
                let r = if op == names::PING {
                    client.call_raw(op, &ping).await
                } else {
                    client.call_raw(op, &sign).await
                };
                assert!(r.is_ok_and(|r| r.result.is_ok()), "{op} under callgrind");
            }
        })
    };
    run(names::PING, 20);
    run(names::SIGN, 20);
    let mut ok = callgrind_control("-z", pid);
    run(names::PING, n);
    ok &= callgrind_control("-d", pid);
    ok &= callgrind_control("-z", pid);
    run(names::SIGN, n);
    ok &= callgrind_control("-d", pid);
    drop(client);
    let _ = nix_kill(pid);
    let _ = child.wait();
    if !ok {
        log("callgrind: callgrind_control failed");
        return None;
    }
    // Kept for `callgrind_annotate` (ping: .1, sign: .2).
    let keep = custody_testkit::workspace_root().join("target/bench");
    let _ = std::fs::create_dir_all(&keep);
    for i in [1, 2] {
        let _ = std::fs::copy(
            format!("{}.{i}", out.display()),
            keep.join(format!("callgrind.out.{i}")),
        );
    }
    let dump =
        |i: u32| callgrind_costs(&std::path::PathBuf::from(format!("{}.{i}", out.display())));
    Some((dump(1), dump(2)))
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn per_request(c: &Costs, n: f64) -> (f64, BTreeMap<String, f64>) {
    let by =
        c.1.iter()
            .map(|(k, v)| (k.clone(), v / n))
            .filter(|(_, v)| *v >= 1.0)
            .collect();
    (c.0 / n, by)
}

/// Instructions per request: one daemon run under callgrind, counters zeroed after a warm-up.
fn callgrind(b: &mut Bench) -> Option<Callgrind> {
    log("callgrind: the daemon under valgrind");
    let n = 300;
    let (pings, signs) = callgrind_run(b, n)?;
    let (ping_ir, ping_by_object) = per_request(&pings, n as f64);
    let (sign_ir, sign_by_object) = per_request(&signs, n as f64);
    log(&format!(
        "callgrind: ping {ping_ir:.0} Ir, sign {sign_ir:.0} Ir per request"
    ));
    Some(Callgrind {
        requests: n as u64,
        ping_ir,
        sign_ir,
        sign_by_object,
        ping_by_object,
    })
}
