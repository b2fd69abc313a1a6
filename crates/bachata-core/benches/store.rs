//! `MemoryStore` through the `Store` trait, per message, the way a
//! connection drives it: enqueue a direct message (in the store's order,
//! `start_enqueue`), the receiver's 200 (`start_ack`, which appends the 300
//! to the sender's log), and the sender's device taking the 300
//! (`ack_seqs`), after which both entries are gone.
//!
//! `cargo bench -p bachata-core --bench store`

#![allow(clippy::unwrap_used)] // reason: benchmark setup

use std::time::{Duration, Instant};

use bachata_core::{AckRequest, Enqueued, MemoryStore, NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const NOW: u64 = 1_732_630_000_000;
const PAYLOAD: &str = r#"{"id":"s/0","type":"direct","time":1732630000123,"from":"s","dest":"r","data":{"t":1732630000123,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

struct Fixture {
    store: MemoryStore,
    sender: Channel,
    receiver: Channel,
    payload: Bytes,
    receipt: Bytes,
    next: u64,
}

impl Fixture {
    async fn new() -> Self {
        let store = MemoryStore::new();
        let sender = Channel::new("s").unwrap();
        let receiver = Channel::new("r").unwrap();
        // Known default devices, so fully acked entries are removed.
        store.touch_device(&sender, &None, NOW).await.unwrap();
        store.touch_device(&receiver, &None, NOW).await.unwrap();
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
            // dedupe records and the map does not grow without bound.
            dedupe_until: NOW + 1,
            queue_limit: 10_000,
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
        }
    }

    /// One message's whole cycle in the store.
    async fn cycle(&mut self) {
        let msg = self.message();
        let id = msg.id.clone();
        let stored = match self.store.start_enqueue(msg) {
            Ok(pending) => pending.await,
            Err(msg) => self.store.enqueue(msg).await,
        };
        assert!(matches!(stored, Ok(Enqueued::Stored(_))));
        let acked = match self.store.start_ack(self.ack(id)) {
            Ok(pending) => pending.await,
            Err(ack) => self.store.ack(ack).await,
        }
        .unwrap();
        let (_, receipt) = acked.receipt.unwrap();
        self.store
            .ack_seqs(&self.sender, &None, &[receipt])
            .await
            .unwrap();
    }
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut fx = rt.block_on(Fixture::new());
    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue_ack_receipt", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // Untimed: drop the previous sample's dedupe records.
                fx.store.expire(NOW + 2).await.unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    fx.cycle().await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    assert_eq!(
        rt.block_on(fx.store.pending_count(&fx.receiver, NOW))
            .unwrap(),
        0
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = store
}
criterion_main!(benches);
