//! The Store conformance suite against the embedded redb store, including
//! the checks that reopen the same data after a simulated crash (the store
//! is dropped without any shutdown call and opened again).

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
        Arc::new(RedbStore::open(self.0.path(), None).expect("open redb store"))
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
