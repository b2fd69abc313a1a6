//! Recovery from the log files: a torn last record (a crash in the middle of
//! an append) is ignored, everything synced before it is kept, and the store
//! goes on from there.

use std::io::Write;

mod common;

use bachata_core::{Enqueued, Store};
use bachata_store_redb::RedbStore;
use common::{crash, message, seqs};

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
    assert_eq!(
        seqs(&store, "bob").await,
        [1, 2],
        "everything synced is back"
    );
    assert!(matches!(
        store.enqueue(message("m3")).await.expect("enqueue"),
        Enqueued::Stored(seqs) if seqs[0].1 == 3
    ));
    crash(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    assert_eq!(seqs(&store, "bob").await, [1, 2, 3]);
    assert_eq!(
        store.enqueue(message("m1")).await.expect("enqueue"),
        Enqueued::Duplicate,
        "dedupe records came back too"
    );
}
