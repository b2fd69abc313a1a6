//! Helpers shared by the crash and recovery tests of the redb store.
#![allow(dead_code)] // each test binary uses its own subset

use bachata_core::{NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bachata_store_redb::RedbStore;
use bytes::Bytes;

pub(crate) fn ch(name: &str) -> Channel {
    Channel::new(name).expect("channel")
}

/// A direct message `id` from alice to bob, never expiring.
pub(crate) fn message(id: &str) -> NewMessage {
    NewMessage {
        sender: Some(ch("alice")),
        id: MessageId::new(id).expect("id"),
        destinations: vec![ch("bob")],
        payload: Bytes::from_static(b"{\"type\":\"direct\"}"),
        now: 1,
        expires_at: u64::MAX,
        dedupe_until: u64::MAX,
        queue_limit: u64::MAX,
        retained_limit: u64::MAX,
        forget_after: 86_400_000,
        notify_at: None,
    }
}

/// The seqs `channel`'s default device has not acked.
pub(crate) async fn seqs(store: &RedbStore, channel: &str) -> Vec<u64> {
    store
        .read(&ch(channel), &None, 0, usize::MAX, 3)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

/// Closes the store as a crash would after its last synced record.
pub(crate) fn crash(store: RedbStore) {
    store.close_as_if_crashed();
    drop(store);
}
