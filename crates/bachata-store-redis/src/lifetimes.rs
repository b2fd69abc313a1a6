//! How long each key lives, and how expiry is cut into batches.

use bachata_core::{Millis, NewMessage};

/// Added to the dedupe record's `PX` expiry, so that nodes whose clocks run
/// a little behind Redis's still find the record for the whole window.
pub const DEDUPE_GRACE_MS: u64 = 10_000;

/// How long a channel's keys outlive its last entry at least, whatever
/// `--forget-after` says: long enough for an `expire` sweep (every minute
/// at most) to remove expired entries one by one, which keeps the retained
/// bytes count exact, before the keys expire as a whole.
pub const KEEP_MARGIN_MS: u64 = 10 * 60 * 1000;

/// How long (ms from now) the keys of a channel that got an entry at `now`
/// expiring at `expires_at` must live at least. Relative, because the
/// nodes' clocks (or a test's) and Redis's need not agree.
pub(crate) fn keep_for(now: Millis, expires_at: Millis, forget_after: Millis) -> Millis {
    expires_at
        .saturating_sub(now)
        .saturating_add(forget_after.max(KEEP_MARGIN_MS))
}

/// Channels `expire` fetches from the global index at a time.
pub(crate) const EXPIRE_CHANNELS: usize = 256;
/// Entries one `expire` script drops at most, so no script runs long.
pub(crate) const EXPIRE_BATCH: usize = 1000;

/// The `PX` of a dedupe record: the window plus [`DEDUPE_GRACE_MS`], or 0
/// when the message opens no window (no record is written).
pub(crate) fn dedupe_px(msg: &NewMessage) -> u64 {
    match msg.dedupe_until.saturating_sub(msg.now) {
        0 => 0,
        window => window.saturating_add(DEDUPE_GRACE_MS),
    }
}
