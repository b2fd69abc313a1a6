//! What a crash keeps around a 200 and its 300: the ack and the receipt it
//! queues are durable when `ack` returns; the record that a receipt was
//! written to a connection (`ack_seqs`) is answered before its disk sync
//! and reaches disk with the next synced record.

mod common;

use bachata_core::{AckRequest, Enqueued, Store};
use bachata_proto::MessageId;
use bachata_store_redb::RedbStore;
use bytes::Bytes;
use common::{ch, crash, message, seqs};

/// The seqs of bob's and alice's unacked entries after a crash and reopen.
async fn after_crash(dir: &std::path::Path, store: RedbStore) -> (Vec<u64>, Vec<u64>) {
    crash(store);
    let store = RedbStore::open(dir, None).expect("reopen");
    (seqs(&store, "bob").await, seqs(&store, "alice").await)
}

fn ack(id: &str) -> AckRequest {
    AckRequest {
        channel: ch("bob"),
        device: None,
        id: MessageId::new(id).expect("id"),
        now: 2,
        receipt: Bytes::from_static(b"{\"type\":300}"),
        receipt_expires_at: u64::MAX,
        forget_after: 86_400_000,
    }
}

#[tokio::test]
async fn an_ack_and_its_receipt_are_durable_when_ack_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    assert!(matches!(
        store.enqueue(message("m1")).await.expect("enqueue"),
        Enqueued::Stored(_)
    ));
    let acked = store.ack(ack("m1")).await.expect("ack");
    assert!(acked.receipt.is_some(), "the first ack queues a 300");
    let (bob, alice) = after_crash(dir.path(), store).await;
    assert!(bob.is_empty(), "acked before the crash");
    assert_eq!(alice, [1], "the 300 is queued");
}

#[tokio::test]
async fn a_receipt_record_reaches_disk_with_the_next_synced_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    store.enqueue(message("m1")).await.expect("enqueue");
    store.ack(ack("m1")).await.expect("ack");
    // The 300 was written to alice's connection: answered at once...
    store
        .ack_seqs(&ch("alice"), &None, &[1])
        .await
        .expect("ack_seqs");
    // ...and durable once a later operation that waits for the disk is.
    store.enqueue(message("m2")).await.expect("enqueue");
    let (bob, alice) = after_crash(dir.path(), store).await;
    assert_eq!(bob, [2]);
    assert!(alice.is_empty(), "the receipt's record survived");
}
