//! One client connection: reads frames and hands each request whole to the scheduler's workers
//! (up to the in-flight limit; `ping` to a runtime task), which write the responses as they
//! complete ([`Responder`]), matched to requests by `id`.

use std::sync::Arc;
use std::time::Duration;

use custody_proto::ops::{names, HelloArgs, HelloResult};
use custody_proto::{frame, ErrorCode, FrameError, Request, Response, WireError, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use zeroize::Zeroize;

use super::respond::Responder;
use super::shutdown::Shutdown;
use crate::auth::Peer;
use crate::ops;
use crate::sched::{Refused, Work};
use crate::stages::{self, Stage};
use crate::state::App;
use custody_proto::readbuf::ZeroizingBufReader;

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

/// What the accept loop decided about a connection.
pub struct ConnOpts {
    /// The caller has no role at all: it is answered `hello` and one request (refused and
    /// audited by dispatch), then closed, and it must be quick (the frame timeout is its idle
    /// timeout). It holds no connection slot.
    pub roleless: bool,
    /// The global budget of bytes held in frames still arriving (one permit per byte).
    pub budget: Arc<Semaphore>,
    /// The caller's uid's share of it (a quarter): one uid cannot take the whole budget.
    pub uid_budget: Arc<Semaphore>,
    /// Policy generation the peer's groups were resolved at.
    pub generation: u64,
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
    /// The frame does not fit into what is left of the buffered-bytes budget.
    Budget,
}

/// Serves one connection until the peer leaves, misbehaves, or shutdown is signalled; then
/// finishes the requests in flight and writes their responses before returning.
pub async fn serve(
    stream: UnixStream,
    mut peer: Peer,
    app: Arc<App>,
    mut shutdown: Shutdown,
    opts: ConnOpts,
) {
    let mut limits = limits(&app);
    if opts.roleless {
        limits.idle = limits.idle.min(limits.frame);
        // `hello` and one request that will be refused: small frames are enough.
        limits.max_frame = limits.max_frame.min(ROLELESS_MAX_FRAME);
    }
    let mut generation = opts.generation;
    // Empty frames do not count as activity: the idle timer runs from the last real frame.
    let mut active = Instant::now();
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
            r = read_frame(&mut rd, &limits, &mut active, busy, [&opts.budget, &opts.uid_budget]) => r,
            _ = shutdown.recv() => break,
            _ = tx.closed() => break,
        };
        let (mut body, held) = match body {
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
            Err(ReadFault::Budget) => {
                tracing::debug!(uid = peer.uid, "closing connection: frame budget exhausted");
                let e = WireError::new(
                    ErrorCode::Busy,
                    "the daemon is receiving too much data at once; retry later",
                );
                let _ = tx.send(Response::err(0, e), None).await;
                break;
            }
            Err(ReadFault::Closed | ReadFault::Io) => break,
        };
        active = Instant::now();
        // Per-uid fairness: this uid waits here while it has its share of requests in progress.
        let in_progress = tokio::select! {
            a = app.sched.enter(peer.uid, body.len()) => match a { Some(a) => a, None => break },
            _ = shutdown.recv() => break,
        };
        let t = stages::start();
        let decoded = Request::decode(&body);
        stages::end(Stage::FrameDecode, t);
        body.zeroize();
        drop(held);
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
        // After a policy reload, the caller's groups are looked up again (off the runtime
        // threads): a member removed from a group loses the group's roles on open connections.
        let now_gen = app.policy_generation();
        if now_gen != generation {
            generation = now_gen;
            peer = resolve_peer(peer.uid, peer.gid, peer.pid).await;
        }
        if req.op == names::PING {
            // Nothing to schedule: answered by a task of the runtime.
            let (app, peer, tx) = (app.clone(), peer.clone(), tx.clone());
            let spawned = stages::start();
            tokio::spawn(async move {
                stages::end(Stage::SpawnHop, spawned);
                let resp = ops::dispatch(&app, &peer, req).await;
                // The permit goes back once the response is written (backpressure).
                let _ = tx.send(resp, Some(permit)).await;
                drop(in_progress);
            });
        } else {
            let deadline = std::time::Instant::now() + ops::queue_limit(&app, &req.op);
            let uid = peer.uid;
            let work = RequestWork {
                app: app.clone(),
                peer: peer.clone(),
                req,
                tx: tx.clone(),
                permit,
                in_progress,
                rt: Handle::current(),
                queued: stages::start(),
            };
            // A refusal (queue full, shutting down) is answered by the work itself.
            let _ = app.sched.submit_work(uid, deadline, Box::new(work));
        }
        if opts.roleless {
            break;
        }
    }
    // Drain: wait until every spawned request has answered, then let the writer flush and stop.
    let _ = inflight.acquire_many(limits.max_in_flight as u32).await;
    tx.finish().await;
}

/// A request handed whole to a scheduler worker ([`crate::sched`]): decoded there, authorized,
/// run, audited, and its response written from there ([`Responder::send_now`]).
struct RequestWork {
    app: Arc<App>,
    peer: Peer,
    req: Request,
    tx: Arc<Responder>,
    /// The connection's in-flight slot: back once the response is written.
    permit: OwnedSemaphorePermit,
    /// The uid's budget share ([`crate::sched::Scheduler::enter`]): back once answered.
    in_progress: crate::sched::Active,
    rt: Handle,
    queued: Option<std::time::Instant>,
}

impl RequestWork {
    /// Writes the response `respond` makes of the request (from this thread), and gives back
    /// the request's in-flight slot and budget.
    fn answer(self, respond: impl FnOnce(&Arc<App>, &Peer, Request, &Handle) -> Response) {
        let RequestWork {
            app,
            peer,
            req,
            tx,
            permit,
            in_progress,
            rt,
            ..
        } = self;
        let resp = respond(&app, &peer, req, &rt);
        tx.send_now(resp, Some(permit), &rt);
        drop(in_progress);
    }
}

impl Work for RequestWork {
    fn run(self: Box<Self>) {
        stages::end(Stage::QueueHop, self.queued);
        self.answer(|app, peer, req, rt| {
            let id = req.id;
            // Ops are async (a few wait on timers or the runtime's blocking pool): driven to the
            // end here, on this worker, with the runtime's I/O and timers serving them.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(ops::dispatch(app, peer, req))
            }))
            .unwrap_or_else(|_| {
                let e = WireError::new(
                    ErrorCode::Internal,
                    "operation failed: the request panicked",
                );
                Response::err(id, e)
            })
        });
    }

    /// Answered without running, as the op would have been refused (`busy`, timed out,
    /// shutting down), after its rights are checked.
    fn refuse(self: Box<Self>, why: Refused) {
        self.answer(|app, peer, req, _| ops::refuse(app, peer, req, why));
    }

    fn abandoned(&self) -> bool {
        self.tx.is_failed()
    }

    /// The connection is gone: the request's bytes (a plaintext to seal) are wiped unrun.
    fn discard(mut self: Box<Self>) {
        ops::scrub_value(&mut self.req.args);
    }
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

/// The caller's identity with its groups from the group database, looked up on a blocking
/// thread (NSS may read files or ask a directory service).
pub async fn resolve_peer(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
    match tokio::task::spawn_blocking(move || Peer::from_creds(uid, gid, pid)).await {
        Ok(p) => p,
        Err(_) => Peer {
            uid,
            gid,
            pid,
            groups: Vec::new(),
        },
    }
}

/// Largest frame a caller without any role may send (`hello` and one refused request).
const ROLELESS_MAX_FRAME: u32 = 64 * 1024;

/// Bytes of a frame taken from the budgets at a time, as they arrive.
const BUDGET_STEP: usize = 64 * 1024;

/// Reads one frame body. The first byte may come up to the idle timeout after `active` (the last
/// real frame; indefinitely while `busy()` says requests are in flight); the rest of the frame
/// must follow within the frame timeout. The header is checked before any body buffer is
/// allocated; the body is then read in steps of [`BUDGET_STEP`] bytes, each taken from the
/// global budget and the uid's share before it is read (no room: `busy`), so a frame holds budget
/// for the bytes it has actually sent, and the body buffer grows only as bytes arrive.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    limits: &Limits,
    active: &mut Instant,
    busy: impl Fn() -> bool,
    budgets: [&Arc<Semaphore>; 2],
) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), ReadFault> {
    let mut header = [0u8; frame::HEADER_LEN];
    loop {
        match timeout_at(*active + limits.idle, rd.read(&mut header[..1])).await {
            Ok(Ok(0)) => return Err(ReadFault::Closed),
            Ok(Ok(_)) => break,
            Ok(Err(_)) => return Err(ReadFault::Io),
            Err(_) if busy() => {
                *active = Instant::now();
                continue;
            }
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
    let mut body = Vec::with_capacity(len.min(BUDGET_STEP));
    let mut held = Vec::with_capacity(2 * len.div_ceil(BUDGET_STEP));
    while body.len() < len {
        let step = (len - body.len()).min(BUDGET_STEP);
        for b in budgets {
            held.push(
                b.clone()
                    .try_acquire_many_owned(step as u32)
                    .map_err(|_| ReadFault::Budget)?,
            );
        }
        match timeout_at(
            deadline,
            (&mut *rd).take(step as u64).read_to_end(&mut body),
        )
        .await
        {
            Ok(Ok(n)) if n == step => {}
            Ok(_) => return Err(ReadFault::Io),
            Err(_) => return Err(ReadFault::Stalled),
        }
    }
    Ok((body, held))
}
