//! The Store conformance suite against a real `redis-server`, one per check.
//! "Reopen after a crash" drops the store (a bachata node dying) and connects
//! a new one to the same Redis: the state lives in Redis, not in the node.

use std::sync::Arc;

use bachata_core::Store;
use bachata_store_redis::RedisStore;
use bachata_testkit::conformance::Backend;
use bachata_testkit::redis::RedisServer;

struct Redis(RedisServer);

impl Redis {
    fn new() -> Self {
        Redis(RedisServer::start())
    }

    async fn connect(&self) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::connect(&self.0.url())
                .await
                .expect("connect to redis-server"),
        )
    }
}

impl Backend for Redis {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        self.connect().await
    }

    async fn reopen(&mut self, old: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        drop(old);
        Some(self.connect().await)
    }
}

bachata_testkit::store_conformance_tests!(Redis::new());
