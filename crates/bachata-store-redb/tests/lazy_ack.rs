//! A 200 is answered before its own disk sync (see `is_lazy` in the crate):
//! a crash right after it undoes the ack and the 300 it queued together,
//! never one without the other; the next durable operation makes both
//! durable.

use bachata_core::{AckRequest, Enqueued, EntryKind, NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bachata_store_redb::RedbStore;
use bytes::Bytes;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

fn message(id: &str) -> NewMessage {
    NewMessage {
        sender: Some(ch("alice")),
        id: MessageId::new(id).expect("id"),
        destinations: vec![ch("bob")],
        payload: Bytes::from_static(b"{\"type\":\"direct\"}"),
        now: 1,
        expires_at: u64::MAX,
        dedupe_until: u64::MAX,
        queue_limit: u64::MAX,
    }
}

fn ack(id: &str) -> AckRequest {
    AckRequest {
        channel: ch("bob"),
        device: None,
        id: MessageId::new(id).expect("id"),
        now: 2,
        receipt: Bytes::from_static(b"{\"type\":300}"),
        receipt_expires_at: u64::MAX,
    }
}

/// (bob's pending ids, alice's receipt count) after a crash and reopen.
async fn after_crash(dir: &std::path::Path, store: RedbStore) -> (Vec<String>, usize) {
    store.close_as_if_crashed();
    drop(store);
    let store = RedbStore::open(dir, None).expect("reopen");
    let pending = store
        .read(&ch("bob"), &None, 0, usize::MAX, 3)
        .await
        .expect("read")
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Message { id, .. } => Some(id.as_str().to_owned()),
            EntryKind::Receipt => None,
        })
        .collect();
    let receipts = store
        .read(&ch("alice"), &None, 0, usize::MAX, 3)
        .await
        .expect("read")
        .len();
    (pending, receipts)
}

#[tokio::test]
async fn a_crash_undoes_an_unsynced_ack_with_its_receipt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    assert!(matches!(
        store.enqueue(message("m1")).await.expect("enqueue"),
        Enqueued::Stored(_)
    ));
    let acked = store.ack(ack("m1")).await.expect("ack");
    assert!(acked.receipt.is_some(), "the first ack queues a 300");
    let (pending, receipts) = after_crash(dir.path(), store).await;
    assert!(
        (pending == ["m1"] && receipts == 0) || (pending.is_empty() && receipts == 1),
        "ack and receipt together or neither: pending {pending:?}, receipts {receipts}"
    );
}

#[tokio::test]
async fn the_next_durable_operation_makes_an_ack_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    store.enqueue(message("m1")).await.expect("enqueue");
    store.ack(ack("m1")).await.expect("ack");
    // Durable when it returns, and logged after the ack.
    store.enqueue(message("m2")).await.expect("enqueue");
    let (pending, receipts) = after_crash(dir.path(), store).await;
    assert_eq!(pending, ["m2"]);
    assert_eq!(receipts, 1);
}
