//! The undelivered-message webhook: a built-in post-process hook.
//!
//! With `--undelivered-webhook URL`, every stored copy of a message (one
//! per destination channel) is due `--undelivered-after` after it was
//! stored. If no device of the channel acked it by then, `URL` gets one
//! POST:
//!
//! ```json
//! {"id": "m1", "from": "alice", "dest": "bob", "type": "direct", "time": 1700000000000}
//! ```
//!
//! so that an application can notify by another means (a push
//! notification, an email). `from` is `null` for messages by system; `time`
//! is the message's time in Unix milliseconds.
//!
//! # Durable, and once across nodes
//! What is due lives in the store, not in this process: the center gives
//! each message its due time ([`NewMessage::notify_at`](bachata_core::NewMessage)),
//! the store keeps its copies in a due index with the message itself, and
//! this task asks the store for the copies whose time has come
//! ([`Store::take_undelivered`]) every [`poll_every`]. Taking one is a claim
//! for [`LEASE`]: on Redis, no other node takes it meanwhile. Once its POST
//! succeeded (or was refused for good, or ran out of attempts) the copy is
//! finished ([`Store::finish_undelivered`]) and never due again. A node
//! that restarts or dies before that leaves it due again: after the
//! restart (embedded and memory stores keep claims in memory), or after
//! the lease for the other nodes (Redis). So every call is made at least
//! once, and may be made twice: the application dedupes by `id` and
//! `dest`. See `docs/operations.md`, "Undelivered webhook".
//!
//! Nothing here is on the path of a message: the index is written with the
//! message, and the POSTs run on tasks of their own, at most
//! [`MAX_CONCURRENT_POSTS`] at a time.

use std::sync::Arc;
use std::time::Duration;

use bachata_core::{Store, Undelivered, now_millis};
use bachata_proto::Channel;
use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Copies one poll claims at most. A full batch is followed by the next
/// poll at once.
pub(crate) const TAKE_BATCH: usize = 256;

/// How long a claim keeps a copy from the other nodes: longer than every
/// attempt of a POST with its pauses (5 x 10 s + 7.5 s), so that a live
/// node finishes its copies before another may take them.
pub(crate) const LEASE: Duration = Duration::from_secs(120);

/// How often the store is asked for due copies: a tenth of
/// `--undelivered-after`, between 50 ms and 1 s. A call is made at most
/// this late (and a store read this often: one call per poll).
pub(crate) fn poll_every(after: Duration) -> Duration {
    (after / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

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

/// What the body takes from the stored frame (a data message the server
/// serialized itself).
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
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
}

/// The webhook's settings, checked; [`UndeliveredWebhook::spawn`] starts it.
#[derive(Debug)]
pub(crate) struct UndeliveredWebhook {
    poster: Arc<Poster>,
    after: Duration,
}

impl UndeliveredWebhook {
    /// Checks the URL and builds the HTTP client. `metrics` receives
    /// `bachata_webhook_sent` and `bachata_webhook_failed`.
    pub(crate) fn new(
        url: &str,
        after: Duration,
        api_key: Option<&str>,
        metrics: &Metrics,
    ) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(url).map_err(|e| WebhookError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Url("the scheme must be http or https".into()));
        }
        // reqwest is built without a crypto provider: install ring as the
        // process default once (an error means one is installed already).
        let _ = crate::tls::ring_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bachata/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let poster = Arc::new(Poster {
            client,
            url,
            api_key: api_key.map(|k| k.as_bytes().to_vec()),
            retry: RetryPolicy {
                attempts: ATTEMPTS,
                base: MAX_BASE_BACKOFF.min(after / 2),
            },
            counters: Counters {
                sent: metrics.webhook_sent.clone(),
                failed: metrics.webhook_failed.clone(),
            },
        });
        Ok(UndeliveredWebhook { poster, after })
    }

    /// Starts the task that polls `store` (the center's) and POSTs, until
    /// `stop`. Needs a tokio runtime.
    pub(crate) fn spawn(self, store: Arc<dyn Store>, stop: CancellationToken) {
        tokio::spawn(run(self, store, stop));
    }
}

/// The poll loop: claims due copies and hands each to a POST task.
async fn run(webhook: UndeliveredWebhook, store: Arc<dyn Store>, stop: CancellationToken) {
    let every = poll_every(webhook.after);
    let lease = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_POSTS));
    let warned = Arc::new(Mutex::new(None));
    let mut full = false;
    loop {
        if !full {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        let now = now_millis();
        let copies = match store
            .take_undelivered(now, now.saturating_add(lease), TAKE_BATCH)
            .await
        {
            Ok(copies) => copies,
            Err(e) => {
                warn_store(&warned, &e, "cannot read what is due");
                full = false;
                continue;
            }
        };
        full = copies.len() >= TAKE_BATCH;
        for copy in copies {
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return, // never closed
                },
            };
            let (poster, store, stop, warned) = (
                webhook.poster.clone(),
                store.clone(),
                stop.clone(),
                warned.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    // Not finished: due again after a restart or the lease.
                    () = stop.cancelled() => {
                        tracing::debug!(id = %copy.id, dest = %copy.channel, "undelivered webhook abandoned at shutdown");
                    }
                    called = call(&poster, &copy) => {
                        finish(store.as_ref(), &poster, &copy, called, &warned).await;
                    }
                }
            });
        }
    }
    tracing::debug!("undelivered webhook stopped");
}

/// Records in the store that `copy`'s call is over, then counts it.
async fn finish(
    store: &dyn Store,
    poster: &Poster,
    copy: &Undelivered,
    called: Called,
    warned: &Mutex<Option<tokio::time::Instant>>,
) {
    if let Err(e) = store
        .finish_undelivered(&[(copy.channel.clone(), copy.seq)])
        .await
    {
        // Due again after the lease: called twice, never lost.
        warn_store(warned, &e, "cannot record a call as made");
    }
    match called {
        Called::Sent => poster.counters.sent.inc(),
        Called::Failed => poster.counters.failed.inc(),
    };
}

/// Logs a failed store call, at most once per 10 s.
fn warn_store(
    warned: &Mutex<Option<tokio::time::Instant>>,
    e: &bachata_core::StoreError,
    what: &str,
) {
    let now = tokio::time::Instant::now();
    let mut warned = warned.lock();
    if warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
        *warned = Some(now);
        tracing::warn!(error = %e, "undelivered webhook: {what}; trying again");
    }
}

/// Whether a call was made, or given up for good (counted once the store
/// recorded it as done, so the metrics never run ahead of the store).
#[derive(Debug, Clone, Copy)]
enum Called {
    Sent,
    Failed,
}

/// Builds the body of `copy`'s POST and sends it (with retries).
async fn call(poster: &Poster, copy: &Undelivered) -> Called {
    let frame: Frame<'_> = match serde_json::from_slice(&copy.payload) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::error!(error = %e, id = %copy.id, "undelivered webhook: the stored message does not parse; not sent");
            return Called::Failed;
        }
    };
    let payload = Payload {
        id: copy.id.as_str(),
        from: copy.sender.as_ref().map(Channel::as_str),
        dest: copy.channel.as_str(),
        kind: &frame.kind,
        time: frame.time,
    };
    match serde_json::to_vec(&payload) {
        Ok(body) => post(poster, Bytes::from(body), copy).await,
        Err(e) => {
            tracing::error!(error = %e, "undelivered webhook: cannot encode the payload");
            Called::Failed
        }
    }
}

/// Why an attempt did not succeed.
enum Outcome {
    Retry(String),
    Permanent(String),
}

/// POSTs `body` with retries; counts the result.
async fn post(poster: &Poster, body: Bytes, copy: &Undelivered) -> Called {
    let (id, dest) = (&copy.id, &copy.channel);
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
                tracing::debug!(%id, %dest, attempt, "undelivered webhook sent");
                return Called::Sent;
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
                tracing::warn!(%id, %dest, error = %why, "undelivered webhook refused; not retried");
                return Called::Failed;
            }
        }
    }
    tracing::warn!(
        %id, %dest, attempts = poster.retry.attempts, error = %last,
        "undelivered webhook failed; giving up"
    );
    Called::Failed
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
