//! The Unix-socket server: accept loop with a connection limit, peer credentials, signals
//! (SIGTERM/SIGINT drain and exit, SIGHUP reloads the policy) and systemd notification.

mod connection;
mod listener;
mod readbuf;
mod respond;
mod shutdown;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use custody_proto::{ErrorCode, Response, WireError};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::auth::Peer;
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

    let (notify_tx, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let conns = Arc::new(Semaphore::new(s.max_connections));

    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => accept(&app, stream, &conns, &notify_tx, &done_tx),
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = hup.recv() => {
                if let Err(e) = app.reload_policy() {
                    tracing::error!("policy reload rejected, previous policy stays: {e}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("shutting down: draining connections");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(listener);
    if matches!(origin, listener::Origin::Path) {
        let _ = std::fs::remove_file(&s.socket);
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
    tracing::info!("stopped");
    Ok(())
}

fn accept(
    app: &Arc<App>,
    mut stream: tokio::net::UnixStream,
    conns: &Arc<Semaphore>,
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
    let Ok(permit) = conns.clone().try_acquire_owned() else {
        tracing::warn!(uid = cred.uid(), "connection limit reached; refusing");
        tokio::spawn(async move {
            let e = WireError::new(ErrorCode::Busy, "too many connections; retry later");
            if let Ok(body) = Response::err(0, e).encode() {
                let mut out = (body.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&body);
                let _ = stream.write_all(&out).await;
            }
        });
        return;
    };
    let shutdown = Shutdown::new(notify.subscribe(), done.clone());
    let app = app.clone();
    tokio::spawn(async move {
        let peer = Peer::from_creds(cred.uid(), cred.gid(), cred.pid());
        app.stats.connections.fetch_add(1, Ordering::Relaxed);
        connection::serve(stream, peer, app.clone(), shutdown).await;
        app.stats.connections.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    });
}
