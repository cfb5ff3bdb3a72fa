//! Client for custodyd: an async client that pipelines requests on one connection (responses
//! matched by `id`), and a blocking wrapper for synchronous callers.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use custody_proto::ops::*;
use custody_proto::readbuf::ZeroizingBufReader;
use custody_proto::{frame, Request, Response, WireError, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use zeroize::Zeroize;

pub use custody_proto as proto;

pub mod audit;
mod reconnect;

pub use reconnect::{Reconnecting, RECONNECT_WAIT};

/// Default socket path when neither `--socket` nor `$CUSTODY_SOCKET` is given.
pub const DEFAULT_SOCKET: &str = "/run/custodyd/custodyd.sock";

/// The largest response frame a client accepts whatever the server says in `hello`.
pub const MAX_RESPONSE_FRAME: u32 = 256 * 1024 * 1024;

/// The uid the daemon must run as, from `$CUSTODY_SERVER_UID` (unset or empty: not checked).
pub fn server_uid_from_env() -> Result<Option<u32>, String> {
    match std::env::var("CUSTODY_SERVER_UID") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("CUSTODY_SERVER_UID `{v}` is not a numeric uid")),
        _ => Ok(None),
    }
}

/// The socket path from `$CUSTODY_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn default_socket() -> PathBuf {
    std::env::var_os("CUSTODY_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("{0}")]
    Server(WireError),
    /// The server's bytes did not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed before the response came (the daemon closed it or went away).
    #[error("protocol error: {0}")]
    Closed(&'static str),
}

impl ClientError {
    /// The server's error, if that is what this is.
    pub fn server(&self) -> Option<&WireError> {
        match self {
            ClientError::Server(e) => Some(e),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>>;

/// How long `connect` retries while the daemon's listen queue is full (EAGAIN).
pub const CONNECT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// An async, pipelining connection. Clone-free: share it behind an `Arc`; every method takes `&self`.
pub struct Client {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Frames waiting to be written: whoever holds `writer` writes them all in one go, so
    /// requests sent together from many tasks share a system call.
    outbox: Mutex<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    max_frame: u32,
    hello: HelloResult,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects and negotiates the protocol version with `hello`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_checked(path, None).await
    }

    /// Like [`Client::connect`], but first checks that the process listening on the socket runs
    /// as `server_uid` (its peer credentials), when given: a socket put in the daemon's place by
    /// another user gets no request (and no plaintext).
    pub async fn connect_checked(
        path: impl AsRef<Path>,
        server_uid: Option<u32>,
    ) -> Result<Client, ClientError> {
        // A full listen queue (a burst of connections, or a flood) answers EAGAIN: retried
        // with backoff for up to CONNECT_RETRY before giving up.
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(5);
        let stream = loop {
            match UnixStream::connect(path.as_ref()).await {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && started.elapsed() < CONNECT_RETRY =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot connect to {}: {e}", path.as_ref().display()),
                    )
                    .into())
                }
            }
        };
        if let Some(want) = server_uid {
            let got = stream.peer_cred()?.uid();
            if got != want {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is served by uid {got}, not the expected server uid {want}",
                        path.as_ref().display()
                    ),
                )));
            }
        }
        let (rd, wr) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let limit = Arc::new(AtomicU32::new(DEFAULT_MAX_FRAME));
        let reader = tokio::spawn(read_loop(rd, pending.clone(), limit.clone()));
        let mut client = Client {
            writer: tokio::sync::Mutex::new(wr),
            outbox: Mutex::new(Vec::new()),
            pending,
            next_id: AtomicU64::new(1),
            max_frame: DEFAULT_MAX_FRAME,
            hello: HelloResult {
                version: 0,
                server: String::new(),
                max_frame: DEFAULT_MAX_FRAME,
                max_in_flight: 1,
            },
            reader,
        };
        let hello = client
            .call::<Hello>(&HelloArgs {
                version: PROTOCOL_VERSION,
                client: Some(concat!("custody-client ", env!("CARGO_PKG_VERSION")).into()),
            })
            .await?;
        client.max_frame = hello.max_frame;
        // Responses are bounded by what the server says it allows, within the client's own cap.
        limit.store(
            hello.max_frame.clamp(
                DEFAULT_MAX_FRAME.min(MAX_RESPONSE_FRAME),
                MAX_RESPONSE_FRAME,
            ),
            Ordering::Relaxed,
        );
        client.hello = hello;
        Ok(client)
    }

    /// What the server said in `hello`.
    pub fn server_hello(&self) -> &HelloResult {
        &self.hello
    }

    /// Sends one request of op `O` and waits for its typed result; other calls may be in flight
    /// meanwhile. The per-op methods ([`Client::sign`], …) are this with the op fixed.
    pub async fn call<O: Op>(&self, args: &O::Args) -> Result<O::Result, ClientError> {
        self.call_untyped(O::NAME, args).await
    }

    /// Sends a request with any op name and argument type (for tests and tools that speak to
    /// the protocol below the typed layer); the result is decoded as `R`.
    pub async fn call_untyped<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let resp = self.call_raw(op, args).await?;
        resp.into_result().map_err(ClientError::Server)
    }

    /// Like [`Client::call_untyped`] but returns the raw response.
    pub async fn call_raw<A: Serialize>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request::new(id, op, args).map_err(ClientError::Server)?;
        let body = req.encode().map_err(ClientError::Server)?;
        let bytes = frame::encode(&body, self.max_frame)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            match p.as_mut() {
                Some(m) => m.insert(id, tx),
                None => return Err(ClientError::Closed("connection closed")),
            };
        }
        let written = self.write_frame(bytes).await;
        if let Err(e) = written {
            // The server may have answered with a connection-level error (e.g. `busy`) and
            // closed before we wrote: the reader hands that frame to every waiter.
            return match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
                Ok(Ok(resp)) => Ok(resp),
                _ => {
                    if let Some(m) = lock(&self.pending).as_mut() {
                        m.remove(&id);
                    }
                    Err(e.into())
                }
            };
        }
        rx.await
            .map_err(|_| ClientError::Closed("connection closed before the response"))
    }
}

impl Client {
    /// Queues a frame and writes everything queued unless another task is writing (it then
    /// writes this frame too, before it lets go of the socket).
    async fn write_frame(&self, mut frame: Vec<u8>) -> std::io::Result<()> {
        frame::append_wiping(&mut lock(&self.outbox), &[&frame]);
        frame.zeroize();
        loop {
            let Ok(mut w) = self.writer.try_lock() else {
                return Ok(());
            };
            loop {
                let bytes = std::mem::take(&mut *lock(&self.outbox));
                if bytes.is_empty() {
                    break;
                }
                // Other tasks' frames ride on this write: if it is abandoned half-way (this
                // task's future dropped), they are lost and the stream is out of step, so every
                // request waiting on this connection is failed instead of waiting forever.
                let mut batch = Batch {
                    client: self,
                    bytes,
                    done: false,
                };
                let r = w.write_all(&batch.bytes).await;
                batch.done = true;
                r?;
            }
            drop(w);
            // A frame queued while this task held the socket was left to it.
            if lock(&self.outbox).is_empty() {
                return Ok(());
            }
        }
    }
}

/// Frames being written by one task for several ([`Client::write_frame`]); wiped when dropped,
/// and if dropped before the write finished, the connection is given up.
struct Batch<'a> {
    client: &'a Client,
    bytes: Vec<u8>,
    done: bool,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if !self.done {
            // Dropping the senders answers every waiter "connection closed"; later calls are
            // refused the same way.
            lock(&self.client.pending).take();
            lock(&self.client.outbox).zeroize();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn read_loop(rd: OwnedReadHalf, pending: Pending, limit: Arc<AtomicU32>) {
    // One socket read serves several pipelined responses; bytes are wiped once decoded (a
    // response may carry a plaintext).
    let mut rd = ZeroizingBufReader::new(rd);
    // The last connection-level error (id 0, e.g. `busy`, `too_large`): the server keeps
    // answering after one, so it fails only the requests still unanswered when the connection
    // closes (PROTOCOL.md §3.3), and gives them its reason instead of a bare "closed".
    let mut conn_error: Option<Response> = None;
    loop {
        let mut header = [0u8; frame::HEADER_LEN];
        if rd.read_exact(&mut header).await.is_err() {
            break;
        }
        // A frame above the limit closes the connection before anything is allocated; the
        // buffer grows only as bytes arrive.
        let Ok(len) = frame::body_len(header, limit.load(Ordering::Relaxed)) else {
            break;
        };
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        match (&mut rd).take(len as u64).read_to_end(&mut body).await {
            Ok(n) if n == len => {}
            _ => break,
        }
        let resp = Response::decode(&body);
        body.zeroize();
        let Ok(resp) = resp else {
            break;
        };
        let mut p = lock(&pending);
        let Some(map) = p.as_mut() else { break };
        if let Some(tx) = map.remove(&resp.id) {
            let _ = tx.send(resp);
        } else if resp.id == 0 {
            conn_error = Some(resp);
        }
    }
    // Dropping the senders wakes every waiter with "connection closed", or with the
    // connection-level error that preceded the close.
    if let Some(map) = lock(&pending).take() {
        if let Some(e) = conn_error {
            for (_, tx) in map {
                let _ = tx.send(e.clone());
            }
        }
    }
}

/// A blocking wrapper with its own single-threaded runtime.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    inner: Client,
}

impl BlockingClient {
    /// Connects and says `hello`.
    pub fn connect(path: impl AsRef<Path>) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_checked(path, None)
    }

    /// Connects, checks the server's uid when given (see [`Client::connect_checked`]) and says
    /// `hello`.
    pub fn connect_checked(
        path: impl AsRef<Path>,
        server_uid: Option<u32>,
    ) -> Result<BlockingClient, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = rt.block_on(Client::connect_checked(path, server_uid))?;
        Ok(BlockingClient { rt, inner })
    }

    /// Sends one request of op `O` and waits for its typed result.
    pub fn call<O: Op>(&self, args: &O::Args) -> Result<O::Result, ClientError> {
        self.rt.block_on(self.inner.call::<O>(args))
    }

    /// Sends a request with any op name and argument type; see [`Client::call_untyped`].
    pub fn call_untyped<A: Serialize, R: DeserializeOwned>(
        &self,
        op: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        self.rt.block_on(self.inner.call_untyped(op, args))
    }

    /// The async client underneath.
    pub fn inner(&self) -> &Client {
        &self.inner
    }
}

/// One typed method per operation, generated from the op list in `custody_proto`.
macro_rules! client_methods {
    ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
         |$a:ident| $access:expr); )*) => {
        impl Client {
            $(
                #[doc = concat!("`", $name, "`.")]
                pub async fn $method(&self, args: &$args) -> Result<$res, ClientError> {
                    self.call::<$ty>(args).await
                }
            )*
        }

        impl BlockingClient {
            $(
                #[doc = concat!("`", $name, "`.")]
                pub fn $method(&self, args: &$args) -> Result<$res, ClientError> {
                    self.call::<$ty>(args)
                }
            )*
        }
    };
}

custody_proto::for_each_op!(client_methods);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fake server: answers `hello`, then holds the connection open without reading.
    async fn server_that_stops_reading(listener: tokio::net::UnixListener) {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut header = [0u8; frame::HEADER_LEN];
        s.read_exact(&mut header).await.expect("hello header");
        let mut body = vec![0; u32::from_be_bytes(header) as usize];
        s.read_exact(&mut body).await.expect("hello body");
        let hello = Request::decode(&body).expect("hello request");
        let resp = Response::ok(
            hello.id,
            &HelloResult {
                version: PROTOCOL_VERSION,
                server: "fake".into(),
                max_frame: 64 << 20,
                max_in_flight: 16,
            },
        );
        let body = resp.encode().expect("encode");
        s.write_all(&frame::encode(&body, u32::MAX).expect("frame"))
            .await
            .expect("hello response");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    /// Frames sent together go out in one write by whichever task holds the socket; if that
    /// task is cancelled half-way through, the requests it carried for others are answered
    /// "connection closed" instead of being waited for forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_abandoned_half_way_fails_every_waiter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(server_that_stops_reading(listener));
        let c = Arc::new(Client::connect(&path).await.expect("connect"));
        // 8 MiB fill the socket: this write cannot finish.
        let big = c.clone();
        let writer = tokio::spawn(async move {
            let data = vec![1; 8 << 20];
            big.call_raw(names::PING, &PingArgs { data }).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Queued behind it, for the blocked task to write.
        let small = c.clone();
        let waiter = tokio::spawn(async move {
            small
                .call_raw(names::PING, &PingArgs { data: vec![2] })
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.abort();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting request is answered, not left hanging")
            .expect("task");
        assert!(matches!(r, Err(ClientError::Closed(_))), "{r:?}");
        let later = c.call_raw(names::PING, &PingArgs { data: vec![3] }).await;
        assert!(matches!(later, Err(ClientError::Closed(_))), "{later:?}");
        server.abort();
    }
}
