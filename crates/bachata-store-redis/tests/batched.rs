//! The ordered, batched path of standalone Redis (`writer.rs`): what one
//! connection starts keeps its order under concurrency, and a connection
//! to Redis dropped in the middle of a batch loses nothing that got its
//! 100 and stores nothing twice; one request's failure in a batch is its
//! own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bachata_core::{Enqueued, EntryKind, NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bachata_store_redis::RedisStore;
use bachata_testkit::redis::RedisServer;
use bytes::Bytes;

const T0: u64 = 1_700_000_000_000;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn msg(sender: &str, id: &str) -> NewMessage {
    NewMessage {
        sender: Some(ch(sender)),
        id: MessageId::new(id).expect("id"),
        destinations: vec![ch("bob")],
        payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        now: T0,
        expires_at: T0 + 3_600_000,
        dedupe_until: T0 + 3_600_000,
        queue_limit: 1_000_000,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        notify_at: None,
    }
}

/// Every message in bob's log: (sender, id) in log order. A connection
/// that was dropped fails its first call while it reconnects: tries a few
/// times.
async fn log(store: &RedisStore) -> Vec<(String, String)> {
    let mut tries = 0;
    let entries = loop {
        match store.read(&ch("bob"), &None, 0, usize::MAX, T0).await {
            Ok(entries) => break entries,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("read failed ({e}); again");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    entries
        .into_iter()
        .map(|e| match e.kind {
            EntryKind::Message {
                sender: Some(s),
                id,
            } => (s.as_str().to_owned(), id.as_str().to_owned()),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_keeps_its_order_under_concurrency() {
    let server = RedisServer::start();
    let store = Arc::new(RedisStore::connect(&server.url()).await.expect("connect"));
    const SENDERS: usize = 8;
    const EACH: usize = 300;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // One connection: starts its messages one after the other
            // without waiting, then awaits them together.
            let mut pending = Vec::new();
            for i in 0..EACH {
                let started = store.start_enqueue(msg(&format!("s{s}"), &format!("m{i}")));
                pending.push(started.expect("standalone Redis starts in order"));
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for p in pending {
                assert!(matches!(p.await, Ok(Enqueued::Stored(_))));
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut by_sender: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (sender, id) in log(&store).await {
        let n = id[1..].parse().expect("number");
        by_sender.entry(sender).or_default().push(n);
    }
    assert_eq!(by_sender.len(), SENDERS);
    for (sender, ids) in by_sender {
        assert_eq!(ids, (0..EACH).collect::<Vec<_>>(), "{sender} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_batch_loses_nothing_confirmed_and_stores_nothing_twice() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut killer = raw(&server).await;
    const N: usize = 5000;
    let mut pending = Vec::new();
    for i in 0..N {
        let started = store.start_enqueue(msg("alice", &format!("m{i}")));
        pending.push(started.expect("standalone Redis starts in order"));
    }
    let mut outcomes = Vec::with_capacity(N);
    let mut pending = pending.into_iter();
    // The first answer means batches are flowing: drop the store's
    // connection under the ones in flight.
    outcomes.push(pending.next().expect("one").await);
    let killed = kill_other_clients(&mut killer).await;
    for p in pending {
        outcomes.push(p.await);
    }
    assert!(
        killed >= 1,
        "the kill hit no connection: nothing was tested"
    );
    // The writer sends a failed batch once more: a message its first try
    // stored comes back a duplicate, which is a 100 all the same.
    let confirmed: BTreeSet<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Ok(Enqueued::Stored(_) | Enqueued::Duplicate)))
        .map(|(i, _)| i)
        .collect();
    let failed: Vec<usize> = (0..N).filter(|i| !confirmed.contains(i)).collect();
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            matches!(o, Ok(Enqueued::Stored(_) | Enqueued::Duplicate) | Err(_)),
            "m{i}: a 100 or unavailable, got {o:?}"
        );
    }
    // The sender sends the failed ones again: each is stored now, or was
    // stored by the batch that lost its answer (a duplicate).
    for i in &failed {
        let resent = store
            .enqueue(msg("alice", &format!("m{i}")))
            .await
            .expect("Redis is back");
        assert!(
            matches!(resent, Enqueued::Stored(_) | Enqueued::Duplicate),
            "{resent:?}"
        );
    }
    let stored: Vec<String> = log(&store).await.into_iter().map(|(_, id)| id).collect();
    let distinct: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), distinct.len(), "nothing stored twice");
    assert_eq!(stored.len(), N, "every message stored");
    for i in confirmed {
        assert!(distinct.contains(&format!("m{i}")), "confirmed m{i} kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_survives_its_connection_dropping() {
    // Nobody sends a 200 again: an ack whose batch failed with the
    // connection is sent again by the writer.
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut killer = raw(&server).await;
    assert!(matches!(
        store.enqueue(msg("alice", "m1")).await,
        Ok(Enqueued::Stored(_))
    ));
    kill_other_clients(&mut killer).await;
    let acked = store
        .ack(bachata_core::AckRequest {
            channel: ch("bob"),
            device: None,
            id: MessageId::new("m1").expect("id"),
            now: T0,
            receipt: Bytes::from_static(b"{\"type\":300}"),
            receipt_expires_at: T0 + 3_600_000,
            forget_after: 86_400_000,
        })
        .await
        .expect("the ack goes through");
    assert_eq!(acked.seq, Some(1));
    assert_eq!(acked.receipt, Some((ch("alice"), 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_in_a_batch_fails_alone() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut conn = raw(&server).await;
    // The dedupe record of alice's "bad" is not a deadline: its enqueue
    // reads corrupt data (the key is `bachata:d:{<hex sender>}:<id>`).
    let _: () = redis::cmd("SET")
        .arg(format!("bachata:d:{{{}}}:bad", hex("alice")))
        .arg("not a number")
        .query_async(&mut conn)
        .await
        .expect("SET");
    // Started together, the three go in one batch (one script call).
    let first = store.start_enqueue(msg("alice", "m1")).expect("ordered");
    let bad = store.start_enqueue(msg("alice", "bad")).expect("ordered");
    let last = store.start_enqueue(msg("alice", "m3")).expect("ordered");
    let (first, bad, last) = (first.await, bad.await, last.await);
    assert!(matches!(first, Ok(Enqueued::Stored(_))), "{first:?}");
    assert!(
        matches!(bad, Err(bachata_core::StoreError::Corrupt { .. })),
        "{bad:?}"
    );
    assert!(matches!(last, Ok(Enqueued::Stored(_))), "{last:?}");
    let ids: Vec<String> = log(&store).await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["m1", "m3"]);
}

/// A connection of the test's own to `server`.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Drops every client connection of Redis but `conn`'s (the store's);
/// how many it dropped.
async fn kill_other_clients(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(conn)
        .await
        .expect("CLIENT KILL")
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
