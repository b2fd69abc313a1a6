//! What the conformance suite does not look at: names with `{`, `}` and
//! `:`, binary payloads, odd message ids, the keys left in Redis, two nodes
//! sharing one Redis, and malformed data.

use std::collections::BTreeSet;
use std::sync::Arc;

use bachata_core::{AckRequest, Enqueued, EntryKind, NewMessage, Store, StoreError};
use bachata_proto::{Channel, DeviceId, MessageId};
use bachata_store_redis::RedisStore;
use bachata_testkit::redis::RedisServer;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;

const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn msg(sender: Option<&str>, id: &str, to: &[&str], payload: &[u8]) -> NewMessage {
    NewMessage {
        sender: sender.map(ch),
        id: MessageId::new(id).expect("id"),
        destinations: to.iter().map(|c| ch(c)).collect(),
        payload: Bytes::copy_from_slice(payload),
        now: T0,
        expires_at: T0 + HOUR,
        dedupe_until: T0 + 60_000,
        queue_limit: 1000,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        notify_at: None,
    }
}

fn ack(channel: &str, device: Option<&str>, id: &str, now: u64) -> AckRequest {
    AckRequest {
        channel: ch(channel),
        device: device.map(|d| DeviceId::new(d).expect("device")),
        id: MessageId::new(id).expect("id"),
        now,
        receipt: Bytes::from_static(b"{\"type\":300}"),
        receipt_expires_at: now + HOUR,
        forget_after: 86_400_000,
    }
}

async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn keys(conn: &mut MultiplexedConnection) -> BTreeSet<String> {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_binary_payloads_and_the_keys_left_behind() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut conn = raw(&server).await;

    // Braces and colons in names, an id with a newline and a space, and a
    // payload that is not even UTF-8.
    let (bob, alice) = ("bo}b{:x", "{alice}");
    let payload = b"\x00\xff{\"a\":\"\n\"}\r\n";
    let id = "id 1\nx";
    store
        .touch_device(
            &ch(bob),
            &Some(DeviceId::new("ph{o}ne").expect("device")),
            T0,
            86_400_000,
        )
        .await
        .expect("touch");
    let got = store
        .enqueue(msg(Some(alice), id, &[bob, "plain"], payload))
        .await
        .expect("enqueue");
    assert_eq!(got, Enqueued::Stored(vec![(ch(bob), 1), (ch("plain"), 1)]));

    let entries = store.read(&ch(bob), &None, 0, 10, T0).await.expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(&entries[0].payload[..], payload);
    assert_eq!(
        entries[0].kind,
        EntryKind::Message {
            sender: Some(ch(alice)),
            id: MessageId::new(id).expect("id")
        }
    );

    let bob_tag = hex::encode(bob);
    let alice_tag = hex::encode(alice);
    let plain_tag = hex::encode("plain");
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (tag, suffixes) in [
        // A message nobody acked is indexed for expiry in `unacked` only
        // (`exp` holds receipts and partly acked messages).
        (
            &bob_tag,
            &["seq", "log", "unacked", "epoch", "ids", "devices"][..],
        ),
        (&plain_tag, &["seq", "log", "unacked", "epoch", "ids"][..]),
    ] {
        for s in suffixes {
            expected.insert(format!("bachata:{{{tag}}}:{s}"));
        }
    }
    expected.insert(format!("bachata:d:{{{alice_tag}}}:{id}"));
    expected.insert("bachata:expiring".to_owned());
    expected.insert("bachata:retained".to_owned());
    expected.insert("bachata:pending".to_owned());
    assert_eq!(keys(&mut conn).await, expected);

    // A channel's counter and epoch expire after its last entry and
    // forget_after (protocol.md section 9: state follows pending work): here
    // the hour of the entry's TTL plus the day of forget_after (at least
    // the store's margin), and a quarter more so that the next appends need
    // not extend them; bob's devices a quarter beyond his touch's
    // forget_after. The collections have no lifetime: Redis deletes them
    // with their last element.
    let ttl_conn = conn.clone();
    let ttl_of = |key: String| {
        let mut conn = ttl_conn.clone();
        async move {
            let t: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            (key, t)
        }
    };
    let quarter_more = |ms: u64| (ms + ms / 4) as i64;
    let keep = quarter_more(HOUR + 86_400_000u64.max(bachata_store_redis::KEEP_MARGIN_MS));
    for suffix in ["seq", "epoch"] {
        let (key, t) = ttl_of(format!("bachata:{{{plain_tag}}}:{suffix}")).await;
        assert!((keep - 5_000..=keep).contains(&t), "{key}: PTTL {t}");
    }
    for suffix in ["log", "unacked", "ids"] {
        let (key, t) = ttl_of(format!("bachata:{{{plain_tag}}}:{suffix}")).await;
        assert_eq!(t, -1, "{key}: PTTL");
    }
    let devices_keep = quarter_more(86_400_000);
    let (key, t) = ttl_of(format!("bachata:{{{bob_tag}}}:devices")).await;
    assert!(
        (devices_keep - 5_000..=devices_keep).contains(&t),
        "{key}: PTTL {t}"
    );
    let retained: u64 = redis::cmd("GET")
        .arg("bachata:retained")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(
        retained,
        2 * payload.len() as u64,
        "one copy per destination"
    );

    // The dedupe record carries a PX expiry: the window plus a grace.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("bachata:d:{{{alice_tag}}}:{id}"))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (60_000..=70_000).contains(&pttl),
        "dedupe record PTTL {pttl}"
    );

    // The only known device of bob acks: the entry goes, the receipt lands
    // in alice's log, and bob keeps only his seq and devices.
    let acked = store
        .ack(ack(bob, Some("ph{o}ne"), id, T0 + 1))
        .await
        .expect("ack");
    assert_eq!(acked.seq, Some(1));
    assert_eq!(acked.receipt, Some((ch(alice), 1)));
    let receipts = store
        .read(&ch(alice), &None, 0, 10, T0)
        .await
        .expect("read");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].kind, EntryKind::Receipt);
    let left = keys(&mut conn).await;
    assert!(!left.contains(&format!("bachata:{{{bob_tag}}}:log")));
    assert!(left.contains(&format!("bachata:{{{bob_tag}}}:seq")));
    assert!(left.contains(&format!("bachata:{{{alice_tag}}}:log")));

    // Expiring everything leaves only counters, epochs, devices and the
    // dedupe record.
    assert_eq!(store.expire(T0 + 2 * HOUR).await.expect("expire"), 2);
    let left: BTreeSet<String> = keys(&mut conn)
        .await
        .into_iter()
        .filter(|k| !k.ends_with(":seq") && !k.ends_with(":epoch") && !k.starts_with("bachata:d:"))
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([
            format!("bachata:{{{bob_tag}}}:devices"),
            "bachata:retained".to_owned(),
            "bachata:pending".to_owned()
        ]),
        "the expiring index and every empty collection are gone"
    );
    let retained: u64 = redis::cmd("GET")
        .arg("bachata:retained")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(retained, 0, "nothing is retained");
    let pending: u64 = redis::cmd("GET")
        .arg("bachata:pending")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(pending, 0, "nothing is pending");
    // What is left expires by itself.
    for key in keys(&mut conn).await {
        if key == "bachata:retained" || key == "bachata:pending" {
            continue;
        }
        let (key, t) = ttl_of(key).await;
        assert!(t > 0, "{key} never expires");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_redis() {
    let server = RedisServer::start();
    let a: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.expect("a"));
    let b: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.expect("b"));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            node.enqueue(msg(Some("alice"), &format!("m{i}"), &["bob"], b"{}"))
                .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        match t.await.expect("task").expect("enqueue") {
            Enqueued::Stored(p) => seqs.push(p[0].1),
            other => panic!("{other:?}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    // A resend through the other node is a duplicate.
    assert_eq!(
        b.enqueue(msg(Some("alice"), "m0", &["bob"], b"{}"))
            .await
            .expect("enqueue"),
        Enqueued::Duplicate
    );
    // An ack on one node is seen by the other.
    let acked = a.ack(ack("bob", None, "m5", T0)).await.expect("ack");
    assert!(acked.seq.is_some() && acked.receipt.is_some(), "{acked:?}");
    assert_eq!(b.pending_count(&ch("bob"), T0).await.expect("pending"), 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_is_corrupt_not_a_panic() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut conn = raw(&server).await;
    store
        .enqueue(msg(Some("alice"), "m1", &["bob"], b"{}"))
        .await
        .expect("enqueue");
    let log = format!("bachata:{{{}}}:log", hex::encode("bob"));
    let _: () = redis::cmd("DEL")
        .arg(&log)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let _: () = redis::cmd("ZADD")
        .arg(&log)
        .arg("1")
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    let read = store.read(&ch("bob"), &None, 0, 10, T0).await;
    assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
    let acked = store.ack(ack("bob", None, "m1", T0)).await;
    assert!(
        matches!(acked, Err(StoreError::Corrupt { .. })),
        "{acked:?}"
    );

    // A key of the wrong type is a backend error (WRONGTYPE), not a panic.
    let _: () = redis::cmd("DEL")
        .arg(&log)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let _: () = redis::cmd("SET")
        .arg(&log)
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let read = store.read(&ch("bob"), &None, 0, 10, T0).await;
    assert!(read.is_err(), "{read:?}");

    // A group member that is not a valid channel name.
    let _: () = redis::cmd("SADD")
        .arg(format!("bachata:g:{{{}}}:members", hex::encode("team")))
        .arg("bad\nname")
        .query_async(&mut conn)
        .await
        .expect("SADD");
    let members = store
        .members(&bachata_proto::GroupId::new("team").expect("group"))
        .await;
    assert!(
        matches!(members, Err(StoreError::Corrupt { .. })),
        "{members:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_maxmemory_enqueue_is_refused_whole_and_read_still_works() {
    let server = RedisServer::start_with_args(&["--maxmemory", "3mb"]);
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let mut conn = raw(&server).await;
    let payload = vec![b'x'; 8 * 1024];
    let mut stored = 0u64;
    let refused = loop {
        assert!(stored < 2000, "maxmemory never reached");
        match store
            .enqueue(msg(
                Some("alice"),
                &format!("m{stored}"),
                &["bob", "carol"],
                &payload,
            ))
            .await
        {
            Ok(Enqueued::Stored(_)) => stored += 1,
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, StoreError::Backend { .. }), "{refused:?}");
    assert!(refused.to_string().contains("OOM"), "{refused}");
    // Nothing of the refused message was written: both seq counters stop at
    // the last stored message, and its dedupe record is absent.
    for c in ["bob", "carol"] {
        let seq: u64 = redis::cmd("GET")
            .arg(format!("bachata:{{{}}}:seq", hex::encode(c)))
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert_eq!(seq, stored, "{c}");
    }
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("bachata:d:{{{}}}:m{stored}", hex::encode("alice")))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!exists);
    let entries = store
        .read(&ch("bob"), &None, 0, 10, T0)
        .await
        .expect("read at maxmemory");
    assert_eq!(entries.len(), 10);
}
