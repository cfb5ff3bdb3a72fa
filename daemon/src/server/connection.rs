//! One client connection: reads frames, runs requests concurrently (up to the in-flight limit),
//! writes responses as they complete (each request's task writes its own, see [`Responder`]),
//! matched to requests by `id`.

use std::sync::Arc;
use std::time::Duration;

use custody_proto::ops::{names, HelloArgs, HelloResult};
use custody_proto::{frame, ErrorCode, FrameError, Request, Response, WireError, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout, timeout_at, Instant};

use zeroize::Zeroize;

use super::readbuf::ZeroizingBufReader;
use super::respond::Responder;
use super::shutdown::Shutdown;
use crate::auth::Peer;
use crate::ops;
use crate::stages::{self, Stage};
use crate::state::App;

/// Connection limits taken from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests processed at once.
    pub max_in_flight: usize,
    /// Largest frame body.
    pub max_frame: u32,
    /// Idle time before an idle connection is closed.
    pub idle: Duration,
    /// Time a started frame has to arrive whole.
    pub frame: Duration,
}

enum ReadFault {
    /// Peer closed, or stayed idle past the idle timeout with nothing in flight.
    Closed,
    /// A frame started but did not finish in time.
    Stalled,
    /// The header is unacceptable.
    Frame(FrameError),
    /// Socket error.
    Io,
}

/// Serves one connection until the peer leaves, misbehaves, or shutdown is signalled; then
/// finishes the requests in flight and writes their responses before returning.
pub async fn serve(stream: UnixStream, peer: Peer, app: Arc<App>, mut shutdown: Shutdown) {
    let limits = limits(&app);
    let (rd, wr) = stream.into_split();
    let mut rd = ZeroizingBufReader::new(rd);
    let tx = Arc::new(Responder::new(wr, limits.max_frame, limits.idle));
    let inflight = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut hello_done = false;

    loop {
        let permit = tokio::select! {
            biased;
            // The writer gave up (peer stopped reading): nothing can be answered any more.
            _ = tx.closed() => break,
            _ = shutdown.recv() => break,
            p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let busy = || inflight.available_permits() + 1 < limits.max_in_flight;
        let body = tokio::select! {
            r = read_frame(&mut rd, &limits, busy) => r,
            _ = shutdown.recv() => break,
            _ = tx.closed() => break,
        };
        let mut body = match body {
            Ok(b) => b,
            Err(ReadFault::Frame(FrameError::Empty)) => {
                let e = WireError::new(ErrorCode::BadRequest, "empty frame");
                if tx.send(Response::err(0, e), None).await.is_err() {
                    break;
                }
                continue;
            }
            Err(ReadFault::Frame(e)) => {
                tracing::debug!(uid = peer.uid, "closing connection: {e}");
                let _ = tx
                    .send(
                        Response::err(0, WireError::new(ErrorCode::TooLarge, e.to_string())),
                        None,
                    )
                    .await;
                break;
            }
            Err(ReadFault::Stalled) => {
                tracing::debug!(
                    uid = peer.uid,
                    "closing connection: partial frame timed out"
                );
                break;
            }
            Err(ReadFault::Closed | ReadFault::Io) => break,
        };
        // Per-uid fairness: this uid waits here while it has its share of requests in progress.
        let active = tokio::select! {
            a = app.sched.enter(peer.uid, body.len()) => match a { Some(a) => a, None => break },
            _ = shutdown.recv() => break,
        };
        let t = stages::start();
        let decoded = Request::decode(&body);
        stages::end(Stage::FrameDecode, t);
        body.zeroize();
        let req = match decoded {
            Ok(r) => r,
            Err((id, e)) => {
                app.stats.count("unknown", false);
                if tx.send(Response::err(id, e), None).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if req.op == names::HELLO {
            let resp = hello(&req, &limits);
            hello_done |= resp.result.is_ok();
            app.stats.count(names::HELLO, resp.result.is_ok());
            if tx.send(resp, None).await.is_err() {
                break;
            }
            continue;
        }
        if !hello_done {
            let e = WireError::new(
                ErrorCode::BadRequest,
                "the first request on a connection must be `hello`",
            );
            app.stats.count(&req.op, false);
            if tx.send(Response::err(req.id, e), None).await.is_err() {
                break;
            }
            continue;
        }
        let (app, peer, tx) = (app.clone(), peer.clone(), tx.clone());
        let spawned = stages::start();
        tokio::spawn(async move {
            stages::end(Stage::SpawnHop, spawned);
            let resp = ops::dispatch(&app, &peer, req).await;
            // The permit goes back once the response is written (backpressure).
            let _ = tx.send(resp, Some(permit)).await;
            drop(active);
        });
    }
    // Drain: wait until every spawned request has answered, then let the writer flush and stop.
    let _ = inflight.acquire_many(limits.max_in_flight as u32).await;
    tx.finish().await;
}

fn limits(app: &App) -> Limits {
    let s = &app.config.server;
    Limits {
        max_in_flight: s.max_in_flight,
        max_frame: s.max_frame,
        idle: s.idle_timeout(),
        frame: s.frame_timeout(),
    }
}

fn hello(req: &Request, limits: &Limits) -> Response {
    let args: HelloArgs = match req.args() {
        Ok(a) => a,
        Err(e) => return Response::err(req.id, e),
    };
    if let Some(c) = &args.client {
        tracing::debug!(client = %c.escape_default(), version = args.version, "hello");
    }
    if args.version != PROTOCOL_VERSION {
        return Response::err(
            req.id,
            WireError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "server speaks protocol version {PROTOCOL_VERSION}; client asked for {}",
                    args.version
                ),
            ),
        );
    }
    Response::ok(
        req.id,
        &HelloResult {
            version: PROTOCOL_VERSION,
            server: crate::SERVER_NAME.to_owned(),
            max_frame: limits.max_frame,
            max_in_flight: limits.max_in_flight as u32,
        },
    )
}

/// Reads one frame body. The first byte may take up to the idle timeout (indefinitely while
/// `busy()` says requests are in flight); the rest of the frame must follow within the frame
/// timeout. The header is checked before any body buffer is allocated, and the body buffer grows
/// only as bytes arrive.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    limits: &Limits,
    busy: impl Fn() -> bool,
) -> Result<Vec<u8>, ReadFault> {
    let mut header = [0u8; frame::HEADER_LEN];
    loop {
        match timeout(limits.idle, rd.read(&mut header[..1])).await {
            Ok(Ok(0)) => return Err(ReadFault::Closed),
            Ok(Ok(_)) => break,
            Ok(Err(_)) => return Err(ReadFault::Io),
            Err(_) if busy() => continue,
            Err(_) => return Err(ReadFault::Closed),
        }
    }
    let deadline = Instant::now() + limits.frame;
    match timeout_at(deadline, rd.read_exact(&mut header[1..])).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err(ReadFault::Io),
        Err(_) => return Err(ReadFault::Stalled),
    }
    let len = frame::body_len(header, limits.max_frame).map_err(ReadFault::Frame)?;
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    match timeout_at(deadline, rd.take(len as u64).read_to_end(&mut body)).await {
        Ok(Ok(n)) if n == len => Ok(body),
        Ok(_) => Err(ReadFault::Io),
        Err(_) => Err(ReadFault::Stalled),
    }
}
