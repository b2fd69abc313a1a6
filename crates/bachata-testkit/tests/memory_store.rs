//! The Store conformance suite against the in-memory store.

use std::sync::Arc;

use bachata_core::{MemoryStore, Store};
use bachata_testkit::conformance::{self, Backend, Ephemeral, block_on};

bachata_testkit::store_conformance_tests!(Ephemeral(MemoryStore::new));

/// A `MemoryStore` whose "reopen" hands back the same instance: a perfectly
/// durable backend. Runs the reopen checks, which `Ephemeral` skips, so that
/// their own logic is exercised before a durable backend exists.
struct SameInstance;

impl Backend for SameInstance {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    async fn reopen(&mut self, old: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        Some(old)
    }
}

#[test]
fn perfect_durability_reopen_keeps_state() {
    block_on(conformance::reopen_keeps_state(SameInstance));
}

#[test]
fn perfect_durability_reopen_never_reuses_seqs() {
    block_on(conformance::reopen_never_reuses_seqs(SameInstance));
}
