//! The wire protocol by hand on a plain `UnixStream` ([`RawConn`]), for tests that need to
//! misbehave (garbage, truncated frames, bad CBOR…), and small helpers on responses and errors.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use custody_client::ClientError;
use custody_proto::ops::{names, HelloArgs, PingArgs, PingResult};
use custody_proto::{frame, ErrorCode, Request, Response, PROTOCOL_VERSION};

/// A hand-driven protocol connection on a blocking `UnixStream`: send arbitrary bytes or frames,
/// read response frames one by one, detect a closed connection.
pub struct RawConn {
    /// The stream (public for tests that want to do something unusual).
    pub stream: UnixStream,
}

/// What reading a response frame produced.
#[derive(Debug)]
pub enum Reply {
    /// A decoded response.
    Frame(Response),
    /// The server closed the connection (EOF or reset) before a whole frame arrived.
    Closed,
    /// Nothing arrived within the timeout.
    Timeout,
}

impl RawConn {
    /// Connects (default read timeout 10 s).
    pub fn connect(path: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawConn { stream })
    }

    /// Writes raw bytes.
    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// Writes a frame: 4-byte big-endian length, then `body`.
    pub fn send_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.send_bytes(&frame_bytes(body))
    }

    /// Sends a request with serde-serialisable args.
    pub fn send<A: serde::Serialize>(
        &mut self,
        id: u64,
        op: &str,
        args: &A,
    ) -> std::io::Result<()> {
        self.send_frame(&request_body(id, op, args))
    }

    /// Sends `hello {version}` with id 0xfeed.
    pub fn send_hello(&mut self, version: u32) -> std::io::Result<()> {
        self.send(
            0xfeed,
            names::HELLO,
            &HelloArgs {
                version,
                client: Some("custody-e2e raw".into()),
            },
        )
    }

    /// Sends `hello {version: PROTOCOL_VERSION}` and reads the response.
    pub fn hello(&mut self) -> std::io::Result<Response> {
        self.send_hello(PROTOCOL_VERSION)?;
        match self.read(Duration::from_secs(10)) {
            Reply::Frame(r) => Ok(r),
            other => Err(std::io::Error::other(format!("hello: {other:?}"))),
        }
    }

    /// Reads one response frame, waiting up to `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Reply {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
        let mut header = [0u8; frame::HEADER_LEN];
        match read_full(&mut self.stream, &mut header) {
            Ok(true) => {}
            Ok(false) => return Reply::Closed,
            Err(e) if is_timeout(&e) => return Reply::Timeout,
            Err(_) => return Reply::Closed,
        }
        let len = u32::from_be_bytes(header) as usize;
        let mut body = vec![0u8; len];
        match read_full(&mut self.stream, &mut body) {
            Ok(true) => {}
            Ok(false) => return Reply::Closed,
            Err(e) if is_timeout(&e) => return Reply::Timeout,
            Err(_) => return Reply::Closed,
        }
        Reply::Frame(Response::decode(&body).expect("server sent an undecodable response"))
    }

    /// Reads one response frame; panics unless one arrives within `timeout`.
    pub fn expect_frame(&mut self, timeout: Duration) -> Response {
        match self.read(timeout) {
            Reply::Frame(r) => r,
            other => panic!("expected a response frame, got {other:?}"),
        }
    }

    /// Panics unless the server closes the connection within `timeout` (no frame before).
    pub fn expect_closed(&mut self, timeout: Duration) {
        match self.read(timeout) {
            Reply::Closed => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }
}

/// Encodes a request body (CBOR `{id, op, args}`).
pub fn request_body<A: serde::Serialize>(id: u64, op: &str, args: &A) -> Vec<u8> {
    Request::new(id, op, args)
        .and_then(|r| r.encode())
        .expect("encode request")
}

/// Prefixes `body` with its 4-byte big-endian length.
pub fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// `ping` arguments carrying `data`.
pub fn ping_args(data: &[u8]) -> PingArgs {
    PingArgs {
        data: data.to_vec(),
    }
}

/// The data echoed by a successful `ping` response; panics on an error response.
pub fn ping_data(r: Response) -> Vec<u8> {
    r.into_result::<PingResult>()
        .unwrap_or_else(|e| panic!("ping failed: {e}"))
        .data
}

/// The error code of a response (`None` for a result); panics on a code this kit does not know.
pub fn err_code(r: &Response) -> Option<ErrorCode> {
    match &r.result {
        Ok(_) => None,
        Err(e) => Some(e.code().unwrap_or_else(|| panic!("unknown code {e:?}"))),
    }
}

/// The server's error code in a client error; panics on any other error (I/O, protocol).
pub fn server_code(e: ClientError) -> ErrorCode {
    e.server()
        .and_then(|w| w.code())
        .unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Fills `buf`; Ok(false) on EOF before it is full.
fn read_full(s: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
