//! `RedbStore` (on a temp dir) and `MemoryStore` through the `Store` trait,
//! per message, the way a connection drives them. For redb, through group
//! commit: a batch of B direct messages is put in the writer's queue
//! at once (`start_enqueue`, as a pipelining connection does), then their
//! 200s (`start_ack`, which append the 300s), then the sender's device takes
//! the 300s (`ack_seqs`). Every commit is synced (fsync), so B = 1 shows the
//! cost of three durable commits per message and B = 64 what group commit
//! makes of it (256: what one connection may have outstanding). The memory
//! store runs the same cycle one message at a time.
//!
//! `cargo bench -p bachata-store-redb`

#![allow(clippy::unwrap_used)] // reason: benchmark setup

use std::time::{Duration, Instant};

use bachata_core::{AckRequest, Enqueued, MemoryStore, NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bachata_store_redb::RedbStore;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const NOW: u64 = 1_732_630_000_000;
const PAYLOAD: &str = r#"{"id":"s/0","type":"direct","time":1732630000123,"from":"s","dest":"r","data":{"t":1732630000123,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

struct Fixture<S> {
    store: S,
    sender: Channel,
    receiver: Channel,
    payload: Bytes,
    receipt: Bytes,
    next: u64,
}

impl<S: Store> Fixture<S> {
    async fn new(store: S) -> Self {
        let sender = Channel::new("s").unwrap();
        let receiver = Channel::new("r").unwrap();
        // Known default devices, so fully acked entries are removed.
        store
            .touch_device(&sender, &None, NOW, 86_400_000)
            .await
            .unwrap();
        store
            .touch_device(&receiver, &None, NOW, 86_400_000)
            .await
            .unwrap();
        Fixture {
            store,
            sender,
            receiver,
            payload: Bytes::from_static(PAYLOAD.as_bytes()),
            receipt: Bytes::from_static(br#"{"type":300,"data":"s/0","from":"r"}"#),
            next: 0,
        }
    }

    fn message(&mut self) -> NewMessage {
        self.next += 1;
        NewMessage {
            sender: Some(self.sender.clone()),
            id: MessageId::new(&format!("s/{}", self.next)).unwrap(),
            destinations: vec![self.receiver.clone()],
            payload: self.payload.clone(),
            now: NOW,
            expires_at: NOW + 7 * 86_400_000,
            // Past `NOW + 1`, so `expire` between samples can drop the
            // dedupe records and the state does not grow without bound.
            dedupe_until: NOW + 1,
            queue_limit: 100_000,
            retained_limit: u64::MAX,
            forget_after: 86_400_000,
            notify_at: None,
        }
    }

    fn ack(&self, id: MessageId) -> AckRequest {
        AckRequest {
            channel: self.receiver.clone(),
            device: None,
            id,
            now: NOW,
            receipt: self.receipt.clone(),
            receipt_expires_at: NOW + 7 * 86_400_000,
            forget_after: 86_400_000,
        }
    }

    /// The whole cycle of `batch` messages, each step's requests in the
    /// writer's queue together.
    async fn cycle(&mut self, batch: usize) {
        let mut ids = Vec::with_capacity(batch);
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            let msg = self.message();
            ids.push(msg.id.clone());
            // A full writer queue gives the message back: await it in turn.
            match self.store.start_enqueue(msg) {
                Ok(p) => pending.push(p),
                Err(msg) => {
                    for p in pending.drain(..) {
                        assert!(matches!(p.await, Ok(Enqueued::Stored(_))));
                    }
                    assert!(matches!(
                        self.store.enqueue(msg).await,
                        Ok(Enqueued::Stored(_))
                    ));
                }
            }
        }
        // Already queued in order: awaiting one after the other waits for
        // the same commits as awaiting them together.
        for p in pending {
            assert!(matches!(p.await, Ok(Enqueued::Stored(_))));
        }
        let mut acks = Vec::with_capacity(batch);
        let mut receipts = Vec::with_capacity(batch);
        for id in ids {
            match self.store.start_ack(self.ack(id)) {
                Ok(p) => acks.push(p),
                Err(ack) => {
                    for p in acks.drain(..) {
                        receipts.push(p.await.unwrap().receipt.unwrap().1);
                    }
                    receipts.push(self.store.ack(ack).await.unwrap().receipt.unwrap().1);
                }
            }
        }
        for p in acks {
            receipts.push(p.await.unwrap().receipt.unwrap().1);
        }
        self.store
            .ack_seqs(&self.sender, &None, &receipts)
            .await
            .unwrap();
    }
}

/// Times `cycle(batch)` with an untimed expiry sweep before each sample,
/// so the previous sample's dedupe records are gone.
fn run<S: Store>(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    fx: &mut Fixture<S>,
    batch: usize,
) {
    b.iter_custom(|iters| {
        rt.block_on(async {
            fx.store.expire(NOW + 2).await.unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                fx.cycle(batch).await;
            }
            start.elapsed()
        })
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn redb(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut fx = rt.block_on(Fixture::new(RedbStore::open(dir.path(), None).unwrap()));
    let mut g = c.benchmark_group("redb_store");
    // Each iteration is at least three synced commits: few samples, short.
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for batch in [1usize, 64, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("enqueue_ack_receipt_batch", batch),
            &batch,
            |b, &batch| run(b, &rt, &mut fx, batch),
        );
    }
    g.finish();
    assert_eq!(
        rt.block_on(fx.store.pending_count(&fx.receiver, NOW))
            .unwrap(),
        0
    );
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut fx = rt.block_on(Fixture::new(MemoryStore::new()));
    let mut g = c.benchmark_group("memory_store");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue_ack_receipt", |b| run(b, &rt, &mut fx, 1));
    g.finish();
    assert_eq!(
        rt.block_on(fx.store.pending_count(&fx.receiver, NOW))
            .unwrap(),
        0
    );
}

criterion_group!(benches, redb, memory);
criterion_main!(benches);
