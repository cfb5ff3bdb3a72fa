//! custodyd wire protocol, shared by the daemon and its clients; no I/O.
//!
//! A message is a frame: a 4-byte big-endian length followed by that many bytes of CBOR. A request is
//! the map `{id, op, args}`, a response `{id, ok}` or `{id, err: {code, message}}`. See PROTOCOL.md.
#![forbid(unsafe_code)]

pub mod audit;
pub mod error;
pub mod frame;
pub mod message;
pub mod ops;
#[cfg(feature = "io")]
pub mod readbuf;
pub mod shape;

pub use error::{ErrorCode, WireError};
pub use frame::{FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
pub use message::{Request, Response};

/// The protocol version this crate speaks (sent in `hello`).
pub const PROTOCOL_VERSION: u32 = 1;
