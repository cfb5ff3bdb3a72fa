//! `custody-bench`: daemon-vs-direct benchmarks (run by `make bench`).
//!
//! In one run it provisions its own swtpm, SoftHSM token and `custodyd` (the binary next to this
//! executable, driven over its socket with the pipelining client) and measures, for each
//! operation and number of callers, the rate through the daemon and the rate of the same
//! operation called directly on the backend in this process (interleaved: direct, daemon, direct,
//! daemon…), the daemon's latency percentiles, and the CPU time each costs per operation. Then:
//! a flood from one uid against another uid's signatures, memory, start-up time with a large
//! key pool, the daemon's own per-stage timing and (with valgrind) its instruction counts per
//! request. Results are printed, written to `BENCHMARKS.md` at the workspace root (or
//! `BENCH_OUT`) and, every figure, to `target/bench/report.json` (or `BENCH_JSON`).
//!
//! Environment: `BENCH_SECS` (one measurement, default 1.5), `BENCH_REPS` (measurements per
//! case, median reported; default 3), `BENCH_POOL_KEYS` (default 10000), `BENCH_CALLGRIND=0`
//! (skip valgrind), `BENCH_CONFIG_EXTRA` (TOML appended to the daemon's config, for A/B runs),
//! `BENCH_QUICK=1` (ping and HSM sign rows, the stage timing and the flood only,
//! while iterating), `BENCH_SMOKE=1` (tiny durations and counts: checks the harness, not the
//! daemon; `make test` runs it).
//!
//! This is a benchmark, not a test: nothing here asserts on timings.

mod phases;
mod report;

use std::path::PathBuf;
use std::time::Duration;

// `crate::measure` keeps naming the shared module.
use custody_bench::measure;
use custody_bench::sections;
use custody_testkit::workspace_root;

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Duration of one measurement.
    pub dur: Duration,
    /// Measurements per case.
    pub reps: usize,
    /// Caller counts for the HSM operations.
    pub callers: Vec<usize>,
    /// Keys in the start-up pool.
    pub pool_keys: usize,
    /// Run the callgrind phase.
    pub callgrind: bool,
    /// Smoke run (harness check).
    pub smoke: bool,
    /// Quick run: ping and HSM sign rows and the stage timing only (`BENCH_QUICK=1`).
    pub quick: bool,
    /// Only the rows whose operation contains one of these (`BENCH_ONLY`, comma-separated; for
    /// A/B runs while tuning): the other phases are skipped and nothing is written.
    pub only: Vec<String>,
    /// Markdown output.
    pub out_md: PathBuf,
    /// JSON output.
    pub out_json: PathBuf,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Settings {
    fn from_env() -> Settings {
        let smoke = std::env::var("BENCH_SMOKE").is_ok_and(|v| v == "1");
        let root = workspace_root();
        let secs = env_num::<f64>("BENCH_SECS")
            .filter(|s| *s > 0.0)
            .unwrap_or(if smoke { 0.05 } else { 1.5 });
        Settings {
            dur: Duration::from_secs_f64(secs),
            reps: env_num("BENCH_REPS")
                .filter(|r| *r > 0)
                .unwrap_or(if smoke { 1 } else { 3 }),
            callers: if smoke {
                vec![1, 2]
            } else {
                vec![1, 2, 4, 16, 64]
            },
            pool_keys: env_num("BENCH_POOL_KEYS").unwrap_or(if smoke { 20 } else { 10_000 }),
            callgrind: !smoke
                && std::env::var("BENCH_CALLGRIND").map_or(true, |v| v != "0")
                && std::process::Command::new("valgrind")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
            smoke,
            quick: std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1"),
            only: std::env::var("BENCH_ONLY")
                .map(|v| {
                    v.split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            out_md: std::env::var_os("BENCH_OUT")
                .map(Into::into)
                .unwrap_or_else(|| root.join("BENCHMARKS.md")),
            out_json: std::env::var_os("BENCH_JSON")
                .map(Into::into)
                .unwrap_or_else(|| root.join("target/bench/report.json")),
        }
    }
}

/// Progress on stderr.
pub fn log(msg: &str) {
    eprintln!("custody-bench: {msg}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `custody-bench --probe SOCKET KEY N`: the second uid's signer of the flood phase.
    if args.get(1).map(String::as_str) == Some("--probe") {
        phases::probe_main(&args[2..]);
        return;
    }
    let settings = Settings::from_env();
    let results = phases::run(&settings);
    if !settings.only.is_empty() {
        return;
    }
    let md = report::markdown(&results, &settings);
    print!("{md}");
    // The peer section (`make bench-peers`) of the file being replaced is carried over.
    let old = std::fs::read_to_string(&settings.out_md).unwrap_or_default();
    std::fs::write(&settings.out_md, sections::keep_peers(&old, &md)).expect("write BENCHMARKS.md");
    if let Some(dir) = settings.out_json.parent() {
        std::fs::create_dir_all(dir).expect("report directory");
    }
    std::fs::write(&settings.out_json, report::json(&results, &settings)).expect("write report");
    log(&format!(
        "wrote {} and {}",
        settings.out_md.display(),
        settings.out_json.display()
    ));
}
