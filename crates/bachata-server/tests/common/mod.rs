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
    let mut child = Command::new(env!("CARGO_BIN_EXE_bachata"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .env("BACHATA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bachata");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("accepting connections") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr in the log line");
                return addr.parse().expect("socket address");
            }
        }
        panic!("server exited before accepting connections");
    })
    .await
    .expect("server did not start in time");
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
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
