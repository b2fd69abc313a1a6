//! Crash safety with a real `bachata` process: whatever got a 100 survives
//! SIGKILL (spec 5: "a server crash after a 100 loses nothing").

use std::path::Path;
use std::process::Stdio;

use bachata_testkit::client::{TestClient, WAIT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `bachata serve` on a free loopback port over `dir`; returns the
/// process and the address it printed when it began accepting connections.
async fn spawn_server(dir: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bachata"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
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

async fn kill9(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("killed server exits")
        .expect("wait");
}

#[tokio::test]
async fn messages_confirmed_with_100_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut next = 0;
    for _round in 0..5 {
        let (child, addr) = spawn_server(dir.path()).await;
        let mut alice = TestClient::connect(addr, "alice").await;
        // 100 in flight at once: they share group commits.
        for i in next..next + 100 {
            alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        }
        for i in next..next + 100 {
            alice.expect(100, &format!("m{i}")).await;
        }
        next += 100;
        kill9(child).await;
    }
    let (child, addr) = spawn_server(dir.path()).await;
    let mut bob = TestClient::connect(addr, "bob").await;
    for i in 0..500 {
        let m = bob.recv().await;
        assert_eq!(m["id"], format!("m{i}"), "in order, none lost");
        assert_eq!(m["data"], i);
        bob.ack(&format!("m{i}")).await;
    }
    assert!(bob.sync().await.is_empty(), "none twice");
    // Acks are durable too: after another crash nothing comes again, and
    // alice gets her 300s.
    kill9(child).await;
    let (_child, addr) = spawn_server(dir.path()).await;
    let mut bob = TestClient::connect(addr, "bob").await;
    assert!(bob.sync().await.is_empty(), "acked messages stay acked");
    let mut alice = TestClient::connect(addr, "alice").await;
    for i in 0..500 {
        alice.expect(300, &format!("m{i}")).await;
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, addr) = spawn_server(dir.path()).await;
    let mut alice = TestClient::connect(addr, "alice").await;
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    assert_eq!(
        alice.closed().await,
        bachata_testkit::client::Closed::Code(1001)
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
