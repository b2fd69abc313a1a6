//! Several bachata nodes on one Redis behave as one server (protocol.md section 8), with
//! real `redis-server` and, where a node must die, real `bachata` processes.

mod common;

use bachata_proto::{Channel, GroupId};
use bachata_testkit::client::TestClient;
use bachata_testkit::redis::RedisServer;
use common::{kill9, redis_args, spawn_bachata, start_on_redis};
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

/// Sends `id` until the server stores it (100), riding out `unavailable`
/// while the node reconnects to Redis (bounded: 100 tries, 100 ms apart).
async fn send_until_stored(client: &mut TestClient, id: &str, dest: &str) {
    for _ in 0..100 {
        client.send_direct(id, dest, json!(id)).await;
        let reply = client.recv().await;
        match reply["type"].as_i64() {
            Some(100) => return,
            Some(400) => {
                assert_eq!(reply["error"], "unavailable", "{reply}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => panic!("unexpected {reply}"),
        }
    }
    panic!("{id} was never stored");
}

/// protocol.md section 8: Redis restarts empty (no persistence) while the
/// receivers stay connected, one on the sender's node and one on another;
/// the seqs start over, and both get what is sent after the restart.
#[tokio::test]
async fn receivers_connected_across_a_redis_restart_without_persistence_get_new_messages() {
    let mut redis = RedisServer::start();
    let (a, b) = (start_on_redis(&redis).await, start_on_redis(&redis).await);
    let mut alice = TestClient::connect(a.addr(), "alice").await;
    let mut bob = TestClient::connect(a.addr(), "bob").await;
    let mut carol = TestClient::connect(b.addr(), "carol").await;
    for i in 0..5 {
        for (to, receiver) in [("bob", &mut bob), ("carol", &mut carol)] {
            let id = format!("{to}{i}");
            alice.send_direct(&id, to, json!(i)).await;
            alice.expect(100, &id).await;
            assert_eq!(receiver.recv().await["id"], id);
            receiver.ack(&id).await;
            alice.expect(300, &id).await;
        }
    }
    redis.restart();
    send_until_stored(&mut alice, "bob5", "bob").await;
    send_until_stored(&mut alice, "carol5", "carol").await;
    // Delivery is at least once: a session that starts over (the bus saw
    // Redis restart) may send the new message twice, never an old one.
    assert_eq!(only(&mut bob, "bob5").await["id"], "bob5", "same node");
    assert_eq!(
        only(&mut carol, "carol5").await["id"],
        "carol5",
        "other node"
    );
    bob.ack("bob5").await;
    carol.ack("carol5").await;
    let mut receipts = std::collections::BTreeSet::new();
    while receipts.len() < 2 {
        let m = alice.recv().await;
        assert_eq!(m["type"], 300, "{m}");
        receipts.insert(m["data"].as_str().expect("id").to_owned());
    }
    assert_eq!(receipts, ["bob5".to_owned(), "carol5".to_owned()].into());
}

/// The next message, and any that follow until a ping's pong, checked to
/// be the data message `id` (copies of it are allowed).
async fn only(client: &mut TestClient, id: &str) -> serde_json::Value {
    let first = client.recv().await;
    assert_eq!(first["id"], id, "{first}");
    for m in client.sync().await {
        assert_eq!(m["id"], id, "only {id} again: {m}");
    }
    first
}

/// protocol.md section 8, epochs: a channel's counter is lost while Redis
/// keeps running (its keys deleted, as an operator or an eviction would);
/// the next message starts a new epoch at seq 1, and the connected
/// receivers (on both nodes) start over from the head of the log.
#[tokio::test]
async fn a_channel_whose_counter_is_lost_starts_a_new_epoch_for_connected_receivers() {
    let redis = RedisServer::start();
    let (a, b) = (start_on_redis(&redis).await, start_on_redis(&redis).await);
    let mut alice = TestClient::connect(a.addr(), "alice").await;
    let mut here = TestClient::connect_device(a.addr(), "bob", "here").await;
    let mut there = TestClient::connect_device(b.addr(), "bob", "there").await;
    for i in 0..3 {
        let id = format!("m{i}");
        alice.send_direct(&id, "bob", json!(i)).await;
        alice.expect(100, &id).await;
        for device in [&mut here, &mut there] {
            assert_eq!(device.recv().await["id"], id);
            device.ack(&id).await;
        }
        alice.expect(300, &id).await;
    }
    let client = ::redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let tag: String = "bob".bytes().map(|b| format!("{b:02x}")).collect();
    let _: () = ::redis::cmd("DEL")
        .arg(format!("bachata:{{{tag}}}:seq"))
        .arg(format!("bachata:{{{tag}}}:epoch"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    alice.send_direct("m3", "bob", json!(3)).await;
    alice.expect(100, "m3").await;
    assert_eq!(here.recv().await["id"], "m3", "same node");
    assert_eq!(there.recv().await["id"], "m3", "other node");
}

/// `GET /api/channels/{channel}` on `addr`: its `online` count and
/// `devices`.
async fn presence(addr: std::net::SocketAddr, channel: &str) -> (u64, serde_json::Value) {
    let (status, body) = bachata_testkit::http::send(
        addr,
        &format!(
            "GET /api/channels/{channel} HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer presence-test-key\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    (v["online"].as_u64().expect("online"), v["devices"].clone())
}

/// Polls `addr`'s count of `channel` until it is `want` (each node writes
/// its counts on its own schedule), for at most ten seconds.
async fn until_online(addr: std::net::SocketAddr, channel: &str, want: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (online, devices) = presence(addr, channel).await;
        if online == want {
            return devices;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{channel} on {addr}: {online} online ({devices}), waiting for {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_counts_every_node_and_a_killed_node_drops_out_within_its_ttl() {
    let redis = RedisServer::start();
    let mut args = redis_args(&redis);
    args.extend(
        ["--presence-ttl", "1s", "--api-key", "presence-test-key"]
            .into_iter()
            .map(String::from),
    );
    let (node_a, addr_a) = spawn_bachata(&args).await;
    let (node_b, addr_b) = spawn_bachata(&args).await;
    let _phone = TestClient::connect_device(addr_a, "bob", "phone").await;
    let laptop = TestClient::connect_device(addr_b, "bob", "laptop").await;
    let _default = TestClient::connect(addr_b, "bob").await;
    // Each node counts the other's connections too.
    for addr in [addr_a, addr_b] {
        let devices = until_online(addr, "bob", 3).await;
        assert_eq!(devices, json!({"": 1, "laptop": 1, "phone": 1}));
    }
    // A disconnect is written at once, not at the next refresh.
    laptop.close().await;
    assert_eq!(
        until_online(addr_a, "bob", 2).await,
        json!({"": 1, "phone": 1})
    );
    // A node that dies writes nothing more: its count goes with its TTL,
    // while the live node's own count stays (it is written again).
    kill9(node_b).await;
    assert_eq!(until_online(addr_a, "bob", 1).await, json!({"phone": 1}));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(presence(addr_a, "bob").await.0, 1, "refreshed, not expired");
    kill9(node_a).await;
}

#[tokio::test]
async fn a_node_stopped_gracefully_leaves_the_counts_at_once() {
    let redis = RedisServer::start();
    let mut args = redis_args(&redis);
    // A time to live far beyond the test's wait: only the stopping node's
    // own clearing can make its count go in time.
    args.extend(
        ["--presence-ttl", "10m", "--api-key", "presence-test-key"]
            .into_iter()
            .map(String::from),
    );
    let (node_a, addr_a) = spawn_bachata(&args).await;
    let (node_b, addr_b) = spawn_bachata(&args).await;
    let _bob = TestClient::connect(addr_b, "bob").await;
    until_online(addr_a, "bob", 1).await;
    let status = common::terminate(node_b).await;
    assert!(status.success(), "{status:?}");
    until_online(addr_a, "bob", 0).await;
    kill9(node_a).await;
}
