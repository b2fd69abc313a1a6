//! Group commit: concurrent enqueues share durable commits, and every caller
//! is answered only after the commit that carries its request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bachata_core::{Enqueued, NewMessage, Store};
use bachata_proto::{Channel, MessageId};
use bachata_store_redb::RedbStore;
use bytes::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let commits = Arc::new(AtomicUsize::new(0));
    let carried = Arc::new(AtomicUsize::new(0));
    let (c, r) = (commits.clone(), carried.clone());
    let store = Arc::new(
        RedbStore::open(
            dir.path(),
            Some(Box::new(move |_took, requests| {
                c.fetch_add(1, Ordering::SeqCst);
                r.fetch_add(requests, Ordering::SeqCst);
            })),
        )
        .expect("open"),
    );
    let n = 2000;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(NewMessage {
                        sender: Some(Channel::new(&format!("s{}", i % 50)).expect("channel")),
                        id: MessageId::new(&format!("m{i}")).expect("id"),
                        destinations: vec![Channel::new(&format!("r{}", i % 50)).expect("channel")],
                        payload: Bytes::from_static(b"{\"type\":\"direct\"}"),
                        now: 1,
                        expires_at: u64::MAX,
                        dedupe_until: u64::MAX,
                        queue_limit: u64::MAX,
                        retained_limit: u64::MAX,
                        forget_after: 86_400_000,
                        notify_at: None,
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("enqueue");
        assert!(matches!(outcome, Enqueued::Stored(_)));
    }
    let commits = commits.load(Ordering::SeqCst);
    assert_eq!(carried.load(Ordering::SeqCst), n, "every request committed");
    assert!(
        commits < n / 2,
        "{commits} commits for {n} concurrent enqueues: group commit is not grouping"
    );
    // Durable: a reopened store has all of them.
    drop(store);
    let store = RedbStore::open(dir.path(), None).expect("reopen");
    let mut total = 0;
    for r in 0..50 {
        let channel = Channel::new(&format!("r{r}")).expect("channel");
        total += store
            .read(&channel, &None, 0, usize::MAX, 2)
            .await
            .expect("read")
            .len();
    }
    assert_eq!(total, n);
}
