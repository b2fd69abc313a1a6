//! The `idle` scenario: N connections that do nothing, spread over several
//! loopback source addresses (127.0.0.x, so more than one address's ~28k
//! ephemeral ports are available); reports the server's RSS growth per
//! connection and the kernel's TCP buffer memory.
//!
//! A host limit (open files, ports, the server's `--max-connections`) ends
//! the opening early instead of failing the run: what was opened is
//! measured, and the report names the limit that stopped it, so a run sized
//! for a bigger host says where this one ends.

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
    /// Asked for; `connections` is how many were opened.
    pub asked: usize,
    /// Why the opening stopped before `asked`: the error of the first
    /// connection that failed.
    pub limit_hit: Option<String>,
    /// The kernel's TCP buffer memory (`/proc/net/sockstat`, `mem`, in
    /// pages of 4 KiB) before and after, for both ends of every loopback
    /// connection.
    pub kernel_tcp_kb_before: Option<u64>,
    pub kernel_tcp_kb_after: Option<u64>,
    /// The kernel's slab memory (`/proc/meminfo`, `Slab`: sockets, files,
    /// epoll entries) before and after, machine-wide, for both ends.
    pub kernel_slab_kb_before: Option<u64>,
    pub kernel_slab_kb_after: Option<u64>,
    /// This process's open-file limit (soft, after raising it to the hard
    /// one); the server inherits it.
    pub open_file_limit: Option<u64>,
}

/// The kernel's TCP buffer memory in KiB, from `/proc/net/sockstat`
/// (`TCP: inuse N orphan N tw N alloc N mem PAGES`).
pub(crate) fn kernel_tcp_kb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: u64 = words.next()?.parse().ok()?;
    Some(pages * 4)
}

/// The kernel's slab memory in KiB (`Slab:` of `/proc/meminfo`).
pub(crate) fn kernel_slab_kb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("Slab:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises this process's soft open-file limit to the hard one (what a
/// shell's `ulimit -n` would allow) and returns it.
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        // Kept as it was when refused: the report shows the limit in effect.
        let _ = setrlimit(Resource::Nofile, raised);
    }
    getrlimit(Resource::Nofile).current
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
    open_file_limit: Option<u64>,
) -> anyhow::Result<Report> {
    let before = rss_kb().unwrap_or(0);
    let kernel_before = kernel_tcp_kb();
    let slab_before = kernel_slab_kb();
    let mut open = Vec::with_capacity(n);
    let mut limit_hit = None;
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources.max(1))) as u8);
        match connect_idle(server, source, &format!("idle{i}")).await {
            Ok(ws) => open.push(ws),
            Err(e) if i == 0 => return Err(e.context("the first idle connection failed")),
            Err(e) => {
                limit_hit = Some(format!("connection {} failed: {e:#}", i + 1));
                break;
            }
        }
    }
    // Let the server settle (allocators return nothing, but lazy buffers
    // are in place by now); this is a measurement wait, not a sync.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb().unwrap_or(0);
    let kernel_after = kernel_tcp_kb();
    let slab_after = kernel_slab_kb();
    let opened = open.len();
    drop(open);
    Ok(Report {
        connections: opened,
        rss_before_kb: before,
        rss_after_kb: after,
        kb_per_connection: after.saturating_sub(before) as f64 / opened.max(1) as f64,
        asked: n,
        limit_hit,
        kernel_tcp_kb_before: kernel_before,
        kernel_tcp_kb_after: kernel_after,
        kernel_slab_kb_before: slab_before,
        kernel_slab_kb_after: slab_after,
        open_file_limit,
    })
}

/// The outcome of `idle --max-kb-per-connection`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub passed: bool,
    pub text: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `report` stays within `max_kb` per connection with every
/// connection asked for open: a run cut short by a limit proves nothing
/// about the memory of the rest.
pub(crate) fn check(report: &Report, max_kb: f64) -> Verdict {
    if let Some(limit) = &report.limit_hit {
        return Verdict {
            passed: false,
            text: format!(
                "idle check: FAILED: only {} of {} connections opened ({limit})",
                report.connections, report.asked
            ),
        };
    }
    let kb = report.kb_per_connection;
    if kb > max_kb {
        Verdict {
            passed: false,
            text: format!(
                "idle check: FAILED: {kb:.1} KB per idle connection is above {max_kb:.1} KB"
            ),
        }
    } else {
        Verdict {
            passed: true,
            text: format!("idle check: ok: {kb:.1} KB per idle connection, at most {max_kb:.1} KB"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kb: f64, limit_hit: Option<&str>) -> Report {
        Report {
            connections: if limit_hit.is_some() { 5 } else { 10 },
            rss_before_kb: 0,
            rss_after_kb: 0,
            kb_per_connection: kb,
            asked: 10,
            limit_hit: limit_hit.map(str::to_owned),
            kernel_tcp_kb_before: None,
            kernel_tcp_kb_after: None,
            kernel_slab_kb_before: None,
            kernel_slab_kb_after: None,
            open_file_limit: None,
        }
    }

    #[test]
    fn above_the_bound_fails_and_at_it_passes() {
        assert!(check(&report(6.0, None), 6.0).passed);
        let above = check(&report(6.1, None), 6.0);
        assert!(!above.passed);
        assert!(above.text.contains("FAILED"), "{above}");
    }

    #[test]
    fn a_run_cut_short_by_a_limit_fails_whatever_its_memory() {
        let short = check(&report(1.0, Some("connection 6 failed: 503")), 6.0);
        assert!(!short.passed);
        assert!(short.text.contains("only 5 of 10"), "{short}");
    }

    #[test]
    fn the_kernel_figures_parse_from_this_host() {
        // Linux: both files exist and carry the fields read.
        assert!(kernel_slab_kb().is_some_and(|kb| kb > 0));
        assert!(kernel_tcp_kb().is_some());
    }
}
