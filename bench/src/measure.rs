//! Measurement primitives: rates, latency percentiles, process CPU time and memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_testkit::Client;
use serde::Serialize;

/// A daemon measurement: responses per second and every call's latency.
pub struct DaemonRun {
    /// Responses per second, all connections together.
    pub rate: f64,
    /// Responses counted.
    pub ops: u64,
    /// Latency of each call, µs.
    pub lat_us: Vec<f64>,
}

/// Calls `f` on `threads` threads for `dur`; returns (calls per second, calls).
pub fn direct_rate<F: Fn() + Sync>(threads: usize, dur: Duration, f: &F) -> (f64, u64) {
    let count = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + dur;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut n = 0u64;
                // At least one call, even when this thread starts late on a loaded machine.
                let mut first = true;
                while std::mem::take(&mut first) || Instant::now() < end {
                    f();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let n = count.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// Calls `f(i)` on `threads` threads (`i` = the thread's index, e.g. to pick its own client)
/// for `dur`, timing every call: a blocking caller's rate and latencies.
pub fn thread_run<F: Fn(usize) + Sync>(threads: usize, dur: Duration, f: &F) -> DaemonRun {
    let start = Instant::now();
    let end = start + dur;
    let lat_us: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    // At least one call, even when this thread starts late on a loaded machine.
                    let mut first = true;
                    while std::mem::take(&mut first) || Instant::now() < end {
                        let t = Instant::now();
                        f(i);
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("caller thread"))
            .collect()
    });
    let ops = lat_us.len() as u64;
    DaemonRun {
        rate: ops as f64 / start.elapsed().as_secs_f64(),
        ops,
        lat_us,
    }
}

/// Sends `op(args)` through every client for `dur`, `depth` requests in flight on each
/// connection; panics on an error response.
pub async fn daemon_rate<A>(
    clients: &[Arc<Client>],
    depth: usize,
    dur: Duration,
    op: &'static str,
    args: &Arc<A>,
) -> DaemonRun
where
    A: Serialize + Send + Sync + 'static,
{
    let start = Instant::now();
    let end = start + dur;
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        for _ in 0..depth {
            let c = c.clone();
            let args = args.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                // At least one call, even when this thread starts late on a loaded machine.
                let mut first = true;
                while std::mem::take(&mut first) || Instant::now() < end {
                    let t = Instant::now();
                    let r = c.call_raw(op, &*args).await.expect("daemon call");
                    if let Err(e) = r.result {
                        panic!("{op} failed through the daemon: {e:?}");
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                lat
            });
        }
    }
    let mut lat_us = Vec::new();
    while let Some(l) = set.join_next().await {
        lat_us.extend(l.expect("bench task"));
    }
    let ops = lat_us.len() as u64;
    DaemonRun {
        rate: ops as f64 / start.elapsed().as_secs_f64(),
        ops,
        lat_us,
    }
}

/// Median duration of one call of `f`, µs, over `n` calls on this thread; with `idle`, the
/// thread sleeps that long before each call, as a daemon's thread does between the requests of
/// one caller who waits for each answer.
pub fn call_us<F: Fn()>(f: &F, idle: Option<Duration>, n: usize) -> f64 {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if let Some(d) = idle {
            std::thread::sleep(d);
        }
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    median(v)
}

/// The median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`-th percentile (0–100) of `v`, nearest rank (0 when empty).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// CPU time (user + system) used so far by process `pid` (`None`: this process), seconds.
pub fn cpu_secs(pid: Option<u32>) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(&path) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let t = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks
}

/// Context switches (voluntary and involuntary) of every thread of process `pid` so far.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|st| {
            st.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Threads of process `pid` now (0 when it cannot be read).
pub fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size of process `pid`, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&mut [], 99.0), 0.0);
    }

    #[test]
    fn thread_run_times_every_call_of_every_thread() {
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let run = thread_run(3, Duration::from_millis(50), &|i| {
            seen.lock().expect("lock").insert(i);
            std::thread::sleep(Duration::from_millis(1));
        });
        assert_eq!(*seen.lock().expect("lock"), [0, 1, 2].into());
        assert_eq!(run.ops as usize, run.lat_us.len());
        assert!(run.ops >= 3 && run.rate > 0.0);
        assert!(run.lat_us.iter().all(|l| *l >= 1000.0));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let t0 = cpu_secs(None);
        let mut x = 0u64;
        let end = Instant::now() + Duration::from_millis(100);
        // At least one call, even when this thread starts late on a loaded machine.
        let mut first = true;
        while std::mem::take(&mut first) || Instant::now() < end {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_secs(None) > t0);
        assert!(rss_mib(std::process::id()) > 0.0);
        assert!(threads(std::process::id()) >= 1);
        let s0 = ctx_switches(std::process::id());
        std::thread::sleep(Duration::from_millis(5));
        assert!(ctx_switches(std::process::id()) > s0);
    }
}
