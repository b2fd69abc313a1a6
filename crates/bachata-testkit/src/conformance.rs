//! The `Store` conformance suite: what every backend (memory, redb, Redis)
//! must do, checked through the [`Store`] trait only.
//!
//! Every check is a `pub async fn` taking a [`Backend`], which makes a fresh,
//! empty store and, for durable backends, reopens one "after a crash". Time
//! is explicit (`now` values around a fixed epoch), so nothing sleeps.
//!
//! A backend crate runs the whole suite with one macro call, which expands to
//! a module `store_conformance` holding one `#[test]` per check:
//!
//! ```ignore
//! use bachata_core::MemoryStore;
//! use bachata_testkit::conformance::Ephemeral;
//!
//! bachata_testkit::store_conformance_tests!(Ephemeral(MemoryStore::new));
//! ```
//!
//! The expression is evaluated once per check (inside the test module, which
//! sees the caller's imports through `use super::*`), so each check gets its
//! own backend. A durable backend implements [`Backend`] itself:
//!
//! ```ignore
//! struct Redb(tempfile::TempDir);
//! impl Backend for Redb {
//!     async fn fresh(&mut self) -> Arc<dyn Store> {
//!         let store = RedbStore::open(self.0.path(), None).expect("open");
//!         // Dropped, the store then stops as a crash would: without the
//!         // checkpoint of a clean close.
//!         store.close_as_if_crashed();
//!         Arc::new(store)
//!     }
//!     async fn reopen(&mut self, old: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
//!         drop(old);
//!         Some(self.fresh().await)
//!     }
//! }
//! bachata_testkit::store_conformance_tests!(Redb(tempfile::tempdir().expect("tempdir")));
//! ```
//!
//! [`run_all`] runs every check in sequence instead, for a single test.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use bachata_core::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, EntryKind, Millis, NewMessage, Seq,
    Store, Undelivered,
};
use bachata_proto::{Channel, DeviceId, GroupId, MessageId};
use bytes::Bytes;

/// Makes the stores a check runs against. One value serves one check.
pub trait Backend {
    /// A fresh, empty store. Called once per check.
    fn fresh(&mut self) -> impl Future<Output = Arc<dyn Store>> + Send;

    /// Simulates a crash and a restart: `old` is the last handle to the store
    /// made by [`Backend::fresh`] (every other clone was dropped and no call is
    /// in flight); drop it without any graceful shutdown and open the same
    /// data again. `None` for backends that keep nothing across a restart,
    /// which skips the reopen checks.
    fn reopen(
        &mut self,
        old: Arc<dyn Store>,
    ) -> impl Future<Output = Option<Arc<dyn Store>>> + Send {
        drop(old);
        std::future::ready(None)
    }
}

/// A [`Backend`] for stores that do not survive a restart: `Ephemeral(f)`
/// calls `f` for each fresh store and skips the reopen checks.
pub struct Ephemeral<F>(pub F);

impl<F, S> Backend for Ephemeral<F>
where
    F: FnMut() -> S + Send,
    S: Store,
{
    fn fresh(&mut self) -> impl Future<Output = Arc<dyn Store>> + Send {
        let store: Arc<dyn Store> = Arc::new((self.0)());
        std::future::ready(store)
    }
}

/// Runs `future` to completion on a new multi-thread tokio runtime (two
/// workers, all drivers enabled). The tests that
/// [`store_conformance_tests!`](crate::store_conformance_tests) expands to
/// use it, so the calling crate needs no tokio macros.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

/// Runs every check in sequence, each with a backend from `make`. A failing
/// check panics; the name of the check is printed to stderr before it runs.
pub async fn run_all<B: Backend>(mut make: impl FnMut() -> B) {
    crate::__store_conformance_checks!(@run (make));
}

/// Expands to a module `store_conformance` with one `#[test]` per check of
/// [`conformance`](crate::conformance), each running the check with a backend
/// made by evaluating the given expression. See the module docs.
#[macro_export]
macro_rules! store_conformance_tests {
    ($backend:expr $(,)?) => {
        $crate::__store_conformance_checks!(@tests ($backend));
    };
}

/// The list of checks, shared by
/// [`store_conformance_tests!`](crate::store_conformance_tests) and
/// [`conformance::run_all`](crate::conformance::run_all).
#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_checks {
    (@tests ($backend:expr) [$($check:ident),* $(,)?]) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    $crate::conformance::block_on($crate::conformance::$check($backend));
                }
            )*
        }
    };
    (@run ($make:expr) [$($check:ident),* $(,)?]) => {
        $(
            eprintln!("store conformance check: {}", stringify!($check));
            $crate::conformance::$check($make()).await;
        )*
    };
    (@$mode:ident $args:tt) => {
        $crate::__store_conformance_checks!(@$mode $args [
            fifo_per_channel,
            enqueue_is_atomic_with_queue_limit,
            devices_ack_independently,
            redelivery_until_acked,
            ack_returns_seq_and_first_ack_receipt,
            oldest_entry_with_the_id_is_acked_first,
            system_messages_get_no_receipt,
            unknown_ack_is_ignored,
            ack_seqs_marks_receipts,
            dedupe_window,
            is_duplicate_reads_the_dedupe_record,
            queue_limit_counts_unacked_messages,
            ttl_expiry,
            ttl_expiry_out_of_order,
            retention_after_every_known_device_acked,
            seqs_never_reused,
            concurrent_enqueues_get_contiguous_seqs,
            concurrent_acks_give_one_receipt,
            reopen_keeps_state,
            reopen_never_reuses_seqs,
            group_membership,
            reopen_keeps_groups,
            ack_state_per_entry,
            retained_bytes_limit,
            reopen_keeps_retained_bytes,
            stale_devices_are_forgotten,
            undelivered_copies_are_claimed_until_finished,
        ]);
    };
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A fixed "now" (2023-11-14); checks move time forward from here.
const T0: Millis = 1_700_000_000_000;
const SEC: Millis = 1_000;
const MIN: Millis = 60 * SEC;
const HOUR: Millis = 60 * MIN;
/// A queue limit no check reaches unless it means to.
const NO_LIMIT: u64 = 1_000_000;
/// Reads "everything".
const ALL: usize = 100_000;
/// `--forget-after` in the fixtures: past every check's clock, except where
/// a check means to reach it.
const FORGET_AFTER: Millis = 24 * HOUR;

fn ch(name: &str) -> Channel {
    Channel::new(name).expect("valid channel")
}

fn dev(name: &str) -> Device {
    Some(DeviceId::new(name).expect("valid device"))
}

/// The channel's default device.
const DEFAULT: Device = None;

fn mid(id: &str) -> MessageId {
    MessageId::new(id).expect("valid message id")
}

fn payload(sender: Option<&str>, id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"from\":\"{}\",\"id\":\"{id}\"}}",
        sender.unwrap_or("<system>")
    ))
}

/// A data message from `sender` at `now`: TTL one hour, dedupe window ten
/// minutes, no queue limit in reach. Adjust with struct update syntax.
fn msg(sender: &str, id: &str, to: &[&str], now: Millis) -> NewMessage {
    NewMessage {
        sender: Some(ch(sender)),
        id: mid(id),
        destinations: to.iter().map(|c| ch(c)).collect(),
        payload: payload(Some(sender), id),
        now,
        expires_at: now + HOUR,
        dedupe_until: now + 10 * MIN,
        queue_limit: NO_LIMIT,
        retained_limit: u64::MAX,
        forget_after: FORGET_AFTER,
        notify_at: None,
    }
}

/// Like [`msg`], sent by the system.
fn system_msg(id: &str, to: &[&str], now: Millis) -> NewMessage {
    NewMessage {
        sender: None,
        payload: payload(None, id),
        ..msg("unused", id, to, now)
    }
}

/// A 200 by `device` of `channel` for `id` at `now`, with a receipt whose
/// bytes name the ack (so two receipts differ) and that lives one hour.
fn ack_req(channel: &str, device: &Device, id: &str, now: Millis) -> AckRequest {
    AckRequest {
        channel: ch(channel),
        device: device.clone(),
        id: mid(id),
        now,
        receipt: Bytes::from(format!(
            "{{\"type\":300,\"id\":\"{id}\",\"at\":{now},\"by\":{device:?}}}"
        )),
        receipt_expires_at: now + HOUR,
        forget_after: FORGET_AFTER,
    }
}

fn seqs_of(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

fn sorted(mut v: Vec<(Channel, Seq)>) -> Vec<(Channel, Seq)> {
    v.sort();
    v
}

fn at(channel: &str, seq: Seq) -> (Channel, Seq) {
    (ch(channel), seq)
}

/// The store under test, with calls that panic on `StoreError`.
struct Probe(Arc<dyn Store>);

impl Probe {
    fn handle(&self) -> Arc<dyn Store> {
        Arc::clone(&self.0)
    }

    async fn enqueue(&self, m: NewMessage) -> Enqueued {
        let what = format!("enqueue {:?} from {:?}", m.id, m.sender);
        self.0
            .enqueue(m)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Enqueues and expects `Stored`; returns the positions.
    async fn stored(&self, m: NewMessage) -> Vec<(Channel, Seq)> {
        let what = format!("enqueue {:?} from {:?}", m.id, m.sender);
        match self.enqueue(m).await {
            Enqueued::Stored(positions) => positions,
            other => panic!("{what}: expected Stored, got {other:?}"),
        }
    }

    /// Enqueues to one destination and expects `Stored`; returns the seq.
    async fn stored_one(&self, m: NewMessage) -> Seq {
        assert_eq!(m.destinations.len(), 1, "stored_one takes one destination");
        let dest = m.destinations[0].clone();
        let got = self.stored(m).await;
        assert_eq!(
            got.len(),
            1,
            "Stored must name each destination once: {got:?}"
        );
        assert_eq!(got[0].0, dest, "Stored names the destination");
        got[0].1
    }

    async fn read(
        &self,
        channel: &str,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Vec<Entry> {
        let entries = self
            .0
            .read(&ch(channel), device, after, limit, now)
            .await
            .unwrap_or_else(|e| panic!("read {channel}/{device:?} failed: {e}"));
        assert!(
            entries.len() <= limit,
            "read {channel}/{device:?} returned {} entries for limit {limit}",
            entries.len()
        );
        assert!(
            entries.windows(2).all(|w| w[0].seq < w[1].seq),
            "read {channel}/{device:?} must return log order: {:?}",
            seqs_of(&entries)
        );
        assert!(
            entries.iter().all(|e| e.seq > after),
            "read {channel}/{device:?} after {after} returned {:?}",
            seqs_of(&entries)
        );
        entries
    }

    /// The seqs `device` still has to receive in `channel`, from the start.
    async fn seqs(&self, channel: &str, device: &Device, now: Millis) -> Vec<Seq> {
        seqs_of(&self.read(channel, device, 0, ALL, now).await)
    }

    async fn ack_with(&self, req: AckRequest) -> Acked {
        let what = format!("ack {:?} by {}/{:?}", req.id, req.channel, req.device);
        self.0
            .ack(req)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    async fn ack(&self, channel: &str, device: &Device, id: &str, now: Millis) -> Acked {
        self.ack_with(ack_req(channel, device, id, now)).await
    }

    async fn ack_seqs(&self, channel: &str, device: &Device, seqs: &[Seq]) {
        self.0
            .ack_seqs(&ch(channel), device, seqs)
            .await
            .unwrap_or_else(|e| panic!("ack_seqs {channel}/{device:?} {seqs:?} failed: {e}"));
    }

    async fn touch(&self, channel: &str, device: &Device, now: Millis) {
        self.0
            .touch_device(&ch(channel), device, now, FORGET_AFTER)
            .await
            .unwrap_or_else(|e| panic!("touch_device {channel}/{device:?} failed: {e}"));
    }

    async fn forget(&self, now: Millis, forget_after: Millis) {
        self.0
            .forget(now, forget_after)
            .await
            .unwrap_or_else(|e| panic!("forget at {now} failed: {e}"));
    }

    async fn pending(&self, channel: &str, now: Millis) -> u64 {
        self.0
            .pending_count(&ch(channel), now)
            .await
            .unwrap_or_else(|e| panic!("pending_count {channel} failed: {e}"))
    }

    async fn expire(&self, now: Millis) -> u64 {
        self.0
            .expire(now)
            .await
            .unwrap_or_else(|e| panic!("expire at {now} failed: {e}"))
    }
}

async fn fresh<B: Backend>(backend: &mut B) -> Probe {
    Probe(backend.fresh().await)
}

/// Reopens `store` after a "crash"; `None` when the backend is not durable.
async fn reopen<B: Backend>(backend: &mut B, store: Probe, check: &str) -> Option<Probe> {
    let old = store.0;
    assert_eq!(
        Arc::strong_count(&old),
        1,
        "{check}: the check must hold the last handle before reopening"
    );
    match backend.reopen(old).await {
        Some(store) => Some(Probe(store)),
        None => {
            eprintln!("{check}: skipped, the backend does not reopen");
            None
        }
    }
}

fn receipt_of(req: &AckRequest) -> Bytes {
    req.receipt.clone()
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Seqs of a channel start at 1 and grow by one; `read` returns entries in
/// log order with their kind and payload, and honours `after` and `limit`;
/// channels number independently.
pub async fn fifo_per_channel<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let now = T0 + SEC;
    assert!(
        s.read("bob", &DEFAULT, 0, ALL, now).await.is_empty(),
        "unknown channel reads empty"
    );
    assert_eq!(
        s.pending("bob", now).await,
        0,
        "unknown channel has nothing pending"
    );

    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            s.stored_one(msg("alice", &format!("m{i}"), &["bob"], T0 + i))
                .await,
        );
    }
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5],
        "seqs of a channel start at 1 and grow by one"
    );

    let all = s.read("bob", &DEFAULT, 0, ALL, now).await;
    assert_eq!(seqs_of(&all), seqs, "read returns every entry in order");
    for (i, e) in all.iter().enumerate() {
        let id = format!("m{i}");
        assert_eq!(
            e.kind,
            EntryKind::Message {
                sender: Some(ch("alice")),
                id: mid(&id)
            },
            "entry {} kind",
            e.seq
        );
        assert_eq!(
            e.payload,
            payload(Some("alice"), &id),
            "entry {} payload",
            e.seq
        );
        assert!(e.needs_ack(), "a data message needs an ack");
    }

    assert_eq!(
        seqs_of(&s.read("bob", &DEFAULT, 2, 2, now).await),
        [3, 4],
        "after 2, limit 2"
    );
    assert_eq!(
        seqs_of(&s.read("bob", &DEFAULT, 0, 1, now).await),
        [1],
        "limit 1"
    );
    assert_eq!(
        seqs_of(&s.read("bob", &DEFAULT, 4, ALL, now).await),
        [5],
        "after 4"
    );
    assert!(
        s.read("bob", &DEFAULT, 5, ALL, now).await.is_empty(),
        "after the last seq"
    );
    assert!(
        s.read("bob", &DEFAULT, 99, ALL, now).await.is_empty(),
        "after beyond the end"
    );
    assert!(
        s.read("bob", &DEFAULT, 0, 0, now).await.is_empty(),
        "limit 0"
    );
    assert_eq!(s.pending("bob", now).await, 5, "five messages pending");

    assert_eq!(
        s.stored_one(msg("alice", "x", &["carol"], now)).await,
        1,
        "another channel numbers from 1"
    );
    assert_eq!(
        s.stored_one(msg("dave", "m0", &["bob"], now)).await,
        6,
        "bob continues after 5"
    );
    assert_eq!(s.seqs("carol", &DEFAULT, now).await, [1]);
}

/// An enqueue to several destinations is all or nothing: when one
/// destination is full the result is `QueueFull(that channel)`, no log gets
/// the message, and no dedupe record is left (a retry can succeed).
pub async fn enqueue_is_atomic_with_queue_limit<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let limited = |m: NewMessage| NewMessage {
        queue_limit: 2,
        ..m
    };

    s.stored_one(limited(msg("alice", "b1", &["bob"], T0)))
        .await;
    s.stored_one(limited(msg("alice", "b2", &["bob"], T0)))
        .await;
    assert_eq!(s.pending("bob", T0).await, 2);

    let multi = limited(msg("alice", "multi", &["carol", "bob", "dave"], T0 + SEC));
    assert_eq!(
        s.enqueue(multi.clone()).await,
        Enqueued::QueueFull(ch("bob")),
        "a full destination refuses the whole message and is named"
    );
    let first_full = limited(msg("alice", "first", &["bob", "erin"], T0 + SEC));
    assert_eq!(s.enqueue(first_full).await, Enqueued::QueueFull(ch("bob")));
    for other in ["carol", "dave", "erin"] {
        assert!(
            s.seqs(other, &DEFAULT, T0 + SEC).await.is_empty(),
            "refused message must not be appended to {other}"
        );
        assert_eq!(
            s.pending(other, T0 + SEC).await,
            0,
            "{other} has nothing pending"
        );
    }
    assert_eq!(
        s.seqs("bob", &DEFAULT, T0 + SEC).await,
        [1, 2],
        "bob's log is unchanged"
    );
    assert_eq!(s.pending("bob", T0 + SEC).await, 2);

    let acked = s.ack("bob", &DEFAULT, "b1", T0 + 2 * SEC).await;
    assert_eq!(acked.seq, Some(1));
    let got = s
        .stored(NewMessage {
            now: T0 + 3 * SEC,
            ..multi
        })
        .await;
    assert_eq!(
        sorted(got),
        sorted(vec![at("carol", 1), at("bob", 3), at("dave", 1)]),
        "the retry of a refused message is stored (no dedupe record was left) in every destination"
    );
    for dest in ["carol", "dave"] {
        let entries = s.read(dest, &DEFAULT, 0, ALL, T0 + 3 * SEC).await;
        assert_eq!(entries.len(), 1, "{dest} got the message once");
        assert_eq!(entries[0].payload, payload(Some("alice"), "multi"));
    }
}

/// Each device acks on its own: one device's ack hides the entry from that
/// device only, while the other known devices still read it.
pub async fn devices_ack_independently<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, b) = (dev("phone"), dev("laptop"));
    for d in [&a, &b, &DEFAULT] {
        s.touch("bob", d, T0).await;
    }
    for id in ["m1", "m2", "m3"] {
        s.stored_one(msg("alice", id, &["bob"], T0)).await;
    }
    let now = T0 + SEC;

    assert_eq!(s.ack("bob", &a, "m1", now).await.seq, Some(1), "A acks m1");
    assert_eq!(s.seqs("bob", &a, now).await, [2, 3], "A no longer reads m1");
    assert_eq!(s.seqs("bob", &b, now).await, [1, 2, 3], "B still reads m1");
    assert_eq!(
        s.seqs("bob", &DEFAULT, now).await,
        [1, 2, 3],
        "the default device still reads m1"
    );
    assert_eq!(
        seqs_of(&s.read("bob", &b, 1, ALL, now).await),
        [2, 3],
        "B after 1"
    );
    assert_eq!(
        seqs_of(&s.read("bob", &a, 0, 1, now).await),
        [2],
        "A, limit 1, skips its acked entry"
    );
    assert_eq!(
        seqs_of(&s.read("bob", &a, 2, ALL, now).await),
        [3],
        "A after 2"
    );

    assert_eq!(s.ack("bob", &b, "m2", now).await.seq, Some(2), "B acks m2");
    assert_eq!(s.seqs("bob", &a, now).await, [2, 3]);
    assert_eq!(s.seqs("bob", &b, now).await, [1, 3]);

    assert_eq!(
        s.ack("bob", &DEFAULT, "m3", now).await.seq,
        Some(3),
        "default device acks m3"
    );
    assert_eq!(s.seqs("bob", &DEFAULT, now).await, [1, 2]);
    assert_eq!(s.seqs("bob", &a, now).await, [2, 3]);
    assert_eq!(s.seqs("bob", &b, now).await, [1, 3]);
}

/// Reading acks nothing: reading again from 0 returns every entry the device
/// has not acked, with the same contents.
pub async fn redelivery_until_acked<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let a = dev("phone");
    s.touch("bob", &a, T0).await;
    for id in ["m1", "m2", "m3"] {
        s.stored_one(msg("alice", id, &["bob"], T0)).await;
    }
    let now = T0 + SEC;
    let first = s.read("bob", &a, 0, ALL, now).await;
    assert_eq!(seqs_of(&first), [1, 2, 3]);
    assert!(s.read("bob", &a, 3, ALL, now).await.is_empty());
    let again = s.read("bob", &a, 0, ALL, now).await;
    assert_eq!(
        again, first,
        "a second read from 0 redelivers the same entries"
    );
    assert_eq!(s.pending("bob", now).await, 3, "reading does not ack");

    assert_eq!(s.ack("bob", &a, "m2", now).await.seq, Some(2));
    let after_ack = s.read("bob", &a, 0, ALL, now + SEC).await;
    assert_eq!(
        seqs_of(&after_ack),
        [1, 3],
        "unacked entries are redelivered"
    );
    assert_eq!(after_ack[0], first[0]);
    assert_eq!(after_ack[1], first[2]);
}

/// An ack returns the acked seq. The first ack of a message by any device
/// appends the given receipt bytes to the sender's log (kind `Receipt`, same
/// seq space as the sender's messages); later acks by other devices append
/// nothing; a repeated ack by the same device matches nothing.
pub async fn ack_returns_seq_and_first_ack_receipt<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, b) = (dev("phone"), dev("laptop"));
    s.touch("bob", &a, T0).await;
    s.touch("bob", &b, T0).await;
    assert_eq!(s.stored_one(msg("carol", "c1", &["alice"], T0)).await, 1);
    assert_eq!(s.stored_one(msg("alice", "a1", &["bob"], T0)).await, 1);

    let req = ack_req("bob", &a, "a1", T0 + SEC);
    let acked = s.ack_with(req.clone()).await;
    assert_eq!(
        acked,
        Acked {
            seq: Some(1),
            receipt: Some(at("alice", 2))
        },
        "the first ack returns the seq and the receipt's position in the sender's log"
    );
    let alice = s.read("alice", &DEFAULT, 0, ALL, T0 + SEC).await;
    assert_eq!(
        seqs_of(&alice),
        [1, 2],
        "the receipt follows alice's own messages"
    );
    let receipt = &alice[1];
    assert_eq!(receipt.kind, EntryKind::Receipt);
    assert_eq!(
        receipt.payload,
        receipt_of(&req),
        "the receipt carries exactly the given bytes"
    );
    assert!(!receipt.needs_ack(), "a receipt needs no 200");
    assert!(alice[0].needs_ack());

    let second = s.ack("bob", &b, "a1", T0 + 2 * SEC).await;
    assert_eq!(
        second,
        Acked {
            seq: Some(1),
            receipt: None
        },
        "a second device's ack returns the seq but no receipt"
    );
    assert_eq!(
        s.seqs("alice", &DEFAULT, T0 + 2 * SEC).await,
        [1, 2],
        "no second receipt"
    );

    let again = s.ack("bob", &a, "a1", T0 + 3 * SEC).await;
    assert_eq!(
        again,
        Acked::default(),
        "a repeated ack by the same device matches nothing"
    );
    assert_eq!(s.seqs("alice", &DEFAULT, T0 + 3 * SEC).await, [1, 2]);
    assert_eq!(s.pending("bob", T0 + 3 * SEC).await, 0);
}

/// With several entries carrying the same id (different senders, or a resend
/// after the dedupe window), an ack takes the device's oldest unacked one,
/// and each first ack sends its receipt to that entry's sender.
pub async fn oldest_entry_with_the_id_is_acked_first<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, b) = (dev("phone"), dev("laptop"));
    s.touch("bob", &a, T0).await;
    s.touch("bob", &b, T0).await;
    assert_eq!(s.stored_one(msg("alice", "same", &["bob"], T0)).await, 1);
    assert_eq!(s.stored_one(msg("dave", "same", &["bob"], T0)).await, 2);
    let later = T0 + 11 * MIN; // past alice's dedupe window
    assert_eq!(s.stored_one(msg("alice", "same", &["bob"], later)).await, 3);

    let now = later + SEC;
    assert_eq!(
        s.ack("bob", &a, "same", now).await,
        Acked {
            seq: Some(1),
            receipt: Some(at("alice", 1))
        }
    );
    assert_eq!(
        s.ack("bob", &a, "same", now).await,
        Acked {
            seq: Some(2),
            receipt: Some(at("dave", 1))
        }
    );
    assert_eq!(
        s.ack("bob", &b, "same", now).await,
        Acked {
            seq: Some(1),
            receipt: None
        },
        "B's oldest unacked entry with the id is seq 1"
    );
    assert_eq!(
        s.ack("bob", &a, "same", now).await,
        Acked {
            seq: Some(3),
            receipt: Some(at("alice", 2))
        }
    );
    assert_eq!(
        s.ack("bob", &a, "same", now).await,
        Acked::default(),
        "A has no such entry left"
    );
    assert_eq!(s.seqs("bob", &b, now).await, [2, 3]);
}

/// A message from the system (sender `None`) is delivered and acked like any
/// other, but its ack appends no receipt.
pub async fn system_messages_get_no_receipt<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let a = dev("phone");
    s.touch("bob", &a, T0).await;
    assert_eq!(s.stored_one(system_msg("s1", &["bob"], T0)).await, 1);
    let entries = s.read("bob", &a, 0, ALL, T0).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].kind,
        EntryKind::Message {
            sender: None,
            id: mid("s1")
        }
    );
    assert_eq!(entries[0].payload, payload(None, "s1"));
    assert!(entries[0].needs_ack());
    assert_eq!(s.pending("bob", T0).await, 1);

    assert_eq!(
        s.ack("bob", &a, "s1", T0 + SEC).await,
        Acked {
            seq: Some(1),
            receipt: None
        },
        "a system message's first ack has no receipt"
    );
    assert_eq!(s.pending("bob", T0 + SEC).await, 0);
    assert!(s.seqs("bob", &a, T0 + SEC).await.is_empty());
}

/// Acks that match nothing (unknown channel, unknown id, an id sent to
/// another channel) return `Acked::default()` and change nothing.
pub async fn unknown_ack_is_ignored<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    assert_eq!(
        s.ack("nobody", &DEFAULT, "m1", T0).await,
        Acked::default(),
        "unknown channel"
    );
    s.stored_one(msg("alice", "m1", &["bob"], T0)).await;
    assert_eq!(
        s.ack("bob", &DEFAULT, "nope", T0).await,
        Acked::default(),
        "unknown id"
    );
    assert_eq!(
        s.ack("carol", &DEFAULT, "m1", T0).await,
        Acked::default(),
        "an id sent to another channel"
    );
    assert_eq!(
        s.pending("bob", T0).await,
        1,
        "bob's message is still pending"
    );
    assert_eq!(s.seqs("bob", &DEFAULT, T0).await, [1]);
    assert!(
        s.seqs("alice", &DEFAULT, T0).await.is_empty(),
        "no receipt was sent"
    );
}

/// `ack_seqs` hides receipts from the acking device only; once every known
/// device of the sender acked a receipt it is gone. Receipts are not
/// pending messages, and unknown or already-acked seqs are ignored.
pub async fn ack_seqs_marks_receipts<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (x, y) = (dev("x"), dev("y"));
    s.touch("alice", &x, T0).await;
    s.touch("alice", &y, T0).await;
    s.stored_one(msg("alice", "a1", &["bob"], T0)).await;
    let acked = s.ack("bob", &DEFAULT, "a1", T0 + SEC).await;
    let Some((sender, r)) = acked.receipt else {
        panic!("the first ack must return a receipt: {acked:?}");
    };
    assert_eq!(sender, ch("alice"));
    let now = T0 + 2 * SEC;
    assert_eq!(s.seqs("alice", &x, now).await, [r]);
    assert_eq!(
        s.pending("alice", now).await,
        0,
        "a receipt is not a pending message"
    );

    s.ack_seqs("alice", &x, &[r]).await;
    assert!(
        s.seqs("alice", &x, now).await.is_empty(),
        "X acked the receipt"
    );
    assert_eq!(s.seqs("alice", &y, now).await, [r], "Y did not");

    s.ack_seqs("alice", &x, &[r, r + 999, 0]).await;
    s.ack_seqs("nobody", &x, &[1, 2]).await;
    assert_eq!(
        s.seqs("alice", &y, now).await,
        [r],
        "ignored seqs change nothing"
    );

    s.ack_seqs("alice", &y, &[r]).await;
    assert!(s.seqs("alice", &y, now).await.is_empty());
    assert!(
        s.seqs("alice", &dev("new"), now).await.is_empty(),
        "once every known device acked the receipt it is gone"
    );
}

/// A resend of `(sender, id)` before `dedupe_until` is `Duplicate` and
/// appends nothing, to any destination, even after the entry was acked and
/// removed or `expire` ran; from `dedupe_until` on it is stored again. The
/// same id from another sender (or the system) is a different message.
pub async fn dedupe_window<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let until = T0 + MIN;
    let d1 = |now: Millis, to: &[&str]| NewMessage {
        dedupe_until: until,
        ..msg("alice", "d1", to, now)
    };

    assert_eq!(s.stored_one(d1(T0, &["bob"])).await, 1);
    assert_eq!(s.enqueue(d1(T0 + SEC, &["bob"])).await, Enqueued::Duplicate);
    assert_eq!(
        s.enqueue(d1(T0 + 2 * SEC, &["carol"])).await,
        Enqueued::Duplicate,
        "dedupe is by (sender, id), whatever the destinations"
    );
    assert!(
        s.seqs("carol", &DEFAULT, T0 + 2 * SEC).await.is_empty(),
        "nothing appended to carol"
    );
    assert_eq!(
        s.seqs("bob", &DEFAULT, T0 + 2 * SEC).await,
        [1],
        "nothing appended to bob"
    );

    assert_eq!(
        s.stored_one(msg("dave", "d1", &["bob"], T0 + 3 * SEC))
            .await,
        2,
        "another sender"
    );
    assert_eq!(
        s.stored_one(system_msg("d1", &["bob"], T0 + 3 * SEC)).await,
        3,
        "the system"
    );
    assert_eq!(
        s.enqueue(system_msg("d1", &["bob"], T0 + 4 * SEC)).await,
        Enqueued::Duplicate,
        "the system's resend is a duplicate too"
    );

    assert_eq!(s.expire(T0 + 30 * SEC).await, 0, "nothing expired yet");
    assert_eq!(
        s.enqueue(d1(T0 + 31 * SEC, &["bob"])).await,
        Enqueued::Duplicate,
        "expire keeps dedupe records that are still live"
    );

    let a = dev("phone");
    s.touch("bob", &a, T0 + 32 * SEC).await;
    for _ in 0..3 {
        assert!(s.ack("bob", &a, "d1", T0 + 33 * SEC).await.seq.is_some());
    }
    assert!(
        s.seqs("bob", &dev("new"), T0 + 33 * SEC).await.is_empty(),
        "all acked and removed"
    );
    assert_eq!(
        s.enqueue(d1(until - 1, &["bob"])).await,
        Enqueued::Duplicate,
        "the dedupe record outlives the acked entry"
    );

    assert_eq!(
        s.stored_one(NewMessage {
            dedupe_until: until + MIN,
            ..d1(until, &["bob"])
        })
        .await,
        4,
        "from dedupe_until on, the same (sender, id) is a new message"
    );
    assert_eq!(
        s.enqueue(d1(until + SEC, &["bob"])).await,
        Enqueued::Duplicate,
        "and it opens a new window"
    );
}

/// The queue limit counts the messages of a destination that no device has
/// acked: one device's ack frees a slot, receipts never count, and receipts
/// are appended even to a full queue.
pub async fn queue_limit_counts_unacked_messages<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let limit3 = |m: NewMessage| NewMessage {
        queue_limit: 3,
        ..m
    };
    let (a, b) = (dev("phone"), dev("laptop"));
    s.touch("bob", &a, T0).await;
    s.touch("bob", &b, T0).await;
    for id in ["b1", "b2", "b3"] {
        s.stored_one(limit3(msg("alice", id, &["bob"], T0))).await;
    }
    assert_eq!(s.pending("bob", T0).await, 3);
    assert_eq!(
        s.enqueue(limit3(msg("alice", "b4", &["bob"], T0))).await,
        Enqueued::QueueFull(ch("bob"))
    );

    s.ack("bob", &a, "b1", T0 + SEC).await;
    assert_eq!(
        s.pending("bob", T0 + SEC).await,
        2,
        "acked by one device is not pending"
    );
    assert_eq!(
        s.seqs("bob", &b, T0 + SEC).await,
        [1, 2, 3],
        "B still reads b1"
    );
    assert_eq!(
        s.stored_one(limit3(msg("alice", "b4", &["bob"], T0 + SEC)))
            .await,
        4
    );
    assert_eq!(
        s.enqueue(limit3(msg("alice", "b5", &["bob"], T0 + SEC)))
            .await,
        Enqueued::QueueFull(ch("bob"))
    );

    // Bob's own messages get acked: five receipts land in his full queue.
    for i in 0..5 {
        let id = format!("to-carol-{i}");
        s.stored_one(msg("bob", &id, &["carol"], T0 + 2 * SEC))
            .await;
        let acked = s.ack("carol", &DEFAULT, &id, T0 + 3 * SEC).await;
        assert!(
            matches!(&acked.receipt, Some((c, _)) if *c == ch("bob")),
            "a receipt is appended even when the sender's queue is full: {acked:?}"
        );
    }
    assert_eq!(
        s.pending("bob", T0 + 3 * SEC).await,
        3,
        "receipts are not pending messages"
    );
    assert_eq!(s.pending("carol", T0 + 3 * SEC).await, 0);

    s.ack("bob", &b, "b2", T0 + 4 * SEC).await;
    assert_eq!(s.pending("bob", T0 + 4 * SEC).await, 2);
    let seq = s
        .stored_one(limit3(msg("alice", "b5", &["bob"], T0 + 4 * SEC)))
        .await;
    assert_eq!(seq, 10, "after 4 messages and 5 receipts");
}

/// Expired entries (`expires_at <= now`) are not read, not counted as pending
/// nor against the queue limit, cannot be acked; `expire` drops them
/// (receipts too) and returns how many it dropped.
pub async fn ttl_expiry<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let a = dev("phone");
    s.touch("bob", &a, T0).await;
    let ttl = |id: &str, expires_at: Millis| NewMessage {
        expires_at,
        ..msg("alice", id, &["bob"], T0)
    };
    s.stored_one(ttl("e1", T0 + 10 * SEC)).await;
    s.stored_one(ttl("e2", T0 + 20 * SEC)).await;
    s.stored_one(ttl("e3", T0 + HOUR)).await;

    assert_eq!(s.seqs("bob", &a, T0 + 5 * SEC).await, [1, 2, 3]);
    assert_eq!(s.pending("bob", T0 + 5 * SEC).await, 3);
    assert_eq!(s.seqs("bob", &a, T0 + 15 * SEC).await, [2, 3], "e1 expired");
    assert_eq!(
        s.pending("bob", T0 + 15 * SEC).await,
        2,
        "e1 is no longer pending"
    );
    let now = T0 + 25 * SEC;
    assert_eq!(s.seqs("bob", &a, now).await, [3], "e2 expired");
    assert_eq!(s.pending("bob", now).await, 1);
    assert_eq!(
        s.ack("bob", &a, "e1", now).await,
        Acked::default(),
        "an expired entry cannot be acked"
    );
    assert_eq!(
        s.stored_one(NewMessage {
            queue_limit: 2,
            ..msg("alice", "e4", &["bob"], now)
        })
        .await,
        4,
        "expired messages do not count against the queue limit"
    );

    assert_eq!(s.expire(now).await, 2, "expire drops e1 and e2");
    assert_eq!(
        s.seqs("bob", &a, T0).await,
        [3, 4],
        "dropped entries are gone even for an earlier now"
    );
    assert_eq!(s.expire(now).await, 0, "nothing left to drop");

    let req = AckRequest {
        receipt_expires_at: now + 10 * SEC,
        ..ack_req("bob", &a, "e3", now)
    };
    let acked = s.ack_with(req).await;
    assert_eq!(
        acked,
        Acked {
            seq: Some(3),
            receipt: Some(at("alice", 1))
        }
    );
    assert_eq!(s.seqs("alice", &DEFAULT, now + 9 * SEC).await, [1]);
    assert!(
        s.seqs("alice", &DEFAULT, now + 10 * SEC).await.is_empty(),
        "the receipt expired"
    );
    assert_eq!(
        s.expire(now + 10 * SEC).await,
        1,
        "expire drops the receipt"
    );
    assert!(s.seqs("alice", &DEFAULT, now).await.is_empty());
}

/// Expiry does not assume the log is sorted by `expires_at`: a short-lived
/// message behind a long-lived message or receipt (a TTL change across a
/// restart, or receipts living longer than messages) stops being read,
/// pending and counted against the queue limit as soon as it expires.
pub async fn ttl_expiry_out_of_order<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let ttl = |id: &str, to: &str, expires_at: Millis| NewMessage {
        expires_at,
        ..msg("alice", id, &[to], T0)
    };

    // A long-lived message, then a short-lived one.
    s.stored_one(ttl("long", "bob", T0 + HOUR)).await;
    s.stored_one(ttl("short-bob", "bob", T0 + 10 * SEC)).await;
    let now = T0 + 20 * SEC;
    assert_eq!(
        s.seqs("bob", &DEFAULT, now).await,
        [1],
        "the short-lived message expired"
    );
    assert_eq!(
        s.pending("bob", now).await,
        1,
        "an expired message behind a live one is not pending"
    );
    assert_eq!(
        s.enqueue(NewMessage {
            queue_limit: 2,
            ..msg("alice", "more-bob", &["bob"], now)
        })
        .await,
        Enqueued::Stored(vec![at("bob", 3)]),
        "an expired message behind a live one does not count against the queue limit"
    );

    // A long-lived receipt, then a short-lived message.
    s.stored_one(msg("carol", "c1", &["dave"], T0)).await;
    let req = AckRequest {
        receipt_expires_at: T0 + HOUR,
        ..ack_req("dave", &DEFAULT, "c1", T0)
    };
    assert_eq!(s.ack_with(req).await.receipt, Some(at("carol", 1)));
    s.stored_one(ttl("short-carol", "carol", T0 + 10 * SEC))
        .await;
    assert_eq!(
        s.seqs("carol", &dev("x"), now).await,
        [1],
        "only the receipt is live"
    );
    assert_eq!(
        s.pending("carol", now).await,
        0,
        "an expired message behind a live receipt is not pending"
    );
    assert_eq!(
        s.enqueue(NewMessage {
            queue_limit: 1,
            ..msg("alice", "more-carol", &["carol"], now)
        })
        .await,
        Enqueued::Stored(vec![at("carol", 3)]),
        "an expired message behind a live receipt does not count against the queue limit"
    );

    assert_eq!(
        s.expire(now).await,
        2,
        "expire drops both short-lived messages"
    );
    assert_eq!(s.pending("bob", now).await, 2);
    assert_eq!(s.pending("carol", now).await, 1);
}

/// An entry that every known device of the channel acked is removed: a new
/// device does not read it. An entry of a channel with no known device is
/// kept, whoever acked it.
pub async fn retention_after_every_known_device_acked<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, b, c) = (dev("phone"), dev("laptop"), dev("tablet"));
    s.touch("bob", &a, T0).await;
    s.touch("bob", &b, T0).await;
    s.stored_one(msg("alice", "m1", &["bob"], T0)).await;
    s.stored_one(msg("alice", "m2", &["bob"], T0)).await;
    let now = T0 + SEC;

    s.ack("bob", &a, "m1", now).await;
    assert_eq!(
        s.seqs("bob", &c, now).await,
        [1, 2],
        "m1 is kept while B has not acked it"
    );
    s.ack("bob", &b, "m1", now).await;
    assert_eq!(
        s.seqs("bob", &c, now).await,
        [2],
        "m1 is gone once A and B acked it"
    );
    s.touch("bob", &c, now).await;
    assert_eq!(
        s.seqs("bob", &c, now).await,
        [2],
        "a device known later does not see it either"
    );
    assert_eq!(s.seqs("bob", &DEFAULT, now).await, [2]);

    s.ack("bob", &c, "m2", now).await;
    assert_eq!(s.seqs("bob", &a, now).await, [2], "m2 stays for A and B");
    assert_eq!(s.seqs("bob", &b, now).await, [2]);

    s.stored_one(msg("alice", "m3", &["carol"], now)).await;
    assert_eq!(s.ack("carol", &DEFAULT, "m3", now).await.seq, Some(1));
    assert!(
        s.seqs("carol", &DEFAULT, now).await.is_empty(),
        "the acking device no longer reads it"
    );
    assert_eq!(
        s.seqs("carol", &dev("later"), now).await,
        [1],
        "without a known device the entry stays"
    );
}

/// Seqs are never handed out twice in a channel, even when every entry of
/// the channel was removed (acked by every known device, or expired and
/// swept by `expire`).
pub async fn seqs_never_reused<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let a = dev("phone");
    s.touch("bob", &a, T0).await;
    s.stored_one(msg("alice", "b1", &["bob"], T0)).await;
    s.stored_one(msg("alice", "b2", &["bob"], T0)).await;
    s.ack("bob", &a, "b1", T0).await;
    s.ack("bob", &a, "b2", T0).await;
    assert!(
        s.seqs("bob", &dev("new"), T0).await.is_empty(),
        "b1 and b2 were removed"
    );
    assert_eq!(
        s.stored_one(msg("alice", "b3", &["bob"], T0)).await,
        3,
        "seqs continue after entries removed by acks"
    );

    let c1 = NewMessage {
        expires_at: T0 + 10 * SEC,
        ..msg("alice", "c1", &["carol"], T0)
    };
    assert_eq!(s.stored_one(c1).await, 1);
    // carol has no known device: once c1 is swept, nothing of hers is left.
    assert_eq!(s.expire(T0 + 11 * SEC).await, 1);
    assert_eq!(
        s.stored_one(msg("alice", "c2", &["carol"], T0 + 12 * SEC))
            .await,
        2,
        "seqs continue after every entry of a channel was expired and swept"
    );
}

/// Many concurrent enqueues get distinct, contiguous seqs in each channel, and
/// each message is read back once at the seq it was given.
pub async fn concurrent_enqueues_get_contiguous_seqs<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    const N: usize = 200;
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let store = s.handle();
        tasks.push(tokio::spawn(async move {
            let to: &[&str] = if i % 2 == 0 {
                &["hot", "warm"]
            } else {
                &["hot"]
            };
            let m = msg(&format!("sender{}", i % 7), &format!("c{i}"), to, T0);
            let id = m.id.clone();
            (id, Probe(store).stored(m).await)
        }));
    }
    let mut by_channel: BTreeMap<Channel, Vec<(Seq, MessageId)>> = BTreeMap::new();
    for task in tasks {
        let (id, positions) = task.await.expect("enqueue task panicked");
        for (channel, seq) in positions {
            by_channel
                .entry(channel)
                .or_default()
                .push((seq, id.clone()));
        }
    }
    for (channel, n) in [("hot", N), ("warm", N / 2)] {
        let mut given = by_channel.remove(&ch(channel)).unwrap_or_default();
        given.sort();
        let seqs: Vec<Seq> = given.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<Seq> = (1..=n as Seq).collect();
        assert_eq!(seqs, expected, "{channel}: distinct contiguous seqs from 1");

        let entries = s.read(channel, &DEFAULT, 0, ALL, T0).await;
        let read: Vec<(Seq, MessageId)> = entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Message { id, .. } => (e.seq, id.clone()),
                EntryKind::Receipt => panic!("{channel}: unexpected receipt at {}", e.seq),
            })
            .collect();
        assert_eq!(
            read, given,
            "{channel}: each message is read at the seq enqueue returned"
        );
        assert_eq!(s.pending(channel, T0).await, n as u64);
    }
    assert!(
        by_channel.is_empty(),
        "no other destination: {by_channel:?}"
    );
}

/// Devices acking the same messages concurrently: every ack gets the seq,
/// exactly one ack per message gets a receipt, and the sender's receipts
/// have distinct contiguous seqs.
pub async fn concurrent_acks_give_one_receipt<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    const N: usize = 50;
    let devices = [dev("a"), dev("b"), dev("c")];
    for d in &devices {
        s.touch("bob", d, T0).await;
    }
    let mut seq_of = HashMap::new();
    for i in 0..N {
        let id = format!("m{i}");
        let seq = s.stored_one(msg("alice", &id, &["bob"], T0)).await;
        seq_of.insert(id, seq);
    }
    let mut tasks = Vec::new();
    for i in 0..N {
        for d in &devices {
            let store = s.handle();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("m{i}");
                let acked = Probe(store).ack("bob", &d, &id, T0 + SEC).await;
                (id, acked)
            }));
        }
    }
    let mut receipts = Vec::new();
    let mut acks_of: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (id, acked) = task.await.expect("ack task panicked");
        assert_eq!(
            acked.seq,
            seq_of.get(&id).copied(),
            "every device's ack of {id} finds it"
        );
        *acks_of.entry(id.clone()).or_default() += 1;
        if let Some((channel, seq)) = acked.receipt {
            assert_eq!(channel, ch("alice"));
            receipts.push((id, seq));
        }
    }
    assert!(acks_of.values().all(|n| *n == devices.len()));
    let mut ids: Vec<&String> = receipts.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "one receipt per message");
    assert_eq!(receipts.len(), N, "exactly one receipt per message");
    let mut rseqs: Vec<Seq> = receipts.iter().map(|(_, seq)| *seq).collect();
    rseqs.sort_unstable();
    assert_eq!(
        rseqs,
        (1..=N as Seq).collect::<Vec<_>>(),
        "receipts get contiguous seqs"
    );
    assert_eq!(s.seqs("alice", &DEFAULT, T0 + SEC).await, rseqs);
    assert!(
        s.seqs("bob", &dev("new"), T0 + SEC).await.is_empty(),
        "all acked by every device"
    );
    assert_eq!(s.pending("bob", T0 + SEC).await, 0);
}

/// After a crash and reopen, everything enqueued, acked and touched before
/// is there: logs, per-device acks, first-ack state, known devices, dedupe
/// records (and the ones `expire` dropped stay dropped); seqs continue.
pub async fn reopen_keeps_state<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, b, x) = (dev("phone"), dev("laptop"), dev("x"));
    s.touch("bob", &a, T0).await;
    s.touch("bob", &b, T0).await;
    s.touch("alice", &x, T0).await;
    for id in ["m1", "m2", "m3"] {
        s.stored_one(msg("alice", id, &["bob"], T0)).await;
    }
    assert_eq!(s.stored_one(system_msg("s1", &["bob"], T0)).await, 4);
    let short = NewMessage {
        dedupe_until: T0 + SEC,
        ..msg("alice", "short", &["carol"], T0)
    };
    assert_eq!(s.stored_one(short.clone()).await, 1);

    let t1 = T0 + SEC;
    assert_eq!(
        s.ack("bob", &a, "m1", t1).await.receipt,
        Some(at("alice", 1))
    );
    assert_eq!(
        s.ack("bob", &a, "m2", t1).await.receipt,
        Some(at("alice", 2))
    );
    assert_eq!(s.ack("bob", &b, "m2", t1).await.seq, Some(2));
    assert_eq!(
        s.expire(T0 + 2 * SEC).await,
        0,
        "drops the dedupe record of `short` only"
    );

    let t3 = T0 + 3 * SEC;
    let views = [
        ("bob", a.clone()),
        ("bob", b.clone()),
        ("bob", DEFAULT),
        ("bob", dev("unknown")),
        ("alice", x.clone()),
        ("alice", DEFAULT),
        ("carol", DEFAULT),
    ];
    let mut before = Vec::new();
    for (channel, device) in &views {
        before.push(s.read(channel, device, 0, ALL, t3).await);
    }
    assert_eq!(seqs_of(&before[0]), [3, 4]);
    assert_eq!(seqs_of(&before[1]), [1, 3, 4]);
    let pending_before = (s.pending("bob", t3).await, s.pending("carol", t3).await);
    assert_eq!(pending_before, (2, 1));

    let Some(s) = reopen(&mut backend, s, "reopen_keeps_state").await else {
        return;
    };

    for ((channel, device), before) in views.iter().zip(&before) {
        assert_eq!(
            &s.read(channel, device, 0, ALL, t3).await,
            before,
            "{channel}/{device:?} reads the same after reopen"
        );
    }
    assert_eq!(
        (s.pending("bob", t3).await, s.pending("carol", t3).await),
        pending_before
    );

    let t4 = T0 + 4 * SEC;
    assert_eq!(
        s.enqueue(msg("alice", "m3", &["bob"], t4)).await,
        Enqueued::Duplicate,
        "dedupe records survive a reopen"
    );
    assert_eq!(
        s.stored_one(NewMessage { now: t4, ..short }).await,
        2,
        "a dedupe record dropped by expire stays dropped; carol's seqs continue"
    );
    assert_eq!(
        s.stored_one(msg("alice", "m5", &["bob"], t4)).await,
        5,
        "bob's seqs continue"
    );

    assert_eq!(
        s.ack("bob", &b, "m1", t4).await,
        Acked {
            seq: Some(1),
            receipt: None
        },
        "the first ack before the crash is remembered: no second receipt"
    );
    assert_eq!(
        s.seqs("bob", &dev("new"), t4).await,
        [3, 4, 5],
        "A's ack and B's known-ness survived: m1 is gone once B acks it"
    );
    assert_eq!(
        s.ack("bob", &a, "m3", t4).await,
        Acked {
            seq: Some(3),
            receipt: Some(at("alice", 3))
        },
        "alice's seqs continue"
    );
    s.ack_seqs("alice", &x, &[1]).await;
    assert_eq!(
        s.seqs("alice", &dev("new"), t4).await,
        [2, 3],
        "X is still alice's only known device: its ack removes receipt 1"
    );
}

/// After a crash and reopen, seqs continue after the last one handed out,
/// even when every entry of the channel had been removed before the crash.
pub async fn reopen_never_reuses_seqs<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (a, x) = (dev("phone"), dev("x"));
    s.touch("bob", &a, T0).await;
    s.touch("alice", &x, T0).await;
    for id in ["b1", "b2"] {
        s.stored_one(msg("alice", id, &["bob"], T0)).await;
        let acked = s.ack("bob", &a, id, T0).await;
        let Some((_, r)) = acked.receipt else {
            panic!("first ack of {id} must return a receipt");
        };
        s.ack_seqs("alice", &x, &[r]).await;
    }
    let c1 = NewMessage {
        expires_at: T0 + 10 * SEC,
        ..msg("alice", "c1", &["carol"], T0)
    };
    s.stored_one(c1).await;
    assert_eq!(s.expire(T0 + 11 * SEC).await, 1);
    let t = T0 + 12 * SEC;
    for channel in ["alice", "bob", "carol"] {
        assert!(
            s.seqs(channel, &dev("new"), t).await.is_empty(),
            "{channel} is empty"
        );
    }

    let Some(s) = reopen(&mut backend, s, "reopen_never_reuses_seqs").await else {
        return;
    };

    assert_eq!(
        s.stored_one(msg("alice", "b3", &["bob"], t)).await,
        3,
        "bob continues at 3"
    );
    assert_eq!(
        s.ack("bob", &a, "b3", t).await.receipt,
        Some(at("alice", 3)),
        "alice continues at 3"
    );
    assert_eq!(
        s.stored_one(msg("alice", "c2", &["carol"], t)).await,
        2,
        "carol continues at 2"
    );
}

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

fn group(name: &str) -> GroupId {
    GroupId::new(name).expect("valid group")
}

async fn members(s: &Probe, name: &str) -> Vec<Channel> {
    s.0.members(&group(name))
        .await
        .unwrap_or_else(|e| panic!("members of {name} failed: {e}"))
}

/// Membership: add and remove are idempotent and say whether they changed
/// anything; members come back sorted; groups are independent.
pub async fn group_membership<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    assert!(
        members(&s, "team").await.is_empty(),
        "unknown group is empty"
    );
    for (name, added) in [
        ("carol", true),
        ("alice", true),
        ("bob", true),
        ("alice", false),
    ] {
        assert_eq!(
            s.0.add_member(&group("team"), &ch(name))
                .await
                .expect("add"),
            added,
            "add {name}"
        );
    }
    assert_eq!(
        members(&s, "team").await,
        [ch("alice"), ch("bob"), ch("carol")]
    );
    assert!(
        s.0.add_member(&group("other"), &ch("dave"))
            .await
            .expect("add")
    );
    assert!(
        s.0.remove_member(&group("team"), &ch("bob"))
            .await
            .expect("remove")
    );
    assert!(
        !s.0.remove_member(&group("team"), &ch("bob"))
            .await
            .expect("remove")
    );
    assert!(
        !s.0.remove_member(&group("nope"), &ch("bob"))
            .await
            .expect("remove")
    );
    assert_eq!(members(&s, "team").await, [ch("alice"), ch("carol")]);
    assert_eq!(members(&s, "other").await, [ch("dave")]);
    for name in ["alice", "carol"] {
        assert!(
            s.0.remove_member(&group("team"), &ch(name))
                .await
                .expect("remove")
        );
    }
    assert!(members(&s, "team").await.is_empty());
    assert!(
        s.0.add_member(&group("team"), &ch("erin"))
            .await
            .expect("re-add")
    );
    assert_eq!(members(&s, "team").await, [ch("erin")]);
}

/// Group membership is durable.
pub async fn reopen_keeps_groups<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    for name in ["alice", "bob", "carol"] {
        s.0.add_member(&group("team"), &ch(name))
            .await
            .expect("add");
    }
    s.0.remove_member(&group("team"), &ch("bob"))
        .await
        .expect("remove");
    let Some(s) = reopen(&mut backend, s, "reopen_keeps_groups").await else {
        return;
    };
    assert_eq!(members(&s, "team").await, [ch("alice"), ch("carol")]);
}

/// `is_duplicate` says whether a sender's id has a live dedupe record: per
/// sender (the system apart), until the window's deadline, and whatever
/// became of the message (acked, even gone).
pub async fn is_duplicate_reads_the_dedupe_record<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let store = s.handle();
    let dup = |sender: Option<&str>, id: &str, now: Millis| {
        let store = store.clone();
        let (sender, id) = (sender.map(ch), mid(id));
        async move {
            store
                .is_duplicate(sender.as_ref(), &id, now)
                .await
                .expect("is_duplicate")
        }
    };
    assert!(!dup(Some("alice"), "m1", T0).await, "nothing stored yet");
    s.stored_one(msg("alice", "m1", &["bob"], T0)).await;
    s.stored_one(system_msg("s1", &["bob"], T0)).await;
    assert!(dup(Some("alice"), "m1", T0 + 1).await);
    assert!(
        !dup(Some("carol"), "m1", T0 + 1).await,
        "another sender's id"
    );
    assert!(!dup(None, "m1", T0 + 1).await, "the system's ids apart");
    assert!(dup(None, "s1", T0 + 1).await);
    s.ack("bob", &None, "m1", T0 + 2).await;
    assert!(
        dup(Some("alice"), "m1", T0 + 3).await,
        "acked, still deduped"
    );
    assert!(
        !dup(Some("alice"), "m1", T0 + 10 * MIN).await,
        "past the window's deadline"
    );
}

/// `ack_state`: pending until the first ack by any device, then acked, and
/// gone once removed (every known device acked, or expired).
pub async fn ack_state_per_entry<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (phone, laptop) = (dev("phone"), dev("laptop"));
    s.touch("bob", &phone, T0).await;
    s.touch("bob", &laptop, T0).await;
    let seq = s.stored_one(msg("alice", "m1", &["bob"], T0)).await;
    let state = |seq| {
        let store = s.handle();
        async move { store.ack_state(&ch("bob"), seq).await.expect("ack_state") }
    };
    assert_eq!(state(seq).await, AckState::Pending);
    assert_eq!(state(seq + 100).await, AckState::Gone, "unknown seq");
    s.ack("bob", &phone, "m1", T0).await;
    assert_eq!(state(seq).await, AckState::Acked);
    s.ack("bob", &laptop, "m1", T0).await;
    assert_eq!(state(seq).await, AckState::Gone, "acked by every device");
}

/// `retained_limit` bounds the payload bytes of every retained entry (each
/// destination's copy counts): an enqueue that would pass it is refused
/// whole with `StoreFull` (after the dedupe check: a resend still gets
/// `Duplicate`), receipts count too, and removing entries makes room again.
/// Backends that report `retained_bytes` report exactly that sum.
pub async fn retained_bytes_limit<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let size = payload(Some("alice"), "m1").len() as u64;
    let limited = |m: NewMessage| NewMessage {
        retained_limit: 3 * size,
        ..m
    };
    async fn counted(s: &Probe, expected: u64, what: &str) {
        // A sweep that drops nothing: stores that read their count back
        // (Redis) do so in every sweep.
        s.expire(T0).await;
        if let Some(bytes) = s.0.retained_bytes() {
            assert_eq!(bytes, expected, "retained bytes: {what}");
        }
    }
    counted(&s, 0, "an empty store").await;
    s.touch("bob", &DEFAULT, T0).await;
    s.touch("alice", &DEFAULT, T0).await;
    s.stored(limited(msg("alice", "m1", &["bob", "carol"], T0)))
        .await;
    counted(&s, 2 * size, "one message to two channels").await;
    assert_eq!(
        s.enqueue(limited(msg("alice", "m2", &["bob", "carol"], T0)))
            .await,
        Enqueued::StoreFull,
        "two more copies would pass the limit"
    );
    assert!(
        s.seqs("bob", &DEFAULT, T0).await == [1] && s.seqs("carol", &DEFAULT, T0).await == [1],
        "a refused message is stored nowhere"
    );
    assert_eq!(
        s.enqueue(limited(msg("alice", "m1", &["bob", "carol"], T0)))
            .await,
        Enqueued::Duplicate,
        "a resend is a duplicate, full or not"
    );
    s.stored_one(limited(msg("alice", "m3", &["bob"], T0)))
        .await;
    counted(&s, 3 * size, "at the limit").await;
    let now = T0 + SEC;
    let req = ack_req("bob", &DEFAULT, "m1", now);
    let receipt = req.receipt.len() as u64;
    s.ack_with(req).await;
    counted(
        &s,
        2 * size + receipt,
        "bob's copy acked, alice's receipt kept",
    )
    .await;
    s.ack_seqs("alice", &DEFAULT, &[1]).await;
    counted(&s, 2 * size, "the receipt written").await;
    s.stored_one(limited(msg("alice", "m4", &["dave"], now)))
        .await;
    counted(&s, 3 * size, "room made by the acks was used").await;
    assert_eq!(s.expire(now + 2 * HOUR).await, 3, "every entry expired");
    counted(&s, 0, "expiry frees the bytes").await;
}

/// The retained bytes count survives a restart exactly (durable backends).
pub async fn reopen_keeps_retained_bytes<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    s.touch("bob", &DEFAULT, T0).await;
    s.stored(msg("alice", "m1", &["bob", "carol"], T0)).await;
    s.stored(msg("alice", "m2", &["bob"], T0)).await;
    s.ack("bob", &DEFAULT, "m1", T0 + SEC).await;
    s.expire(T0).await;
    let Some(before) = s.0.retained_bytes() else {
        return;
    };
    let Some(s) = reopen(&mut backend, s, "reopen_keeps_retained_bytes").await else {
        return;
    };
    let limited = NewMessage {
        retained_limit: before,
        ..msg("alice", "m3", &["bob"], T0 + 2 * SEC)
    };
    s.expire(T0).await;
    assert_eq!(s.0.retained_bytes(), Some(before), "the count after reopen");
    assert_eq!(
        s.enqueue(limited).await,
        Enqueued::StoreFull,
        "the limit holds after reopen"
    );
}

/// A device not seen for `forget_after` is forgotten: after `forget` (or
/// the next touch of its channel, for backends that forget lazily), entries
/// no longer wait for its ack. The other devices keep what they have not
/// acked.
pub async fn stale_devices_are_forgotten<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let (old, live) = (dev("old-phone"), dev("laptop"));
    s.touch("bob", &old, T0).await;
    let later = T0 + 2 * HOUR;
    // Seen again by a live connection's refresh: only `old` is stale.
    s.0.touch_device(&ch("bob"), &live, later, HOUR)
        .await
        .expect("touch");
    s.forget(later, HOUR).await;
    s.stored_one(msg("alice", "m1", &["bob"], later)).await;
    s.stored_one(msg("alice", "m2", &["bob"], later)).await;
    s.ack("bob", &live, "m1", later).await;
    assert_eq!(
        s.seqs("bob", &dev("tablet"), later).await,
        [2],
        "m1, acked by the only known device, is gone"
    );
    assert_eq!(s.seqs("bob", &live, later).await, [2]);
}

/// The undelivered webhook's due index (`NewMessage::notify_at`): a copy
/// that no device acked is claimed once its time has come, by one caller
/// until the claim's lease ends and again after it, never once finished;
/// copies acked, expired or not asked for never come; what was not
/// finished survives a crash (a claim may or may not: both are at least
/// once).
pub async fn undelivered_copies_are_claimed_until_finished<B: Backend>(mut backend: B) {
    let s = fresh(&mut backend).await;
    let notify = |m: NewMessage| NewMessage {
        notify_at: Some(m.now + MIN),
        ..m
    };
    let take = |s: &Probe, now: Millis, lease_until: Millis, limit: usize| {
        let store = s.handle();
        async move {
            let mut got = store
                .take_undelivered(now, lease_until, limit)
                .await
                .unwrap_or_else(|e| panic!("take_undelivered at {now} failed: {e}"));
            got.sort_by(|a, b| (&a.channel, a.seq).cmp(&(&b.channel, b.seq)));
            got
        }
    };
    let finish = |s: &Probe, done: Vec<(Channel, Seq)>| {
        let store = s.handle();
        async move {
            store
                .finish_undelivered(&done)
                .await
                .unwrap_or_else(|e| panic!("finish_undelivered failed: {e}"));
        }
    };
    let places = |got: &[Undelivered]| -> Vec<(Channel, Seq)> {
        got.iter().map(|u| (u.channel.clone(), u.seq)).collect()
    };
    let m1 = sorted(
        s.stored(notify(msg("alice", "m1", &["bob", "carol"], T0)))
            .await,
    );
    s.stored_one(notify(msg("alice", "m2", &["bob"], T0))).await;
    s.stored_one(msg("alice", "m3", &["bob"], T0)).await;
    s.stored_one(NewMessage {
        expires_at: T0 + 30 * SEC,
        ..notify(msg("alice", "short", &["erin"], T0))
    })
    .await;
    let s1 = s
        .stored_one(notify(system_msg("s1", &["dave"], T0 + SEC)))
        .await;
    s.ack("bob", &DEFAULT, "m2", T0 + SEC).await;

    assert!(
        take(&s, T0 + MIN - 1, T0 + 5 * MIN, ALL).await.is_empty(),
        "nothing is due before its time"
    );
    let got = take(&s, T0 + MIN, T0 + 5 * MIN, ALL).await;
    assert_eq!(
        places(&got),
        m1,
        "m1's two copies; not m2 (acked), m3 (not asked for), `short` (expired), s1 (later)"
    );
    for copy in &got {
        assert_eq!(copy.sender, Some(ch("alice")));
        assert_eq!(copy.id, mid("m1"));
        assert_eq!(copy.payload, payload(Some("alice"), "m1"));
    }
    let got = take(&s, T0 + 2 * MIN, T0 + 5 * MIN, ALL).await;
    assert_eq!(
        places(&got),
        vec![at("dave", s1)],
        "m1 is claimed until T0 + 5 min; s1 has come"
    );
    assert_eq!(
        (got[0].sender.clone(), got[0].id.clone()),
        (None, mid("s1"))
    );
    assert_eq!(
        take(&s, T0 + 5 * MIN, T0 + 8 * MIN, 1).await.len(),
        1,
        "the limit holds once the lease ran out"
    );
    assert_eq!(
        take(&s, T0 + 5 * MIN, T0 + 8 * MIN, ALL).await.len(),
        2,
        "the rest, claimed again"
    );
    finish(&s, vec![at("bob", m1[0].1), at("dave", s1)]).await;
    finish(&s, vec![at("nobody", 1)]).await; // unknown copies are ignored

    let Some(s) = reopen(
        &mut backend,
        s,
        "undelivered_copies_are_claimed_until_finished",
    )
    .await
    else {
        return;
    };
    let got = take(&s, T0 + 8 * MIN, T0 + 11 * MIN, ALL).await;
    assert_eq!(
        places(&got),
        vec![at("carol", m1[1].1)],
        "only carol's copy is left: bob's and dave's were finished"
    );
    s.ack("carol", &DEFAULT, "m1", T0 + 9 * MIN).await;
    assert!(
        take(&s, T0 + 12 * MIN, T0 + 15 * MIN, ALL).await.is_empty(),
        "acked while claimed: never comes again"
    );
}
