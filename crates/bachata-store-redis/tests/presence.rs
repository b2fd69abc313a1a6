//! `RedisPresence`: the nodes of one Redis see each other's connection
//! counts, a node's own are not counted twice, and a node that stops
//! writing drops out after its TTL, leaving no key behind.

use std::time::{Duration, Instant};

use bachata_core::{DeviceCounts, Presence};
use bachata_proto::{Channel, DeviceId};
use bachata_store_redis::RedisPresence;
use bachata_testkit::redis::RedisServer;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn phone() -> Option<DeviceId> {
    Some(DeviceId::new("phone").expect("device"))
}

#[tokio::test]
async fn nodes_count_each_other_and_a_silent_node_expires() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(600);
    let a = RedisPresence::connect(&server.url(), ttl).await.expect("a");
    let b = RedisPresence::connect(&server.url(), ttl).await.expect("b");
    a.report(vec![(ch("bob"), vec![(phone(), 2), (None, 1)])])
        .await
        .expect("report");
    b.report(vec![(ch("bob"), vec![(phone(), 1)])])
        .await
        .expect("report");
    let sorted = |mut v: DeviceCounts| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(b.others(&ch("bob")).await.expect("read")),
        vec![(None, 1), (phone(), 2)],
        "b sees a's counts, not its own"
    );
    assert_eq!(
        a.others(&ch("bob")).await.expect("read"),
        vec![(phone(), 1)]
    );
    assert!(a.others(&ch("carol")).await.expect("read").is_empty());
    // An empty count removes the node at once.
    b.report(vec![(ch("bob"), Vec::new())])
        .await
        .expect("report");
    assert!(a.others(&ch("bob")).await.expect("read").is_empty());
    assert!(
        !b.others(&ch("bob")).await.expect("read").is_empty(),
        "a's count lives until its TTL"
    );
    // a stops writing: b stops counting it within the TTL, and the hash
    // expires with it.
    let started = Instant::now();
    while !b.others(&ch("bob")).await.expect("read").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let started = Instant::now();
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("bachata:*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if keys.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "left {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
