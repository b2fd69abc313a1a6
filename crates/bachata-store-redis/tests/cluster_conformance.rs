//! The Store conformance suite against a real 3-master Redis Cluster
//! (`redis+cluster://`), and what only a cluster shows: destinations on
//! different slots and nodes, the keys of each step, the pub/sub bus across
//! nodes, presence counts in each channel's slot.
//!
//! Starting a cluster takes about 2 s (a new master waits before it serves),
//! so the tests of this file share one through `RedisCluster::lease`: one
//! test at a time, every master flushed before each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bachata_core::{AckRequest, Bus, BusEvent, Enqueued, EntryKind, NewMessage, Store, StoreError};
use bachata_proto::{Channel, MessageId};
use bachata_store_redis::{RedisBus, RedisStore, RedisStoreOptions};
use bachata_testkit::conformance::Backend;
use bachata_testkit::redis_cluster::{ClusterLease, RedisCluster};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;

struct Cluster(ClusterLease);

impl Cluster {
    fn new() -> Self {
        Cluster(RedisCluster::lease(3))
    }

    async fn connect(&self) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::connect(&self.0.url())
                .await
                .expect("connect to the redis cluster"),
        )
    }
}

impl Backend for Cluster {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        self.connect().await
    }

    async fn reopen(&mut self, old: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        drop(old);
        Some(self.connect().await)
    }
}

bachata_testkit::store_conformance_tests!(Cluster::new());

const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn msg(sender: &str, id: &str, to: &[&str]) -> NewMessage {
    NewMessage {
        sender: Some(ch(sender)),
        id: MessageId::new(id).expect("id"),
        destinations: to.iter().map(|c| ch(c)).collect(),
        payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        now: T0,
        expires_at: T0 + HOUR,
        dedupe_until: T0 + 60_000,
        queue_limit: 1000,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        notify_at: None,
    }
}

/// Redis Cluster's slot of a key (CRC16/XMODEM of its hash tag).
fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let len = key[open + 1..].iter().position(|b| *b == b'}')?;
            (len > 0).then(|| &key[open + 1..open + 1 + len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for byte in tagged {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn seq_key(channel: &str) -> String {
    format!("bachata:{{{}}}:seq", hex::encode(channel))
}

/// Which node (index into the cluster's nodes) serves `key`.
fn node_of(cluster: &RedisCluster, key: &[u8]) -> usize {
    let slot = slot(key);
    (0..cluster.nodes().len())
        .find(|i| {
            let (start, end) = cluster.slot_range(*i);
            (start..=end).contains(&slot)
        })
        .expect("a node for every slot")
}

async fn node(cluster: &RedisCluster, i: usize) -> MultiplexedConnection {
    redis::Client::open(cluster.node_urls()[i].as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("node connection")
}

/// Every key on every node.
async fn all_keys(cluster: &RedisCluster) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for i in 0..cluster.nodes().len() {
        let mut conn = node(cluster, i).await;
        let found: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.extend(
            found
                .into_iter()
                .map(|k| String::from_utf8_lossy(&k).into_owned()),
        );
    }
    keys
}

#[test]
fn the_crc16_slot_function_matches_redis() {
    // Known values from the Redis Cluster spec and redis-cli.
    assert_eq!(slot(b"123456789"), 0x31c3, "CRC16/XMODEM check value");
    assert_eq!(slot(b"foo"), 12182);
    assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_channels_on_every_node_is_stored_once_everywhere() {
    let cluster = Cluster::new();
    let cluster = &*cluster.0;
    // Destinations on three different nodes, and a sender on a fourth slot.
    let mut by_node: Vec<Option<String>> = vec![None; 3];
    for i in 0.. {
        let name = format!("member{i}");
        let n = node_of(cluster, seq_key(&name).as_bytes());
        by_node[n].get_or_insert(name);
        if by_node.iter().all(Option::is_some) {
            break;
        }
    }
    let dests: Vec<String> = by_node.into_iter().flatten().collect();
    let to: Vec<&str> = dests.iter().map(String::as_str).collect();
    let slots: BTreeSet<u16> = to.iter().map(|d| slot(seq_key(d).as_bytes())).collect();
    assert_eq!(slots.len(), 3, "three slots: {to:?}");

    let store = RedisStore::connect(&cluster.url()).await.expect("connect");
    assert!(store.is_cluster());
    store.health().await.expect("every master answers");
    let got = store
        .enqueue(msg("alice", "g1", &to))
        .await
        .expect("enqueue");
    let expected: Vec<(Channel, u64)> = to.iter().map(|d| (ch(d), 1)).collect();
    assert_eq!(got, Enqueued::Stored(expected.clone()));
    for d in &to {
        let entries = store.read(&ch(d), &None, 0, 10, T0).await.expect("read");
        assert_eq!(entries.len(), 1, "{d}");
        assert_eq!(
            entries[0].kind,
            EntryKind::Message {
                sender: Some(ch("alice")),
                id: MessageId::new("g1").expect("id")
            }
        );
    }
    // The resend is a duplicate, through another store (another node).
    let other = RedisStore::connect(&cluster.url()).await.expect("connect");
    assert_eq!(
        other
            .enqueue(msg("alice", "g1", &to))
            .await
            .expect("resend"),
        Enqueued::Duplicate
    );

    // A crash after the appends and before the commit: the dedupe record is
    // gone, the markers are not. The retry appends nothing new and returns
    // the same seqs; then the record is back.
    let record = format!("bachata:d:{{{}}}:g1", hex::encode("alice"));
    let mut conn = node(cluster, node_of(cluster, record.as_bytes())).await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(&record)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1);
    assert_eq!(
        other.enqueue(msg("alice", "g1", &to)).await.expect("retry"),
        Enqueued::Stored(expected),
        "the retry of a half-done enqueue reuses its entries"
    );
    for d in &to {
        let entries = store.read(&ch(d), &None, 0, 10, T0).await.expect("read");
        assert_eq!(entries.len(), 1, "{d} still has the message once");
    }
    assert_eq!(
        store
            .enqueue(msg("alice", "g1", &to))
            .await
            .expect("resend"),
        Enqueued::Duplicate
    );

    // Acks on three nodes send three receipts to alice's log.
    let mut rseqs = Vec::new();
    for d in &to {
        let acked = store
            .ack(AckRequest {
                channel: ch(d),
                device: None,
                id: MessageId::new("g1").expect("id"),
                now: T0 + 1,
                receipt: Bytes::from(format!("{{\"type\":300,\"by\":\"{d}\"}}")),
                receipt_expires_at: T0 + HOUR,
                forget_after: 86_400_000,
            })
            .await
            .expect("ack");
        assert_eq!(acked.seq, Some(1));
        let (sender, rseq) = acked.receipt.expect("a receipt");
        assert_eq!(sender, ch("alice"));
        rseqs.push(rseq);
    }
    rseqs.sort_unstable();
    assert_eq!(rseqs, [1, 2, 3]);
    let receipts = store
        .read(&ch("alice"), &None, 0, 10, T0)
        .await
        .expect("read");
    assert!(receipts.iter().all(|e| e.kind == EntryKind::Receipt));
    assert_eq!(receipts.len(), 3);

    // The keys: per destination its channel keys and a marker; the
    // sender's dedupe record and receipt markers; the index shards.
    let keys = all_keys(cluster).await;
    for d in &to {
        let tag = hex::encode(d);
        let marker = format!("bachata:{{{tag}}}:got:{}:g1", hex::encode("alice"));
        assert!(keys.contains(&marker), "marker of {d}: {keys:?}");
        let mut conn = node(cluster, node_of(cluster, marker.as_bytes())).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(
            (1..=60_000).contains(&pttl),
            "once committed, a marker lives a minute at most: {pttl}"
        );
        assert!(keys.contains(&format!("bachata:{{{tag}}}:seq")));
        assert!(
            !keys.contains(&format!("bachata:{{{tag}}}:resv")),
            "no reservation is left"
        );
    }
    assert!(keys.contains(&record));
    assert!(keys.iter().any(|k| k.starts_with("bachata:expiring:{")));
    assert!(!keys.contains("bachata:expiring"), "no global index");

    // Expiring everything empties every shard of the index.
    assert_eq!(
        store.expire(T0 + 2 * HOUR).await.expect("expire"),
        6,
        "three messages and three receipts"
    );
    let keys = all_keys(cluster).await;
    assert!(
        !keys.iter().any(|k| k.starts_with("bachata:expiring")),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_destination_refuses_a_group_message_whole_and_releases_the_rest() {
    let cluster = Cluster::new();
    let cluster = &*cluster.0;
    let store = RedisStore::connect(&cluster.url()).await.expect("connect");
    let limited = |m: NewMessage| NewMessage {
        queue_limit: 1,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        ..m
    };
    assert!(matches!(
        store
            .enqueue(limited(msg("alice", "b1", &["bob"])))
            .await
            .expect("enqueue"),
        Enqueued::Stored(_)
    ));
    let to = ["carol", "dave", "bob", "erin"];
    assert_eq!(
        store
            .enqueue(limited(msg("alice", "g", &to)))
            .await
            .expect("enqueue"),
        Enqueued::QueueFull(ch("bob"))
    );
    let keys = all_keys(cluster).await;
    assert!(
        !keys.iter().any(|k| k.ends_with(":resv")),
        "reservations are released: {keys:?}"
    );
    for d in ["carol", "dave", "erin"] {
        assert!(
            store
                .read(&ch(d), &None, 0, 10, T0)
                .await
                .expect("read")
                .is_empty(),
            "{d}"
        );
        assert_eq!(
            store.pending_count(&ch(d), T0).await.expect("pending"),
            0,
            "{d}"
        );
    }
    // A reservation held by an attempt in progress counts against the
    // limit: a message to a single destination sees it.
    let mut conn = node(cluster, node_of(cluster, seq_key("carol").as_bytes())).await;
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("bachata:{{{}}}:resv", hex::encode("carol")))
        .arg(T0 + 30_000)
        .arg("other-attempt")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    assert_eq!(
        store
            .enqueue(limited(msg("alice", "c1", &["carol"])))
            .await
            .expect("enqueue"),
        Enqueued::QueueFull(ch("carol"))
    );
    // Once it lapses, it does not.
    let later = NewMessage {
        now: T0 + 30_000,
        ..limited(msg("alice", "c1", &["carol"]))
    };
    assert!(matches!(
        store.enqueue(later).await.expect("enqueue"),
        Enqueued::Stored(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_of_one_message_store_it_once() {
    let cluster = Cluster::new();
    let cluster = &*cluster.0;
    let a: Arc<dyn Store> = Arc::new(RedisStore::connect(&cluster.url()).await.expect("a"));
    let b: Arc<dyn Store> = Arc::new(RedisStore::connect(&cluster.url()).await.expect("b"));
    for round in 0..20 {
        let id = format!("m{round}");
        let to = ["bob", "carol", "dave"];
        let (x, y) = tokio::join!(
            a.enqueue(msg("alice", &id, &to)),
            b.enqueue(msg("alice", &id, &to))
        );
        let results = [x.expect("a"), y.expect("b")];
        let stored = results
            .iter()
            .filter(|r| matches!(r, Enqueued::Stored(_)))
            .count();
        assert_eq!(stored, 1, "round {round}: {results:?}");
        assert!(results.contains(&Enqueued::Duplicate), "{results:?}");
    }
    for d in ["bob", "carol", "dave"] {
        let entries = a.read(&ch(d), &None, 0, 100, T0).await.expect("read");
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{d}: each message once");
    }
    let keys = all_keys(cluster).await;
    assert!(
        !keys.iter().any(|k| k.ends_with(":resv")),
        "the loser's reservations are freed too: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_carries_events_between_nodes_of_the_cluster() {
    let cluster = Cluster::new();
    // Each bus subscribes on the first seed of its URL: a on node 0, b on
    // node 2; publishing goes wherever the cluster routes it.
    let ports: Vec<u16> = cluster.0.nodes().iter().map(|n| n.port()).collect();
    let url = |order: [usize; 3]| {
        let seeds: Vec<String> = order
            .iter()
            .map(|i| format!("127.0.0.1:{}", ports[*i]))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    };
    let a = RedisBus::connect(&url([0, 1, 2])).await.expect("bus a");
    let b = RedisBus::connect(&url([2, 1, 0])).await.expect("bus b");
    let mut from_a = a.subscribe();
    let mut from_b = b.subscribe();
    // Each bus says Resync once it is subscribed.
    for rx in [&mut from_a, &mut from_b] {
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("subscribed in time");
        assert_eq!(first, Some(BusEvent::Resync));
    }
    let event = BusEvent::Entry {
        channel: ch("bob"),
        entry: bachata_core::Entry {
            seq: 7,
            kind: bachata_core::EntryKind::Receipt,
            payload: Bytes::from_static(b"{\"type\":300}"),
        },
    };
    a.publish(event.clone());
    let got = tokio::time::timeout(Duration::from_secs(10), from_b.recv())
        .await
        .expect("b hears a");
    assert_eq!(got, Some(event));
    let back = BusEvent::Live {
        channel: ch("alice"),
        payload: Bytes::from_static(b"{\"x\":1}"),
    };
    b.publish(back.clone());
    let got = tokio::time::timeout(Duration::from_secs(10), from_a.recv())
        .await
        .expect("a hears b");
    assert_eq!(got, Some(back));
    assert!(
        from_a.try_recv().is_err() && from_b.try_recv().is_err(),
        "no bus hears itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_urls_are_refused() {
    for url in ["redis+cluster://", "redis+cluster://h:1/0"] {
        let err = RedisStore::connect(url).await.expect_err(url);
        assert!(err.to_string().contains("invalid redis url"), "{err}");
    }
}

/// A master going away: calls fail with `Backend` within the call timeout
/// (no hang), `health` says so, and the same store works again once the
/// node is back (it rejoins with its `nodes.conf`). Its own cluster: it
/// kills a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_fails_calls_fast_and_they_recover() {
    let mut cluster = RedisCluster::start(3);
    let options = RedisStoreOptions {
        connection_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        reconnect_retries: 1,
        max_reconnect_delay: Duration::from_millis(100),
        call_timeout: Duration::from_secs(1),
        ..RedisStoreOptions::default()
    };
    let store = RedisStore::connect_with(&cluster.url(), options)
        .await
        .expect("connect");
    // A channel on node 1, and a sender elsewhere.
    let bob = (0..)
        .map(|i| format!("bob{i}"))
        .find(|b| node_of(&cluster, seq_key(b).as_bytes()) == 1)
        .expect("a channel on node 1");
    let sender = (0..)
        .map(|i| format!("alice{i}"))
        .find(|a| node_of(&cluster, seq_key(a).as_bytes()) != 1)
        .expect("a sender elsewhere");
    let send = |id: &str| msg(&sender, id, &[bob.as_str()]);
    assert!(matches!(
        store.enqueue(send("m1")).await.expect("enqueue"),
        Enqueued::Stored(_)
    ));

    cluster.nodes_mut()[1].kill();
    let started = Instant::now();
    let failed = store.enqueue(send("m2")).await;
    assert!(
        matches!(failed, Err(StoreError::Backend { .. })),
        "enqueue to a dead master: {failed:?}"
    );
    let read = store.read(&ch(&bob), &None, 0, 10, T0).await;
    assert!(matches!(read, Err(StoreError::Backend { .. })), "{read:?}");
    assert!(store.health().await.is_err(), "health sees the dead master");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls fail within their timeouts: {:?}",
        started.elapsed()
    );

    cluster.nodes_mut()[1].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        match store.enqueue(send("m2")).await {
            Ok(stored) => break stored,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    // No persistence: the node came back empty, so m2 is bob's seq 1 again
    // (seqs go back when Redis loses data, as on standalone Redis).
    assert!(matches!(stored, Enqueued::Stored(_)), "{stored:?}");
    store.health().await.expect("healthy again");
}

/// Presence counts live in each channel's own slot: two nodes on a cluster
/// see each other's counts, whichever master holds the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_are_shared_on_a_cluster() {
    use bachata_core::Presence;
    use bachata_store_redis::RedisPresence;
    let cluster = RedisCluster::lease(3);
    let ttl = std::time::Duration::from_secs(30);
    let a = RedisPresence::connect(&cluster.url(), ttl)
        .await
        .expect("a");
    let b = RedisPresence::connect(&cluster.url(), ttl)
        .await
        .expect("b");
    let channels: Vec<Channel> = (0..12).map(|i| ch(&format!("presence-{i}"))).collect();
    a.report(
        channels
            .iter()
            .map(|c| (c.clone(), vec![(None, 2)]))
            .collect(),
    )
    .await
    .expect("report");
    for c in &channels {
        assert_eq!(b.others(c).await.expect("read"), vec![(None, 2)], "{c}");
    }
    a.report(channels.iter().map(|c| (c.clone(), Vec::new())).collect())
        .await
        .expect("report");
    for c in &channels {
        assert!(b.others(c).await.expect("read").is_empty(), "{c}");
    }
}
