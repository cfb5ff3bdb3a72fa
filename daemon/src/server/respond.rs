//! The write side of a connection, shared by the reader loop and every request's task.
//!
//! The thread that ran a request (a scheduler worker, [`Responder::send_now`]; or a runtime task,
//! [`Responder::send`]) encodes its response and appends the frame to the connection's pending
//! bytes; whichever finds the socket free writes everything pending in one write, and keeps
//! writing until nothing is left (flat combining). With one request in flight the worker that ran
//! the request writes its answer itself, with no hand-over to another thread; with many,
//! responses that complete while a write is under way go out together in the next one. A worker
//! never waits for the socket: what it cannot write at once is left to a runtime task.
//!
//! Backpressure: a response's in-flight permit is released only once its bytes were written, so a
//! peer that stops reading stops the reader loop after `max_in_flight` unwritten responses, as
//! before. A write that makes no progress for the stall time (the idle timeout) fails the
//! connection: pending responses are dropped and [`Responder::closed`] resolves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use custody_proto::{frame, ErrorCode, Response, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::runtime::Handle;
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

    /// Everything pending, to be written by the caller (who holds the socket), with the
    /// permits to release once it is.
    fn take_pending(&self) -> (Vec<u8>, Vec<OwnedSemaphorePermit>) {
        let mut p = self.lock();
        (std::mem::take(&mut p.bytes), std::mem::take(&mut p.permits))
    }

    /// Encodes `resp` (a response larger than the frame limit becomes `too_large`), queues it and
    /// writes if no other task is writing; `permit` is released once the bytes are written.
    pub async fn send(
        &self,
        resp: Response,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Gone> {
        let t = stages::start();
        self.queue(resp, permit)?;
        let r = self.flush().await;
        stages::end(Stage::EncodeWrite, t);
        r
    }

    /// [`Responder::send`] from a thread outside the runtime (a scheduler worker), without
    /// waiting: what the socket takes at once is written here; the rest is left to a task
    /// spawned on `rt`, so a peer that stops reading never holds a worker.
    pub fn send_now(
        self: &Arc<Self>,
        resp: Response,
        permit: Option<OwnedSemaphorePermit>,
        rt: &Handle,
    ) {
        let t = stages::start();
        if self.queue(resp, permit).is_err() {
            return;
        }
        loop {
            // Another writer holds the socket: it writes what was just queued.
            let Ok(wr) = self.wr.try_lock() else {
                break;
            };
            loop {
                let (mut bytes, permits) = self.take_pending();
                if bytes.is_empty() {
                    break;
                }
                let mut done = 0;
                let res = loop {
                    match wr.try_write(&bytes[done..]) {
                        Ok(n) if n > 0 => {
                            done += n;
                            if done == bytes.len() {
                                break Ok(());
                            }
                        }
                        Ok(_) => break Err(std::io::ErrorKind::WriteZero.into()),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                match res {
                    Ok(()) => {
                        bytes.zeroize();
                        drop(permits);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // The socket is full: the unwritten rest goes back in front of what was
                        // queued meanwhile, and a runtime task writes it all when the peer reads.
                        {
                            let mut p = self.lock();
                            let mut rest = Vec::with_capacity(bytes.len() - done + p.bytes.len());
                            rest.extend_from_slice(&bytes[done..]);
                            rest.extend_from_slice(&p.bytes);
                            p.bytes.zeroize();
                            p.bytes = rest;
                            let mut held = permits;
                            held.append(&mut p.permits);
                            p.permits = held;
                        }
                        bytes.zeroize();
                        drop(wr);
                        let this = self.clone();
                        rt.spawn(async move {
                            let _ = this.flush().await;
                        });
                        stages::end(Stage::EncodeWrite, t);
                        return;
                    }
                    Err(_) => {
                        bytes.zeroize();
                        drop(permits);
                        drop(wr);
                        self.fail();
                        return;
                    }
                }
            }
            drop(wr);
            // A writer that queued while this thread held the socket left its bytes to it.
            if self.lock().bytes.is_empty() {
                break;
            }
        }
        stages::end(Stage::EncodeWrite, t);
    }

    /// Encodes `resp` and appends its frame (and `permit`) to what is pending.
    fn queue(&self, mut resp: Response, permit: Option<OwnedSemaphorePermit>) -> Result<(), Gone> {
        let body = match resp.encode() {
            Ok(b) if b.len() <= self.max_frame as usize => Ok(b),
            Ok(mut too_big) => {
                too_big.zeroize();
                Response::err(
                    resp.id,
                    WireError::new(ErrorCode::TooLarge, "response exceeds the frame limit"),
                )
                .encode()
            }
            Err(e) => Response::err(resp.id, e).encode(),
        };
        // A plaintext result is in the value and the body: gone once copied into the frame.
        if let Ok(v) = &mut resp.result {
            ops::scrub_value(v);
        }
        let mut body = body.map_err(|_| Gone)?;
        let queued = {
            // `failed` is set under this lock ([`Responder::fail`]): nothing is queued after the
            // pending bytes were dropped, so no permit is left behind unreleased.
            let mut p = self.lock();
            if self.failed.load(Ordering::Acquire) {
                Err(Gone)
            } else {
                let header = (body.len() as u32).to_be_bytes();
                frame::append_wiping(&mut p.bytes, &[&header[..frame::HEADER_LEN], &body]);
                p.permits.extend(permit);
                Ok(())
            }
        };
        body.zeroize();
        queued
    }

    /// True once a write failed or stalled: nothing more can be answered.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Writes pending bytes until none are left, unless another task is writing (it will).
    async fn flush(&self) -> Result<(), Gone> {
        loop {
            let Ok(mut wr) = self.wr.try_lock() else {
                return Ok(());
            };
            loop {
                let (mut bytes, permits) = self.take_pending();
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
        let mut p = self.lock();
        self.failed.store(true, Ordering::Release);
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
