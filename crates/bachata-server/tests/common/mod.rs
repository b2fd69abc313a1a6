//! Starting servers for tests: on port 0 of 127.0.0.1, each with its own
//! store, so tests run in parallel without sharing anything.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bachata_server::{Config, RunningServer, StoreKind};

pub fn config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: StoreKind::Memory,
        ..Config::default()
    }
}

pub struct TestServer {
    pub server: RunningServer,
    /// Keeps the data directory alive as long as the server.
    pub dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// A server on the memory store, with `tweak` applied to its config.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
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

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_embedded() -> TestServer {
    start_with(|c| c.store = StoreKind::Embedded).await
}

pub const SHORT: Duration = Duration::from_millis(300);
