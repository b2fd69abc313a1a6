//! Forgetting on disk (protocol.md section 9): what `forget` removes stays
//! removed after a crash and after a clean close, a forgotten channel that
//! comes back starts its seqs again whatever the tables held, and the file
//! shrinks once most of it is free.

mod common;

use bachata_core::Store;
use bachata_store_redb::RedbStore;
use common::{ch, crash};

const SEEN: u64 = 1_000;
const LATER: u64 = SEEN + 10_000;
const FORGET_AFTER: u64 = 5_000;

async fn touch_many(store: &RedbStore, n: usize) {
    for i in 0..n {
        store
            .touch_device(&ch(&format!("c{i}")), &None, SEEN, FORGET_AFTER)
            .await
            .expect("touch");
    }
}

#[tokio::test]
async fn forgotten_channels_stay_forgotten_after_a_crash_and_a_close() {
    for crash_it in [true, false] {
        let dir = tempfile::tempdir().expect("dir");
        let store = RedbStore::open(dir.path(), None).expect("open");
        touch_many(&store, 100).await;
        store
            .touch_device(&ch("kept"), &None, LATER, FORGET_AFTER)
            .await
            .expect("touch");
        assert_eq!(store.channel_count(), Some(101));
        let forgotten = store.forget(LATER, FORGET_AFTER).await.expect("forget");
        assert_eq!((forgotten.channels, forgotten.devices), (100, 100));
        // A synced record after the (lazy) forget, as any later write makes.
        store
            .touch_device(&ch("kept"), &None, LATER, FORGET_AFTER)
            .await
            .expect("touch");
        if crash_it {
            crash(store);
        } else {
            drop(store);
        }
        let store = RedbStore::open(dir.path(), None).expect("reopen");
        assert_eq!(store.channel_count(), Some(1), "crash: {crash_it}");
    }
}

#[tokio::test]
async fn a_channel_forgotten_and_back_starts_over_from_seq_1() {
    let dir = tempfile::tempdir().expect("dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    for i in 0..5 {
        store
            .enqueue(common::message(&format!("m{i}")))
            .await
            .expect("enqueue");
    }
    // Let the tables hold bob's next seq (6) before forgetting.
    drop(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    let expired = store.expire(u64::MAX).await.expect("expire");
    assert_eq!(expired, 5);
    store.forget(LATER, FORGET_AFTER).await.expect("forget");
    assert_eq!(store.channel_count(), Some(0));
    let seqs = store
        .enqueue(common::message("again"))
        .await
        .expect("enqueue");
    assert_eq!(
        seqs,
        bachata_core::Enqueued::Stored(vec![(ch("bob"), 1)]),
        "a new start"
    );
    crash(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    let next = store
        .enqueue(common::message("after"))
        .await
        .expect("enqueue");
    assert_eq!(
        next,
        bachata_core::Enqueued::Stored(vec![(ch("bob"), 2)]),
        "the table holds the new channel's next seq, not the old one's"
    );
}

#[tokio::test]
async fn the_file_shrinks_once_mostly_free() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bachata.redb");
    let store = RedbStore::open(dir.path(), None).expect("open");
    touch_many(&store, 30_000).await;
    drop(store); // a checkpoint writes every row
    let full = std::fs::metadata(&file).expect("file").len();
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    store.forget(LATER, FORGET_AFTER).await.expect("forget");
    drop(store);
    // The next open finds the file mostly free and compacts it.
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    store
        .touch_device(&ch("one"), &None, LATER, FORGET_AFTER)
        .await
        .expect("touch");
    let small = std::fs::metadata(&file).expect("file").len();
    assert!(
        small * 4 < full,
        "{full} bytes with 30,000 channels, {small} once they are forgotten"
    );
    assert_eq!(store.channel_count(), Some(1));
}
