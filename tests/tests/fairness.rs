//! Backend scheduling (issue 11, finding 3): work is queued per uid and served in turn, work that
//! missed its deadline never reaches the device, and the queues are bounded.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use custody_testkit::proto::ops::{names, OpenArgs, SealArgs, SealResult};
use custody_testkit::*;

/// The registration client (uid `nobody`) may sign with `machine-sign`; root does the rest.
const ROLES: &str = r#"[[roles]]
name = "admin"
unix_users = [0]
ops = ["*"]
keys = ["*"]

[[roles]]
name = "registration-client"
unix_users = ["nobody"]
ops = ["sign"]
keys = ["machine-sign"]
"#;

fn scheduler_status(d: &Daemon) -> Json {
    let s = cli_json(d, &["status"]);
    s["scheduler"].clone()
}

fn counter(s: &Json, name: &str) -> u64 {
    s[name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no scheduler.{name}: {s}"))
}

/// Root floods the HSM with 256 KiB `envelope.open` requests from 64 connections, 16 in flight
/// each, far more than two workers can do within the 2 s op timeout. Meanwhile the registration
/// client's `sign` with the TPM `machine-sign` key succeeds within its op timeout, and every
/// flood request that timed out was dropped before it reached the device: the scheduler counted
/// it as expired (never started) or as a device call refused after its deadline.
#[test]
fn a_flooding_uid_neither_starves_another_nor_gets_timed_out_work_run() {
    let d = tpm_builder()
        .with_hsm()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\"", "op_timeout_secs = 2"])
        .roles(ROLES)
        // The per-uid budget opened wide, so the flood reaches the scheduler's queue.
        .extra("[scheduler]\nworkers = 2\nmax_queued_per_uid = 4096\nuid_budget_kib = 1048576\n")
        .start();
    create_pkcs11(&d, "bulk", "rsa2048-oaep");
    let c = d.client();
    let sealed: SealResult = c
        .call_untyped(
            names::ENVELOPE_SEAL,
            &SealArgs {
                key: Some("bulk".into()),
                public_key: None,
                plaintext: random(256 * 1024),
            },
        )
        .expect("seal");
    let input = write(&d, "digest-input", b"registration packet");
    std::fs::set_permissions(&input, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let unloaded = Instant::now();
    let (_, out) = d.cli_as(
        "nobody",
        "nogroup",
        &["sign", "machine-sign", "--in", path_str(&input)],
    );
    assert!(out.status.success(), "unloaded sign: {out:?}");
    let unloaded = unloaded.elapsed();

    let flood = Flood::start(
        d.socket(),
        64,
        16,
        names::ENVELOPE_OPEN,
        OpenArgs {
            key: "bulk".into(),
            envelope: sealed.envelope,
        },
    );
    // Wait until the flood is timing out: the queue is longer than the op timeout.
    let start = Instant::now();
    while flood.counts().timed_out == 0 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        flood.counts().timed_out > 0,
        "the flood never exceeded the op timeout: {:?}",
        flood.counts()
    );
    let mut signed = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (_, out) = d.cli_as(
            "nobody",
            "nogroup",
            &["sign", "machine-sign", "--in", path_str(&input)],
        );
        assert!(
            out.status.success(),
            "sign under the flood (unloaded: {unloaded:?}): {}{}\nflood: {:?}",
            stdout(&out),
            stderr(&out),
            flood.counts()
        );
        signed.push(t.elapsed());
    }
    let counts = flood.stop();
    assert!(counts.other.is_empty(), "{counts:?}");
    assert!(counts.ok > 0, "{counts:?}");
    let s = scheduler_status(&d);
    let dropped = counter(&s, "expired") + counter(&s, "late_refused");
    assert!(
        counts.timed_out <= dropped,
        "{} flood requests timed out but only {dropped} were kept from the device: {s}",
        counts.timed_out
    );
    assert_eq!(counter(&s, "workers"), 2, "{s}");
    assert_eq!(counter(&s, "queued"), 0, "{s}");
    let in_daemon: Vec<u64> = d
        .audit_lines()
        .iter()
        .filter(|l| l["uid"] == 65534 && l["op"] == "sign")
        .map(|l| l["duration_us"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(in_daemon.len(), 4, "{in_daemon:?}");
    eprintln!(
        "sign wall time unloaded {unloaded:?}, under the flood {signed:?}; in the daemon (µs) \
         {in_daemon:?}; flood {counts:?}; scheduler {s}"
    );
}

/// With a per-uid bound of 4 waiting requests and one worker, a uid pipelining 64 requests gets
/// `busy` for those beyond the bound, and the count shows in `status`.
#[test]
fn a_full_queue_answers_busy() {
    let d = DaemonBuilder::new()
        .with_hsm()
        .extra("[scheduler]\nworkers = 1\nmax_queued_per_uid = 4\nuid_budget_kib = 1048576\n")
        .start();
    create_pkcs11(&d, "q-sign", "rsa2048-sign");
    let flood = Flood::start(
        d.socket(),
        4,
        16,
        names::SIGN,
        custody_testkit::proto::ops::SignArgs {
            key: "q-sign".into(),
            data: Some(b"x".to_vec()),
            ..Default::default()
        },
    );
    let start = Instant::now();
    while flood.counts().busy == 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = flood.stop();
    assert!(counts.busy > 0, "{counts:?}");
    assert!(counts.ok > 0, "{counts:?}");
    assert!(counts.other.is_empty(), "{counts:?}");
    let s = scheduler_status(&d);
    assert!(counter(&s, "rejected") >= counts.busy, "{s} {counts:?}");
}

/// With a per-uid budget of requests in progress (1 MiB: three of the flood's 256 KiB frames at
/// once for two workers), the same flood as above waits unread beyond its share: none of its
/// requests reaches its deadline in the queue, and the other uid's signatures succeed.
#[test]
fn with_a_per_uid_budget_a_flood_waits_its_turn_unread() {
    let d = tpm_builder()
        .with_hsm()
        .dir_mode(0o755)
        .server(&["socket_mode = \"0666\"", "op_timeout_secs = 2"])
        .roles(ROLES)
        .extra("[scheduler]\nworkers = 2\nuid_budget_kib = 1024\n")
        .start();
    create_pkcs11(&d, "bulk", "rsa2048-oaep");
    let sealed: SealResult = d
        .client()
        .call_untyped(
            names::ENVELOPE_SEAL,
            &SealArgs {
                key: Some("bulk".into()),
                public_key: None,
                plaintext: random(256 * 1024),
            },
        )
        .expect("seal");
    let input = write(&d, "digest-input", b"registration packet");
    std::fs::set_permissions(&input, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let flood = Flood::start(
        d.socket(),
        64,
        16,
        names::ENVELOPE_OPEN,
        OpenArgs {
            key: "bulk".into(),
            envelope: sealed.envelope,
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        let (_, out) = d.cli_as(
            "nobody",
            "nogroup",
            &["sign", "machine-sign", "--in", path_str(&input)],
        );
        assert!(out.status.success(), "sign under the flood: {out:?}");
    }
    let counts = flood.stop();
    assert!(counts.ok > 0, "{counts:?}");
    assert_eq!(
        (counts.timed_out, counts.busy, counts.other.len()),
        (0, 0, 0),
        "{counts:?}"
    );
    let s = scheduler_status(&d);
    assert_eq!(counter(&s, "expired"), 0, "{s}");
}
