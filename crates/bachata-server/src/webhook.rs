//! The undelivered-message webhook: a built-in post-process hook.
//!
//! With `--undelivered-webhook URL`, every stored message starts one timer of
//! `--undelivered-after`. When it runs out, each destination channel that has
//! still no device ack for the message gets one POST to `URL`:
//!
//! ```json
//! {"id": "m1", "from": "alice", "dest": "bob", "type": "direct", "time": 1700000000000}
//! ```
//!
//! so that an application can notify by another means (a push
//! notification, an email). `from` is `null` for messages by system; `time`
//! is the message's time in Unix milliseconds.
//!
//! Nothing here may slow delivery down: [`PostProcess::queued`] only does a
//! `try_send` into a bounded queue (a full queue drops the timer and counts
//! it as failed). One task owns the timers; it checks
//! [`Store::ack_state`] when one is due and hands each POST to a task of its
//! own, at most [`MAX_CONCURRENT_POSTS`] at a time. Timers live in memory on
//! the node that stored the message: a restart loses them. See
//! `docs/operations.md`, "Undelivered webhook".

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bachata_core::{AckState, PostProcess, Queued, Seq, Store};
use bachata_proto::{Channel, MessageId};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::metrics::Metrics;

/// Messages whose timers wait in the queue between the hook and the timer
/// task. When it is full, new timers are dropped (and counted as failed).
pub(crate) const QUEUE_CAPACITY: usize = 65_536;

/// Messages whose timers the timer task holds at once. When it holds this
/// many, it stops taking from the queue, which then fills up: memory stays
/// bounded however fast messages come.
pub(crate) const MAX_TIMERS: usize = 1 << 19;

/// POSTs in flight at once. A due timer waits for a free slot.
pub(crate) const MAX_CONCURRENT_POSTS: usize = 64;

/// Timeout of one POST attempt, connection included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts per POST (the first one and four retries).
pub(crate) const ATTEMPTS: u32 = 5;

/// The first retry delay, at most; it doubles on each retry.
pub(crate) const MAX_BASE_BACKOFF: Duration = Duration::from_millis(500);

/// The webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("undelivered_webhook is not a valid URL: {0}")]
    Url(String),
    #[error("cannot build the HTTP client for undelivered_webhook: {0}")]
    Client(#[from] reqwest::Error),
}

/// What a POST says about a message (shared by its destinations).
#[derive(Debug)]
struct Message {
    id: MessageId,
    from: Option<Channel>,
    kind: String,
    time: i64,
}

/// One stored message waiting for its deadline.
#[derive(Debug)]
struct Timer {
    deadline: Instant,
    message: Arc<Message>,
    destinations: Vec<(Channel, Seq)>,
}

/// The JSON body of a POST.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    id: &'a str,
    from: Option<&'a str>,
    dest: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    time: i64,
}

/// How a POST is retried.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    attempts: u32,
    /// Delay before the first retry; each next one doubles it.
    base: Duration,
}

impl RetryPolicy {
    fn delay_before(&self, attempt: u32) -> Duration {
        // attempt >= 1: base, 2 base, 4 base, ...
        self.base
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
    }
}

/// Counters shared with `/metrics`.
#[derive(Debug, Clone)]
struct Counters {
    sent: Counter,
    failed: Counter,
}

/// What the POST tasks share.
#[derive(Debug)]
struct Poster {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Signs each body (`X-Bachata-Signature`), as the hooks' requests.
    api_key: Option<Vec<u8>>,
    retry: RetryPolicy,
    counters: Counters,
    stop: CancellationToken,
}

/// The hook. Dropping it (with the center, on shutdown) stops the timer
/// task and abandons the POSTs in flight.
#[derive(Debug)]
pub(crate) struct UndeliveredWebhook {
    tx: mpsc::Sender<Timer>,
    after: Duration,
    failed: Counter,
    /// Set while the queue is full, so an overload logs once, not per message.
    overflowing: AtomicBool,
    _stop: DropGuard,
}

impl UndeliveredWebhook {
    /// Starts the timer task. `store` must be the store the center uses;
    /// `metrics` receives `bachata_webhook_sent` and `bachata_webhook_failed`.
    /// Needs a tokio runtime.
    pub(crate) fn new(
        url: &str,
        after: Duration,
        api_key: Option<&str>,
        store: Arc<dyn Store>,
        metrics: &Metrics,
    ) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(url).map_err(|e| WebhookError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Url("the scheme must be http or https".into()));
        }
        // reqwest is built without a crypto provider: install ring as the
        // process default once (an error means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bachata/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let counters = Counters {
            sent: metrics.webhook_sent.clone(),
            failed: metrics.webhook_failed.clone(),
        };
        let stop = CancellationToken::new();
        let poster = Arc::new(Poster {
            client,
            url,
            api_key: api_key.map(|k| k.as_bytes().to_vec()),
            retry: RetryPolicy {
                attempts: ATTEMPTS,
                base: MAX_BASE_BACKOFF.min(after / 2),
            },
            counters: counters.clone(),
            stop: stop.clone(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_timers(rx, store, poster));
        Ok(UndeliveredWebhook {
            tx,
            after,
            failed: counters.failed,
            overflowing: AtomicBool::new(false),
            _stop: stop.drop_guard(),
        })
    }
}

impl PostProcess for UndeliveredWebhook {
    fn queued(&self, msg: &Queued) {
        if msg.destinations.is_empty() {
            return;
        }
        // A delay too long for the clock never runs out.
        let Some(deadline) = Instant::now().checked_add(self.after) else {
            return;
        };
        let timer = Timer {
            deadline,
            message: Arc::new(Message {
                id: msg.id.clone(),
                from: msg.from.clone(),
                kind: msg.kind.clone(),
                time: msg.time,
            }),
            destinations: msg.destinations.clone(),
        };
        match self.tx.try_send(timer) {
            Ok(()) => {
                if self.overflowing.load(Ordering::Relaxed) {
                    self.overflowing.store(false, Ordering::Relaxed);
                    tracing::info!("undelivered webhook queue has room again");
                }
            }
            Err(TrySendError::Full(timer)) => {
                self.failed.inc_by(timer.destinations.len() as u64);
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        id = %timer.message.id,
                        "undelivered webhook queue is full; dropping timers (counted in \
                         bachata_webhook_failed) until it has room"
                    );
                }
            }
            // The timer task stopped: the server is shutting down.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// The timer task: owns every timer, fires the due ones.
///
/// Every timer has the same delay, so deadlines arrive in order (up to the
/// microseconds between two hooks computing theirs and sending): a FIFO queue
/// is a priority queue here.
async fn run_timers(mut rx: mpsc::Receiver<Timer>, store: Arc<dyn Store>, poster: Arc<Poster>) {
    let stop = poster.stop.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_POSTS));
    let mut timers: VecDeque<Timer> = VecDeque::new();
    loop {
        let next = timers.front().map(|t| t.deadline);
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while timers.front().is_some_and(|t| t.deadline <= now) {
                    let Some(timer) = timers.pop_front() else { break };
                    if !fire(timer, store.as_ref(), &poster, &slots).await {
                        return;
                    }
                    // The in-memory stores answer without yielding: let a
                    // long run of due timers share the worker thread.
                    tokio::task::consume_budget().await;
                }
            }
            got = rx.recv(), if timers.len() < MAX_TIMERS => match got {
                Some(timer) => timers.push_back(timer),
                None => break,
            },
        }
    }
    tracing::debug!(
        dropped = timers.len() + rx.len(),
        "undelivered webhook stopped"
    );
}

/// Checks each destination of a due message and POSTs for those still
/// pending. Returns false when the server is stopping.
async fn fire(
    timer: Timer,
    store: &dyn Store,
    poster: &Arc<Poster>,
    slots: &Arc<Semaphore>,
) -> bool {
    for (channel, seq) in timer.destinations {
        match store.ack_state(&channel, seq).await {
            Ok(AckState::Pending) => {}
            Ok(AckState::Acked | AckState::Gone) => continue,
            Err(e) => {
                poster.counters.failed.inc();
                tracing::warn!(
                    error = %e, id = %timer.message.id, dest = %channel,
                    "undelivered webhook: cannot read the ack state; not sent"
                );
                continue;
            }
        }
        let payload = Payload {
            id: timer.message.id.as_str(),
            from: timer.message.from.as_ref().map(Channel::as_str),
            dest: channel.as_str(),
            kind: &timer.message.kind,
            time: timer.message.time,
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                poster.counters.failed.inc();
                tracing::error!(error = %e, "undelivered webhook: cannot encode the payload");
                continue;
            }
        };
        let permit = tokio::select! {
            () = poster.stop.cancelled() => return false,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return false, // never closed
            },
        };
        let poster = poster.clone();
        let id = timer.message.id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stop = poster.stop.clone();
            tokio::select! {
                () = stop.cancelled() => {
                    tracing::debug!(%id, dest = %channel, "undelivered webhook abandoned at shutdown");
                }
                () = post(&poster, body, &id, &channel) => {}
            }
        });
    }
    true
}

/// Why an attempt did not succeed.
enum Outcome {
    Retry(String),
    Permanent(String),
}

/// POSTs `body` with retries; counts the result.
async fn post(poster: &Poster, body: Bytes, id: &MessageId, dest: &Channel) {
    let mut last = String::new();
    let signature = poster
        .api_key
        .as_deref()
        .map(|key| crate::hooks::signature(key, &body));
    for attempt in 0..poster.retry.attempts {
        if attempt > 0 {
            tokio::time::sleep(poster.retry.delay_before(attempt)).await;
        }
        let mut request = poster
            .client
            .post(poster.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(signature) = &signature {
            request = request.header(crate::hooks::SIGNATURE_HEADER, signature);
        }
        let result = request.body(body.clone()).send().await;
        let outcome = match result {
            Ok(response) if response.status().is_success() => {
                poster.counters.sent.inc();
                tracing::debug!(%id, %dest, attempt, "undelivered webhook sent");
                return;
            }
            Ok(response) => {
                let status = response.status();
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Outcome::Retry(format!("status {status}"))
                } else {
                    Outcome::Permanent(format!("status {status}"))
                }
            }
            Err(e) if e.is_builder() => Outcome::Permanent(error_chain(e)),
            Err(e) => Outcome::Retry(error_chain(e)),
        };
        match outcome {
            Outcome::Retry(why) => {
                tracing::debug!(%id, %dest, attempt, error = %why, "undelivered webhook attempt failed");
                last = why;
            }
            Outcome::Permanent(why) => {
                poster.counters.failed.inc();
                tracing::warn!(%id, %dest, error = %why, "undelivered webhook refused; not retried");
                return;
            }
        }
    }
    poster.counters.failed.inc();
    tracing::warn!(
        %id, %dest, attempts = poster.retry.attempts, error = %last,
        "undelivered webhook failed; giving up"
    );
}

/// An error with its sources ("error sending request: connection refused"),
/// without the URL, which may hold a secret.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
