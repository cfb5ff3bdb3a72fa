//! [`Flood`]: one uid's many pipelining connections repeating one request, in the background,
//! counting the answers by outcome (the fairness test and the benchmark's flood row).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use custody_client::Client;
use custody_proto::ErrorCode;
use serde::Serialize;

/// Answers a [`Flood`] received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloodCounts {
    /// Successful answers.
    pub ok: u64,
    /// `backend_unavailable` answers (timeouts: the flood's own work did not finish in time).
    pub timed_out: u64,
    /// `busy` answers (a scheduler queue was full).
    pub busy: u64,
    /// Any other outcome (error code or transport error), first few.
    pub other: Vec<String>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    timed_out: AtomicU64,
    busy: AtomicU64,
    other: std::sync::Mutex<Vec<String>>,
}

/// A running flood; [`Flood::stop`] ends it and returns the counts.
pub struct Flood {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Opens `conns` connections to `socket` (as this process's uid) and keeps `depth` requests
    /// `op(args)` in flight on each until stopped.
    pub fn start<A>(socket: &Path, conns: usize, depth: usize, op: &'static str, args: A) -> Flood
    where
        A: Serialize + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let socket = socket.to_owned();
        let args = Arc::new(args);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("flood runtime");
            rt.block_on(async move {
                let mut clients = Vec::new();
                for _ in 0..conns {
                    let c = Client::connect(&socket)
                        .await
                        .unwrap_or_else(|e| panic!("flood connect: {e}"));
                    clients.push(Arc::new(c));
                }
                let _ = ready_tx.send(());
                let mut set = tokio::task::JoinSet::new();
                for c in &clients {
                    for _ in 0..depth {
                        let (c, s, args) = (c.clone(), s.clone(), args.clone());
                        set.spawn(async move {
                            while !s.stop.load(Ordering::Relaxed) {
                                let outcome = c.call_raw(op, &*args).await;
                                let code = match outcome {
                                    Ok(r) => match r.result {
                                        Ok(_) => None,
                                        Err(e) => Some(
                                            e.code()
                                                .map_or(e.code.clone(), |c| c.as_str().to_owned()),
                                        ),
                                    },
                                    Err(e) => Some(format!("transport: {e}")),
                                };
                                match code.as_deref() {
                                    None => &s.ok,
                                    Some(c) if c == ErrorCode::BackendUnavailable.as_str() => {
                                        &s.timed_out
                                    }
                                    Some(c) if c == ErrorCode::Busy.as_str() => &s.busy,
                                    Some(other) => {
                                        let mut o = s.other.lock().expect("lock");
                                        if o.len() < 8 {
                                            o.push(other.to_owned());
                                        }
                                        drop(o);
                                        // A broken connection stops this task.
                                        if other.starts_with("transport") {
                                            return;
                                        }
                                        continue;
                                    }
                                }
                                .fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                }
                while set.join_next().await.is_some() {}
            });
        });
        ready_rx
            .recv()
            .expect("the flood's connections did not open");
        Flood {
            shared,
            thread: Some(thread),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> FloodCounts {
        let s = &self.shared;
        FloodCounts {
            ok: s.ok.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            busy: s.busy.load(Ordering::Relaxed),
            other: s.other.lock().expect("lock").clone(),
        }
    }

    /// Stops sending, waits for every answer still due, returns the final counts.
    pub fn stop(mut self) -> FloodCounts {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("flood thread");
        }
        self.counts()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
