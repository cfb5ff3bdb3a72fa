//! The Unix-socket server: accept loop with connection limits (global for callers with a role,
//! per uid for everyone), peer credentials, signals (SIGTERM/SIGINT drain and exit, SIGHUP
//! reloads the policy) and systemd notification.

mod connection;
mod listener;
mod respond;
mod shutdown;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_proto::{ErrorCode, Response, WireError};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::state::App;
use shutdown::Shutdown;

/// Binds the socket (or takes systemd's), serves until SIGTERM/SIGINT, then drains.
pub async fn run(app: Arc<App>) -> std::io::Result<()> {
    let s = &app.config.server;
    let (listener, origin) = listener::bind(&s.socket, s.mode())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(socket = %s.socket.display(), "listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    // Share segments of the zk pools are made in the background, after ready.
    crate::ops::warm_pools(&app);
    // Freed heap memory goes back to the system now and then (see `memory`).
    crate::memory::start_trimming();

    let (notify_tx, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let gate = Arc::new(Gate {
        slots: Arc::new(Semaphore::new(s.max_connections)),
        per_uid: Mutex::new(HashMap::new()),
        per_uid_max: s.max_connections_per_uid,
        budget: Arc::new(Semaphore::new(
            usize::try_from(s.max_buffered_bytes).unwrap_or(usize::MAX >> 4),
        )),
        uid_budgets: Mutex::new(HashMap::new()),
        uid_budget_max: usize::try_from(s.max_buffered_bytes / 4).unwrap_or(usize::MAX >> 6),
    });

    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => accept(&app, stream, &gate, &notify_tx, &done_tx),
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = hup.recv() => {
                // A rotated audit file: the chain continues in a new file at the configured path.
                if let Err(e) = app.audit.reopen() {
                    tracing::error!("audit file not reopened: {e}");
                }
                // User and group names are looked up (NSS) off the runtime threads.
                let a = app.clone();
                match tokio::task::spawn_blocking(move || a.reload_policy()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("policy reload rejected, previous policy stays: {e}")
                    }
                    Err(e) => tracing::error!("policy reload failed: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("shutting down: draining connections");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(listener);
    if let listener::Origin::Path(lock) = origin {
        let _ = std::fs::remove_file(&s.socket);
        drop(lock);
    }
    let _ = notify_tx.send(());
    drop(done_tx);
    let drain = app.config.server.drain_timeout_secs;
    if tokio::time::timeout(std::time::Duration::from_secs(drain), done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out after {drain}s; exiting with requests in flight");
    }
    let a = app.clone();
    let _ = tokio::task::spawn_blocking(move || a.audit_checkpoint()).await;
    tracing::info!("stopped");
    Ok(())
}

/// What the accept loop shares with the connections: the slots of callers with a role, the
/// connections per uid, and the budget of bytes in frames still arriving.
struct Gate {
    slots: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, usize>>,
    per_uid_max: usize,
    budget: Arc<Semaphore>,
    /// Each uid's share of `budget`: a quarter, so one uid cannot starve the others.
    uid_budgets: Mutex<HashMap<u32, Arc<Semaphore>>>,
    uid_budget_max: usize,
}

/// One connection counted against its uid; uncounted when dropped.
struct UidTicket {
    gate: Arc<Gate>,
    uid: u32,
}

impl Gate {
    /// The budget share of `uid` (made on first use; uids are few).
    fn uid_budget(&self, uid: u32) -> Arc<Semaphore> {
        let mut m = match self.uid_budgets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.uid_budget_max)))
            .clone()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        match self.per_uid.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Counts a connection of `uid`, or `None` when the uid has its quota already.
    fn enter(self: &Arc<Self>, uid: u32) -> Option<UidTicket> {
        let mut m = self.counts();
        let n = m.entry(uid).or_insert(0);
        if *n >= self.per_uid_max {
            return None;
        }
        *n += 1;
        Some(UidTicket {
            gate: self.clone(),
            uid,
        })
    }
}

impl Drop for UidTicket {
    fn drop(&mut self) {
        let mut m = self.gate.counts();
        if let Some(n) = m.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

/// Answers `busy` (id 0) on a connection that is not admitted, then closes it.
async fn refuse(mut stream: tokio::net::UnixStream, why: &str) {
    let e = WireError::new(ErrorCode::Busy, why);
    if let Ok(body) = Response::err(0, e).encode() {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    }
}

/// Admits a connection: within its uid's quota at once; then, with the caller's groups looked up
/// off the runtime threads, a caller with a role takes one of `max_connections` slots, and a
/// caller with no role at all takes none (it is served `hello` and one request, then closed).
fn accept(
    app: &Arc<App>,
    stream: tokio::net::UnixStream,
    gate: &Arc<Gate>,
    notify: &broadcast::Sender<()>,
    done: &mpsc::Sender<()>,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("no peer credentials, dropping connection: {e}");
            return;
        }
    };
    let Some(ticket) = gate.enter(cred.uid()) else {
        tracing::debug!(
            uid = cred.uid(),
            "per-uid connection limit reached; refusing"
        );
        tokio::spawn(refuse(
            stream,
            "too many connections from this uid; retry later",
        ));
        return;
    };
    let shutdown = Shutdown::new(notify.subscribe(), done.clone());
    let (app, gate) = (app.clone(), gate.clone());
    tokio::spawn(async move {
        let generation = app.policy_generation();
        let peer = connection::resolve_peer(cred.uid(), cred.gid(), cred.pid()).await;
        let roleless = app.policy().roles_of(&peer).is_empty();
        let slot = if roleless {
            None
        } else {
            match gate.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::warn!(uid = cred.uid(), "connection limit reached; refusing");
                    refuse(stream, "too many connections; retry later").await;
                    return;
                }
            }
        };
        let opts = connection::ConnOpts {
            roleless,
            budget: gate.budget.clone(),
            uid_budget: gate.uid_budget(cred.uid()),
            generation,
        };
        app.stats.connections.fetch_add(1, Ordering::Relaxed);
        connection::serve(stream, peer, app.clone(), shutdown, opts).await;
        app.stats.connections.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
        drop(ticket);
    });
}
