//! The background task that owns the socket: sends, receipts, received
//! messages, keepalive and reconnects.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bachata_proto::MessageId;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_tls_with_config};

use crate::config::ClientConfig;
use crate::error::{ClientError, Rejected};
use crate::message::Received;
use crate::state::State;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Received message ids remembered for dedupe.
const REMEMBER: usize = 10_000;
/// Received messages waiting for the application.
const INBOX: usize = 1024;

pub(crate) enum Command {
    Send {
        id: MessageId,
        frame: String,
        stored: oneshot::Sender<Result<(), Rejected>>,
        delivered: oneshot::Sender<String>,
    },
    Ack(String),
    /// Close; the server's answer to our close frame (its code, or `None`
    /// when it dropped the connection without one) goes to the sender.
    Close(oneshot::Sender<Option<u16>>),
}

/// A message id that is unique enough without a random number crate: time,
/// process and a counter.
pub(crate) fn new_id() -> MessageId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let text = format!("{nanos:x}-{:x}-{n:x}", std::process::id());
    match MessageId::new(&text) {
        Ok(id) => id,
        Err(_) => unreachable!("a short hex id is always valid"),
    }
}

async fn connect_once(config: &ClientConfig) -> Result<(Ws, Value), ClientError> {
    let endpoint = config.endpoint();
    let connector = if endpoint.starts_with("wss://") {
        let tls = config.tls().map_err(ClientError::Connect)?;
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            tls,
        )))
    } else {
        None
    };
    let attempt = tokio::time::timeout(
        config.timeout,
        connect_async_tls_with_config(endpoint, None, false, connector),
    )
    .await;
    let (mut ws, _) = match attempt {
        Err(_) => return Err(ClientError::Timeout("the connection")),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let reason = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            return Err(ClientError::Refused {
                status: resp.status().as_u16(),
                reason,
            });
        }
        Ok(Err(e)) => return Err(ClientError::Connect(e.to_string())),
        Ok(Ok(ok)) => ok,
    };
    let deadline = Instant::now() + config.timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| ClientError::Timeout("the ready message"))?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| ClientError::Connect(format!("bad ready message: {e}")))?;
                if value["type"] == 1000 {
                    return Ok((ws, value["data"].clone()));
                }
                return Err(ClientError::Connect(format!(
                    "expected the ready message, got {value}"
                )));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(ClientError::Connect(format!(
                    "closed before ready: {}",
                    frame.map_or_else(String::new, |f| format!("{} {}", f.code, f.reason))
                )));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            None => return Err(ClientError::Connect("closed before ready".into())),
        }
    }
}

type Started = (
    mpsc::Sender<Command>,
    mpsc::Receiver<Received>,
    watch::Receiver<State>,
    Value,
    tokio::task::JoinHandle<()>,
);

pub(crate) async fn start(config: ClientConfig) -> Result<Started, ClientError> {
    let (ws, ready) = connect_once(&config).await?;
    let (commands_tx, commands) = mpsc::channel(256);
    let (inbox, incoming) = mpsc::channel(INBOX);
    let (state_tx, state) = watch::channel(State::Open);
    let task = Task {
        config,
        commands,
        inbox,
        state: state_tx,
        unconfirmed: Vec::new(),
        stored: HashMap::new(),
        delivered: HashMap::new(),
        seen: VecDeque::new(),
        seen_set: HashSet::new(),
    };
    let handle = tokio::spawn(task.run(ws));
    Ok((commands_tx, incoming, state, ready, handle))
}

enum Exit {
    /// The application closed the client (with where to report the server's
    /// answer), or dropped it.
    Closed(Option<oneshot::Sender<Option<u16>>>),
    /// The connection was lost: reconnect.
    Lost,
}

struct Task {
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Sender<Received>,
    state: watch::Sender<State>,
    /// Sent, no 100 yet, in send order: resent after a reconnect.
    unconfirmed: Vec<(String, String)>,
    stored: HashMap<String, oneshot::Sender<Result<(), Rejected>>>,
    delivered: HashMap<String, oneshot::Sender<String>>,
    /// (from, id) of messages handed to the application, oldest first.
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
}

fn jitter(d: Duration) -> Duration {
    // Between 50% and 150% of `d`, from the clock's low bits.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

/// Sends a normal close (1000) and waits for the server's close frame;
/// returns its code.
async fn close_handshake(ws: &mut Ws) -> Option<u16> {
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return None;
    }
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(frame) = message {
            return frame.map(|f| u16::from(f.code));
        }
    }
    None
}

impl Task {
    async fn run(mut self, mut ws: Ws) {
        loop {
            if let Exit::Closed(answer) = self.serve(&mut ws).await {
                let code = tokio::time::timeout(self.config.timeout, close_handshake(&mut ws))
                    .await
                    .unwrap_or(None);
                if let Some(answer) = answer {
                    let _ = answer.send(code);
                }
                break;
            }
            let _ = self.state.send(State::Connecting);
            match self.reconnect().await {
                Some(new) => {
                    ws = new;
                    let _ = self.state.send(State::Open);
                }
                None => break,
            }
        }
        let _ = self.state.send(State::Closed);
        // Dropping the waiters tells every pending handle: Closed.
    }

    async fn reconnect(&mut self) -> Option<Ws> {
        let mut backoff = self.config.min_backoff;
        let mut failures = 0u32;
        loop {
            let sleep = tokio::time::sleep(jitter(backoff));
            tokio::select! {
                () = sleep => {}
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(Command::Close(answer)) => {
                        // Not connected: nobody to answer.
                        let _ = answer.send(None);
                        return None;
                    }
                    Some(command) => self.queue(command),
                }
            }
            match connect_once(&self.config).await {
                Ok((ws, _)) => return Some(ws),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "reconnect failed");
                    if self
                        .config
                        .max_reconnects
                        .is_some_and(|max| failures >= max)
                    {
                        return None;
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// Takes a command while disconnected: sends wait for the reconnect.
    fn queue(&mut self, command: Command) {
        if let Command::Send {
            id,
            frame,
            stored,
            delivered,
        } = command
        {
            let id = id.as_str().to_owned();
            self.stored.insert(id.clone(), stored);
            self.delivered.insert(id.clone(), delivered);
            self.unconfirmed.push((id, frame));
        }
        // Acks while disconnected are lost; the server redelivers and the
        // dedupe acks again.
    }

    async fn serve(&mut self, ws: &mut Ws) -> Exit {
        for (_, frame) in &self.unconfirmed {
            if ws.send(Message::Text(frame.as_str().into())).await.is_err() {
                return Exit::Lost;
            }
        }
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.tick().await;
        let mut awaiting_pong: Option<Instant> = None;
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return Exit::Closed(None) };
                    let frame = match command {
                        Command::Close(answer) => return Exit::Closed(Some(answer)),
                        Command::Ack(id) => json!({"type": 200, "data": id}).to_string(),
                        Command::Send { id, frame, stored, delivered } => {
                            let id = id.as_str().to_owned();
                            self.stored.insert(id.clone(), stored);
                            self.delivered.insert(id.clone(), delivered);
                            self.unconfirmed.push((id, frame.clone()));
                            frame
                        }
                    };
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        return Exit::Lost;
                    }
                }
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(t) => t,
                            Err(_) => continue,
                        },
                        Some(Ok(Message::Close(_))) => {
                            // Complete the closing handshake (the reply is
                            // queued by tungstenite), so the server need not
                            // wait for it.
                            let _ = tokio::time::timeout(self.config.timeout, ws.flush()).await;
                            return Exit::Lost;
                        }
                        None | Some(Err(_)) => return Exit::Lost,
                        Some(Ok(_)) => continue,
                    };
                    match self.on_text(ws, text).await {
                        Ok(()) => {}
                        Err(exit) => return exit,
                    }
                    if awaiting_pong.is_some() {
                        // Any frame proves the connection is alive.
                        awaiting_pong = None;
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong.is_some_and(|since| since.elapsed() >= self.config.timeout) {
                        return Exit::Lost;
                    }
                    if awaiting_pong.is_none() {
                        awaiting_pong = Some(Instant::now());
                        let ping = json!({"type": 1001}).to_string();
                        if ws.send(Message::Text(ping.into())).await.is_err() {
                            return Exit::Lost;
                        }
                    }
                }
            }
        }
    }

    async fn on_text(&mut self, ws: &mut Ws, text: String) -> Result<(), Exit> {
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            return Ok(());
        };
        let id = value["data"].as_str().unwrap_or_default().to_owned();
        match &value["type"] {
            Value::Number(n) => match n.as_i64() {
                Some(100) => {
                    self.unconfirmed.retain(|(i, _)| *i != id);
                    if let Some(tx) = self.stored.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Some(300) => {
                    if let Some(tx) = self.delivered.remove(&id) {
                        let _ = tx.send(value["from"].as_str().unwrap_or_default().to_owned());
                    }
                }
                Some(400) => {
                    self.unconfirmed.retain(|(i, _)| *i != id);
                    self.delivered.remove(&id);
                    if let Some(tx) = self.stored.remove(&id) {
                        let _ = tx.send(Err(Rejected {
                            code: value["error"].as_str().unwrap_or_default().to_owned(),
                            reason: value["reason"].as_str().unwrap_or_default().to_owned(),
                        }));
                    }
                }
                _ => {}
            },
            Value::String(_) => {
                let msg_id = value["id"].as_str().map(str::to_owned);
                if let Some(msg_id) = &msg_id {
                    let key = format!("{}\n{msg_id}", value["from"].as_str().unwrap_or_default());
                    if self.seen_set.contains(&key) {
                        if self.config.auto_ack {
                            // Our earlier 200 was lost: ack again.
                            let ack = json!({"type": 200, "data": msg_id}).to_string();
                            if ws.send(Message::Text(ack.into())).await.is_err() {
                                return Err(Exit::Lost);
                            }
                            return Ok(());
                        }
                    } else {
                        self.seen_set.insert(key.clone());
                        self.seen.push_back(key);
                        if self.seen.len() > REMEMBER
                            && let Some(old) = self.seen.pop_front()
                        {
                            self.seen_set.remove(&old);
                        }
                    }
                }
                let received = Received {
                    message: value,
                    raw: text,
                };
                if self.inbox.send(received).await.is_err() {
                    return Err(Exit::Closed(None));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
