//! BENCHMARKS.md and report.json from a run's figures. Every sentence of the reading is computed
//! from the numbers of the same run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::phases::{Results, Row};
use crate::Settings;

use custody_bench::reference::{self, rate, NOISE_LIMIT};

fn find<'a>(r: &'a Results, op: &str, callers: usize, depth: usize) -> Option<&'a Row> {
    r.rows
        .iter()
        .find(|x| x.op.starts_with(op) && x.callers == callers && x.depth == depth)
}

fn direct_off(r: &Results) -> Vec<(usize, f64, f64)> {
    [(1, reference::HSM_SIGN_1), (2, reference::HSM_SIGN_2)]
        .into_iter()
        .filter_map(|(n, reference)| {
            find(r, "HSM RSA-2048 sign", n, 1)
                .and_then(|x| x.direct)
                .map(|d| (n, d, reference))
        })
        .collect()
}

/// True when a direct HSM sign rate is more than [`NOISE_LIMIT`] off the reference.
pub fn is_noisy(r: &Results) -> bool {
    reference::off_reference(&direct_off(r))
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// One target: what, the measured value, met or not.
struct Target {
    what: String,
    value: String,
    met: Option<bool>,
}

fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let ratio = |op: &str, n: usize| find(r, op, n, 1).and_then(Row::ratio);
    for op in [
        "HSM RSA-2048 sign",
        "HSM RSA-OAEP-SHA256 unwrap",
        "Envelope open",
    ] {
        let v: Vec<Option<f64>> = [1, 2, 4].iter().map(|n| ratio(op, *n)).collect();
        let present: Vec<f64> = v.iter().flatten().copied().collect();
        t.push(Target {
            what: format!("{op}: daemon/direct ≥ 0.90 at 1, 2, 4 callers"),
            value: v
                .iter()
                .map(|x| opt(*x, |x| format!("{x:.2}")))
                .collect::<Vec<_>>()
                .join(" / "),
            met: (!present.is_empty()).then(|| present.iter().all(|x| *x >= 0.90)),
        });
    }
    let tpm: Vec<f64> = r
        .rows
        .iter()
        .filter(|x| x.op.starts_with("TPM"))
        .filter_map(Row::ratio)
        .collect();
    t.push(Target {
        what: "TPM sign: daemon/direct ≥ 0.95".into(),
        value: tpm
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
        met: (!tpm.is_empty()).then(|| tpm.iter().all(|x| *x >= 0.95)),
    });
    let cpu: Vec<f64> = [
        "HSM RSA-2048 sign",
        "HSM RSA-OAEP-SHA256 unwrap",
        "Envelope open",
    ]
    .iter()
    .filter_map(|op| find(r, op, 1, 1).and_then(Row::outside_token_us))
    .collect();
    t.push(Target {
        what: "Daemon CPU per HSM op outside the token ≤ 30 µs (1 caller: sign, unwrap, open)"
            .into(),
        value: cpu
            .iter()
            .map(|x| format!("{x:.0} µs"))
            .collect::<Vec<_>>()
            .join(" / "),
        met: (!cpu.is_empty()).then(|| cpu.iter().all(|x| *x <= 30.0)),
    });
    let ping = r
        .rows
        .iter()
        .filter(|x| x.op == "ping" && x.callers == 1)
        .map(|x| x.daemon)
        .fold(0.0, f64::max);
    t.push(Target {
        what: "Pipelined ping ≥ 150,000/s on one connection".into(),
        value: rate(ping),
        met: Some(ping >= 150_000.0),
    });
    let big = r
        .rows
        .iter()
        .find(|x| x.op == "HSM RSA-2048 sign" && x.callers == 64);
    t.push(Target {
        what: "HSM sign at 64 callers: p99 ≤ 3 × p50".into(),
        value: opt(big.map(|x| x.p99_us / x.p50_us.max(1.0)), |x| {
            format!("{x:.2} × p50")
        }),
        met: big.map(|x| x.p99_us <= 3.0 * x.p50_us),
    });
    let f = &r.fairness;
    let fr = f.loaded_p99_us / f.unloaded_p99_us.max(1.0);
    t.push(Target {
        what: "Under the flood, the other uid's sign p99 ≤ 2 × its unloaded p99".into(),
        value: format!("{fr:.2} ×"),
        met: (f.samples > 0).then_some(fr <= 2.0),
    });
    t.push(Target {
        what: "RSS idle ≤ 20 MiB".into(),
        value: format!("{:.1} MiB", r.rss_idle_mib),
        met: Some(r.rss_idle_mib <= 20.0),
    });
    let growth = r.rss_full_mib / r.rss_warm_mib.max(0.001);
    t.push(Target {
        what: "RSS after the HSM, Ed25519 and box rows ≤ 1.2 × after warm-up".into(),
        value: format!("{growth:.2} ×"),
        met: Some(growth <= 1.2),
    });
    t.push(Target {
        what: format!("Ready ≤ 1 s with a {}-key pool", r.pool_keys),
        value: format!("{:.3} s", r.pool_ready_s),
        met: Some(r.pool_ready_s <= 1.0),
    });
    for op in ["idOS box.open", "idOS box.reencrypt"] {
        let row = find(r, op, 2, 16);
        t.push(Target {
            what: format!("{op} pipelined ≥ 10,000/s and ≥ 0.8 × direct"),
            value: opt(row.map(|x| x.daemon), rate)
                + &opt(row.and_then(Row::ratio), |x| format!(", {x:.2}")),
            met: row.map(|x| x.daemon >= 10_000.0 && x.ratio().is_some_and(|v| v >= 0.8)),
        });
    }
    let ed = find(r, "HSM Ed25519", 1, 1).and_then(Row::ratio);
    t.push(Target {
        what: "HSM Ed25519 sign ≥ 0.9 × direct (1 caller)".into(),
        value: opt(ed, |x| format!("{x:.2}")),
        met: ed.map(|x| x >= 0.9),
    });
    t
}

/// BENCHMARKS.md.
pub fn markdown(r: &Results, s: &Settings) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `make bench` (`custody-bench`, `bench/src/`) on {}{}. Machine: {} CPUs \
         (`nproc`), shared; swtpm and SoftHSM 2 on the same machine. Each figure is the median \
         of {} measurements of {:.2} s; the run took {:.0} s. Every figure is also in \
         `target/bench/report.json`.\n",
        r.date,
        if s.smoke {
            " — SMOKE RUN (harness check; the figures mean nothing)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, usize::from),
        s.reps,
        s.dur.as_secs_f64(),
        r.elapsed_s
    );
    let _ = writeln!(
        o,
        "Reproduce: `make bench` (environment: `BENCH_SECS`, `BENCH_REPS`, `BENCH_POOL_KEYS`, \
         `BENCH_CALLGRIND=0`). *Direct* calls the backend (`Pkcs11Backend`, `TpmBackend`, \
         `SoftwareBackend`) in the benchmark process on N threads; *daemon* sends the same \
         operation to custodyd over its socket on N connections (× the requests in flight on \
         each), interleaved with the direct measurement (the TPM: daemon first, then direct, \
         one swtpm). Latencies are the daemon path's, as the caller sees them. *Daemon CPU* is \
         the custodyd process's user+system time per operation (/proc/PID/stat); *direct CPU* \
         the benchmark process's for the direct operation (the token's own work, SoftHSM \
         being a library); their difference is what the daemon costs beyond the token. \
         *Caller CPU* is the benchmark process's own CPU per daemon operation (the client: \
         encode, socket, decode); *daemon switches* the context switches of all custodyd's \
         threads per operation (/proc/PID/task/*/status). *CPU ceiling* = direct CPU ÷ (daemon \
         CPU + caller CPU): the highest daemon/direct ratio possible when both paths keep every \
         CPU busy, since the caller and the daemon share the CPUs the direct threads have to \
         themselves.\n"
    );
    if r.noisy {
        let _ = writeln!(
            o,
            "**NOISY RUN**: a direct HSM sign rate is more than {:.0}% off the reference \
             machine's ({}): other load shared the CPUs; compare ratios only.\n",
            NOISE_LIMIT * 100.0,
            direct_off(r)
                .iter()
                .map(|(n, d, reference)| format!(
                    "{n} thread(s): {} vs {}",
                    rate(*d),
                    rate(*reference)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = writeln!(o, "## Daemon vs direct\n");
    let _ = writeln!(
        o,
        "| operation | callers | in flight | direct | daemon | daemon/direct | p50 | p99 | \
         daemon CPU/op | direct CPU/op | outside the token | caller CPU/op | daemon switches/op | \
         CPU ceiling |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in &r.rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} | {:.0} µs \
             | {:.1} | {} |",
            x.op,
            x.callers,
            x.depth,
            opt(x.direct, rate),
            rate(x.daemon),
            opt(x.ratio(), |v| format!("{v:.2}")),
            x.p50_us,
            x.p99_us,
            x.daemon_cpu_us,
            opt(x.direct_cpu_us, |v| format!("{v:.0} µs")),
            opt(x.outside_token_us(), |v| format!("{v:.0} µs")),
            x.caller_cpu_us,
            x.switches_per_op,
            opt(x.cpu_ceiling(), |v| format!("{v:.2}")),
        );
    }
    let gaps: Vec<&Row> = r
        .rows
        .iter()
        .filter(|x| x.direct_call_us.is_some())
        .collect();
    if !gaps.is_empty() {
        let _ = writeln!(
            o,
            "\n## One caller: the same direct call after an idle gap\n"
        );
        let _ = writeln!(
            o,
            "A daemon thread serving one caller who waits for each answer sleeps between \
             requests. Here the *direct* call is timed back to back, and on a thread that sleeps \
             {} µs before each call (medians); the daemon's p50 and a `ping` round trip are \
             beside them.\n",
            crate::phases::IDLE_GAP.as_micros()
        );
        let _ = writeln!(
            o,
            "| operation | direct, back to back | direct, after a sleep | daemon p50 | ping p50 |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        let ping = find(r, "ping", 1, 1).map_or(0.0, |p| p.p50_us);
        for x in gaps {
            if let Some((busy, idle)) = x.direct_call_us {
                let _ = writeln!(
                    o,
                    "| {} | {busy:.0} µs | {idle:.0} µs | {:.0} µs | {ping:.0} µs |",
                    x.op, x.p50_us
                );
            }
        }
    }
    let f = &r.fairness;
    let _ = writeln!(o, "\n## Fairness under a flood\n");
    let _ = writeln!(
        o,
        "One uid keeps {} connections of {} KiB `envelope.open` busy; another uid signs with an \
         HSM key, one request at a time ({} signatures each way).\n",
        f.flood_conns,
        f.flood_bytes / 1024,
        f.samples
    );
    let _ = writeln!(o, "| other uid's sign | p50 | p99 |\n|---|---:|---:|");
    let _ = writeln!(
        o,
        "| without the flood | {:.0} µs | {:.0} µs |",
        f.unloaded_p50_us, f.unloaded_p99_us
    );
    let _ = writeln!(
        o,
        "| under the flood | {:.0} µs | {:.0} µs |",
        f.loaded_p50_us, f.loaded_p99_us
    );
    let _ = writeln!(
        o,
        "\nThe flood got {} answers meanwhile ({} refused `busy` or timed out).",
        f.flood_ok, f.flood_refused
    );
    let _ = writeln!(o, "\n## Memory and start-up\n");
    let _ = writeln!(o, "| | value |\n|---|---:|");
    let _ = writeln!(o, "| RSS idle (after start) | {:.1} MiB |", r.rss_idle_mib);
    let _ = writeln!(
        o,
        "| RSS after warm-up (ping, one-caller sign) | {:.1} MiB |",
        r.rss_warm_mib
    );
    let _ = writeln!(
        o,
        "| RSS after every HSM, Ed25519 and box row | {:.1} MiB |",
        r.rss_full_mib
    );
    let _ = writeln!(
        o,
        "| the daemon's threads after warm-up → after those rows | {} → {} |",
        r.threads_warm, r.threads_full
    );
    let _ = writeln!(
        o,
        "| RSS of the restarted daemon, then after the zk and TPM rows and the flood | {:.1} → \
         {:.1} MiB |",
        r.rss_restart_mib, r.rss_flood_mib
    );
    let _ = writeln!(
        o,
        "| `zk.init` of a {}-key zero-knowledge pool (1 share recipient) | {:.2} s |",
        r.pool_keys, r.zk_init_s
    );
    let _ = writeln!(
        o,
        "| Its share segments, made in the background after `zk.init` | {:.2} s |",
        r.zk_shares_s
    );
    let _ = writeln!(
        o,
        "| Start to ready with that {}-key pool in the registry | {:.3} s |",
        r.pool_keys, r.pool_ready_s
    );
    let _ = writeln!(
        o,
        "| RSS right after that start | {:.1} MiB |",
        r.pool_rss_mib
    );
    let _ = writeln!(o, "\n## Where the time goes: HSM sign, one caller\n");
    if r.stages.is_empty() {
        let _ = writeln!(o, "(no stage timing in this run)");
    } else {
        let _ = writeln!(
            o,
            "Mean time per request in each stage, from the daemon's own timestamps \
             (`CUSTODYD_STAGE_TIMING=1`, a separate run of the same daemon); the direct \
             `C_Sign` (one thread) takes {:.0} µs.\n",
            r.direct_sign_us
        );
        let _ = writeln!(o, "| stage | mean |\n|---|---:|");
        for (k, v) in &r.stages {
            let _ = writeln!(o, "| {k} | {v:.1} µs |");
        }
    }
    if let Some(c) = &r.callgrind {
        let _ = writeln!(
            o,
            "\nInstructions per request (valgrind `--tool=callgrind`; counters zeroed after a \
             warm-up, then {} requests of each kind, one at a time): `ping` {:.0}, HSM `sign` \
             {:.0}. By object (self cost, per request; `custodyd` is the daemon's own code, \
             `libcrypto` and `libsofthsm2` the token's):\n",
            c.requests, c.ping_ir, c.sign_ir
        );
        let _ = writeln!(o, "| object | sign | ping |\n|---|---:|---:|");
        let mut objs: Vec<&String> = c.sign_by_object.keys().collect();
        objs.sort_by(|a, b| {
            c.sign_by_object[*b]
                .abs()
                .total_cmp(&c.sign_by_object[*a].abs())
        });
        for k in objs {
            let _ = writeln!(
                o,
                "| {k} | {:.0} | {:.0} |",
                c.sign_by_object[k],
                c.ping_by_object.get(k).copied().unwrap_or(0.0)
            );
        }
    }
    let _ = writeln!(o, "\n## Targets\n");
    let _ = writeln!(o, "| target | measured | met |\n|---|---|---|");
    let ts = targets(r);
    for t in &ts {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            t.what,
            t.value,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    let _ = writeln!(o, "\n## Reading\n");
    o.push_str(&reading(r, &ts));
    o
}

fn reading(r: &Results, ts: &[Target]) -> String {
    let mut o = String::new();
    let met = ts.iter().filter(|t| t.met == Some(true)).count();
    let missed: Vec<&str> = ts
        .iter()
        .filter(|t| t.met == Some(false))
        .map(|t| t.what.as_str())
        .collect();
    let _ = write!(
        o,
        "{met} of {} targets met in this run{}. ",
        ts.len(),
        if r.noisy {
            " (a noisy run: direct rates are off the reference, so rates are not comparable \
             with other runs; ratios are)"
        } else {
            ""
        }
    );
    if !missed.is_empty() {
        let _ = write!(o, "Missed: {}. ", missed.join("; "));
    }
    if let Some(x) = find(r, "HSM RSA-2048 sign", 1, 1) {
        if let Some(d) = x.direct {
            let added = 1e6 / x.daemon - 1e6 / d;
            let _ = write!(
                o,
                "With one caller an HSM signature through the daemon takes {:.0} µs more than \
                 directly ({:.0} µs vs {:.0} µs per operation)",
                added,
                1e6 / x.daemon,
                1e6 / d
            );
            if let Some(p) = find(r, "ping", 1, 1) {
                let _ = write!(
                    o,
                    "; a bare `ping` round trip takes {:.0} µs (p50), so about {:.0}% of the \
                     added time is the socket round trip itself",
                    p.p50_us,
                    (p.p50_us / added.max(1.0) * 100.0).min(100.0)
                );
            }
            let _ = write!(o, ". ");
            if let Some(out) = x.outside_token_us() {
                let _ = write!(
                    o,
                    "The daemon's CPU outside the token is {out:.0} µs per signature ({:.0} µs \
                     in all against {:.0} µs for the direct call). ",
                    x.daemon_cpu_us,
                    x.direct_cpu_us.unwrap_or(0.0)
                );
            }
        }
    }
    if !r.stages.is_empty() {
        let mut st: Vec<(&String, &f64)> = r
            .stages
            .iter()
            .filter(|(k, _)| *k != "dispatch" && *k != "token_call")
            .collect();
        st.sort_by(|a, b| b.1.total_cmp(a.1));
        let top: Vec<String> = st
            .iter()
            .take(3)
            .map(|(k, v)| format!("{k} {v:.0} µs"))
            .collect();
        let _ = write!(
            o,
            "Inside the daemon the token call takes {:.0} µs of a {:.0} µs dispatch; the largest \
             other stages are {}. ",
            r.stages.get("token_call").copied().unwrap_or(0.0),
            r.stages.get("dispatch").copied().unwrap_or(0.0),
            top.join(", ")
        );
    }
    let ratios: Vec<String> = [1usize, 2, 4, 16, 64]
        .iter()
        .filter_map(|n| {
            find(r, "HSM RSA-2048 sign", *n, 1)
                .and_then(Row::ratio)
                .map(|v| format!("{v:.2} at {n}"))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = write!(
            o,
            "The sign ratio by callers: {}; with more callers than cores the direct threads and \
             the daemon's workers compete for the same CPUs, and the daemon's own CPU per \
             operation is taken from the token's. ",
            ratios.join(", ")
        );
    }
    let limits: Vec<String> = [
        ("HSM RSA-2048 sign", 2, 1),
        ("HSM RSA-2048 sign", 4, 1),
        ("HSM Ed25519 sign", 2, 1),
        ("HSM Ed25519 sign", 4, 1),
        ("idOS box.open", 2, 16),
        ("idOS box.reencrypt", 2, 16),
    ]
    .iter()
    .filter_map(|(op, n, depth)| {
        let x = find(r, op, *n, *depth)?;
        Some(format!(
            "{} × {}{}: ratio {:.2}, CPU ceiling {:.2} (daemon {:.0} µs + caller {:.0} µs \
             against {:.0} µs direct per operation)",
            x.op,
            n,
            if *depth > 1 {
                format!(" × {depth} in flight")
            } else {
                String::new()
            },
            x.ratio()?,
            x.cpu_ceiling()?,
            x.daemon_cpu_us,
            x.caller_cpu_us,
            x.direct_cpu_us?,
        ))
    })
    .collect();
    if !limits.is_empty() {
        let _ = write!(
            o,
            "Where the CPUs are the limit, the ratio cannot exceed the CPU ceiling: {}. ",
            limits.join("; ")
        );
    }
    if let Some(p) = find(r, "ping", 1, 1) {
        let one: Vec<String> = [
            "HSM RSA-2048 sign",
            "HSM RSA-OAEP",
            "Envelope open",
            "HSM Ed25519 sign",
            "idOS box.open",
            "idOS box.reencrypt",
            "TPM RSA-2048 sign",
        ]
        .iter()
        .filter_map(|op| {
            let x = find(r, op, 1, 1)?;
            let d = x.direct?;
            let direct_us = 1e6 / d;
            Some(format!(
                "{} {:.2} (measured {:.2})",
                x.op,
                direct_us / (direct_us + p.p50_us),
                x.ratio()?
            ))
        })
        .collect();
        if !one.is_empty() {
            let _ = write!(
                o,
                "With one caller and one request at a time, even a daemon that cost nothing \
                 beyond a `ping` round trip ({:.0} µs p50) would reach at most direct time ÷ \
                 (direct time + that round trip): {}. ",
                p.p50_us,
                one.join(", ")
            );
        }
    }
    let slower: Vec<String> = r
        .rows
        .iter()
        .filter_map(|x| {
            let (busy, idle) = x.direct_call_us?;
            Some(format!(
                "{} {:+.0}% ({busy:.0} → {idle:.0} µs)",
                x.op,
                (idle / busy.max(1.0) - 1.0) * 100.0
            ))
        })
        .collect();
    if !slower.is_empty() {
        let longer = r
            .rows
            .iter()
            .filter_map(|x| x.direct_call_us)
            .filter(|(busy, idle)| *idle > busy * 1.05)
            .count();
        let _ = write!(
            o,
            "The same direct call on a thread that slept {} µs before it: {}; ",
            crate::phases::IDLE_GAP.as_micros(),
            slower.join(", ")
        );
        let _ = if longer == 0 {
            write!(
                o,
                "no call took measurably (5%) longer after a sleep in this run. "
            )
        } else {
            write!(
                o,
                "{longer} of {} took more than 5% longer, a cost a daemon thread that waits \
                 between one caller's requests pays on each of them, whatever its own code \
                 does. ",
                slower.len()
            )
        };
    }
    if let Some(p) = r
        .rows
        .iter()
        .filter(|x| x.op == "ping" && x.callers == 1 && x.depth > 1)
        .max_by(|a, b| a.daemon.total_cmp(&b.daemon))
    {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let per_op = p.daemon_cpu_us + p.caller_cpu_us;
        if per_op > 0.0 {
            let _ = write!(
                o,
                "Pipelined `ping` on one connection ({} in flight) reached {}; the daemon used \
                 {:.1} µs and the caller {:.1} µs of CPU per ping, so {} CPUs allow at most \
                 {} at that cost. ",
                p.depth,
                rate(p.daemon),
                p.daemon_cpu_us,
                p.caller_cpu_us,
                cpus,
                rate(cpus * 1e6 / per_op)
            );
        }
    }
    let switches: Vec<String> = [
        ("ping", 1, 1),
        ("HSM Ed25519 sign", 1, 1),
        ("idOS box.open", 1, 1),
    ]
    .iter()
    .filter_map(|(op, n, d)| {
        let x = find(r, op, *n, *d)?;
        Some(format!(
            "{} {:.1} (p50 {:.0} µs)",
            x.op, x.switches_per_op, x.p50_us
        ))
    })
    .collect();
    if !switches.is_empty() {
        let _ = write!(
            o,
            "With one request at a time, the daemon's context switches per request: {}; each is a \
             thread sleeping and being woken, which on this virtual machine costs an \
             inter-processor interrupt and a VM exit. ",
            switches.join(", ")
        );
    }
    let growth = r.rss_full_mib / r.rss_warm_mib.max(0.001);
    if growth > 1.2 && r.threads_full > r.threads_warm {
        let _ = write!(
            o,
            "RSS grew {growth:.2} × from warm-up ({:.1} → {:.1} MiB) while the daemon's threads \
             went from {} to {}: each thread that allocates gets a glibc arena that keeps its \
             freed memory, and a stack; custodyd returns free arena pages every 10 s \
             (daemon/src/memory.rs, where the live heap measured with heaptrack is given). ",
            r.rss_warm_mib, r.rss_full_mib, r.threads_warm, r.threads_full
        );
    } else if growth > 1.2 {
        let _ = write!(
            o,
            "RSS grew {growth:.2} × from warm-up ({:.1} → {:.1} MiB) with the daemon's threads \
             unchanged ({}): not new threads' arenas or stacks, but memory the same threads \
             hold after the rows; custodyd returns free arena pages every 10 s \
             (daemon/src/memory.rs). ",
            r.rss_warm_mib, r.rss_full_mib, r.threads_full
        );
    }
    let f = &r.fairness;
    if f.samples > 0 {
        let _ = write!(
            o,
            "Under the flood the other uid's p99 went from {:.0} µs to {:.0} µs ({:.2} ×) and its \
             p50 from {:.0} µs to {:.0} µs; meanwhile the daemon kept {:.2} CPUs busy and the \
             flood's clients {:.2}, of the machine's {}: the signature's own token work shares \
             the CPUs with the flood's, which the scheduler orders fairly but cannot make \
             faster. ",
            f.unloaded_p99_us,
            f.loaded_p99_us,
            f.loaded_p99_us / f.unloaded_p99_us.max(1.0),
            f.unloaded_p50_us,
            f.loaded_p50_us,
            f.loaded_daemon_cpus,
            f.loaded_client_cpus,
            std::thread::available_parallelism().map_or(0, usize::from),
        );
    }
    let _ = writeln!(
        o,
        "Direct HSM sign rates against the reference machine's: {}.",
        reference::against_reference(&direct_off(r), "thread(s)")
    );
    o
}

#[derive(Serialize)]
struct JsonRow<'a> {
    op: &'a str,
    callers: usize,
    in_flight: usize,
    direct: Option<f64>,
    daemon: f64,
    ratio: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    daemon_cpu_us_per_op: f64,
    direct_cpu_us_per_op: Option<f64>,
    outside_token_cpu_us_per_op: Option<f64>,
    caller_cpu_us_per_op: f64,
    daemon_switches_per_op: f64,
    cpu_ceiling: Option<f64>,
    direct_call_us: Option<f64>,
    direct_call_after_idle_us: Option<f64>,
}

#[derive(Serialize)]
struct JsonTarget<'a> {
    target: &'a str,
    measured: &'a str,
    met: Option<bool>,
}

/// report.json: every figure of the run.
pub fn json(r: &Results, s: &Settings) -> String {
    let rows: Vec<JsonRow> = r
        .rows
        .iter()
        .map(|x| JsonRow {
            op: x.op,
            callers: x.callers,
            in_flight: x.depth,
            direct: x.direct,
            daemon: x.daemon,
            ratio: x.ratio(),
            p50_us: x.p50_us,
            p99_us: x.p99_us,
            daemon_cpu_us_per_op: x.daemon_cpu_us,
            direct_cpu_us_per_op: x.direct_cpu_us,
            outside_token_cpu_us_per_op: x.outside_token_us(),
            caller_cpu_us_per_op: x.caller_cpu_us,
            daemon_switches_per_op: x.switches_per_op,
            cpu_ceiling: x.cpu_ceiling(),
            direct_call_us: x.direct_call_us.map(|v| v.0),
            direct_call_after_idle_us: x.direct_call_us.map(|v| v.1),
        })
        .collect();
    let ts = targets(r);
    let targets: Vec<JsonTarget> = ts
        .iter()
        .map(|t| JsonTarget {
            target: &t.what,
            measured: &t.value,
            met: t.met,
        })
        .collect();
    let v = serde_json::json!({
        "date": r.date,
        "smoke": s.smoke,
        "noisy": r.noisy,
        "seconds_per_measurement": s.dur.as_secs_f64(),
        "repetitions": s.reps,
        "elapsed_s": r.elapsed_s,
        "rows": rows,
        "fairness": r.fairness,
        "rss_idle_mib": r.rss_idle_mib,
        "rss_warm_mib": r.rss_warm_mib,
        "rss_full_mib": r.rss_full_mib,
        "threads_warm": r.threads_warm,
        "threads_full": r.threads_full,
        "rss_restart_mib": r.rss_restart_mib,
        "rss_flood_mib": r.rss_flood_mib,
        "pool_keys": r.pool_keys,
        "pool_ready_s": r.pool_ready_s,
        "zk_init_s": r.zk_init_s,
        "zk_shares_s": r.zk_shares_s,
        "pool_rss_mib": r.pool_rss_mib,
        "stages_us": r.stages,
        "direct_sign_us": r.direct_sign_us,
        "callgrind": r.callgrind,
        "targets": targets,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
