//! A read buffer for a connection: one `read` from the socket serves several frame headers and
//! bodies (three reads per frame without it), and every byte is wiped once handed on, since
//! request bodies may hold plaintexts (`envelope.seal`) and so may responses (`decrypt`,
//! `box.open`). Used by the daemon's connections and the client's reader.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use zeroize::Zeroize;

/// Bytes read from the socket at most at once.
const CAPACITY: usize = 64 * 1024;

/// See the module documentation.
pub struct ZeroizingBufReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<R> ZeroizingBufReader<R> {
    /// Buffers `inner`.
    pub fn new(inner: R) -> Self {
        ZeroizingBufReader {
            inner,
            buf: vec![0; CAPACITY],
            pos: 0,
            end: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ZeroizingBufReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.pos == me.end {
            // A large read goes straight to the caller's buffer.
            if out.remaining() >= me.buf.len() {
                return Pin::new(&mut me.inner).poll_read(cx, out);
            }
            let mut rb = ReadBuf::new(&mut me.buf);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            me.end = rb.filled().len();
            me.pos = 0;
            if me.end == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(me.end - me.pos);
        let taken = &mut me.buf[me.pos..me.pos + n];
        out.put_slice(taken);
        taken.zeroize();
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<R> Drop for ZeroizingBufReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn frames_split_and_joined_arrive_whole_and_buffers_are_wiped() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let w = tokio::spawn(async move {
            for chunk in sent.chunks(7_777) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = ZeroizingBufReader::new(b);
        let mut got = Vec::new();
        let mut small = [0u8; 3];
        r.read_exact(&mut small).await.unwrap();
        got.extend_from_slice(&small);
        let mut rest = vec![0u8; data.len() - 3];
        r.read_exact(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        w.await.unwrap();
        assert_eq!(got, data);
        assert!(
            r.buf[..r.pos].iter().all(|b| *b == 0),
            "consumed bytes wiped"
        );
    }
}
