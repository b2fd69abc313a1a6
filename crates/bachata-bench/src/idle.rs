//! The `idle` scenario: N connections that do nothing, spread over several
//! loopback source addresses (127.0.0.x, so more than one address's ~28k
//! ephemeral ports are available); reports the server's RSS growth per
//! connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub connections: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub kb_per_connection: f64,
}

async fn connect_idle(
    server: SocketAddr,
    source: Ipv4Addr,
    channel: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(server)).await??;
    let url = format!("ws://{server}/messages?channel={channel}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await??;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.as_str().contains("1000") => Ok(ws),
        other => anyhow::bail!("no ready message for {channel}: {other:?}"),
    }
}

/// Opens `n` idle connections to `server` from `sources` loopback addresses
/// and measures `rss_kb` (the server's) before and after.
pub(crate) async fn run(
    server: SocketAddr,
    n: usize,
    sources: u8,
    rss_kb: impl Fn() -> Option<u64>,
) -> anyhow::Result<Report> {
    let before = rss_kb().unwrap_or(0);
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources.max(1))) as u8);
        open.push(connect_idle(server, source, &format!("idle{i}")).await?);
    }
    // Let the server settle (allocators return nothing, but lazy buffers
    // are in place by now); this is a measurement wait, not a sync.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb().unwrap_or(0);
    drop(open);
    Ok(Report {
        connections: n,
        rss_before_kb: before,
        rss_after_kb: after,
        kb_per_connection: after.saturating_sub(before) as f64 / n.max(1) as f64,
    })
}
