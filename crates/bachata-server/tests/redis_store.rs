//! The server on the Redis store (`--store redis`), with a real
//! `redis-server` started by the test: the delivery guarantees hold, and a
//! Redis outage gives 400 `unavailable` without dropping connections.

mod common;

use bachata_testkit::client::TestClient;
use bachata_testkit::redis::RedisServer;
use common::start_on_redis;
use serde_json::json;

#[tokio::test]
async fn reliable_delivery_on_redis() {
    let redis = RedisServer::start();
    let s = start_on_redis(&redis).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    // Offline receiver, then connect.
    for i in 0..5 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 0..5 {
        assert_eq!(bob.recv().await["id"], format!("m{i}"));
    }
    bob.ack("m0").await;
    alice.expect(300, "m0").await;
    // Unacked ones come again, in order, before new ones.
    bob.close().await;
    alice.send_direct("m5", "bob", json!(5)).await;
    alice.expect(100, "m5").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 1..6 {
        assert_eq!(bob.recv().await["id"], format!("m{i}"));
    }
    // Dedupe.
    alice.send_direct("m5", "bob", json!(5)).await;
    alice.expect(100, "m5").await;
    assert!(bob.sync().await.is_empty());
}

#[tokio::test]
async fn state_lives_in_redis_not_in_the_server() {
    let redis = RedisServer::start();
    let s = start_on_redis(&redis).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    s.server.shutdown().await;
    // A new server process on the same Redis has the message.
    let s = start_on_redis(&redis).await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m1");
}

#[tokio::test]
async fn a_redis_outage_is_unavailable_and_recovers() {
    let mut redis = RedisServer::start();
    let s = start_on_redis(&redis).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    let (status, _) = bachata_testkit::http::get(s.addr(), "/healthz").await;
    assert_eq!(status, 200);
    redis.kill();
    let (status, body) = bachata_testkit::http::get(s.addr(), "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    alice.send_direct("m2", "bob", json!(2)).await;
    let v = alice.recv().await;
    assert_eq!(v["type"], 400, "{v}");
    assert_eq!(v["error"], "unavailable");
    assert_eq!(v["data"], "m2");
    // The connection stays up.
    assert!(alice.sync().await.is_empty());
    redis.restart();
    // Once Redis is back, the same connection works again (the first call
    // may still see the reconnect).
    let mut stored = false;
    for attempt in 0..20 {
        alice.send_direct("m2", "bob", json!(2)).await;
        let v = alice.recv().await;
        if v["type"] == 100 {
            stored = true;
            break;
        }
        assert_eq!(v["error"], "unavailable", "attempt {attempt}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stored, "never recovered");
    let (status, _) = bachata_testkit::http::get(s.addr(), "/healthz").await;
    assert_eq!(status, 200, "healthy again");
}

/// protocol.md section 9 on Redis: a channel's keys expire by themselves once
/// it has nothing pending and was not seen for `--forget-after`, so
/// connecting under ever new names leaves nothing behind; a channel that
/// got a message keeps its keys for the message's lifetime and that margin.
#[tokio::test]
async fn name_churn_on_redis_expires() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = common::start_with(move |c| {
        c.store = bachata_server::StoreKind::Redis;
        c.redis_url = Some(url);
        c.forget_after = std::time::Duration::from_secs(1);
    })
    .await;
    let client = ::redis::Client::open(redis.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let dbsize = |mut conn: ::redis::aio::MultiplexedConnection| async move {
        ::redis::cmd("DBSIZE")
            .query_async::<u64>(&mut conn)
            .await
            .expect("DBSIZE")
    };
    let empty = dbsize(conn.clone()).await;
    for i in 0..300 {
        let c = TestClient::connect_device(s.addr(), &format!("churn-{i}"), "d").await;
        c.close().await;
    }
    assert!(
        dbsize(conn.clone()).await >= empty + 300,
        "each name has keys"
    );
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    alice.close().await;
    // The churned names' keys expire: back to the keys of the message.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let keys = dbsize(conn.clone()).await;
        if keys <= empty + 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{keys} keys are left, {empty} empty"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // bob's counter lives as long as the message does, plus the margin
    // (and a quarter, see the crate docs); his log, a collection, lives
    // until its last entry goes.
    let pttl = |key: &str| {
        let mut conn = conn.clone();
        let key = format!("bachata:{{{}}}:{key}", hex_of("bob"));
        async move {
            ::redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("PTTL")
        }
    };
    let keep = 7 * 24 * 3600 * 1000 + bachata_store_redis::KEEP_MARGIN_MS as i64;
    let ttl = pttl("seq").await;
    assert!(ttl > keep && ttl <= keep + keep / 4, "PTTL {ttl}");
    assert_eq!(pttl("log").await, -1, "no lifetime: it empties itself");
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Waits (10 s at most) until `master` counts `n` connected replicas, each
/// done with its first sync.
async fn wait_for_replicas(master: &RedisServer, n: usize) {
    let client = ::redis::Client::open(master.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info: String = ::redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let online = info.matches("state=online").count();
        if info.contains(&format!("connected_slaves:{n}\r")) && online == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} replicas: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// protocol.md section 8, `--redis-wait-replicas 1`: with the replica up,
/// a message gets its 100; with the replica stopped, 400 `unavailable`
/// once the wait times out; sent again when the replica is back, it gets
/// its 100 (stored once: the first try may have been stored), and the
/// receiver gets each message once.
#[tokio::test]
async fn wait_replicas_holds_the_100_until_a_replica_confirms() {
    let master = RedisServer::start();
    let port = master.port().to_string();
    let mut replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]);
    wait_for_replicas(&master, 1).await;
    let url = master.url();
    let s = common::start_with(move |c| {
        c.store = bachata_server::StoreKind::Redis;
        c.redis_url = Some(url);
        c.redis_wait_replicas = 1;
        // Generous: a loaded CI machine must not turn a live replica's
        // late answer into a refusal (the refusal below waits it out once).
        c.redis_wait_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;

    replica.kill();
    wait_for_replicas(&master, 0).await;
    alice.send_direct("m2", "bob", json!(2)).await;
    let refused = alice.recv().await;
    assert_eq!(refused["type"], 400, "{refused}");
    assert_eq!(refused["data"], "m2", "{refused}");
    assert_eq!(refused["error"], "unavailable", "{refused}");

    replica.restart();
    wait_for_replicas(&master, 1).await;
    alice.send_direct("m2", "bob", json!(2)).await;
    alice.expect(100, "m2").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m1");
    assert_eq!(bob.recv().await["id"], "m2");
    assert!(bob.sync().await.is_empty(), "each once");
}

/// `rediss://`: the store, the bus between nodes and presence all talk TLS
/// to Redis, trusting the CA given by `--redis-ca`; without it the
/// certificate is checked against the system's roots and the server
/// refuses to start, naming the cause.
#[tokio::test]
async fn rediss_with_a_private_ca_carries_messages_between_two_nodes() {
    let ca = bachata_testkit::tls::TestCa::new();
    let redis = RedisServer::start_tls(&ca);
    let url = redis.tls_url().expect("TLS port");
    let on_tls = |ca_file: Option<std::path::PathBuf>| {
        let url = url.clone();
        move |c: &mut bachata_server::Config| {
            c.store = bachata_server::StoreKind::Redis;
            c.redis_url = Some(url);
            c.redis_ca = ca_file;
        }
    };
    let a = common::start_with(on_tls(Some(ca.ca_file()))).await;
    let b = common::start_with(on_tls(Some(ca.ca_file()))).await;
    let mut alice = TestClient::connect(a.addr(), "alice").await;
    let mut bob = TestClient::connect(b.addr(), "bob").await;
    alice.send_direct("m1", "bob", json!("over TLS")).await;
    alice.expect(100, "m1").await;
    let m = bob.recv().await;
    assert_eq!(
        (m["id"].clone(), m["data"].clone()),
        (json!("m1"), json!("over TLS"))
    );
    bob.ack("m1").await;
    alice.expect(300, "m1").await;
    // Nothing went over the plain port but the test's own readiness check:
    // the TLS port served the nodes.
    let plain = ::redis::Client::open(redis.url()).expect("url");
    let mut plain = plain
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let clients: String = ::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut plain)
        .await
        .expect("CLIENT LIST");
    let tls_port = url.trim_end_matches('/').rsplit(':').next().expect("port");
    assert!(
        clients
            .lines()
            .filter(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port}")))
            .count()
            >= 2,
        "the nodes connect on the TLS port: {clients}"
    );

    let mut config = common::config();
    on_tls(None)(&mut config);
    let Err(refused) = bachata_server::start(config).await else {
        panic!("started without trusting Redis's certificate");
    };
    let text = format!("{refused:#}").to_lowercase();
    assert!(text.contains("certificate"), "{text}");
}
