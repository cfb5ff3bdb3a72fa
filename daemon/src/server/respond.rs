//! The write side of a connection, shared by the reader loop and every request's task.
//!
//! A request's task encodes its own response and appends the frame to the connection's pending
//! bytes; whichever task finds the socket free writes everything pending in one write, and keeps
//! writing until nothing is left (flat combining). With one request in flight the task that ran
//! the request writes its answer itself, with no hand-over to another task; with many, responses
//! that complete while a write is under way go out together in the next one.
//!
//! Backpressure: a response's in-flight permit is released only once its bytes were written, so a
//! peer that stops reading stops the reader loop after `max_in_flight` unwritten responses, as
//! before. A write that makes no progress for the stall time (the idle timeout) fails the
//! connection: pending responses are dropped and [`Responder::closed`] resolves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use custody_proto::{frame, ErrorCode, Response, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::timeout;
use zeroize::Zeroize;

use crate::ops;
use crate::stages::{self, Stage};

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// See the module documentation.
pub struct Responder {
    pending: Mutex<Pending>,
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    failed: AtomicBool,
    failure: Notify,
    max_frame: u32,
    stall: Duration,
}

/// The connection can no longer be written to.
#[derive(Debug)]
pub struct Gone;

impl Responder {
    /// A responder writing to `wr`.
    pub fn new(wr: OwnedWriteHalf, max_frame: u32, stall: Duration) -> Responder {
        Responder {
            pending: Mutex::new(Pending::default()),
            wr: tokio::sync::Mutex::new(wr),
            failed: AtomicBool::new(false),
            failure: Notify::new(),
            max_frame,
            stall,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Encodes `resp` (a response larger than the frame limit becomes `too_large`), queues it and
    /// writes if no other task is writing; `permit` is released once the bytes are written.
    pub async fn send(
        &self,
        mut resp: Response,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Gone> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Gone);
        }
        let t = stages::start();
        let body = match resp.encode() {
            Ok(b) if b.len() <= self.max_frame as usize => Ok(b),
            Ok(_) => Response::err(
                resp.id,
                WireError::new(ErrorCode::TooLarge, "response exceeds the frame limit"),
            )
            .encode(),
            Err(e) => Response::err(resp.id, e).encode(),
        };
        // A plaintext result is in the value and the body: gone once copied into the frame.
        if let Ok(v) = &mut resp.result {
            ops::scrub_value(v);
        }
        let mut body = body.map_err(|_| Gone)?;
        {
            let mut p = self.lock();
            p.bytes
                .extend_from_slice(&(body.len() as u32).to_be_bytes()[..frame::HEADER_LEN]);
            p.bytes.extend_from_slice(&body);
            p.permits.extend(permit);
        }
        body.zeroize();
        let r = self.flush().await;
        stages::end(Stage::EncodeWrite, t);
        r
    }

    /// Writes pending bytes until none are left, unless another task is writing (it will).
    async fn flush(&self) -> Result<(), Gone> {
        loop {
            let Ok(mut wr) = self.wr.try_lock() else {
                return Ok(());
            };
            loop {
                let (mut bytes, permits) = {
                    let mut p = self.lock();
                    (std::mem::take(&mut p.bytes), std::mem::take(&mut p.permits))
                };
                if bytes.is_empty() {
                    break;
                }
                let written = timeout(self.stall, wr.write_all(&bytes)).await;
                bytes.zeroize();
                drop(permits);
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        self.fail();
                        return Err(Gone);
                    }
                    Err(_) => {
                        tracing::debug!("closing connection: peer stopped reading responses");
                        self.fail();
                        return Err(Gone);
                    }
                }
            }
            drop(wr);
            // A task that queued bytes while this one held the socket left them for it.
            if self.lock().bytes.is_empty() {
                return Ok(());
            }
        }
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        let mut p = self.lock();
        p.bytes.zeroize();
        p.permits.clear();
        drop(p);
        self.failure.notify_waiters();
    }

    /// Resolves once a write failed or stalled.
    pub async fn closed(&self) {
        loop {
            let notified = self.failure.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.failed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Writes what is pending, then shuts the write side down.
    pub async fn finish(&self) {
        let mut wr = self.wr.lock().await;
        loop {
            let mut bytes = std::mem::take(&mut self.lock().bytes);
            if bytes.is_empty() || self.failed.load(Ordering::Acquire) {
                bytes.zeroize();
                break;
            }
            let written = timeout(self.stall, wr.write_all(&bytes)).await;
            bytes.zeroize();
            if !matches!(written, Ok(Ok(()))) {
                break;
            }
        }
        self.lock().permits.clear();
        let _ = wr.shutdown().await;
    }
}
