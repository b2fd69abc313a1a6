//! Random operation sequences run against the reference `MemoryStore` and
//! against `RedisStore` (on standalone Redis, and on a Redis Cluster) side by
//! side: every answer must be the same.
//! Deterministic (a fixed xorshift seed per case), so a failure names its
//! case and step and reproduces.

use bachata_core::{AckRequest, Enqueued, MemoryStore, NewMessage, Store};
use bachata_proto::{Channel, DeviceId, MessageId};
use bachata_store_redis::RedisStore;
use bachata_testkit::redis::RedisServer;
use bachata_testkit::redis_cluster::RedisCluster;
use bytes::Bytes;

const T0: u64 = 1_700_000_000_000;
const CASES: u64 = 16;
const STEPS: usize = 150;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const CHANNELS: [&str; 4] = ["alice", "bob", "c{a}r:ol", "dave"];
const DEVICES: [Option<&str>; 3] = [None, Some("phone"), Some("laptop")];
const IDS: [&str; 5] = ["m1", "m2", "m3", "x y", "m\n5"];

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn dev(d: Option<&str>) -> Option<DeviceId> {
    d.map(|d| DeviceId::new(d).expect("device"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_answers_like_the_memory_store() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let flush = async move || {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut raw)
            .await
            .expect("FLUSHALL");
    };
    differential(&server.url(), CASES, flush).await;
}

/// The same on a 3-master Redis Cluster, where enqueue, ack and expire are
/// several single-slot steps (fewer cases: more round trips per step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_answers_like_the_memory_store() {
    let cluster = RedisCluster::lease(3);
    let url = cluster.url();
    let flush = async || cluster.flush_all();
    differential(&url, CASES / 2, flush).await;
}

/// Runs `cases` random cases against the store at `url` and a
/// `MemoryStore`, calling `flush` to empty Redis before each.
async fn differential(url: &str, cases: u64, mut flush: impl AsyncFnMut()) {
    // How often each interesting outcome happened, so the test cannot pass
    // by never reaching it.
    let mut store_full = 0;
    let (mut stored, mut dups, mut full, mut acks, mut receipts, mut dropped) =
        (0u64, 0, 0, 0, 0, 0);
    for case in 0..cases {
        flush().await;
        let redis = RedisStore::connect(url).await.expect("connect");
        let memory = MemoryStore::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (case + 1).wrapping_mul(0x1000_0001));
        let mut now = T0;
        for step in 0..STEPS {
            let at = format!("case {case} step {step}");
            now += rng.below(20) * 1000;
            match rng.below(10) {
                0..=2 => {
                    let n = 1 + rng.below(3) as usize;
                    let mut destinations: Vec<Channel> = Vec::new();
                    for _ in 0..n {
                        let c = ch(rng.pick(&CHANNELS));
                        if !destinations.contains(&c) {
                            destinations.push(c);
                        }
                    }
                    let sender = if rng.below(5) == 0 {
                        None
                    } else {
                        Some(ch(rng.pick(&CHANNELS)))
                    };
                    let id = rng.pick(&IDS);
                    let m = NewMessage {
                        sender,
                        id: MessageId::new(id).expect("id"),
                        destinations,
                        payload: Bytes::from(format!("{{\"step\":{step}}}")),
                        now,
                        expires_at: now + 1000 * (1 + rng.below(120)),
                        dedupe_until: now + 1000 * rng.below(60),
                        queue_limit: 1 + rng.below(6),
                        // Sometimes within reach: a few dozen payloads.
                        retained_limit: if rng.below(3) == 0 {
                            40 + 10 * rng.below(30)
                        } else {
                            u64::MAX
                        },
                        forget_after: 86_400_000,
                        notify_at: None,
                    };
                    let a = memory.enqueue(m.clone()).await.expect("memory");
                    let b = redis.enqueue(m).await.expect("redis");
                    assert_eq!(a, b, "{at}: enqueue");
                    match a {
                        Enqueued::Stored(_) => stored += 1,
                        Enqueued::Duplicate => dups += 1,
                        Enqueued::QueueFull(_) => full += 1,
                        Enqueued::StoreFull => store_full += 1,
                    }
                }
                3..=4 => {
                    let req = AckRequest {
                        channel: ch(rng.pick(&CHANNELS)),
                        device: dev(rng.pick(&DEVICES)),
                        id: MessageId::new(rng.pick(&IDS)).expect("id"),
                        now,
                        receipt: Bytes::from(format!("{{\"type\":300,\"step\":{step}}}")),
                        receipt_expires_at: now + 1000 * (1 + rng.below(120)),
                        forget_after: 86_400_000,
                    };
                    let a = memory.ack(req.clone()).await.expect("memory");
                    let b = redis.ack(req).await.expect("redis");
                    assert_eq!(a, b, "{at}: ack");
                    acks += u64::from(a.seq.is_some());
                    receipts += u64::from(a.receipt.is_some());
                }
                5 => {
                    let c = ch(rng.pick(&CHANNELS));
                    let d = dev(rng.pick(&DEVICES));
                    let seqs: Vec<u64> = (0..1 + rng.below(3)).map(|_| rng.below(12)).collect();
                    memory.ack_seqs(&c, &d, &seqs).await.expect("memory");
                    redis.ack_seqs(&c, &d, &seqs).await.expect("redis");
                }
                6 => {
                    let c = ch(rng.pick(&CHANNELS));
                    let d = dev(rng.pick(&DEVICES));
                    memory
                        .touch_device(&c, &d, now, 86_400_000)
                        .await
                        .expect("memory");
                    redis
                        .touch_device(&c, &d, now, 86_400_000)
                        .await
                        .expect("redis");
                }
                7 => {
                    let a = memory.expire(now).await.expect("memory");
                    let b = redis.expire(now).await.expect("redis");
                    assert_eq!(a, b, "{at}: expire");
                    dropped += a;
                    // The Redis store reads its count back in every sweep.
                    assert_eq!(
                        memory.retained_bytes(),
                        redis.retained_bytes(),
                        "{at}: retained bytes"
                    );
                    // So does standalone Redis its pending messages count.
                    if !redis.is_cluster() {
                        assert_eq!(
                            memory.pending_total(),
                            redis.pending_total(),
                            "{at}: pending messages"
                        );
                    }
                }
                _ => {}
            }
            // After every step the views of one channel must agree, and those
            // of every channel every tenth step.
            let all = step % 10 == 9;
            let one = rng.pick(&CHANNELS);
            for c in CHANNELS.into_iter().filter(|c| all || *c == one) {
                let c = ch(c);
                for d in DEVICES {
                    let d = dev(d);
                    let after = rng.below(4);
                    let limit = 1 + rng.below(8) as usize;
                    let a = memory
                        .read(&c, &d, after, limit, now)
                        .await
                        .expect("memory");
                    let b = redis.read(&c, &d, after, limit, now).await.expect("redis");
                    assert_eq!(a, b, "{at}: read {c}/{d:?} after {after} limit {limit}");
                }
                let a = memory.pending_count(&c, now).await.expect("memory");
                let b = redis.pending_count(&c, now).await.expect("redis");
                assert_eq!(a, b, "{at}: pending_count {c}");
                for seq in 1..6 {
                    let a = memory.ack_state(&c, seq).await.expect("memory");
                    let b = redis.ack_state(&c, seq).await.expect("redis");
                    assert_eq!(a, b, "{at}: ack_state {c} {seq}");
                }
            }
        }
    }
    eprintln!(
        "stored {stored}, duplicates {dups}, queue full {full}, store full {store_full}, acks {acks}, receipts {receipts}, expired {dropped}"
    );
    for (what, n) in [
        ("stored", stored),
        ("duplicate", dups),
        ("queue full", full),
        ("store full", store_full),
        ("ack", acks),
        ("receipt", receipts),
        ("expired", dropped),
    ] {
        assert!(n > 0, "no {what} outcome in any case: widen the generator");
    }
}
