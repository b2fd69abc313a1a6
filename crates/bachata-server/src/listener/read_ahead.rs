//! Reading a socket through one buffer per worker thread, so that an idle
//! connection keeps no read buffer of its own.
//!
//! The WebSocket layer (`websocket.rs`) reads exactly what it needs: a
//! frame's header, two bytes and then the rest of it, and then its payload
//! into the payload's own allocation. Each of those reads as a syscall
//! would cost several syscalls per frame; a read buffer to avoid them would
//! sit in every idle connection (tungstenite's 1 KiB was a quarter of an
//! idle connection's memory, docs/performance.md, "Idle memory, step by
//! step"). [`ReadAhead`] serves a small read by one large read into the
//! thread's scratch buffer, and what the reader did not take waits in a
//! buffer of the connection's own, made for those bytes and freed once
//! they are taken. An idle connection's socket has been read dry, so it
//! holds nothing.
//!
//! What waits is at most one read, [`SCRATCH`] bytes, per connection, and
//! only while its reader has not taken it (a connection whose pipeline is
//! full stops reading): the bytes would otherwise wait in the kernel's
//! socket buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The scratch buffer's size: what one read syscall may bring.
const SCRATCH: usize = 16 * 1024;

/// Reads this large or larger go to the socket directly (hyper's reads of
/// HTTP requests, say): the scratch buffer would only add a copy.
const DIRECT: usize = 4 * 1024;

thread_local! {
    static SCRATCH_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// A stream whose small reads are served by one large read (see the module
/// docs). Only reads: its owner writes to the stream itself
/// ([`ReadAhead::get_mut`]).
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from `inner` and not yet taken, from `taken` on. Empty,
    /// with no allocation, when there are none.
    ahead: Vec<u8>,
    taken: usize,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            ahead: Vec::new(),
            taken: 0,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Hands bytes already read ahead to `buf`; false if there were none.
    fn take_ahead(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.ahead.is_empty() {
            return false;
        }
        let n = buf.remaining().min(self.ahead.len() - self.taken);
        buf.put_slice(&self.ahead[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.ahead.len() {
            // Given back as soon as it is taken: the connection may now
            // stay idle for hours.
            self.ahead = Vec::new();
            self.taken = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.take_ahead(buf) {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= DIRECT {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUFFER.with(|scratch| {
            // Never borrowed twice (a poll does not poll another socket's
            // read from inside); if it were, the read goes direct.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    let n = buf.remaining().min(filled.len());
                    buf.put_slice(&filled[..n]);
                    if n < filled.len() {
                        this.ahead = filled[n..].to_vec();
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stream that counts the reads it is asked for; at its end, an
    /// error if it has one.
    struct Counting<'a> {
        data: &'a [u8],
        reads: usize,
        error_at_end: Option<io::ErrorKind>,
    }

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            match this.error_at_end {
                Some(kind) if this.data.is_empty() => Poll::Ready(Err(kind.into())),
                _ => Pin::new(&mut this.data).poll_read(cx, buf),
            }
        }
    }

    fn counting(data: &[u8]) -> ReadAhead<Counting<'_>> {
        ReadAhead::new(Counting {
            data,
            reads: 0,
            error_at_end: None,
        })
    }

    #[tokio::test]
    async fn small_reads_are_served_by_one_read_of_the_socket() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut stream = counting(&data);
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data, "every byte, in order");
        // One read brought all 3000 bytes, one more saw the end.
        assert_eq!(stream.inner.reads, 2);
    }

    #[tokio::test]
    async fn nothing_is_kept_once_the_bytes_are_taken() {
        let data = [7u8; 300];
        let mut stream = counting(&data);
        let mut chunk = [0u8; 200];
        assert_eq!(stream.read(&mut chunk).await.expect("read"), 200);
        assert_eq!(stream.ahead.len(), 100, "the rest waits");
        assert_eq!(stream.read(&mut chunk).await.expect("read"), 100);
        assert_eq!(stream.ahead.capacity(), 0, "and is freed once taken");
    }

    #[tokio::test]
    async fn large_reads_go_to_the_socket_directly() {
        let data = vec![1u8; 10_000];
        let mut stream = counting(&data);
        let mut chunk = vec![0u8; DIRECT];
        assert_eq!(stream.read(&mut chunk).await.expect("read"), DIRECT);
        assert_eq!(stream.ahead.capacity(), 0, "nothing read ahead");
    }

    #[tokio::test]
    async fn errors_and_the_end_pass_through() {
        let mut empty = counting(&[]);
        assert_eq!(empty.read(&mut [0u8; 10]).await.expect("read"), 0);

        let mut broken = ReadAhead::new(Counting {
            data: &[],
            reads: 0,
            error_at_end: Some(io::ErrorKind::ConnectionReset),
        });
        let error = broken.read(&mut [0u8; 10]).await.expect_err("the error");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
