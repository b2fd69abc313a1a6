//! Several bachata nodes on one Redis behave as one server (protocol.md section 8), with
//! real `redis-server` and, where a node must die, real `bachata` processes.

mod common;

use bachata_proto::{Channel, GroupId};
use bachata_testkit::client::TestClient;
use bachata_testkit::redis::RedisServer;
use common::{kill9, spawn_bachata, start_on_redis};
use serde_json::json;

#[tokio::test]
async fn sender_on_one_node_receiver_on_another() {
    let redis = RedisServer::start();
    let (a, b) = (start_on_redis(&redis).await, start_on_redis(&redis).await);
    let mut alice = TestClient::connect(a.addr(), "alice").await;
    let mut bob = TestClient::connect(b.addr(), "bob").await;
    for i in 0..20 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    for i in 0..20 {
        let m = bob.recv().await;
        assert_eq!(m["id"], format!("m{i}"), "live across nodes, in order");
        bob.ack(&format!("m{i}")).await;
    }
    for i in 0..20 {
        assert_eq!(
            alice.recv().await,
            json!({"type": 300, "data": format!("m{i}"), "from": "bob"}),
            "the 300 crosses back"
        );
    }
    // Messages without id cross nodes too (live only).
    alice
        .send(json!({"type": "typing", "dest": "bob", "data": true}))
        .await;
    assert_eq!(bob.recv().await["type"], "typing");
}

#[tokio::test]
async fn a_device_moving_between_nodes_gets_its_unacked_messages_once() {
    let redis = RedisServer::start();
    let (a, b) = (start_on_redis(&redis).await, start_on_redis(&redis).await);
    let mut alice = TestClient::connect(a.addr(), "alice").await;
    let mut phone = TestClient::connect_device(a.addr(), "bob", "phone").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    assert_eq!(phone.recv().await["id"], "m1");
    phone.close().await; // no ack
    let mut phone = TestClient::connect_device(b.addr(), "bob", "phone").await;
    assert_eq!(phone.recv().await["id"], "m1");
    assert!(phone.sync().await.is_empty(), "once");
    phone.ack("m1").await;
    alice.expect(300, "m1").await;
    phone.close().await;
    let mut phone = TestClient::connect_device(a.addr(), "bob", "phone").await;
    assert!(phone.sync().await.is_empty(), "acked on B means acked on A");
}

#[tokio::test]
async fn groups_made_on_one_node_work_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = (start_on_redis(&redis).await, start_on_redis(&redis).await);
    let group = GroupId::new("team").expect("group");
    for m in ["alice", "bob", "carol"] {
        a.server
            .center()
            .store()
            .add_member(&group, &Channel::new(m).expect("channel"))
            .await
            .expect("add");
    }
    let mut alice = TestClient::connect(b.addr(), "alice").await;
    let mut bob = TestClient::connect(a.addr(), "bob").await;
    let mut carol = TestClient::connect(b.addr(), "carol").await;
    alice
        .send(json!({"id": "g1", "type": "group", "dest": "team", "data": "hi"}))
        .await;
    alice.expect(100, "g1").await;
    assert_eq!(bob.recv().await["id"], "g1");
    assert_eq!(carol.recv().await["id"], "g1");
    let mut mallory = TestClient::connect(a.addr(), "mallory").await;
    mallory
        .send(json!({"id": "g2", "type": "group", "dest": "team"}))
        .await;
    assert_eq!(mallory.recv().await["error"], "forbidden");
}

fn redis_args(redis: &RedisServer) -> Vec<String> {
    vec![
        "--store".into(),
        "redis".into(),
        "--redis-url".into(),
        redis.url(),
    ]
}

#[tokio::test]
async fn a_node_killed_after_the_100_loses_nothing() {
    let redis = RedisServer::start();
    let (node_a, addr_a) = spawn_bachata(&redis_args(&redis)).await;
    let (_node_b, addr_b) = spawn_bachata(&redis_args(&redis)).await;
    let mut alice = TestClient::connect(addr_a, "alice").await;
    for i in 0..50 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
    }
    for i in 0..50 {
        alice.expect(100, &format!("m{i}")).await;
    }
    kill9(node_a).await;
    let mut bob = TestClient::connect(addr_b, "bob").await;
    for i in 0..50 {
        assert_eq!(bob.recv().await["id"], format!("m{i}"));
    }
    assert!(bob.sync().await.is_empty());
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_nothing_confirmed() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let s = start_on_redis(&redis).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for i in 0..30 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    // Bob reads and acks the first ten before the crash.
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 0..30 {
        let m = bob.recv().await;
        if i < 10 {
            bob.ack(m["id"].as_str().expect("id")).await;
        }
    }
    for i in 0..10 {
        alice.expect(300, &format!("m{i}")).await;
    }
    bob.close().await;
    redis.kill();
    redis.restart();
    // The node reconnects by itself (a connection may be refused with 1011
    // while it does); bob then gets exactly the unacked ones.
    let url = bachata_testkit::client::url(s.addr(), "bob", None);
    let mut bob = None;
    for _ in 0..50 {
        match TestClient::try_connect_url(&url).await {
            Ok(c) => {
                bob = Some(c);
                break;
            }
            Err(closed) => {
                assert_eq!(closed, bachata_testkit::client::Closed::Code(1011));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let mut bob = bob.expect("the node recovered");
    assert_eq!(bob.recv().await["id"], "m10");
    for i in 11..30 {
        assert_eq!(bob.recv().await["id"], format!("m{i}"));
    }
    assert!(bob.sync().await.is_empty());
}
