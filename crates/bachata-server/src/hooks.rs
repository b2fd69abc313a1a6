//! Application hooks over HTTP (protocol.md section 10): the application
//! backend, in any language, decides who connects.
//!
//! [`HookClient`] is what every hook shares: one keep-alive HTTP client, a
//! timeout per call (`--hook-timeout`), a bound on calls in flight
//! (`--hook-concurrency`: a slow application gets refusals, never an
//! unbounded queue of waiting clients), the `X-Bachata-Signature` header
//! (`hex(HMAC-SHA256(api key, body))`) when an API key is set, and metrics
//! per hook (`bachata_hook_<name>_calls`, `_failures`, `_busy`, `_seconds`).
//!
//! The route hook, single and batched calls, is in `route_hook.rs`.
//!
//! The connect hook (`--connect-hook URL`): a `/messages` upgrade without a
//! valid JWT POSTs who is connecting; a 200 answer names the channel (and
//! optionally the device and groups to join), 401 or 403 refuse with that
//! status and the answer's `reason`, anything else (a timeout, a 5xx, a
//! malformed answer, too many calls in flight) refuses with 503.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, ORIGIN, USER_AGENT};
use bachata_core::{Device, Store};
use bachata_proto::{Channel, DeviceId, GroupId};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::auth::{HandshakeQuery, Identity};
use crate::metrics::{HookMetrics, Metrics};

/// The header that carries the body's signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-bachata-signature";

/// Bytes of a hook's answer read at most (a larger one is no answer).
pub(crate) const MAX_ANSWER: usize = 64 * 1024;

/// Groups one connect answer may name at most.
pub(crate) const MAX_GROUPS: usize = 256;

/// A hook cannot be set up (a start-up error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    /// Named after its setting (`route_hook`, `connect_hook`).
    #[error("{name}_hook is not a valid http(s) URL: {why}")]
    Url { name: &'static str, why: String },
    #[error("cannot build the HTTP client for the {name} hook: {source}")]
    Client {
        name: &'static str,
        source: reqwest::Error,
    },
}

/// Why a call got no answer to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookFailure {
    #[error("too many calls to the {0} hook in flight")]
    Busy(&'static str),
    #[error("the {0} hook did not answer within the timeout")]
    Timeout(&'static str),
    #[error("the {0} hook could not be reached: {1}")]
    Transport(&'static str, String),
}

/// How every hook is called.
#[derive(Debug, Clone)]
pub(crate) struct HookSettings {
    pub timeout: Duration,
    pub concurrency: usize,
    /// The API key, which signs every request body.
    pub api_key: Option<String>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct HookClient {
    name: &'static str,
    /// When a failure was last logged (ms since `created`): at most one
    /// line per second, however many messages fail during an outage.
    last_warned: std::sync::atomic::AtomicU64,
    created: std::time::Instant,
    url: reqwest::Url,
    http: reqwest::Client,
    timeout: Duration,
    permits: Arc<Semaphore>,
    api_key: Option<Vec<u8>>,
    metrics: HookMetrics,
}

impl HookClient {
    /// A client for the hook `name` (`connect`, `route`) at `url`.
    pub(crate) fn new(
        name: &'static str,
        url: &str,
        settings: &HookSettings,
        metrics: &mut Metrics,
    ) -> Result<HookClient, HookError> {
        let url = reqwest::Url::parse(url).map_err(|e| HookError::Url {
            name,
            why: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HookError::Url {
                name,
                why: "the scheme must be http or https".into(),
            });
        }
        // reqwest is built without a crypto provider: install ring as the
        // process default once (an error means one is installed already).
        let _ = crate::tls::ring_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bachata/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(settings.concurrency)
            .build()
            .map_err(|source| HookError::Client { name, source })?;
        Ok(HookClient {
            name,
            last_warned: std::sync::atomic::AtomicU64::new(0),
            created: std::time::Instant::now(),
            url,
            http,
            timeout: settings.timeout,
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            api_key: settings.api_key.as_ref().map(|k| k.as_bytes().to_vec()),
            metrics: metrics.hook(name),
        })
    }

    /// Logs why a call had no usable answer, at most once a second (the
    /// metrics count every one); whether it logged.
    pub(crate) fn warn(&self, why: &str) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(hook = self.name, %why, "hook gave no usable answer");
            return true;
        }
        false
    }

    /// POSTs `body` as JSON; the answer's status and body.
    pub(crate) async fn post(
        &self,
        body: &impl Serialize,
    ) -> Result<(StatusCode, Bytes), HookFailure> {
        let body = serde_json::to_vec(body)
            .map_err(|e| HookFailure::Transport(self.name, e.to_string()))?;
        self.post_body(body).await
    }

    /// POSTs `body`, JSON already written; refused at once when
    /// `--hook-concurrency` calls are in flight.
    pub(crate) async fn post_body(
        &self,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), HookFailure> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            self.busy();
            return Err(HookFailure::Busy(self.name));
        };
        self.call(body, MAX_ANSWER).await
    }

    /// Counts a call refused because the hook is busy.
    pub(crate) fn busy(&self) {
        self.metrics.busy.inc();
    }

    /// The bound on one call (`--hook-timeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for one of the `--hook-concurrency` places of a call.
    pub(crate) async fn place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// POSTs the JSON `body` (its caller holds a place), reading at most
    /// `limit` bytes of answer; counts the call in the metrics.
    pub(crate) async fn call(
        &self,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HookFailure> {
        self.metrics.calls.inc();
        let started = std::time::Instant::now();
        let result = self.send(body, limit).await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.failures.inc();
        }
        result
    }

    async fn send(&self, body: Vec<u8>, limit: usize) -> Result<(StatusCode, Bytes), HookFailure> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &self.api_key {
            request = request.header(SIGNATURE_HEADER, signature(key, &body));
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                HookFailure::Timeout(self.name)
            } else {
                HookFailure::Transport(self.name, e.without_url().to_string())
            }
        };
        let mut response = request.body(body).send().await.map_err(failed)?;
        let status = response.status();
        // An answer is a small JSON object: read at most `limit` bytes.
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if answer.len() + chunk.len() > limit {
                return Err(HookFailure::Transport(
                    self.name,
                    format!("an answer larger than {limit} bytes"),
                ));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, Bytes::from(answer)))
    }
}

/// `hex(HMAC-SHA256(key, body))`.
pub(crate) fn signature(key: &[u8], body: &[u8]) -> String {
    bachata_proto::sign::hmac_hex(key, body)
}

/// What the connect hook is told.
#[derive(Debug, Serialize)]
struct ConnectRequest<'a> {
    channel: Option<&'a str>,
    device: Option<&'a str>,
    token: Option<&'a str>,
    headers: BTreeMap<&'static str, &'a str>,
    remote_addr: Option<String>,
}

/// A 200 answer of the connect hook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectAnswer {
    channel: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// A 401 or 403 answer: its reason, if it gives one.
#[derive(Debug, Default, Deserialize)]
struct Refusal {
    #[serde(default)]
    reason: Option<String>,
}

/// What the connect hook decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConnectOutcome {
    Accepted(Identity),
    /// 401 or 403, with the hook's reason.
    Refused {
        status: StatusCode,
        reason: String,
    },
    /// No usable answer (503).
    Unavailable(String),
}

/// `--connect-hook`: see the module docs.
#[derive(Debug)]
pub(crate) struct ConnectHook {
    client: HookClient,
}

impl ConnectHook {
    pub(crate) fn new(client: HookClient) -> ConnectHook {
        ConnectHook { client }
    }

    /// See [`HookClient::warn`].
    pub(crate) fn warn(&self, why: &str) {
        let _ = self.client.warn(why);
    }

    /// Asks the application who is connecting, and makes the channel a
    /// member of the groups the answer names.
    pub(crate) async fn connect(
        &self,
        query: &HandshakeQuery,
        headers: &HeaderMap,
        remote: Option<SocketAddr>,
        store: &dyn Store,
    ) -> ConnectOutcome {
        let mut forwarded = BTreeMap::new();
        for (name, header) in [
            ("cookie", COOKIE),
            ("authorization", AUTHORIZATION),
            ("origin", ORIGIN),
            ("user-agent", USER_AGENT),
        ] {
            if let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) {
                forwarded.insert(name, value);
            }
        }
        let request = ConnectRequest {
            channel: query.channel.as_deref(),
            device: query.device.as_deref(),
            token: query.token.as_deref(),
            headers: forwarded,
            remote_addr: remote.map(|r| r.to_string()),
        };
        let (status, body) = match self.client.post(&request).await {
            Ok(answer) => answer,
            Err(failure) => return ConnectOutcome::Unavailable(failure.to_string()),
        };
        match status {
            StatusCode::OK => match accepted(&body, query) {
                Ok((identity, groups)) => {
                    for group in &groups {
                        if let Err(e) = store.add_member(group, &identity.channel).await {
                            return ConnectOutcome::Unavailable(format!(
                                "cannot join group {group}: {e}"
                            ));
                        }
                    }
                    ConnectOutcome::Accepted(identity)
                }
                Err(why) => {
                    ConnectOutcome::Unavailable(format!("the connect hook's answer: {why}"))
                }
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let refusal: Refusal = serde_json::from_slice(&body).unwrap_or_default();
                ConnectOutcome::Refused {
                    status,
                    reason: refusal
                        .reason
                        .unwrap_or_else(|| "refused by the connect hook".to_owned()),
                }
            }
            other => ConnectOutcome::Unavailable(format!("the connect hook answered {other}")),
        }
    }
}

/// The identity and groups of a 200 answer; the query's device when the
/// answer names none.
fn accepted(body: &[u8], query: &HandshakeQuery) -> Result<(Identity, Vec<GroupId>), String> {
    let answer: ConnectAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let channel = Channel::new(&answer.channel).map_err(|e| format!("channel: {e}"))?;
    let device: Device = match answer.device.as_deref().or(query.device.as_deref()) {
        Some(d) => Some(DeviceId::new(d).map_err(|e| format!("device: {e}"))?),
        None => None,
    };
    if answer.groups.len() > MAX_GROUPS {
        return Err(format!("more than {MAX_GROUPS} groups"));
    }
    let groups = answer
        .groups
        .iter()
        .map(|g| GroupId::new(g).map_err(|e| format!("group {g:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Identity { channel, device }, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn failures_are_logged_at_most_once_a_second() {
        let settings = HookSettings {
            timeout: Duration::from_secs(1),
            concurrency: 1,
            api_key: None,
        };
        let mut client = HookClient::new(
            "test",
            "http://127.0.0.1:9/",
            &settings,
            &mut Metrics::new(),
        )
        .expect("client");
        assert!(client.warn("first"));
        assert!(!client.warn("second, at once"));
        // Two seconds later, as the client's clock sees it.
        client.created = client
            .created
            .checked_sub(Duration::from_secs(2))
            .expect("an instant 2 s back");
        assert!(client.warn("two seconds later"));
        assert!(!client.warn("and at once again"));
    }

    #[test]
    fn answers_are_checked() {
        let query = HandshakeQuery {
            device: Some("phone".into()),
            ..HandshakeQuery::default()
        };
        let (identity, groups) =
            accepted(br#"{"channel": "bob", "groups": ["team"]}"#, &query).expect("valid");
        assert_eq!(identity.channel.as_str(), "bob");
        assert_eq!(identity.device.as_ref().map(|d| d.as_str()), Some("phone"));
        assert_eq!(groups.len(), 1);
        let (identity, _) =
            accepted(br#"{"channel": "bob", "device": "tv"}"#, &query).expect("valid");
        assert_eq!(identity.device.as_ref().map(|d| d.as_str()), Some("tv"));
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let too_many =
            serde_json::to_vec(&json!({"channel": "bob", "groups": many})).expect("json");
        assert!(accepted(&too_many, &query).is_err(), "past MAX_GROUPS");
        for bad in [
            &br#"{}"#[..],
            br#"{"channel": ""}"#,
            br#"{"channel": "bob", "device": ""}"#,
            br#"{"channel": "bob", "groups": [""]}"#,
            br#"{"channel": "bob", "extra": 1}"#,
            br#"not json"#,
        ] {
            assert!(
                accepted(bad, &query).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
