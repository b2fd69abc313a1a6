//! The `/messages` WebSocket endpoint (protocol.md section 2): one task per
//! connection reads client frames, hands them to the center, and writes what
//! the connection's delivery [`Session`] hands back.
//!
//! The task is the single owner of its socket and its session, so nothing
//! here takes a lock across an `.await`. Writes are bounded by the slow
//! consumer timeout: a client that stops reading is closed with 4008 and its
//! messages stay pending in the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bachata_core::memstate::device_key;
use bachata_core::{
    Accepted, Device, Event, PendingSubmit, Rejection, Session, StoreError, SubmitOrder,
};
use bachata_proto::{Channel, ErrorCode, Inbound, Limits, MessageId, parse_frame};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};

mod wait;

use crate::auth::{HandshakeQuery, Identity};
use crate::hooks::{ConnectHook, ConnectOutcome};
use crate::state::AppState;
use crate::websocket::{self, Message, Outgoing, Upgrade, WebSocket};
use wait::{Pending, Timer, Written, poll_now, poll_once, ready};

/// Close codes used by the server.
pub(crate) mod close {
    /// The server is shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// A frame that broke the WebSocket protocol.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A binary frame that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// Too many frames the server could not read (protocol.md section 3: "for
    /// abuse, a close with 1008").
    pub(crate) const POLICY: u16 = 1008;
    /// A frame larger than `--max-frame-bytes`.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The store failed while registering the connection.
    pub(crate) const INTERNAL: u16 = 1011;
    /// The client did not read its messages in time.
    pub(crate) const SLOW_CONSUMER: u16 = 4008;
}

/// Bytes of frames buffered before they are written to the socket, at
/// the latest.
const WRITE_BUFFER: usize = 128 * 1024;

/// The most a connection's write buffer may hold: the batch above, one
/// largest frame, and room for control frames. Pongs to a client that
/// sends pings and never reads stop at this (tungstenite once grew its
/// buffer by ~1 GB in 10 s that way), and the slow consumer timer closes
/// the connection (protocol.md section 9).
fn max_write_buffer(max_frame_bytes: usize) -> usize {
    WRITE_BUFFER + max_frame_bytes + 64 * 1024
}

/// Frames a client may send that the server cannot read (not JSON, not a
/// message...) in a burst, and per second after it: a correct client sends
/// none, so these are generous for a developer and tight for a flood. Past
/// them the connection is closed with 1008.
const INVALID_BURST: u32 = 100;
const INVALID_PER_SECOND: u32 = 10;

/// The first pause before reading the store again after a failed read; it
/// doubles up to [`READ_RETRY_MAX`] while reads keep failing.
const READ_RETRY_FIRST: Duration = Duration::from_millis(100);
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

/// Frames read (and dropped) after the server's close while waiting for
/// the peer's answer: what a client had in flight when the close came.
/// A client flooding past it loses the socket at once; reading its flood
/// for the whole [`CLOSE_GRACE`] would only feed it (a ping flood closed
/// as a slow consumer went on at ~500k pings/s).
const CLOSE_FRAMES: usize = 1024;

/// How long a close frame may wait behind unread data before the socket is
/// dropped without it.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn unauthorized(reason: &str) -> Response {
    (StatusCode::UNAUTHORIZED, format!("{reason}\n")).into_response()
}

/// `GET /messages?channel=<id>[&device=<id>]` or `?token=<jwt>`: checks
/// who connects before the upgrade, so a refused client gets a plain HTTP
/// 401 with a reason.
pub(crate) async fn upgrade(
    State(app): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let query = match HandshakeQuery::parse(query.as_deref()) {
        Ok(query) => query,
        Err(refused) => return unauthorized(&refused.0),
    };
    let Identity { channel, device } = match &app.connect_hook {
        None => match app.auth.identify(&query, &headers) {
            Ok(identity) => identity,
            Err(refused) => return unauthorized(&refused.0),
        },
        // With a connect hook, `?channel=` proves nothing: the hook decides
        // unless a valid JWT does.
        Some(hook) => {
            let by_token = if app.auth.is_anonymous() {
                None
            } else {
                app.auth.identify(&query, &headers).ok()
            };
            match by_token {
                Some(identity) => identity,
                None => match ask_connect_hook(hook, &app, &query, &headers, remote).await {
                    Ok(identity) => identity,
                    Err(refusal) => return refusal,
                },
            }
        }
    };
    // The connection gets a task of its own rather than running inside
    // the upgrade's task, whose state (the upgrade and what it captured)
    // would stay in every connection's task for its whole life.
    ws.on_upgrade(socket_limits(app.config.max_frame_bytes), move |socket| {
        let connection =
            app.tracker
                .track_future(Connection::run(app.clone(), socket, channel, device));
        tokio::spawn(connection);
        std::future::ready(())
    })
}

/// Asks the connect hook who is connecting; the refusal to answer with
/// when it says no or gives no usable answer.
async fn ask_connect_hook(
    hook: &ConnectHook,
    app: &AppState,
    query: &HandshakeQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Identity, Response> {
    match hook
        .connect(query, headers, Some(remote), app.center.store().as_ref())
        .await
    {
        ConnectOutcome::Accepted(identity) => Ok(identity),
        ConnectOutcome::Refused { status, reason } => {
            Err((status, format!("{reason}\n")).into_response())
        }
        ConnectOutcome::Unavailable(why) => {
            hook.warn(&why);
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the application's connect hook did not answer; try again\n",
            )
                .into_response())
        }
    }
}

/// The WebSocket settings of every upgrade: frame and message size, read and
/// write buffers. Shared with the echo mode that the Autobahn conformance
/// suite runs against ([`crate::echo`]).
pub(crate) fn socket_limits(max_frame_bytes: usize) -> websocket::Limits {
    websocket::Limits {
        max_message: max_frame_bytes,
        write_buffer: WRITE_BUFFER,
        max_write_buffer: max_write_buffer(max_frame_bytes),
    }
}

enum Closing {
    /// The client left or the socket broke; nothing more to send.
    Gone,
    /// The client sent a close frame: the socket queued the answer (its
    /// code echoed, or 1002 for a code that is not allowed), which must
    /// still be flushed before the socket is dropped.
    Answer,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client broke the WebSocket protocol, a limit or UTF-8 inside a
    /// frame: close with this code and read nothing more from it
    /// ([`WebSocket::fail`]).
    Fail(u16, &'static str),
}

/// A per-connection token bucket for data messages.
type RateLimiter = governor::DefaultDirectRateLimiter;

/// Store work a connection does not wait for: acks and receipt records.
/// Their order does not matter, so they overlap with reading and writing.
enum Background {
    Acked(MessageId, Result<(), StoreError>),
    Receipts(Result<(), StoreError>),
}

type BackgroundWork = Pin<Box<dyn Future<Output = Background> + Send>>;

/// At most this much background work per connection; beyond it the
/// connection stops reading frames until some completes.
const MAX_BACKGROUND: usize = 1024;

/// Data messages of one connection waiting for their commit; beyond this
/// the connection stops reading frames until some complete.
const MAX_PIPELINE: usize = 256;

/// Buffered frames that are flushed at once rather than when the
/// connection is idle, so a busy connection's latency stays bounded.
const FLUSH_EVERY: usize = 64;

/// Hub events applied in one go before the connection looks at its other
/// work.
const EVENT_BATCH: usize = 64;

/// The sources of work `serve` waits on (replies, background work, frames,
/// pings, the read retry, hub events and shutdown), polled in turn.
const SOURCES: usize = 6;

/// Frames handled one after the other when they are already read, before
/// the connection looks at its other sources of work again.
const FRAME_BATCH: usize = 16;

/// What opening a connection needs (see [`Connection::run`]).
struct Opening {
    app: Arc<AppState>,
    socket: Box<WebSocket>,
    channel: Channel,
    device: Device,
}

/// Numbers connections in log lines (`conn`), from 1, per process.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Connection {
    /// This connection's number in log lines; with `channel` and `device`
    /// on every event about it.
    conn: u64,
    /// Outcomes of submitted data messages, in the order they were sent.
    replies: Pending<FuturesOrdered<PendingSubmit>>,
    /// Keeps the order of this connection's messages while their route
    /// hook calls run side by side.
    order: SubmitOrder,
    app: Arc<AppState>,
    /// Boxed: the socket is 184 bytes, which every task would hold.
    socket: Box<WebSocket>,
    session: Session,
    /// Boxed: 72 bytes inline, in every connection's task, set or not.
    rate: Option<Box<RateLimiter>>,
    /// The budget of frames that could not be read; made on the first one.
    invalid: Option<Box<RateLimiter>>,
    background: Pending<FuturesUnordered<BackgroundWork>>,
    /// Frames handed to the socket's buffer since the last flush.
    unflushed: usize,
    /// When the frames in the buffer must be on their way, or the client
    /// counts as a slow consumer.
    flush_by: tokio::time::Instant,
}

/// What woke a connection's task.
enum Wake {
    /// Work for [`Connection::on_work`].
    Work(Work),
    /// The client's frames ended (`None`: the socket closed), or one could
    /// not be read.
    Unreadable(Option<websocket::Error>),
    /// Time to read the store again after a failed read.
    RetryRead,
    Shutdown,
    /// The buffered frames were flushed (or the flush failed or timed out).
    Flushed(Written),
}

/// A wake-up with work to do, handled in a boxed future (see
/// [`Connection::serve`]).
enum Work {
    Reply(Result<Accepted, Rejection>),
    Background(Background),
    Frame(Message),
    PingTick,
    Hub(Event),
}

/// What `serve` keeps from one round to the next.
struct Rounds {
    pings: tokio::time::Interval,
    /// When the client last sent a frame (or a pong).
    last_heard: tokio::time::Instant,
    /// After a failed store read: when to read again, and the pause after
    /// that.
    read_retry: Option<(tokio::time::Instant, Duration)>,
    retry_timer: Timer,
    flush_timer: Timer,
    /// Which source of work `poll_wake` asks first.
    turn: usize,
}

impl Rounds {
    fn new(ping_every: Duration) -> Self {
        let now = tokio::time::Instant::now();
        let mut pings = tokio::time::interval_at(now + ping_every, ping_every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Rounds {
            pings,
            last_heard: now,
            read_retry: None,
            retry_timer: Timer::default(),
            flush_timer: Timer::default(),
            turn: 0,
        }
    }
}

fn rate_limiter(per_second: Option<u32>, burst: Option<u32>) -> Option<Box<RateLimiter>> {
    let per_second = std::num::NonZeroU32::new(per_second?)?;
    let burst = burst
        .and_then(std::num::NonZeroU32::new)
        .unwrap_or(per_second);
    Some(Box::new(governor::RateLimiter::direct(
        governor::Quota::per_second(per_second).allow_burst(burst),
    )))
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// Whether a write failed because the connection's write buffer is at its
/// bound (the client does not read).
fn is_write_buffer_full(e: &websocket::Error) -> bool {
    matches!(e, websocket::Error::WriteBufferFull)
}

/// How to close after a read error, and whether the client sent a bad
/// frame (for the metric).
fn closing_for(e: websocket::Error) -> (Closing, bool) {
    match e {
        websocket::Error::TooBig { .. } => (
            Closing::Fail(close::TOO_BIG, "frame larger than max_frame_bytes"),
            true,
        ),
        websocket::Error::Utf8 => (
            Closing::Fail(close::INVALID_DATA, "text frame is not valid UTF-8"),
            true,
        ),
        websocket::Error::Protocol(_) => (
            Closing::Fail(close::PROTOCOL, "WebSocket protocol error"),
            false,
        ),
        // A ping whose pong did not fit: the client does not read.
        websocket::Error::WriteBufferFull => {
            (Closing::Close(close::SLOW_CONSUMER, "slow consumer"), false)
        }
        websocket::Error::Io(_) | websocket::Error::Closed => (Closing::Gone, false),
    }
}

/// The closing handshake: send our close frame, then wait for the peer's
/// before dropping the socket, so the peer reads everything we sent (its
/// pongs to our pings would otherwise hit a closed socket). Or, when the
/// peer closed first, flush the answer the socket queued. Or, when the
/// peer broke the protocol, send our close frame and wait for the peer to
/// end the stream, reading nothing more from it. All are bounded: a peer
/// that is not reading (slow consumer) or never answers loses the socket
/// after [`CLOSE_GRACE`], and one that keeps sending after
/// [`CLOSE_FRAMES`] more frames (or, after a protocol error, what
/// [`WebSocket::fail`] discards).
async fn close_socket(socket: &mut WebSocket, closing: Closing) {
    let (code, reason) = match closing {
        Closing::Gone => return,
        Closing::Answer => {
            // A flush writes the queued answer. Its failure (the client
            // already gone) changes nothing: the socket is dropped next.
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
            return;
        }
        Closing::Fail(code, reason) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.fail(code, reason)).await;
            return;
        }
        Closing::Close(code, reason) => (code, reason),
    };
    let handshake = async {
        if socket.close(code, reason).await.is_err() {
            return;
        }
        for _ in 0..CLOSE_FRAMES {
            match socket.next().await {
                Some(Ok(Message::Close)) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
}

/// The echo mode of this WebSocket layer, for the Autobahn conformance
/// suite (`scripts/autobahn.sh`, [`crate::echo`]): every text or binary
/// message comes back; pings, errors and closes are handled exactly as on
/// `/messages`.
pub(crate) async fn echo(mut socket: WebSocket) {
    let closing = loop {
        let sent = match socket.next().await {
            None => break Closing::Gone,
            Some(Err(e)) => break closing_for(e).0,
            Some(Ok(Message::Close)) => break Closing::Answer,
            Some(Ok(Message::Text(text))) => socket.send(Outgoing::Text(text.into())).await,
            Some(Ok(Message::Binary(bytes))) => socket.send(Outgoing::Binary(bytes)).await,
            // The pong the socket queued goes out with a flush.
            Some(Ok(Message::Ping)) => socket.flush().await,
            Some(Ok(Message::Pong)) => Ok(()),
        };
        if sent.is_err() {
            break Closing::Gone;
        }
    };
    close_socket(&mut socket, closing).await;
}

impl Connection {
    /// The steps that run once, before and after `serve`, are boxed: inline,
    /// their states made every connection's task larger for its whole life
    /// (idle memory 7.2 to 6.6 KB per connection, docs/performance.md).
    ///
    /// The socket is boxed before the task's future is built (it is 184
    /// bytes), and what opening needs goes in one box: a future keeps the
    /// values it captured for its whole life, beside the places they were
    /// moved to.
    fn run(
        app: Arc<AppState>,
        socket: WebSocket,
        channel: Channel,
        device: Device,
    ) -> impl Future<Output = ()> + Send {
        let opening = Box::new(Opening {
            app,
            socket: Box::new(socket),
            channel,
            device,
        });
        async move {
            // Bound by `let ... else`, the connection is kept once: an
            // `async fn` taking it by value would keep it twice.
            let Some(mut conn) = Box::pin(Connection::open(opening)).await else {
                return;
            };
            let closing = conn.live().await;
            Box::pin(conn.close(closing)).await;
        }
    }

    /// Registers the connection with the center; `None` (after telling the
    /// client why) when the store cannot.
    async fn open(opening: Box<Opening>) -> Option<Connection> {
        let Opening {
            app,
            mut socket,
            channel,
            device,
        } = *opening;
        let session = match app
            .center
            .open_session(channel.clone(), device.clone())
            .await
        {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(%channel, device = device_key(&device), error = %e, "cannot register connection");
                let _ = socket.close(close::INTERNAL, "store unavailable").await;
                return None;
            }
        };
        let conn_id = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(conn = conn_id, %channel, device = device_key(&device), "connected");
        Some(Connection {
            conn: conn_id,
            rate: rate_limiter(app.config.rate_limit, app.config.rate_burst),
            invalid: None,
            background: Pending::default(),
            replies: Pending::default(),
            order: SubmitOrder::default(),
            unflushed: 0,
            flush_by: tokio::time::Instant::now(),
            app,
            socket,
            session,
        })
    }

    /// Says `ready`, serves the connection until it closes, and lets what
    /// it started finish; how to close.
    async fn live(&mut self) -> Closing {
        // In a block of its own, so the secret is not kept across `serve`.
        let ready = {
            let channel = self.session.channel();
            let secret = self.app.center.channel_secret(channel);
            bachata_proto::ready(channel, self.session.device().as_ref(), secret.as_deref())
        };
        // Boxed, as it runs once: inline, its state was part of the task.
        let closing = match Box::pin(self.send([Outgoing::Text(ready.into())])).await {
            Ok(()) => self.serve().await,
            Err(closing) => closing,
        };
        // Let acks already received finish, so a client that acks and
        // leaves does not get the message again.
        let drain = async {
            while self.replies.next().await.is_some() {}
            while self.background.next().await.is_some() {}
        };
        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, drain)).await;
        // Submits still waiting for their commit finish on their own: their
        // receivers are woken and hooks run even though nobody is left to
        // tell the sender.
        let mut left = std::mem::take(&mut self.replies);
        if !left.is_empty() {
            tokio::spawn(async move { while left.next().await.is_some() {} });
        }
        closing
    }

    /// Hands frames to the socket's write buffer. They are flushed when the
    /// connection has nothing else ready to do (see [`Connection::serve`]),
    /// or at once when [`FLUSH_EVERY`] are waiting: under load one `send`
    /// syscall carries many frames, which a profile showed to be a third of
    /// the server's CPU when every frame had its own.
    ///
    /// The buffer almost always has room, and then a frame goes in without
    /// a wait. Only a full socket takes the waiting path (boxed, with its
    /// timer: inline, it made every connection's task larger for its whole
    /// life, docs/performance.md), bounded by the slow consumer timeout.
    async fn send<I>(&mut self, frames: I) -> Result<(), Closing>
    where
        I: IntoIterator<Item = Outgoing>,
        I::IntoIter: Send,
    {
        // An iterator, not a Vec: most calls send one frame, and a Vec per
        // frame was an allocation per message.
        for frame in frames {
            let flush_by = self.buffered();
            let written = match self.feed_now(frame) {
                Ok(written) => written,
                Err(frame) => Box::pin(tokio::time::timeout_at(flush_by, self.socket.feed(frame)))
                    .await
                    .into(),
            };
            self.check_write(written)?;
        }
        if self.unflushed < FLUSH_EVERY {
            return Ok(());
        }
        let written = match self.flush_now() {
            Some(written) => written,
            None => Box::pin(tokio::time::timeout_at(self.flush_by, self.socket.flush()))
                .await
                .into(),
        };
        self.flushed(written)
    }

    /// Hands `frame` to the socket's buffer if it has room now; the frame
    /// back if not.
    ///
    /// Polled without the task's waker: nothing waits on this poll. A
    /// frame that does not fit is polled again, by `send`'s waiting path,
    /// with the waker. Done this way, the common case is no part of the
    /// connection's future: an `.await` here, even one that never waits,
    /// kept its state in every connection's task.
    fn feed_now(&mut self, frame: Outgoing) -> Result<Written, Outgoing> {
        match poll_now(|cx| self.socket.poll_ready(cx)) {
            Some(Ok(())) => Ok(self.socket.start_send(frame).into()),
            Some(Err(e)) => Ok(Written::Failed(e)),
            None => Err(frame),
        }
    }

    /// Flushes the socket's buffer if that finishes now (see
    /// [`Connection::feed_now`]); `None` if it has to wait.
    fn flush_now(&mut self) -> Option<Written> {
        poll_now(|cx| self.socket.poll_flush(cx)).map(Written::from)
    }

    /// Counts one more frame in the socket's buffer; the first one since a
    /// flush starts the slow consumer timeout. The deadline by which the
    /// buffer must be on its way.
    fn buffered(&mut self) -> tokio::time::Instant {
        if self.unflushed == 0 {
            self.flush_by = tokio::time::Instant::now() + self.app.config.slow_consumer_timeout;
        }
        self.unflushed += 1;
        self.flush_by
    }

    /// Turns the outcome of a write into the connection's fate.
    fn check_write(&mut self, written: Written) -> Result<(), Closing> {
        let full = match &written {
            Written::Done => return Ok(()),
            Written::Failed(e) => is_write_buffer_full(e),
            Written::TimedOut => true,
        };
        if !full {
            return Err(Closing::Gone);
        }
        self.app.metrics.slow_consumers.inc();
        Err(Closing::Close(close::SLOW_CONSUMER, "slow consumer"))
    }

    /// A ping from the client: the socket queued the pong, which goes out
    /// with the next flush. It counts as a buffered frame, so a client that
    /// pings and never reads is closed as a slow consumer like any other
    /// (protocol.md section 9); at once when the pong does not fit in the
    /// write buffer (the socket reports that as an error instead).
    fn pong_queued(&mut self) {
        self.buffered();
    }

    /// A frame that could not be read: it takes a token of `--rate-limit`
    /// like a data message, and of the connection's budget of invalid
    /// frames. `Err` when the client should be closed (1008).
    fn invalid_frame(&mut self) -> Result<(), Closing> {
        let budget = self.invalid.get_or_insert_with(|| {
            Box::new(governor::RateLimiter::direct(
                governor::Quota::per_second(nonzero(INVALID_PER_SECOND))
                    .allow_burst(nonzero(INVALID_BURST)),
            ))
        });
        let within_budget = budget.check().is_ok();
        let within_rate = self.rate.as_ref().is_none_or(|r| r.check().is_ok());
        if within_budget && within_rate {
            return Ok(());
        }
        self.app.metrics.closed_bad_frames.inc();
        Err(Closing::Close(
            close::POLICY,
            "too many frames that are not messages",
        ))
    }

    /// After a flush: receipts among the flushed frames count as delivered
    /// to this device (recorded in the background).
    fn flushed(&mut self, written: Written) -> Result<(), Closing> {
        self.check_write(written)?;
        self.unflushed = 0;
        if let Some(record) = self.session.written() {
            self.background
                .get()
                .push(Box::pin(async move { Background::Receipts(record.await) }));
        }
        Ok(())
    }

    async fn send_payloads(&mut self, payloads: Vec<Bytes>) -> Result<(), Closing> {
        self.send(payloads.into_iter().map(Outgoing::Text)).await
    }

    /// Serves the connection until it closes: each round reads what the
    /// store has for it, waits for the next source of work and handles it.
    ///
    /// Kept small, as every idle connection's task holds this future: what
    /// the rounds keep is one [`Rounds`], and the work of a round is in
    /// boxed futures ([`Connection::read_store`], [`Connection::on_work`]).
    /// Inline, their states took the task from 1,024 to 1,280 bytes
    /// (docs/performance.md, "Idle memory, step by step").
    async fn serve(&mut self) -> Closing {
        let mut rounds = Rounds::new(self.app.config.ping_interval);
        loop {
            if self.session.wants_read()
                && let Err(c) = Box::pin(self.read_store(&mut rounds.read_retry)).await
            {
                return c;
            }
            if !self.session.wants_read() {
                // Nothing to read now (the window is full, say): no timer
                // whose deadline passed may spin the loop.
                rounds.read_retry = None;
            }
            if self.unflushed > 0 && tokio::time::Instant::now() >= self.flush_by {
                // The buffered frames had their time. Checked here as well
                // as in the wait below, whose flush a client that keeps
                // sending (pings, say) never lets run: one more try, then
                // the connection is a slow consumer.
                let last_try = self.flush_now().unwrap_or(Written::TimedOut);
                if let Err(c) = self.flushed(last_try) {
                    return c;
                }
            }
            // The woken value is taken apart before the work's await: a
            // value bound across it would be kept in every task (80 bytes).
            let work = match std::future::poll_fn(|cx| self.poll_wake(cx, &mut rounds)).await {
                Wake::Work(work) => work,
                Wake::Unreadable(None) => return Closing::Gone,
                Wake::Unreadable(Some(e)) => return self.on_error(e),
                Wake::Shutdown => {
                    return Closing::Close(close::GOING_AWAY, "server shutting down");
                }
                // The loop's top reads again.
                Wake::RetryRead => continue,
                Wake::Flushed(flushed) => match self.flushed(flushed) {
                    Ok(()) => continue,
                    Err(c) => return c,
                },
            };
            // One allocation per round that has work to do; inline, the
            // handlers' states were the largest part of every idle
            // connection's task.
            if let Err(c) = Box::pin(self.on_work(work, &mut rounds)).await {
                return c;
            }
        }
    }

    /// Reads what the store holds for this connection and sends it. After
    /// a failed read (the store unreachable), sets when to read again and
    /// the pause after that: the session catches up by itself once the
    /// store is back, not only at its next frame or event.
    async fn read_store(
        &mut self,
        read_retry: &mut Option<(tokio::time::Instant, Duration)>,
    ) -> Result<(), Closing> {
        while self.session.wants_read() {
            match self.session.read().await {
                Ok(payloads) => {
                    *read_retry = None;
                    self.send_payloads(payloads).await?;
                }
                Err(e) => {
                    let pause = match *read_retry {
                        None => {
                            self.warn(&e, "store read failed; retrying");
                            READ_RETRY_FIRST
                        }
                        Some((_, pause)) => (pause * 2).min(READ_RETRY_MAX),
                    };
                    *read_retry = Some((tokio::time::Instant::now() + pause, pause));
                    break;
                }
            }
        }
        Ok(())
    }

    /// Every source of work, fairly: each poll starts from the next source
    /// in turn. The flush of buffered frames only when none of them is
    /// ready, so that what is ready goes out in one write.
    ///
    /// A poll of each source rather than a `select!` of their futures: the
    /// futures were kept in every connection's task (~300 bytes of an idle
    /// connection), and building them was work of every round.
    fn poll_wake(&mut self, cx: &mut std::task::Context<'_>, rounds: &mut Rounds) -> Poll<Wake> {
        let reading = self.reading();
        let retry_at = rounds.read_retry.map(|(at, _)| at);
        rounds.turn = rounds.turn.wrapping_add(1);
        for i in 0..SOURCES {
            let polled = match (rounds.turn + i) % SOURCES {
                0 if !self.replies.is_empty() => match self.replies.poll_next(cx) {
                    Poll::Ready(Some(reply)) => Some(Wake::Work(Work::Reply(reply))),
                    _ => None,
                },
                1 if !self.background.is_empty() => match self.background.poll_next(cx) {
                    Poll::Ready(Some(done)) => Some(Wake::Work(Work::Background(done))),
                    _ => None,
                },
                2 if reading => match self.socket.poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => Some(Wake::Work(Work::Frame(frame))),
                    Poll::Ready(Some(Err(e))) => Some(Wake::Unreadable(Some(e))),
                    Poll::Ready(None) => Some(Wake::Unreadable(None)),
                    Poll::Pending => None,
                },
                3 => ready(rounds.pings.poll_tick(cx)).map(|_| Wake::Work(Work::PingTick)),
                4 => ready(rounds.retry_timer.poll_until(cx, retry_at)).map(|()| Wake::RetryRead),
                // Shutdown comes through the hub: a flag read once the
                // inbox is empty, and a wake-up of the inbox's waker
                // (`Hub::close_all`).
                5 => match self.session.poll_recv(cx) {
                    Poll::Ready(event) => Some(Wake::Work(Work::Hub(event))),
                    Poll::Pending => self.session.server_closing().then_some(Wake::Shutdown),
                },
                _ => None,
            };
            if let Some(wake) = polled {
                return Poll::Ready(wake);
            }
        }
        if self.unflushed > 0 {
            if let Poll::Ready(flushed) = self.socket.poll_flush(cx) {
                return Poll::Ready(Wake::Flushed(flushed.into()));
            }
            if rounds
                .flush_timer
                .poll_until(cx, Some(self.flush_by))
                .is_ready()
            {
                return Poll::Ready(Wake::Flushed(Written::TimedOut));
            }
        }
        Poll::Pending
    }

    /// Handles a wake-up that has work to do: replies, background work, a
    /// frame (and those already read behind it), a ping tick, hub events.
    async fn on_work(&mut self, work: Work, rounds: &mut Rounds) -> Result<(), Closing> {
        match work {
            Work::Reply(reply) => self.on_replies(reply).await,
            Work::Background(done) => self.on_backgrounds(done).await,
            Work::Frame(message) => {
                rounds.last_heard = tokio::time::Instant::now();
                let mut result = self.on_message(message).await;
                // Under load one read brings several frames: those already
                // here are handled now, without a round of `serve` (and its
                // wait registrations) for each.
                let mut more = FRAME_BATCH;
                while result.is_ok() && more > 0 && self.reading() {
                    more -= 1;
                    match poll_once(self.socket.next()).await {
                        None => break,
                        Some(None) => return Err(Closing::Gone),
                        Some(Some(Err(e))) => return Err(self.on_error(e)),
                        Some(Some(Ok(message))) => result = self.on_message(message).await,
                    }
                }
                result
            }
            Work::PingTick => {
                if rounds.last_heard.elapsed() >= rounds.pings.period() * 3 {
                    return Err(Closing::Close(
                        close::GOING_AWAY,
                        "idle timeout: no frames or pongs",
                    ));
                }
                // Sets that are empty give their memory back; a busy
                // connection makes them again at its next message.
                self.replies.release();
                self.background.release();
                self.send([Outgoing::Ping]).await
            }
            Work::Hub(event) => self.on_events(event).await,
        }
    }

    /// Applies a hub event and the others already queued behind it (up to
    /// a bound), and sends what they produce in one batch.
    async fn on_events(&mut self, first: Event) -> Result<(), Closing> {
        let mut payloads = Vec::new();
        payloads.extend(self.session.on_event(first));
        for _ in 1..EVENT_BATCH {
            let Some(event) = self.session.try_recv() else {
                break;
            };
            payloads.extend(self.session.on_event(event));
        }
        self.send_payloads(payloads).await
    }

    /// Whether the connection takes more frames now: not while its
    /// pipelined replies or background work are at their bounds.
    fn reading(&self) -> bool {
        self.background.len() < MAX_BACKGROUND && self.replies.len() < MAX_PIPELINE
    }

    /// Handles `first` and the replies ready behind it: a group commit
    /// completes many at once, and each round of `serve` costs
    /// more than a reply (as for frames there).
    async fn on_replies(&mut self, first: Result<Accepted, Rejection>) -> Result<(), Closing> {
        let mut result = self.on_reply(first).await;
        for _ in 0..EVENT_BATCH {
            if result.is_err() || self.replies.is_empty() {
                break;
            }
            let Some(Some(reply)) = poll_once(self.replies.next()).await else {
                break;
            };
            result = self.on_reply(reply).await;
        }
        result
    }

    /// [`Connection::on_replies`] for results of background work.
    async fn on_backgrounds(&mut self, first: Background) -> Result<(), Closing> {
        let mut result = self.on_background(first).await;
        for _ in 0..EVENT_BATCH {
            if result.is_err() || self.background.is_empty() {
                break;
            }
            let Some(Some(done)) = poll_once(self.background.next()).await else {
                break;
            };
            result = self.on_background(done).await;
        }
        result
    }

    async fn on_reply(&mut self, reply: Result<Accepted, Rejection>) -> Result<(), Closing> {
        let frame = match reply {
            Ok(Accepted::Stored { id, .. }) => bachata_proto::received(&id),
            Ok(Accepted::Live { .. }) => return Ok(()),
            Err(rejection) => rejection.to_frame(),
        };
        self.send([Outgoing::Text(frame.into())]).await
    }

    /// A warning about this connection, with its number, channel and
    /// device.
    fn warn(&self, error: &StoreError, what: &str) {
        tracing::warn!(
            conn = self.conn,
            channel = %self.session.channel(),
            device = device_key(self.session.device()),
            %error,
            "{what}"
        );
    }

    async fn on_background(&mut self, done: Background) -> Result<(), Closing> {
        match done {
            Background::Acked(_, Ok(())) | Background::Receipts(Ok(())) => Ok(()),
            Background::Acked(id, Err(e)) => {
                self.warn(&e, "ack failed");
                let reply = bachata_proto::rejected(
                    Some(&id),
                    ErrorCode::Unavailable,
                    "storage is unavailable; ack again later",
                );
                self.send([Outgoing::Text(reply.into())]).await
            }
            Background::Receipts(Err(e)) => {
                // They stay pending and come again on the next connection.
                self.warn(&e, "cannot record delivered receipts");
                Ok(())
            }
        }
    }

    fn on_error(&self, e: websocket::Error) -> Closing {
        let (closing, bad_frame) = closing_for(e);
        if bad_frame {
            self.app.metrics.closed_bad_frames.inc();
        }
        if matches!(closing, Closing::Close(close::SLOW_CONSUMER, _)) {
            self.app.metrics.slow_consumers.inc();
        }
        closing
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Closing> {
        match message {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text).await,
                Err(_) => {
                    self.app.metrics.closed_bad_frames.inc();
                    Err(Closing::Close(
                        close::INVALID_DATA,
                        "binary frame is not valid UTF-8",
                    ))
                }
            },
            Message::Ping => {
                self.pong_queued();
                Ok(())
            }
            Message::Pong => Ok(()),
            Message::Close => Err(Closing::Answer),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closing> {
        let limits = Limits {
            max_depth: self.app.config.max_json_depth,
        };
        let reply = match parse_frame(text, &limits) {
            Err(rejected) => {
                self.invalid_frame()?;
                Some(bachata_proto::rejected(
                    rejected.id.as_ref(),
                    rejected.error.code(),
                    &rejected.error.to_string(),
                ))
            }
            Ok(Inbound::Ping) => {
                // The pong is a barrier: everything the client sent before
                // it, acks included, has been processed (and is durable)
                // when it arrives.
                while let Some(reply) = self.replies.next().await {
                    self.on_reply(reply).await?;
                }
                while let Some(done) = self.background.next().await {
                    self.on_background(done).await?;
                }
                Some(bachata_proto::pong().to_owned())
            }
            Ok(Inbound::Pong) => None,
            Ok(Inbound::Ack(id)) => {
                // The ack takes its place in the store's order now (so 200s,
                // and the 300s they cause, keep their order) and finishes
                // while this connection goes on reading. The hub tells
                // every connection of this device, this one included,
                // which seq the id resolved to.
                let done = self
                    .app
                    .center
                    .ack_pipelined(self.session.channel(), self.session.device(), id.clone())
                    .await;
                self.background
                    .get()
                    .push(Box::pin(async move { Background::Acked(id, done.await) }));
                None
            }
            Ok(Inbound::Data(msg)) if self.rate.as_ref().is_some_and(|r| r.check().is_err()) => {
                Some(bachata_proto::rejected(
                    msg.id.as_ref(),
                    ErrorCode::RateLimited,
                    "too many messages; slow down and resend",
                ))
            }
            Ok(Inbound::Data(msg)) => {
                // The message takes its place in the store's order now (or,
                // when a route hook is asked about it, once its call is over
                // and the message before it has its place); its 100 (or
                // 400) is sent when its commit completes, in order, while
                // this connection goes on reading. (Those left when
                // the connection ends finish in a task of their own, see
                // `run`; one task per message cost CPU under load.)
                let (channel, device) = (
                    self.session.channel().clone(),
                    self.session.device().clone(),
                );
                let pending = self
                    .app
                    .center
                    .submit_in_order(&channel, &device, msg, &mut self.order)
                    .await;
                self.replies.get().push_back(pending);
                None
            }
        };
        match reply {
            Some(reply) => self.send([Outgoing::Text(reply.into())]).await,
            None => Ok(()),
        }
    }

    async fn close(mut self, closing: Closing) {
        close_socket(&mut self.socket, closing).await;
        tracing::debug!(
            conn = self.conn,
            channel = %self.session.channel(),
            device = device_key(self.session.device()),
            "disconnected"
        );
    }
}
