//! A small WebSocket test client over loopback, built on tokio-tungstenite.
//! Every wait has a timeout, so a broken server fails a test instead of
//! hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the server did instead of sending a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    Dropped,
}

/// A connected client. Messages arrive in order through [`TestClient::recv`].
pub struct TestClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The ready message's `data`.
    pub ready: Value,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient")
            .field("ready", &self.ready)
            .finish()
    }
}

/// Connects expecting the server to refuse the handshake with an HTTP
/// status; returns the status and the body. Panics if the upgrade succeeds.
pub async fn refused(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> (u16, String) {
    let attempt = tokio::time::timeout(WAIT, connect_async(request))
        .await
        .expect("handshake timed out");
    match attempt {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

/// A handshake request for `url` with a `Cookie` header (a session of the
/// application's, for a connect hook).
pub fn with_cookie(
    url: &str,
    cookie: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("a ws:// URL");
    request
        .headers_mut()
        .insert("cookie", cookie.parse().expect("a header value"));
    request
}

/// The URL of the messages endpoint for `channel` (and `device`).
pub fn url(addr: SocketAddr, channel: &str, device: Option<&str>) -> String {
    let mut url = format!("ws://{addr}/messages?channel={}", encode(channel));
    if let Some(device) = device {
        url.push_str(&format!("&device={}", encode(device)));
    }
    url
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl TestClient {
    /// Connects as `channel` (default device) and waits for the ready message.
    pub async fn connect(addr: SocketAddr, channel: &str) -> TestClient {
        Self::connect_url(&url(addr, channel, None)).await
    }

    /// Connects as `device` of `channel` and waits for the ready message.
    pub async fn connect_device(addr: SocketAddr, channel: &str, device: &str) -> TestClient {
        Self::connect_url(&url(addr, channel, Some(device))).await
    }

    /// Connects to `url`; returns how the server closed the connection if it
    /// did so instead of sending the ready message (e.g. 1011 while its
    /// store is unavailable).
    pub async fn try_connect_url(url: &str) -> Result<TestClient, Closed> {
        Self::try_connect_request(url).await
    }

    /// Like [`TestClient::try_connect_url`], for a request of the test's
    /// making (headers such as `Cookie`).
    pub async fn try_connect_request(
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<TestClient, Closed> {
        let (ws, _) = tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let mut client = TestClient {
            ws,
            ready: Value::Null,
        };
        let ready = client.next().await?;
        assert_eq!(ready["type"], 1000, "first message must be ready: {ready}");
        client.ready = ready["data"].clone();
        Ok(client)
    }

    /// Connects to `url` and waits for the ready message.
    pub async fn connect_url(url: &str) -> TestClient {
        match Self::try_connect_url(url).await {
            Ok(client) => client,
            Err(closed) => panic!("expected the ready message, connection closed: {closed:?}"),
        }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(Message::Text(text.into())).await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends a direct message with `id` to `dest`.
    pub async fn send_direct(&mut self, id: &str, dest: &str, data: Value) {
        self.send(json!({"id": id, "type": "direct", "dest": dest, "data": data}))
            .await;
    }

    /// Sends a 200 for `id`.
    pub async fn ack(&mut self, id: &str) {
        self.send(json!({"type": 200, "data": id})).await;
    }

    /// The next message (pings and pongs of the WebSocket layer skipped).
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(closed) => panic!("expected a message, connection closed: {closed:?}"),
        }
    }

    /// The next message, or how the connection closed.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for a message")
    }

    /// Like [`TestClient::next`] but `None` if nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Result<Value, Closed>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match frame {
                None => Err(Closed::Dropped),
                Some(Err(e)) => {
                    eprintln!("connection error: {e}");
                    Err(Closed::Dropped)
                }
                Some(Ok(Message::Text(t))) => {
                    Ok(serde_json::from_str(t.as_str()).expect("server sent invalid JSON"))
                }
                Some(Ok(Message::Binary(b))) => {
                    Ok(serde_json::from_slice(&b).expect("server sent invalid JSON"))
                }
                Some(Ok(Message::Close(frame))) => Err(frame
                    .map(|f: CloseFrame| Closed::Code(f.code.into()))
                    .unwrap_or(Closed::Dropped)),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Waits for the next message and checks it is of `kind` (an integer
    /// transport type) with `data` = `id`.
    pub async fn expect(&mut self, kind: i64, id: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind} for {id}, got {v}");
        assert_eq!(v["data"], id, "expected {kind} for {id}, got {v}");
        v
    }

    /// Sends a ping (1001) and reads until its pong, returning what came
    /// before it. The server handles a connection's frames in order, so this
    /// is a barrier: everything this client sent before was processed.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"type": 1001})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == 1002 {
                return before;
            }
            before.push(v);
        }
    }

    /// Waits for the connection to close; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(closed) => return closed,
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}
