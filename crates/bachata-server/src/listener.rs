//! Accepting TCP connections with bounds (protocol.md section 9): how many may
//! be open, how long a request's headers may take, and how shutdown ends
//! them all within [`DRAIN_TIMEOUT`] whatever state they are in.
//!
//! `axum::serve` has no header timer and no connection limit: idle and
//! half-sent requests stayed open forever, two clients exhausted the
//! process's 20,000 file descriptors ("accept error: Too many open files",
//! `/healthz` timing out), and one half-sent request kept SIGTERM from
//! exiting. So the accept loop is ours, and each connection is served by
//! hyper's HTTP/1.1 connection directly:
//!
//! - **Slots.** Every TCP connection holds one of `--max-connections`
//!   slots for its whole life: the slot lives inside the socket
//!   ([`Counted`]), so it moves with it into an upgraded WebSocket and is
//!   freed when the socket is dropped.
//! - **Header timeout.** A connection must send each request's headers
//!   within `--header-timeout` (hyper's timer, which also covers the wait
//!   for the next request on a kept-alive connection), else it is closed.
//! - **Overflow.** When every slot is taken, a new connection goes to a small
//!   pool of [`OVERFLOW`] sockets that get [`OVERFLOW_TIMEOUT`] to send one
//!   request: `GET /healthz` and `GET /metrics` are answered as usual,
//!   anything else gets 503 with `Retry-After`. When that pool is full the
//!   oldest waiting socket is closed to make room, so a flood of idle
//!   connections cannot keep a health check out.
//! - **Reads.** A connection's small reads (a WebSocket's) are served by
//!   one large read into a buffer of the worker thread ([`ReadAhead`]), so
//!   an idle connection keeps no read buffer of its own.
//! - **Shutdown.** Accepting stops at once; every connection is told to
//!   finish its request and close, and one still open after the drain time
//!   (a half-sent request) is dropped.
//!
//! Only HTTP/1.1 is spoken: WebSockets and the API need nothing more, and
//! the protocol detection of an HTTP/2-capable server waits for bytes
//! without a timer (a slowloris sending `P` would hold it).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod read_ahead;

use read_ahead::ReadAhead;

/// How long shutdown waits for connections to close before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Connections beyond `--max-connections` that may wait for a health check
/// at once.
pub(crate) const OVERFLOW: usize = 32;

/// How long an overflow connection has to send its request.
pub(crate) const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(1);

/// File descriptors kept out of `--max-connections`: the overflow pool,
/// the store's files, Redis and webhook connections, the listener, stdio.
pub(crate) const RESERVED_FDS: u64 = OVERFLOW as u64 + 96;

/// Connections at most when `--max-connections` is not set, before the
/// open-file limit is taken into account.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// A request's head (line and headers) may not be larger than this.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long the accept loop pauses after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The soft limit on open files of this process, if it has one.
pub(crate) fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft limit on open files to the hard limit (a binary's
/// start-up step: the soft limit is often 1024 while the hard one is far
/// higher). Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the open-file limit");
        }
    }
    open_file_limit()
}

/// `--max-connections` as it applies: the configured value, which must fit
/// in the open-file limit with [`RESERVED_FDS`] to spare, or by default
/// [`DEFAULT_MAX_CONNECTIONS`] lowered to fit.
pub(crate) fn max_connections(
    configured: Option<usize>,
    fd_limit: Option<u64>,
) -> Result<usize, String> {
    let room = fd_limit.map(|limit| limit.saturating_sub(RESERVED_FDS));
    let room = room.map_or(usize::MAX, |r| usize::try_from(r).unwrap_or(usize::MAX));
    match configured {
        None if room == 0 => Err(format!(
            "the open-file limit ({}) leaves no room for connections; raise it (ulimit -n)",
            fd_limit.unwrap_or(0)
        )),
        None => Ok(DEFAULT_MAX_CONNECTIONS.min(room)),
        Some(n) if n > room => Err(format!(
            "max_connections {n} does not fit in the open-file limit ({}, of which {RESERVED_FDS} \
             are kept for the store, Redis and health checks); raise the limit (ulimit -n, \
             LimitNOFILE=) or set max_connections to at most {room}",
            fd_limit.unwrap_or(0)
        )),
        Some(n) => Ok(n),
    }
}

/// What the accept loop needs.
pub(crate) struct Listener {
    pub tcp: TcpListener,
    /// The application.
    pub app: Router,
    /// What overflow connections are served: health and metrics, else 503.
    pub overflow_app: Router,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    pub open: Gauge,
    pub refused: Counter,
    /// With `--tls-cert`: every connection does a TLS handshake first,
    /// within the header timeout.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Listener {
    /// Accepts until shutdown.
    pub(crate) async fn run(self) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let overflow = Arc::new(OverflowPool::default());
        let mut out_of_fds_logged = false;
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                () = self.shutdown.cancelled() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_out_of_descriptors(&e) => {
                    if !out_of_fds_logged {
                        tracing::warn!(error = %e, "accept failed: out of file descriptors; \
                            lower --max-connections or raise the open-file limit");
                        out_of_fds_logged = true;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                // The peer gave up before we accepted (ECONNABORTED and
                // the like): nothing to do.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            // Small frames (100s, 300s) must not wait for Nagle's
            // algorithm: a 40 ms delayed-ACK stall per receipt otherwise.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let socket = Counted::new(tcp, slot, self.open.clone());
                    let served = serve(
                        socket,
                        remote,
                        self.app.clone(),
                        http1(self.header_timeout, true),
                        self.shutdown.clone(),
                    );
                    match &self.tls {
                        None => {
                            self.connections.spawn(served.plain());
                        }
                        Some(tls) => {
                            self.connections
                                .spawn(served.tls(tls.acceptor(), self.header_timeout));
                        }
                    }
                }
                Err(_) => {
                    self.refused.inc();
                    let (id, evicted) = overflow.admit();
                    self.connections.spawn(serve_overflow(
                        tcp,
                        remote,
                        self.overflow_app.clone(),
                        http1(self.header_timeout.min(OVERFLOW_TIMEOUT), false),
                        evicted,
                        OverflowSlot {
                            pool: overflow.clone(),
                            id,
                        },
                        self.tls.as_ref().map(|tls| tls.acceptor()),
                    ));
                }
            }
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

fn http1(header_timeout: Duration, keep_alive: bool) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
}

/// One accepted connection, to serve as it is or after a TLS handshake.
struct Serve<S> {
    socket: S,
    remote: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
}

fn serve<S>(
    socket: S,
    remote: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
) -> Serve<S> {
    Serve {
        socket,
        remote,
        app,
        http,
        shutdown,
    }
}

impl<S> Serve<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn plain(self) {
        serve_http(self.socket, self.remote, self.app, self.http, self.shutdown).await;
    }

    /// The TLS handshake first, within `limit` (the header timeout: a
    /// client that stalls it holds its slot no longer than a slow request
    /// would), or shutdown.
    async fn tls(self, acceptor: tokio_rustls::TlsAcceptor, limit: Duration) {
        let handshake = tokio::time::timeout(limit, acceptor.accept(self.socket));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(remote = %self.remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(remote = %self.remote, "TLS handshake timed out");
                    return;
                }
            },
            () = self.shutdown.cancelled() => return,
        };
        serve_http(stream, self.remote, self.app, self.http, self.shutdown).await;
    }
}

/// Serves one connection until it closes, is upgraded, or shutdown has
/// waited [`DRAIN_TIMEOUT`] for it.
async fn serve_http<S>(
    socket: S,
    remote: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request.map(Body::new))
    });
    let conn = http
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    tokio::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        () = shutdown.cancelled() => {
            // Finish the request in hand, then close; a request that never
            // completes is dropped with the connection.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, conn).await {
                Ok(done) => done,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = done {
        tracing::debug!(%remote, error = %e, "connection ended");
    }
}

/// Serves an overflow connection: one request, then close; closed earlier
/// when a newer overflow connection needs its place.
async fn serve_overflow(
    tcp: TcpStream,
    remote: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    evicted: CancellationToken,
    _slot: OverflowSlot,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let never = CancellationToken::new();
    let served = serve(tcp, remote, app, http, never);
    let served = async move {
        match tls {
            None => served.plain().await,
            Some(acceptor) => served.tls(acceptor, OVERFLOW_TIMEOUT).await,
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(2 * OVERFLOW_TIMEOUT, served) => {}
        () = evicted.cancelled() => {}
    }
}

/// The overflow connections, oldest first, each with the token that closes
/// it.
#[derive(Default)]
struct OverflowPool {
    waiting: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
}

impl OverflowPool {
    /// Takes a place, closing the oldest connection when all are taken.
    fn admit(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut waiting = self.waiting.lock();
        if waiting.len() >= OVERFLOW
            && let Some((_, oldest)) = waiting.pop_front()
        {
            oldest.cancel();
        }
        waiting.push_back((id, token.clone()));
        (id, token)
    }
}

/// A place in the overflow pool, given back on drop.
struct OverflowSlot {
    pool: Arc<OverflowPool>,
    id: u64,
}

impl Drop for OverflowSlot {
    fn drop(&mut self) {
        self.pool.waiting.lock().retain(|(id, _)| *id != self.id);
    }
}

/// A TCP connection that holds one of the `--max-connections` slots for as
/// long as it exists, wherever it goes (an upgraded WebSocket included). It
/// is read through [`ReadAhead`].
pub(crate) struct Counted {
    tcp: ReadAhead<TcpStream>,
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl Counted {
    fn new(tcp: TcpStream, slot: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.inc();
        Counted {
            tcp: ReadAhead::new(tcp),
            _slot: slot,
            open,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp.get_mut()).poll_shutdown(cx)
    }
}

/// The answer of an overflow connection to anything but health and metrics.
pub(crate) async fn at_capacity() -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        "server at --max-connections; retry later\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_fits_the_open_file_limit() {
        assert_eq!(max_connections(None, None), Ok(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(
            max_connections(None, Some(1_000_000)),
            Ok(DEFAULT_MAX_CONNECTIONS)
        );
        assert_eq!(
            max_connections(None, Some(1024)),
            Ok(1024 - RESERVED_FDS as usize)
        );
        assert!(max_connections(None, Some(RESERVED_FDS)).is_err());
        assert_eq!(max_connections(Some(50), Some(1024)), Ok(50));
        let e = max_connections(Some(20_000), Some(20_000)).expect_err("too many");
        assert!(e.contains("open-file limit"), "{e}");
    }

    #[test]
    fn the_overflow_pool_closes_its_oldest_when_full() {
        let pool = OverflowPool::default();
        let first = pool.admit();
        let rest: Vec<_> = (1..OVERFLOW).map(|_| pool.admit()).collect();
        assert!(!first.1.is_cancelled());
        let newest = pool.admit();
        assert!(first.1.is_cancelled(), "the oldest made room");
        assert!(rest.iter().all(|(_, t)| !t.is_cancelled()));
        assert!(!newest.1.is_cancelled());
    }
}
