//! Counters of what went through the center, read by `/metrics`. Shared by
//! the center and every connection's session.

use std::sync::atomic::AtomicU64;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Data messages accepted (stored, or sent live when id-less).
    pub received: AtomicU64,
    /// Data messages refused with a 400.
    pub rejected: AtomicU64,
    /// Entries written to connections (messages and receipts).
    pub delivered: AtomicU64,
    /// 200s that acked a pending message.
    pub acked: AtomicU64,
    /// Sessions that started over from the head of their log: a new epoch,
    /// or a store that may have lost writes (protocol.md section 8).
    pub restarts: AtomicU64,
}
