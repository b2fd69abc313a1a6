//! A Rust client for bachata.
//!
//! - [`Client::connect`] opens a connection as a channel (anonymous mode) or
//!   with a JWT, optionally as a named device, and waits for the ready
//!   message.
//! - [`Client::send`] returns a [`SendHandle`] that resolves on the 100
//!   (stored) and on the 300 (delivered), or with a typed [`Rejected`] error
//!   (the server's 400 code and reason).
//! - [`Client::recv`] yields received data messages, each once: the client
//!   answers 200 for you (unless `auto_ack` is off) and drops redelivered ids
//!   it already handed over (delivery is at least once).
//! - A background task keeps the connection alive: it pings, and on any loss
//!   reconnects with exponential backoff and jitter, then resends every
//!   message that has no 100 yet with the same id (the server dedupes).
//!
//! Every wait has a timeout.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bachata_client::ClientError> {
//! use bachata_client::{Client, ClientConfig, Outgoing};
//! let mut client = Client::connect(ClientConfig::channel("ws://127.0.0.1:8000", "alice")).await?;
//! let mut sent = client.send(Outgoing::direct("bob", serde_json::json!({"text": "hi"}))).await?;
//! sent.stored().await?;    // 100: on disk on the server
//! let by = sent.delivered().await?; // 300: bob's device got it
//! # Ok(()) }
//! ```

mod task;

use std::time::Duration;

use bachata_proto::{DataMessage, ErrorCode, MessageId};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

/// How the client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `?channel=` (servers in anonymous mode).
    Channel(String),
    /// A JWT, sent as `?token=`.
    Token(String),
}

/// Client settings. Build with [`ClientConfig::channel`] or
/// [`ClientConfig::token`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's base URL, `ws://host:port` (`/messages` is appended).
    pub url: String,
    pub credentials: Credentials,
    pub device: Option<String>,
    /// Answer 200 when a message is handed over by [`Client::recv`].
    pub auto_ack: bool,
    /// How often to ping; a missing pong for `timeout` means a reconnect.
    pub ping_interval: Duration,
    /// Bound on connecting, on a pong, and the default for receipts.
    pub timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up after this many failed reconnects in a row (`None`: never).
    pub max_reconnects: Option<u32>,
}

impl ClientConfig {
    fn new(url: &str, credentials: Credentials) -> Self {
        ClientConfig {
            url: url.trim_end_matches('/').to_owned(),
            credentials,
            device: None,
            auto_ack: true,
            ping_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_reconnects: None,
        }
    }

    /// Connect as `channel` (anonymous mode).
    pub fn channel(url: &str, channel: &str) -> Self {
        Self::new(url, Credentials::Channel(channel.to_owned()))
    }

    /// Connect with a JWT.
    pub fn token(url: &str, token: &str) -> Self {
        Self::new(url, Credentials::Token(token.to_owned()))
    }

    pub fn device(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }

    /// The full `/messages` URL with the query.
    pub fn endpoint(&self) -> String {
        let (key, value) = match &self.credentials {
            Credentials::Channel(c) => ("channel", c),
            Credentials::Token(t) => ("token", t),
        };
        let mut url = format!("{}/messages?{key}={}", self.url, encode(value));
        if let Some(device) = &self.device {
            url.push_str(&format!("&device={}", encode(device)));
        }
        url
    }
}

/// Percent-encodes a query value (every byte but letters and digits).
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A data message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: DataMessage,
}

impl Outgoing {
    /// A `"direct"` message to channel `to`.
    pub fn direct(to: &str, data: Value) -> Self {
        Self::new("direct", to, data)
    }

    /// A `"group"` message to group `group`.
    pub fn group(group: &str, data: Value) -> Self {
        Self::new("group", group, data)
    }

    /// A message of any `type` with this `dest` and `data`.
    pub fn new(kind: &str, dest: &str, data: Value) -> Self {
        let mut message = DataMessage::new(kind);
        message.dest = Some(dest.to_owned());
        message.data = RawValue::from_string(data.to_string()).ok();
        Outgoing { message }
    }

    /// Sets the id (one is generated when absent).
    pub fn id(mut self, id: &str) -> Result<Self, ClientError> {
        self.message.id =
            Some(MessageId::new(id).map_err(|e| ClientError::Invalid(format!("id: {e}")))?);
        Ok(self)
    }
}

/// The server refused a message (its 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rejected ({code}): {reason}")]
pub struct Rejected {
    /// The wire code (`queue_full`, `no_route`, ...).
    pub code: String,
    pub reason: String,
}

impl Rejected {
    /// The code as a typed [`ErrorCode`], when it is one the client knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }

    /// True when sending the same message again later may succeed
    /// (`queue_full`, `store_full`, `rate_limited`, `unavailable`).
    pub fn is_retryable(&self) -> bool {
        self.error_code().is_some_and(ErrorCode::is_retryable)
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server refused the connection: HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the client is closed")]
    Closed,
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// A received data message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message as JSON.
    pub message: Value,
    /// The exact text the server sent.
    pub raw: String,
}

impl Received {
    pub fn id(&self) -> Option<&str> {
        self.message["id"].as_str()
    }

    pub fn from(&self) -> Option<&str> {
        self.message["from"].as_str()
    }
}

/// Receipts of one sent message.
#[derive(Debug)]
pub struct SendHandle {
    id: MessageId,
    stored: Option<oneshot::Receiver<Result<(), Rejected>>>,
    delivered: Option<oneshot::Receiver<String>>,
    timeout: Duration,
}

impl SendHandle {
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// Waits for the 100 (stored durably), or the 400 that refused it.
    pub async fn stored(&mut self) -> Result<(), ClientError> {
        self.stored_within(self.timeout).await
    }

    pub async fn stored_within(&mut self, wait: Duration) -> Result<(), ClientError> {
        let rx = self.stored.as_mut().ok_or(ClientError::Closed)?;
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(ClientError::Timeout("the 100 (stored)")),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(result)) => {
                self.stored = None;
                result.map_err(ClientError::from)
            }
        }
    }

    /// Waits for the first 300 (delivered); returns the receiving channel.
    pub async fn delivered(&mut self) -> Result<String, ClientError> {
        self.delivered_within(self.timeout).await
    }

    pub async fn delivered_within(&mut self, wait: Duration) -> Result<String, ClientError> {
        let rx = self.delivered.as_mut().ok_or(ClientError::Closed)?;
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(ClientError::Timeout("the 300 (delivered)")),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(by)) => {
                self.delivered = None;
                Ok(by)
            }
        }
    }
}

/// The connection's state, as seen by [`Client::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    /// Gave up reconnecting, or closed by the application.
    Closed,
}

/// A connected client. See the crate docs.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<task::Command>,
    incoming: mpsc::Receiver<Received>,
    state: tokio::sync::watch::Receiver<State>,
    ready: Value,
    auto_ack: bool,
    timeout: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects and waits for the ready message (bounded by
    /// `config.timeout`). A refused handshake is an error at once; later
    /// losses are retried in the background.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let auto_ack = config.auto_ack;
        let timeout = config.timeout;
        let (commands, incoming, state, ready, task) = task::start(config).await?;
        Ok(Client {
            commands,
            incoming,
            state,
            ready,
            auto_ack,
            timeout,
            task,
        })
    }

    /// The first ready message's `data` (`channel`, `device`, `secret`).
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Sends a data message; an id is generated when it has none.
    pub async fn send(&self, outgoing: Outgoing) -> Result<SendHandle, ClientError> {
        let mut message = outgoing.message;
        let id = match &message.id {
            Some(id) => id.clone(),
            None => {
                let id = task::new_id();
                message.id = Some(id.clone());
                id
            }
        };
        let (stored_tx, stored) = oneshot::channel();
        let (delivered_tx, delivered) = oneshot::channel();
        self.commands
            .send(task::Command::Send {
                id: id.clone(),
                frame: message.to_json(),
                stored: stored_tx,
                delivered: delivered_tx,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(SendHandle {
            id,
            stored: Some(stored),
            delivered: Some(delivered),
            timeout: self.timeout,
        })
    }

    /// The next received data message, or `None` once the client is closed.
    /// With `auto_ack`, its 200 is sent now.
    pub async fn recv(&mut self) -> Option<Received> {
        let received = self.incoming.recv().await?;
        if self.auto_ack
            && let Some(id) = received.id()
        {
            let _ = self.commands.send(task::Command::Ack(id.to_owned())).await;
        }
        Some(received)
    }

    /// Like [`Client::recv`] with a deadline.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Received, ClientError> {
        match tokio::time::timeout(wait, self.recv()).await {
            Err(_) => Err(ClientError::Timeout("a message")),
            Ok(None) => Err(ClientError::Closed),
            Ok(Some(r)) => Ok(r),
        }
    }

    /// Sends a 200 for `id` (when `auto_ack` is off).
    pub async fn ack(&self, id: &str) -> Result<(), ClientError> {
        self.commands
            .send(task::Command::Ack(id.to_owned()))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Closes the connection politely and stops reconnecting. Waits (at
    /// most `timeout`) until everything queued before, acks included, was
    /// written: a program that exits right after must not lose its last 200.
    /// Closes with a normal close (1000) and returns the code of the
    /// server's answer (1000 from bachata), or `None` when the connection
    /// ended without one (it was down, or the server dropped it).
    pub async fn close(self) -> Option<u16> {
        let (answer, code) = tokio::sync::oneshot::channel();
        let _ = self.commands.send(task::Command::Close(answer)).await;
        let _ = tokio::time::timeout(self.timeout, self.task).await;
        code.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_read_every_wire_code() {
        let rejected = |code: &str| Rejected {
            code: code.into(),
            reason: String::new(),
        };
        let full = rejected("store_full");
        assert_eq!(full.error_code(), Some(ErrorCode::StoreFull));
        assert!(full.is_retryable());
        for code in ErrorCode::ALL {
            assert_eq!(rejected(code.as_str()).error_code(), Some(code));
        }
        assert_eq!(rejected("app_muted").error_code(), None);
        assert!(!rejected("no_route").is_retryable());
    }
}
