//! Crash safety with a real `bachata` process: whatever got a 100 survives
//! SIGKILL (protocol.md section 5: "a server crash after a 100 loses nothing").

mod common;

use bachata_testkit::client::TestClient;
use common::{kill9, spawn_bachata};
use serde_json::json;

fn data_dir(dir: &tempfile::TempDir) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.path().to_string_lossy().into_owned(),
    ]
}

#[tokio::test]
async fn messages_confirmed_with_100_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut next = 0;
    for _round in 0..5 {
        let (child, addr) = spawn_bachata(&data_dir(&dir)).await;
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
    let (child, addr) = spawn_bachata(&data_dir(&dir)).await;
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
    let (_child, addr) = spawn_bachata(&data_dir(&dir)).await;
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
    let (mut child, addr) = spawn_bachata(&data_dir(&dir)).await;
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
