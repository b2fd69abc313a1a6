//! Starting servers for tests: on port 0 of 127.0.0.1, each with its own
//! store, so tests run in parallel without sharing anything.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bachata_testkit::client::WAIT;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use bachata_server::{Config, RunningServer, StoreKind};

pub(crate) fn config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: StoreKind::Memory,
        ..Config::default()
    }
}

pub(crate) struct TestServer {
    pub server: RunningServer,
    /// Keeps the data directory alive as long as the server.
    pub dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// A server on the memory store, with `tweak` applied to its config.
pub(crate) async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = config();
    tweak(&mut config);
    let dir = if config.store == StoreKind::Embedded {
        let dir = tempfile::tempdir().expect("temp dir");
        config.data_dir = dir.path().to_owned();
        Some(dir)
    } else {
        None
    };
    let server = bachata_server::start(config).await.expect("server starts");
    TestServer { server, dir }
}

/// A server on the Redis store at `redis`.
pub(crate) async fn start_on_redis(redis: &bachata_testkit::redis::RedisServer) -> TestServer {
    let url = redis.url();
    start_with(move |c| {
        c.store = StoreKind::Redis;
        c.redis_url = Some(url);
    })
    .await
}

pub(crate) async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub(crate) async fn start_embedded() -> TestServer {
    start_with(|c| c.store = StoreKind::Embedded).await
}

pub(crate) const SHORT: Duration = Duration::from_millis(300);

/// Starts a real `bachata serve` process on a free loopback port with extra
/// `args`; returns the process and the address it printed when it began
/// accepting connections.
pub(crate) async fn spawn_bachata(args: &[String]) -> (Child, std::net::SocketAddr) {
    spawn_bachata_env(args, &[]).await
}

/// [`spawn_bachata`] with extra environment variables.
pub(crate) async fn spawn_bachata_env(
    args: &[String],
    envs: &[(&str, &str)],
) -> (Child, std::net::SocketAddr) {
    let server = spawn_logged(args, envs).await;
    (server.child, server.addr)
}

/// A `bachata serve` process with its log: the lines up to the ready line
/// (included), and the ones after it as they come.
pub(crate) struct Logged {
    pub child: Child,
    pub addr: SocketAddr,
    pub ready: String,
    pub before: Vec<String>,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Starts `bachata serve --listen 127.0.0.1:0` with `args` and `envs`
/// (`BACHATA_LOG=info` unless `envs` says otherwise) and waits for its ready
/// line, in text or JSON.
pub(crate) async fn spawn_logged(args: &[String], envs: &[(&str, &str)]) -> Logged {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bachata"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("BACHATA_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bachata");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let (ready, addr) = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            before.push(line.clone());
            if line.contains("accepting connections") {
                let addr = ready_addr(&line).expect("addr in the ready line");
                return (line, addr);
            }
        }
        panic!(
            "server exited before accepting connections:\n{}",
            before.join("\n")
        );
    })
    .await
    .expect("server did not start in time");
    // Keep draining stderr so the server never blocks on a full pipe.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Logged {
        child,
        addr,
        ready,
        before,
        lines: rx,
    }
}

/// The address in a ready line: `addr=...` as text, `fields.addr` as JSON.
fn ready_addr(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        return event["fields"]["addr"].as_str()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

/// The arguments of `bachata serve` on `redis`'s store.
pub(crate) fn redis_args(redis: &bachata_testkit::redis::RedisServer) -> Vec<String> {
    vec![
        "--store".into(),
        "redis".into(),
        "--redis-url".into(),
        redis.url(),
    ]
}

pub(crate) async fn kill9(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("killed server exits")
        .expect("wait");
}

/// SIGTERM, then waits for the exit (within the contract's 10 s).
pub(crate) async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .expect("wait")
}
