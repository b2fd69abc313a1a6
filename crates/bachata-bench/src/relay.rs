//! The `null` target: a bare WebSocket relay that reads only `type`, `id`
//! and `dest`, answers 100 at once, forwards to the destination's
//! connection, and turns the receiver's 200 into a 300 for the sender. No
//! storage, no routing, no limits: what this machine can do with WebSockets
//! and JSON at all, measured in the same run as the server. A `"group"`
//! message goes to every connected channel named `<dest>.<anything>` but the
//! sender, the relay's stand-in for a group (used by the `fanout` scenario).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Peers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    kind: serde_json::Value,
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    dest: Option<&'a str>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// Serves until the process ends; prints the address to stdout first.
pub(crate) async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, peers.clone()));
    }
}

async fn connection(tcp: TcpStream, peers: Peers) {
    let Some((ws, channel)) = accept(tcp).await else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    if let Ok(mut p) = peers.lock() {
        p.insert(channel.clone(), tx.clone());
    }
    let _ = tx.send(Message::Text(
        format!(r#"{{"type":1000,"data":{{"channel":"{channel}"}}}}"#).into(),
    ));
    let writer = tokio::spawn(write_batched(sink, rx));
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(head) = serde_json::from_str::<Head>(text.as_str()) else {
            continue;
        };
        route(&head, &channel, &tx, &peers);
    }
    if let Ok(mut p) = peers.lock() {
        p.remove(&channel);
    }
    writer.abort();
}

/// The WebSocket handshake. The connection's channel is the `channel=`
/// query parameter (the last one wins; empty without one).
#[allow(clippy::result_large_err)] // reason: tungstenite's handshake callback type, not ours
async fn accept(tcp: TcpStream) -> Option<(WebSocketStream<TcpStream>, String)> {
    let mut channel = String::new();
    let callback = |req: &Request, resp: Response| {
        if let Some(q) = req.uri().query() {
            for pair in q.split('&') {
                if let Some(v) = pair.strip_prefix("channel=") {
                    channel = v.to_owned();
                }
            }
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .ok()?;
    Some((ws, channel))
}

/// The connection's writer: feeds whatever is queued and flushes once the
/// queue is empty, so a burst goes out in few writes.
async fn write_batched(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Acts on one frame from `channel`, whose own queue is `tx`: a data
/// message gets its 100 and goes to its destination, a 200 becomes the
/// sender's 300, a ping gets its pong; anything else is ignored.
fn route(head: &Head<'_>, channel: &str, tx: &mpsc::UnboundedSender<Message>, peers: &Peers) {
    match (&head.kind, head.dest) {
        (serde_json::Value::String(kind), Some(dest)) => {
            if let Some(id) = head.id {
                let _ = tx.send(Message::Text(
                    format!(r#"{{"type":100,"data":"{id}"}}"#).into(),
                ));
            }
            if kind == "group" {
                forward_to_group(head, kind, channel, dest, peers);
            } else if let Some(to) = peer(peers, dest) {
                let _ = to.send(forwarded(head, kind, channel, dest));
            }
        }
        (serde_json::Value::Number(n), _) if n.as_i64() == Some(200) => {
            // The relay keeps no state: the bench's ids name the sender
            // ("<sender>/<n>").
            let id = head.id.or(head.data.map(|d| d.get().trim_matches('"')));
            if let Some(id) = id
                && let Some((sender, _)) = id.split_once('/')
                && let Some(to) = peer(peers, sender)
            {
                let _ = to.send(Message::Text(
                    format!(r#"{{"type":300,"data":"{id}","from":"{channel}"}}"#).into(),
                ));
            }
        }
        (serde_json::Value::Number(n), _) if n.as_i64() == Some(1001) => {
            let _ = tx.send(Message::Text(r#"{"type":1002}"#.into()));
        }
        _ => {}
    }
}

/// The queue of the connection named `name`, if it is connected.
fn peer(peers: &Peers, name: &str) -> Option<mpsc::UnboundedSender<Message>> {
    peers.lock().ok().and_then(|p| p.get(name).cloned())
}

/// The message as its receiver gets it: with `from`, so the receiver can
/// address the 300.
fn forwarded(head: &Head<'_>, kind: &str, channel: &str, dest: &str) -> Message {
    Message::Text(
        format!(
            r#"{{"id":"{}","type":"{kind}","from":"{channel}","dest":"{dest}","data":{}}}"#,
            head.id.unwrap_or_default(),
            head.data.map_or("null", |d| d.get())
        )
        .into(),
    )
}

/// Sends a group message to every member of `group` but its sender.
///
/// The relay keeps no groups: the members of group `g` are the connected
/// channels named `g.<anything>` (the `fanout` scenario names them so).
fn forward_to_group(head: &Head<'_>, kind: &str, channel: &str, group: &str, peers: &Peers) {
    let members: Vec<_> = peers.lock().map_or_else(
        |_| Vec::new(),
        |p| {
            p.iter()
                .filter(|(name, _)| {
                    **name != channel
                        && name
                            .strip_prefix(group)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
                .map(|(_, to)| to.clone())
                .collect()
        },
    );
    // One text for every member (a cheap clone of its bytes).
    let frame = forwarded(head, kind, channel, group);
    for to in members {
        let _ = to.send(frame.clone());
    }
}
