//! A WebSocket client over a bare TCP socket, for tests that do what no
//! well-behaved library would: send pings and never read, send a close
//! code that is not allowed, hold a socket without a word.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::WAIT;

/// Frame opcodes (RFC 6455 section 5.2).
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One masked, final frame as a client sends it.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(0x80 | opcode, payload)
}

/// One masked frame as a client sends it, `first` its first byte (FIN,
/// reserved bits and opcode): for fragments and frames that break the rules.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(mask(payload));
    out
}

/// The masking key of every frame this kit sends: fixed, so that a test
/// can choose the bytes a payload puts on the wire ([`payload_on_wire`]).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4])
}

/// The payload that [`masked_frame`] sends as exactly these bytes: to hide
/// something in a payload the server should not read, such as a frame
/// header.
pub fn payload_on_wire(wire: &[u8]) -> Vec<u8> {
    mask(wire).collect()
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// An open WebSocket on a bare socket.
pub struct RawSocket {
    pub stream: TcpStream,
    /// Bytes read past the handshake or the last frame.
    buffered: Vec<u8>,
}

impl RawSocket {
    /// Upgrades `stream` with a GET of `target` (path and query) and extra
    /// header lines; returns the status and body of a refusal.
    pub async fn handshake(
        stream: TcpStream,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawSocket, (u16, String)> {
        Self::upgrade(stream, host, target, headers, &[])
            .await
            .map(|(socket, _)| socket)
    }

    /// Connects and upgrades with `early` bytes (frames, say) written right
    /// behind the request, in the same write; the socket and the head of
    /// the 101 answer (status line and headers).
    pub async fn connect_with_early_data(
        addr: SocketAddr,
        target: &str,
        early: &[u8],
    ) -> (RawSocket, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        match Self::upgrade(stream, &addr.to_string(), target, &[], early).await {
            Ok(upgraded) => upgraded,
            Err((status, body)) => panic!("upgrade refused: {status} {body}"),
        }
    }

    async fn upgrade(
        mut stream: TcpStream,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        early: &[u8],
    ) -> Result<(RawSocket, String), (u16, String)> {
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(early);
        let exchange = async {
            stream.write_all(&request).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut byte).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&byte[..n]);
            }
            io::Result::Ok(head)
        };
        let head = tokio::time::timeout(WAIT, exchange)
            .await
            .expect("handshake timed out")
            .expect("handshake I/O");
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(head.len(), |i| i + 4);
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        if status != 101 {
            let mut body = head[end..].to_vec();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut body)).await;
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        Ok((
            RawSocket {
                stream,
                buffered: head[end..].to_vec(),
            },
            text,
        ))
    }

    /// Connects and upgrades, or panics.
    pub async fn connect(addr: SocketAddr, target: &str) -> RawSocket {
        let stream = TcpStream::connect(addr).await.expect("connect");
        match Self::handshake(stream, &addr.to_string(), target, &[]).await {
            Ok(socket) => socket,
            Err((status, body)) => panic!("upgrade refused: {status} {body}"),
        }
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.stream.write_all(&frame(opcode, payload)).await
    }

    /// The next frame (opcode, payload); `None` when the server closed the
    /// socket. Fragmented frames come as they are.
    pub async fn read_frame(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        tokio::time::timeout(WAIT, self.read_frame_unbounded())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no frame in time"))?
    }

    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        while self.buffered.len() < n {
            let got = self.stream.read(&mut chunk).await?;
            if got == 0 {
                return Ok(false);
            }
            self.buffered.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    async fn read_frame_unbounded(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let opcode = self.buffered[0] & 0x0f;
        let (len, header) = match self.buffered[1] & 0x7f {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (
                    u16::from_be_bytes([self.buffered[2], self.buffered[3]]) as usize,
                    4,
                )
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.buffered[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(header + len).await? {
            return Ok(None);
        }
        let payload = self.buffered[header..header + len].to_vec();
        self.buffered.drain(..header + len);
        Ok(Some((opcode, payload)))
    }

    /// Reads until the server's close frame and returns its code (`None`:
    /// the socket ended without one, or the frame had no code).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.read_frame().await {
                Ok(Some((opcode::CLOSE, payload))) => {
                    return (payload.len() >= 2)
                        .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Whether the server closed the TCP connection (EOF) within [`WAIT`]
    /// after what was read so far.
    pub async fn ends(&mut self) -> bool {
        loop {
            match self.read_frame().await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }
}
