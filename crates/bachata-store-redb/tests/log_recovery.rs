//! Recovery from the log files: a torn last record (a crash in the middle of
//! an append) is ignored, everything synced before it is kept, and the store
//! goes on from there.

use std::io::Write;

use bachata_core::{Enqueued, NewMessage, Store};
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

async fn bob(store: &RedbStore) -> Vec<u64> {
    store
        .read(&ch("bob"), &None, 0, usize::MAX, 2)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

fn crash(store: RedbStore) {
    store.close_as_if_crashed();
    drop(store);
}

/// The newest log file in `dir`.
fn newest_log(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a log file")
}

#[tokio::test]
async fn a_torn_last_record_is_ignored_and_the_store_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    for id in ["m1", "m2"] {
        assert!(matches!(
            store.enqueue(message(id)).await.expect("enqueue"),
            Enqueued::Stored(_)
        ));
    }
    crash(store);
    // A record whose header promises more bytes than were written, as a
    // crash in the middle of an append leaves it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(newest_log(dir.path()))
        .expect("open log");
    file.write_all(&[100, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .expect("write");
    drop(file);

    let store = RedbStore::open(dir.path(), None).expect("reopen");
    assert_eq!(bob(&store).await, [1, 2], "everything synced is back");
    assert!(matches!(
        store.enqueue(message("m3")).await.expect("enqueue"),
        Enqueued::Stored(seqs) if seqs[0].1 == 3
    ));
    crash(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    assert_eq!(bob(&store).await, [1, 2, 3]);
    assert_eq!(
        store.enqueue(message("m1")).await.expect("enqueue"),
        Enqueued::Duplicate,
        "dedupe records came back too"
    );
}
