//! The Lua scripts, each loaded with the shared helpers of
//! `lua/common.lua` (see the crate docs for what each does).

use std::time::Duration;

use bachata_core::StoreError;
use redis::Script;

use crate::conn::Conn;

/// A script: the shebang (Redis 7 script flags), the shared helpers, then
/// the script's own file. A script without `no-writes` is refused whole when
/// Redis is over `maxmemory`, before it writes anything.
macro_rules! script {
    ($file:literal) => {
        script!("#!lua", $file)
    };
    ($shebang:literal, $file:literal) => {
        Script::new(concat!(
            $shebang,
            "\n",
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// Every script of the store.
#[derive(Debug)]
pub(crate) struct Scripts {
    /// The enqueues and acks of one writer batch (standalone Redis).
    pub(crate) batch: Script,
    pub(crate) read: Script,
    pub(crate) ack_seqs: Script,
    pub(crate) expire: Script,
    pub(crate) touch: Script,
    /// Claims due copies of the undelivered webhook's index.
    pub(crate) undelivered_take: Script,
    pub(crate) cluster: ClusterScripts,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            batch: script!("batch.lua"),
            read: script!("#!lua flags=no-writes", "read.lua"),
            ack_seqs: script!("ack_seqs.lua"),
            expire: script!("expire.lua"),
            touch: script!("touch.lua"),
            undelivered_take: script!("undelivered_take.lua"),
            cluster: ClusterScripts::new(),
        }
    }
}

impl Scripts {
    /// Loads the scripts the batched path calls with `EVALSHA` alone (a
    /// pipeline does not load them by itself, as a single invocation does).
    pub(crate) async fn load_batched(
        &self,
        conn: &mut Conn,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.batch);
        match tokio::time::timeout(timeout, pipe.query_async::<Vec<String>>(conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::codec::map_error("script load", e)),
            Err(_) => Err(StoreError::backend("redis script load: timed out")),
        }
    }
}

/// The cluster mode's own scripts (see `lua/cluster_*.lua`).
#[derive(Debug)]
pub(crate) struct ClusterScripts {
    pub(crate) reserve: Script,
    pub(crate) append: Script,
    pub(crate) commit: Script,
    pub(crate) ack: Script,
    pub(crate) receipt: Script,
    pub(crate) expire: Script,
}

impl ClusterScripts {
    pub(crate) fn new() -> Self {
        ClusterScripts {
            reserve: script!("cluster_reserve.lua"),
            append: script!("cluster_append.lua"),
            commit: script!("cluster_commit.lua"),
            ack: script!("cluster_ack.lua"),
            receipt: script!("cluster_receipt.lua"),
            expire: script!("cluster_expire.lua"),
        }
    }
}
