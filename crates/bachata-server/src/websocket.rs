//! The server side of a WebSocket (RFC 6455) over an upgraded HTTP/1.1
//! connection: what `/messages` and the echo mode speak.
//!
//! Our own rather than tungstenite's, for what a connection keeps between
//! frames (docs/security.md, docs/performance.md "Idle memory, step by
//! step"):
//!
//! - **No read buffer.** A frame's header is read into 14 bytes of the
//!   socket's own, and its payload straight into an allocation of exactly
//!   its length, which becomes the message (no copy; past 16 KiB the room
//!   grows with the bytes that arrive). tungstenite kept a
//!   buffer the size of the largest frame a connection ever sent, for the
//!   connection's life: a client could pin `--max-frame-bytes` of server
//!   memory per connection, outside `--max-retained-bytes`. Reading a few
//!   bytes at a time costs no syscalls: the socket is read through the
//!   worker thread's buffer (`listener/read_ahead.rs`).
//! - **No write buffer while idle.** Frames wait in a buffer made on the
//!   first one and freed once they are all written.
//! - **No waker proxies**: the connection's task polls the socket itself.
//!
//! No extension is negotiated (permessage-deflate would let a small frame
//! inflate to a large message). Text is checked to be UTF-8 frame by frame,
//! so a fragmented message fails at the first frame that breaks it; within
//! one frame, once the frame is whole.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod frame;
mod handshake;

pub(crate) use handshake::Upgrade;

/// What a connection may send and buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest frame, and the largest message (its frames together).
    pub(crate) max_message: usize,
    /// Frames buffered beyond this are written before more are taken
    /// ([`WebSocket::poll_ready`]).
    pub(crate) write_buffer: usize,
    /// The most the write buffer may hold: a frame that would take it past
    /// this fails with [`Error::WriteBufferFull`], and so does reading a
    /// ping whose pong would (the client sends and does not read).
    pub(crate) max_write_buffer: usize,
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Text(String),
    Binary(Bytes),
    /// The pong is queued; it goes out with the next flush.
    Ping,
    Pong,
    /// The client closes. Its answer is queued (its code echoed, or 1002
    /// for a code that is not allowed) unless the server closed first;
    /// no message follows.
    Close,
}

/// A frame to the client.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    Text(Bytes),
    Binary(Bytes),
    Ping,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("frame or message larger than {max} bytes")]
    TooBig { max: usize },
    #[error("text is not valid UTF-8")]
    Utf8,
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("the write buffer is full")]
    WriteBufferFull,
    #[error("the connection is closing")]
    Closed,
}

/// The frame whose payload is being read.
struct Payload {
    header: frame::Header,
    /// Where the payload goes, from `start` on: a buffer of exactly its
    /// length, or, for a continuation frame, the message so far.
    data: Vec<u8>,
    start: usize,
}

/// A message sent in fragments, until its last one.
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be UTF-8 (text only).
    valid_up_to: usize,
}

/// One side of a WebSocket connection: the server's.
pub(crate) struct WebSocket<S = TokioIo<hyper::upgrade::Upgraded>> {
    io: S,
    limits: Limits,
    /// The header being read: its first `head_read` bytes.
    head: [u8; frame::MAX_HEAD],
    head_read: u8,
    payload: Option<Payload>,
    /// Boxed: rare, and an idle connection should not carry its room.
    fragments: Option<Box<Fragments>>,
    /// Frames to write: `out[written..]`. Freed once all written.
    out: Vec<u8>,
    written: usize,
    sent_close: bool,
    received_close: bool,
    /// The socket ended or failed while reading: nothing more to read.
    read_ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    pub(crate) fn new(io: S, limits: Limits) -> Self {
        WebSocket {
            io,
            limits,
            head: [0; frame::MAX_HEAD],
            head_read: 0,
            payload: None,
            fragments: None,
            out: Vec::new(),
            written: 0,
            sent_close: false,
            received_close: false,
            read_ended: false,
        }
    }

    /// The next message; `None` once the client closed or the socket
    /// ended. A frame that breaks the protocol, the limits or UTF-8 is an
    /// error, and the connection should be closed with the matching code.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if self.received_close || self.read_ended {
                return Poll::Ready(None);
            }
            let frame = match self.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    self.read_ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.read_failed(e)))),
            };
            match self.on_frame(frame) {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(self.read_failed(e)))),
            }
        }
    }

    /// Nothing is read after an error (RFC 6455 section 7.1.7: an
    /// endpoint that fails the connection processes nothing more). The
    /// stream could not be trusted anyway: a frame refused from its header
    /// leaves its payload unread, and the payload's bytes, read as the
    /// next header, could announce a frame that swallows the client's
    /// close and holds the socket until the close grace runs out.
    fn read_failed(&mut self, e: Error) -> Error {
        self.read_ended = true;
        self.payload = None;
        self.fragments = None;
        e
    }

    pub(crate) fn next(
        &mut self,
    ) -> impl Future<Output = Option<Result<Message, Error>>> + Unpin + '_ {
        std::future::poll_fn(|cx| self.poll_next(cx))
    }

    /// Reads the next whole frame; `None` when the socket ends between
    /// frames.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Payload>, Error>> {
        if self.payload.is_none() {
            let Some(header) = ready!(self.poll_header(cx))? else {
                return Poll::Ready(Ok(None));
            };
            self.payload = Some(self.make_room(header)?);
        }
        let Some(payload) = self.payload.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let end = payload.start + payload.header.len as usize;
        while payload.data.len() < end {
            let want = end - payload.data.len();
            if payload.data.len() == payload.data.capacity() {
                // Room grows with what arrives, doubling up to the frame's
                // length: a header alone, or a payload sent a byte at a
                // time, holds little more than what was sent.
                let more = want.min(payload.data.capacity().max(FIRST_READ));
                payload.data.reserve_exact(more);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut (&mut payload.data).limit(want),
            ))?;
            if n == 0 {
                return Poll::Ready(Err(truncated()));
            }
        }
        let Some(mut payload) = self.payload.take() else {
            return Poll::Ready(Ok(None));
        };
        let mask = payload.header.mask;
        frame::unmask(&mut payload.data[payload.start..], mask);
        Poll::Ready(Ok(Some(payload)))
    }

    /// Reads a frame's header: the first two bytes say how long it is.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<frame::Header>, Error>> {
        loop {
            let read = usize::from(self.head_read);
            let need = if read < 2 {
                2
            } else {
                frame::head_len(&self.head[..read])
            };
            if read == need {
                self.head_read = 0;
                return Poll::Ready(frame::parse(&self.head[..need]).map(Some));
            }
            let mut buf = ReadBuf::new(&mut self.head[read..need]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(if read == 0 {
                    Ok(None)
                } else {
                    Err(truncated())
                });
            }
            self.head_read += n as u8;
        }
    }

    /// Checks a frame against the message it belongs to and the limits,
    /// and makes room for its payload.
    fn make_room(&mut self, header: frame::Header) -> Result<Payload, Error> {
        let max = self.limits.max_message;
        let too_big = Error::TooBig { max };
        let len = usize::try_from(header.len).map_err(|_| Error::TooBig { max })?;
        if len > max {
            return Err(too_big);
        }
        match header.opcode {
            frame::CONTINUATION => {
                let fragments = self
                    .fragments
                    .as_mut()
                    .ok_or(Error::Protocol("continuation frame without a message"))?;
                if fragments.data.len() + len > max {
                    return Err(too_big);
                }
                // Read onto the message so far: no copy when it is whole.
                let data = std::mem::take(&mut fragments.data);
                let start = data.len();
                Ok(Payload {
                    header,
                    data,
                    start,
                })
            }
            frame::TEXT | frame::BINARY if self.fragments.is_some() => Err(Error::Protocol(
                "new message before the last one's final frame",
            )),
            _ => Ok(Payload {
                header,
                data: Vec::with_capacity(len.min(FIRST_READ)),
                start: 0,
            }),
        }
    }

    /// What a whole frame means: a message, or `None` for a fragment that
    /// is not the last.
    fn on_frame(&mut self, payload: Payload) -> Result<Option<Message>, Error> {
        let Payload { header, data, .. } = payload;
        match header.opcode {
            frame::PING => {
                if !self.sent_close {
                    // An error when the write buffer is full: a pong
                    // dropped instead let a client that pings and never
                    // reads be read at full speed, the buffer draining into
                    // the kernel a little at each slow consumer check.
                    self.buffer_frame(frame::PONG, &data)?;
                }
                Ok(Some(Message::Ping))
            }
            frame::PONG => Ok(Some(Message::Pong)),
            frame::CLOSE => self.on_close(&data).map(Some),
            frame::CONTINUATION => {
                let mut fragments = self
                    .fragments
                    .take()
                    .ok_or(Error::Protocol("continuation frame without a message"))?;
                fragments.data = data;
                if fragments.text {
                    check_utf8(&fragments.data, &mut fragments.valid_up_to, header.fin)?;
                }
                if !header.fin {
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                message(fragments.text, fragments.data).map(Some)
            }
            opcode => {
                let text = opcode == frame::TEXT;
                if header.fin {
                    return message(text, data).map(Some);
                }
                let mut fragments = Box::new(Fragments {
                    text,
                    data,
                    valid_up_to: 0,
                });
                if text {
                    check_utf8(&fragments.data, &mut fragments.valid_up_to, false)?;
                }
                self.fragments = Some(fragments);
                Ok(None)
            }
        }
    }

    fn on_close(&mut self, data: &[u8]) -> Result<Message, Error> {
        // Even a close frame that is not valid ends what the client sends:
        // the server's close, for the error, need not wait for another.
        self.received_close = true;
        let code = match data {
            [] => None,
            [_] => return Err(Error::Protocol("close frame with a one-byte payload")),
            [high, low, reason @ ..] => {
                std::str::from_utf8(reason).map_err(|_| Error::Utf8)?;
                Some(u16::from_be_bytes([*high, *low]))
            }
        };
        if !self.sent_close {
            // The answer (section 5.5.1): the code echoed, or 1002 for one
            // a peer may not send.
            match code {
                None => self.force_frame(frame::CLOSE, &[]),
                Some(code) if frame::is_allowed_close_code(code) => {
                    self.force_frame(frame::CLOSE, &data[..2]);
                }
                Some(_) => self.force_frame(frame::CLOSE, &1002u16.to_be_bytes()),
            }
            self.sent_close = true;
        }
        Ok(Message::Close)
    }

    /// Whether a data frame may be buffered now: when the buffer is past
    /// [`Limits::write_buffer`], once it is written.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.out.len() - self.written < self.limits.write_buffer {
            return Poll::Ready(Ok(()));
        }
        self.poll_write_out(cx)
    }

    /// Buffers a frame; it is written by [`WebSocket::poll_flush`].
    pub(crate) fn start_send(&mut self, frame: Outgoing) -> Result<(), Error> {
        if self.sent_close {
            return Err(Error::Closed);
        }
        match frame {
            Outgoing::Text(payload) => self.buffer_frame(frame::TEXT, &payload),
            Outgoing::Binary(payload) => self.buffer_frame(frame::BINARY, &payload),
            Outgoing::Ping => self.buffer_frame(frame::PING, &[]),
        }
    }

    /// Buffers a close frame: the server closes. Only pongs and the
    /// client's close may follow.
    pub(crate) fn start_close(&mut self, code: u16, reason: &str) {
        if self.sent_close {
            return;
        }
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A close frame's payload is at most 125 bytes; our reasons are
        // short, and a long one is cut at a character boundary.
        let mut cut = reason.len().min(frame::MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.force_frame(frame::CLOSE, &payload);
        self.sent_close = true;
    }

    /// Writes every buffered frame and flushes the socket.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.poll_write_out(cx))?;
        Poll::Ready(ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(Error::from))
    }

    pub(crate) async fn feed(&mut self, frame: Outgoing) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await?;
        self.start_send(frame)
    }

    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    pub(crate) async fn send(&mut self, frame: Outgoing) -> Result<(), Error> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Sends a close frame and flushes it.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.start_close(code, reason);
        self.flush().await
    }

    /// Fails the connection after a read error (RFC 6455 section 7.1.7):
    /// sends the close frame, ends the server's half of the TCP stream,
    /// then reads and discards what the client still sends until it ends
    /// its half, at most the larger of a message's limit and
    /// [`MIN_DISCARD`]. Discarding, not dropping the socket at once, is
    /// what lets the close frame arrive: a socket closed with unread bytes
    /// is reset, and a reset can destroy what the client has not read yet.
    /// The caller bounds the time.
    pub(crate) async fn fail(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.read_ended = true;
        self.close(code, reason).await?;
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await?;
        let mut left = self.limits.max_message.max(MIN_DISCARD);
        std::future::poll_fn(|cx| self.poll_discard(cx, &mut left)).await
    }

    /// Reads and drops bytes until the client's end, or `left` of them.
    fn poll_discard(&mut self, cx: &mut Context<'_>, left: &mut usize) -> Poll<Result<(), Error>> {
        // On the stack for one poll only, not kept in a future.
        let mut scratch = [0u8; 2048];
        while *left > 0 {
            let room = scratch.len().min(*left);
            let mut buf = ReadBuf::new(&mut scratch[..room]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                break;
            }
            *left -= n;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.written += n;
        }
        // Freed, not kept: an idle connection holds no write buffer.
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Buffers a frame unless it would take the buffer past its bound.
    fn buffer_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Error> {
        let size = frame::encoded_len(payload.len());
        if self.out.len() - self.written + size > self.limits.max_write_buffer {
            return Err(Error::WriteBufferFull);
        }
        self.force_frame(opcode, payload);
        Ok(())
    }

    /// Buffers a frame whatever the buffer holds: a close frame, at most
    /// 127 bytes, must go out.
    fn force_frame(&mut self, opcode: u8, payload: &[u8]) {
        if self.out.capacity() == 0 {
            // Room for a batch of chat frames at once: under load many are
            // buffered between flushes, and growing from a few bytes would
            // copy them again and again.
            self.out
                .reserve(FIRST_WRITE_BUFFER.max(frame::encoded_len(payload.len())));
        }
        frame::write(&mut self.out, opcode, payload);
    }

    #[cfg(test)]
    fn holds(&self) -> (usize, bool, bool, usize) {
        (
            usize::from(self.head_read),
            self.payload.is_some(),
            self.fragments.is_some(),
            self.out.capacity(),
        )
    }
}

/// Room made for a payload before its bytes arrive: a chat message's
/// whole length, a larger one's first part (see [`WebSocket::poll_frame`]).
const FIRST_READ: usize = 16 * 1024;

/// What [`WebSocket::fail`] discards at least before it gives up on the
/// client ending its half of the stream.
const MIN_DISCARD: usize = 64 * 1024;

/// The write buffer's first allocation.
const FIRST_WRITE_BUFFER: usize = 4096;

fn truncated() -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the socket ended inside a frame",
    ))
}

fn message(text: bool, data: Vec<u8>) -> Result<Message, Error> {
    if text {
        String::from_utf8(data)
            .map(Message::Text)
            .map_err(|_| Error::Utf8)
    } else {
        Ok(Message::Binary(data.into()))
    }
}

/// Checks the part of a fragmented text message not yet checked: an
/// incomplete character at its end is allowed until the final fragment.
fn check_utf8(data: &[u8], valid_up_to: &mut usize, last: bool) -> Result<(), Error> {
    match std::str::from_utf8(&data[*valid_up_to..]) {
        Ok(_) => {
            *valid_up_to = data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !last => {
            *valid_up_to += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(Error::Utf8),
    }
}

#[cfg(test)]
mod tests;
