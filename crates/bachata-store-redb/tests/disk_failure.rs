//! A disk that refuses writes: the caller gets an error, never a 100 for
//! what is not stored; while the state cannot be rebuilt from disk every
//! request is refused; once the disk takes writes again the store rebuilds
//! its state and goes on, with nothing that was refused in it, and without
//! handing out again a seq that the refused writes had taken.
//!
//! The failure is real, not mocked: the test lowers its own process's
//! `RLIMIT_FSIZE` (with util-linux `prlimit`), so that every write past the
//! first byte of any file fails with `EFBIG`. That limit is per process, so
//! this file holds one test (its own test binary).

mod common;

use bachata_core::{Enqueued, Store};
use bachata_store_redb::RedbStore;
use common::{crash, message, seqs};
use tokio::signal::unix::{SignalKind, signal};

/// Sets this process's soft limit on file size (`prlimit --fsize`).
fn file_size_limit(limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--fsize={limit}:"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --fsize={limit}: {status:?}");
}

#[tokio::test]
async fn a_failing_disk_refuses_writes_and_recovers() {
    // A write past the limit also raises SIGXFSZ, whose default action
    // ends the process; a handler of our own replaces it.
    let _sigxfsz = signal(SignalKind::from_raw(25)).expect("SIGXFSZ handler");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path(), None).expect("open");
    assert!(matches!(
        store.enqueue(message("m1")).await.expect("enqueue"),
        Enqueued::Stored(_)
    ));

    file_size_limit("1");
    assert!(
        store.enqueue(message("m2")).await.is_err(),
        "the append fails: an error, not a 100"
    );
    assert!(
        store.enqueue(message("m3")).await.is_err(),
        "nothing is applied while the state cannot be rebuilt from disk"
    );

    file_size_limit("unlimited");
    assert!(
        matches!(
            store.enqueue(message("m2")).await.expect("enqueue"),
            Enqueued::Stored(_)
        ),
        "the refused m2 was not kept as a dedupe record: stored now"
    );
    assert_eq!(
        seqs(&store, "bob").await,
        [1, 3],
        "m1 and the resent m2, no m3; the refused m2 had seq 2 in memory, \
         where a reader may have seen it: never handed out again"
    );

    crash(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    assert_eq!(seqs(&store, "bob").await, [1, 3]);
}
