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

mod config;
mod error;
mod message;
mod state;
mod task;

pub use config::{ClientConfig, Credentials};
pub use error::{ClientError, Rejected};
pub use message::{Outgoing, Received};
pub use state::State;

use std::time::Duration;

use bachata_proto::MessageId;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

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
