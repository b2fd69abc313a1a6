//! The Store conformance suite against the embedded redb store, including
//! the checks that reopen the same data after a simulated crash: the store
//! stops right after its last commit, without the checkpoint a clean close
//! does, so every reopen recovers from the write-ahead log.

use std::sync::Arc;

use bachata_core::Store;
use bachata_store_redb::RedbStore;
use bachata_testkit::conformance::Backend;

struct Redb(tempfile::TempDir);

impl Redb {
    fn new() -> Self {
        Redb(tempfile::tempdir().expect("temp dir"))
    }

    fn open(&self) -> Arc<dyn Store> {
        let store = RedbStore::open(self.0.path(), None).expect("open redb store");
        store.close_as_if_crashed();
        Arc::new(store)
    }
}

impl Backend for Redb {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        self.open()
    }

    async fn reopen(&mut self, old: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        drop(old);
        Some(self.open())
    }
}

bachata_testkit::store_conformance_tests!(Redb::new());
