//! This node's view of the retained bytes count (protocol.md section 9).

use bachata_core::Millis;

/// How old the cluster mode's view of the retained bytes may be before an
/// enqueue reads it again.
const RETAINED_VIEW_MS: u64 = 1000;

/// This node's view of the retained bytes count: as last read from Redis,
/// plus what this node added or removed since (cluster mode). Read for the
/// `bachata_retained_bytes` gauge in both modes.
#[derive(Debug, Default)]
pub(crate) struct RetainedView {
    total: std::sync::atomic::AtomicI64,
    /// When it was last read (ms since the Unix epoch); 0: never.
    read_at: std::sync::atomic::AtomicU64,
}

impl RetainedView {
    pub(crate) fn get(&self) -> u64 {
        u64::try_from(self.total.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0)
    }

    pub(crate) fn set(&self, total: i64, now: Millis) {
        use std::sync::atomic::Ordering::Relaxed;
        self.total.store(total, Relaxed);
        self.read_at.store(now.max(1), Relaxed);
    }

    pub(crate) fn add(&self, delta: i64) {
        self.total
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn stale(&self, now: Millis) -> bool {
        let read_at = self.read_at.load(std::sync::atomic::Ordering::Relaxed);
        read_at == 0 || now.saturating_sub(read_at) >= RETAINED_VIEW_MS
    }
}
