//! Redis going away: calls fail fast with `StoreError::Backend` (no hang, no
//! panic), and the same store works again once a redis-server is back on the
//! same port (the connection manager reconnects by itself).

use std::time::{Duration, Instant};

use bachata_core::{AckRequest, Enqueued, NewMessage, Store, StoreError};
use bachata_proto::{Channel, GroupId, MessageId};
use bachata_store_redis::{RedisStore, RedisStoreOptions};
use bachata_testkit::redis::RedisServer;
use bytes::Bytes;

const T0: u64 = 1_700_000_000_000;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn msg(id: &str, now: u64) -> NewMessage {
    NewMessage {
        sender: Some(ch("alice")),
        id: MessageId::new(id).expect("id"),
        destinations: vec![ch("bob")],
        payload: Bytes::from_static(b"{}"),
        now,
        expires_at: now + 3_600_000,
        dedupe_until: now + 60_000,
        queue_limit: 1000,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        notify_at: None,
    }
}

fn options() -> RedisStoreOptions {
    RedisStoreOptions {
        connection_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        reconnect_retries: 1,
        max_reconnect_delay: Duration::from_millis(100),
        call_timeout: Duration::from_secs(1),
        ..RedisStoreOptions::default()
    }
}

/// Every kind of call, once; each must fail with `Backend`.
async fn all_fail(store: &RedisStore) {
    let bob = ch("bob");
    let group = GroupId::new("team").expect("group");
    let checks: Vec<(&str, Result<(), StoreError>)> = vec![
        ("enqueue", store.enqueue(msg("m2", T0)).await.map(drop)),
        ("read", store.read(&bob, &None, 0, 10, T0).await.map(drop)),
        (
            "ack",
            store
                .ack(AckRequest {
                    channel: bob.clone(),
                    device: None,
                    id: MessageId::new("m1").expect("id"),
                    now: T0,
                    receipt: Bytes::from_static(b"{}"),
                    receipt_expires_at: T0 + 1,
                    forget_after: 86_400_000,
                })
                .await
                .map(drop),
        ),
        ("ack_seqs", store.ack_seqs(&bob, &None, &[1]).await),
        (
            "touch_device",
            store.touch_device(&bob, &None, T0, 86_400_000).await,
        ),
        (
            "pending_count",
            store.pending_count(&bob, T0).await.map(drop),
        ),
        ("ack_state", store.ack_state(&bob, 1).await.map(drop)),
        ("add_member", store.add_member(&group, &bob).await.map(drop)),
        ("members", store.members(&group).await.map(drop)),
        ("expire", store.expire(T0).await.map(drop)),
    ];
    for (what, result) in checks {
        assert!(
            matches!(result, Err(StoreError::Backend { .. })),
            "{what} with Redis down: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_redis_fails_fast_and_reconnects() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect_with(&server.url(), options())
        .await
        .expect("connect");
    assert!(matches!(
        store.enqueue(msg("m1", T0)).await,
        Ok(Enqueued::Stored(_))
    ));

    server.kill();
    // Each call is bounded by the call timeout (1 s); ten calls well within
    // 15 s even on a loaded machine, and none hangs.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), all_fail(&store))
        .await
        .expect("calls with Redis down must not hang");
    let each = started.elapsed() / 10;
    assert!(
        each < Duration::from_millis(1500),
        "a call with Redis down took {each:?} on average"
    );

    // A new, empty redis-server on the same port: the store reconnects.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.enqueue(msg("m3", T0)).await {
            Ok(Enqueued::Stored(positions)) => {
                assert_eq!(
                    positions,
                    vec![(ch("bob"), 1)],
                    "a fresh server starts at 1"
                );
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(StoreError::Backend { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not recover after the restart: {e}"),
        }
    }
    let entries = store
        .read(&ch("bob"), &None, 0, 10, T0)
        .await
        .expect("read after reconnect");
    assert_eq!(entries.len(), 1);
    // The scripts were flushed with the old server: EVALSHA reloads them.
    assert_eq!(
        store.pending_count(&ch("bob"), T0).await.expect("pending"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_fails_fast() {
    let port = {
        let mut server = RedisServer::start();
        let port = server.port();
        server.kill();
        port
    };
    let started = Instant::now();
    let result = RedisStore::connect_with(&format!("redis://127.0.0.1:{port}/"), options()).await;
    assert!(result.is_err(), "connect to a closed port must fail");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(RedisStore::connect("not a url").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aof_always_a_stored_message_survives_a_redis_sigkill() {
    let mut server =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = RedisStore::connect_with(&server.url(), options())
        .await
        .expect("connect");
    for id in ["m1", "m2"] {
        assert!(matches!(
            store.enqueue(msg(id, T0)).await,
            Ok(Enqueued::Stored(_))
        ));
    }
    server.kill();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        match store.read(&ch("bob"), &None, 0, 10, T0).await {
            Ok(entries) => break entries,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        store.enqueue(msg("m1", T0 + 1)).await.expect("enqueue"),
        Enqueued::Duplicate,
        "the dedupe record survived too"
    );
}
