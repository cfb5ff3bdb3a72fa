//! Per-request stage timing, for the benchmark's breakdown of where a request's time goes.
//!
//! Off unless the daemon starts with `CUSTODYD_STAGE_TIMING=1`; then each stage below adds its
//! duration to a counter, and the daemon prints the means as one JSON line on stderr when it
//! exits (`custodyd stage timing: {...}`). Off, a stage costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A step of a request's path through the daemon.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// CBOR decode of the request frame (`Request::decode`).
    FrameDecode,
    /// From the reader spawning the request's task to that task running.
    SpawnHop,
    /// Decoding the op's arguments and authorizing its rights.
    ArgsAuthorize,
    /// From handing work to the scheduler to a worker thread starting it.
    QueueHop,
    /// Registry lookup of the key (`KeyManager::resolve`).
    Registry,
    /// Borrowing a PKCS#11 session from the pool.
    SessionCheckout,
    /// The PKCS#11 call itself (with the key-handle lookup).
    TokenCall,
    /// From a worker finishing a job to the request's task resuming.
    ReturnHop,
    /// Encoding the typed result as a CBOR value.
    ResultEncode,
    /// Writing the audit record.
    Audit,
    /// The whole of `dispatch` (args decode to audit).
    Dispatch,
    /// Response CBOR encode, framing and the socket write (by the request's own task, or
    /// queued for the task writing already).
    EncodeWrite,
}

const STAGES: [Stage; 12] = [
    Stage::FrameDecode,
    Stage::SpawnHop,
    Stage::ArgsAuthorize,
    Stage::QueueHop,
    Stage::Registry,
    Stage::SessionCheckout,
    Stage::TokenCall,
    Stage::ReturnHop,
    Stage::ResultEncode,
    Stage::Audit,
    Stage::Dispatch,
    Stage::EncodeWrite,
];

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::FrameDecode => "frame_decode",
            Stage::SpawnHop => "spawn_hop",
            Stage::ArgsAuthorize => "args_authorize",
            Stage::QueueHop => "queue_hop",
            Stage::Registry => "registry",
            Stage::SessionCheckout => "session_checkout",
            Stage::TokenCall => "token_call",
            Stage::ReturnHop => "return_hop",
            Stage::ResultEncode => "result_encode",
            Stage::Audit => "audit",
            Stage::Dispatch => "dispatch",
            Stage::EncodeWrite => "encode_write",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];
static COUNT: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// Turns timing on when `CUSTODYD_STAGE_TIMING=1` (call once at start).
pub fn init_from_env() {
    if std::env::var_os("CUSTODYD_STAGE_TIMING").is_some_and(|v| v == "1") {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// The start of a stage: `Some(now)` when timing is on.
#[inline]
pub fn start() -> Option<Instant> {
    if ENABLED.load(Ordering::Relaxed) {
        Some(Instant::now())
    } else {
        None
    }
}

/// Ends `stage` started at `t` (nothing when timing is off).
#[inline]
pub fn end(stage: Stage, t: Option<Instant>) {
    if let Some(t) = t {
        let i = stage as usize;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        NANOS[i].fetch_add(ns, Ordering::Relaxed);
        COUNT[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The means so far as one JSON object: `{stage: {"n": count, "mean_us": µs}}`; None when off.
pub fn report() -> Option<String> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let parts: Vec<String> = STAGES
        .iter()
        .map(|s| {
            let i = *s as usize;
            let n = COUNT[i].load(Ordering::Relaxed);
            let ns = NANOS[i].load(Ordering::Relaxed);
            let mean = if n == 0 {
                0.0
            } else {
                ns as f64 / n as f64 / 1000.0
            };
            format!("\"{}\":{{\"n\":{n},\"mean_us\":{mean:.2}}}", s.name())
        })
        .collect();
    Some(format!("{{{}}}", parts.join(",")))
}
