//! The `Store` trait: where the delivery state lives and becomes durable.
//!
//! A store keeps, per channel, one ordered log of entries (data messages and
//! delivery receipts), the acks of each device, the channel's known devices,
//! and the senders' dedupe records. Every mutating call returns only once its
//! effect is durable in the backend's own sense (synced to disk for the
//! embedded store, written for Redis), which is what lets the center send a
//! 100 or a 300 with a clear conscience.
//!
//! Policy (TTL, dedupe window, queue limit, receipt text) comes in with each
//! request, so a backend holds no configuration of its own and every backend
//! applies the same rules.
//!
//! # Invariants every backend keeps
//! - Sequence numbers of one channel grow by exactly one per appended entry,
//!   so a reader that saw `n` and is then told of `n + 1` knows it missed
//!   nothing.
//! - An enqueue is atomic over all its destinations: either every destination
//!   log has the message, or none has (a full queue or a duplicate refuses the
//!   whole message).
//! - An entry stays readable for a device until that device acks it or it
//!   expires. It is removed once every known device of the channel acked it,
//!   or once it expires.
//! - State follows pending work (protocol.md section 9): a device not seen for
//!   `forget_after` is forgotten (entries only it still needed go), and a
//!   channel with no device left and an empty log is forgotten whole; its
//!   seqs start again at 1, which is safe because no connection of it
//!   exists (a live connection keeps its device seen, see
//!   [`Store::touch_devices`]).
//! - The payload bytes of all retained entries (messages and receipts) are
//!   counted; an enqueue that would take them past its `retained_limit` is
//!   refused whole.

use async_trait::async_trait;
use bachata_proto::{Channel, DeviceId, GroupId, MessageId};
use bytes::Bytes;

/// Position of an entry in its channel's log. Starts at 1.
pub type Seq = u64;

/// The device key of a connection: `None` is the channel's default device.
pub type Device = Option<DeviceId>;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// A name for one life of a channel's seq counter (protocol.md section 8):
/// a store whose seqs can go back (Redis losing writes) gives the counter a
/// new epoch whenever it creates it, so a connection that read an earlier
/// life knows to start over from the log's head.
pub type Epoch = u64;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// What an entry of a channel log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A data message, delivered until each device acks it with a 200.
    Message {
        /// The sender's channel, `None` for messages by system.
        sender: Option<Channel>,
        /// The sender's id, the key of 200s and 300s.
        id: MessageId,
    },
    /// A 300 owed to this channel. It needs no 200: it counts as acked by a
    /// device once written to one of its connections.
    Receipt,
}

/// One entry of a channel's log as read back for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: Seq,
    pub kind: EntryKind,
    /// The exact frame to send (a serialized data message or 300).
    pub payload: Bytes,
}

impl Entry {
    /// True when the receiving device must answer with a 200.
    pub fn needs_ack(&self) -> bool {
        matches!(self.kind, EntryKind::Message { .. })
    }
}

/// A data message to append to the logs of its destinations.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: Option<Channel>,
    pub id: MessageId,
    /// Distinct destination channels (the route chain removes duplicates).
    pub destinations: Vec<Channel>,
    pub payload: Bytes,
    pub now: Millis,
    /// The message is dropped from every log after this time.
    pub expires_at: Millis,
    /// A resend of `(sender, id)` before this time is a duplicate.
    pub dedupe_until: Millis,
    /// A destination already holding this many pending messages refuses it.
    pub queue_limit: u64,
    /// Payload bytes all retained entries may take (`--max-retained-bytes`):
    /// a message whose copies would pass it is refused.
    pub retained_limit: u64,
    /// How long a channel's state outlives its last use
    /// (`--forget-after`; the Redis store sets key lifetimes with it).
    pub forget_after: Millis,
    /// When the undelivered webhook should hear of each copy that no device
    /// acked by then (`--undelivered-after`); `None` without the webhook.
    /// The store keeps the copies in a due index until then (see
    /// [`Store::take_undelivered`]), so the call survives a restart and is
    /// made by one node.
    pub notify_at: Option<Millis>,
}

/// The result of [`Store::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended and durable: the position in each destination's log.
    Stored(Vec<(Channel, Seq)>),
    /// `(sender, id)` was stored before, within the dedupe window. Nothing
    /// was appended; the sender gets its 100 again.
    Duplicate,
    /// This destination holds `queue_limit` pending messages. Nothing was
    /// appended anywhere.
    QueueFull(Channel),
    /// The store retains `retained_limit` payload bytes already. Nothing was
    /// appended anywhere.
    StoreFull,
}

/// A device's 200 for a message of its channel.
#[derive(Debug, Clone)]
pub struct AckRequest {
    pub channel: Channel,
    pub device: Device,
    pub id: MessageId,
    pub now: Millis,
    /// The 300 to append to the sender's log if this is the first ack of the
    /// message by any device of the channel.
    pub receipt: Bytes,
    pub receipt_expires_at: Millis,
    /// As [`NewMessage::forget_after`], for the receipt's log.
    pub forget_after: Millis,
}

/// What [`Store::forget`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub channels: u64,
    pub devices: u64,
}

/// The result of [`Store::ack`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    /// The acked entry, `None` when the id matched nothing the device still
    /// had pending (unknown ids are ignored).
    pub seq: Option<Seq>,
    /// The receipt appended for the sender: its channel and the receipt's
    /// position there. Only on the first ack by any device.
    pub receipt: Option<(Channel, Seq)>,
}

/// Where a message entry stands, for hooks that act on undelivered
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// No device of the channel acked it yet.
    Pending,
    /// At least one device acked it.
    Acked,
    /// Not in the log: acked by every known device, or expired.
    Gone,
}

/// A message copy that no device acked by its `notify_at`
/// ([`NewMessage::notify_at`]), claimed by [`Store::take_undelivered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    /// The destination whose devices did not ack it.
    pub channel: Channel,
    pub seq: Seq,
    /// The sender's channel, `None` for messages by system.
    pub sender: Option<Channel>,
    pub id: MessageId,
    /// The stored frame (its `type` and `time` go into the webhook's call).
    pub payload: Bytes,
}

/// The cause of a [`StoreError`]: the backend's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store could not do what was asked. Every variant means "nothing was
/// promised": the caller reports `unavailable` and the client retries.
/// The message says what the store was doing; the source, when there is
/// one, is the backend's error (printed after it, for logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O, a lost connection, a timeout: may work when tried again.
    #[error("store backend failed: {what}{}", cause(.source))]
    Backend {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// What the backend holds cannot be read: it will not heal by itself.
    #[error("stored data is corrupt: {what}{}", cause(.source))]
    Corrupt {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("store is shut down")]
    Closed,
}

fn cause(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

impl StoreError {
    /// A backend failure described by `what`.
    pub fn backend(what: impl Into<String>) -> Self {
        StoreError::Backend {
            what: what.into(),
            source: None,
        }
    }

    /// A backend failure while doing `what`, caused by `source`.
    pub fn backend_because(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// Corrupt data described by `what`.
    pub fn corrupt(what: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: None,
        }
    }

    /// Corrupt data found while doing `what`, as `source` says.
    pub fn corrupt_because(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

/// An enqueue that has taken its place in the store's order and is now
/// becoming durable.
pub type PendingEnqueue =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Enqueued, StoreError>> + Send>>;

/// An ack that has taken its place in the store's order.
pub type PendingAck =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Acked, StoreError>> + Send>>;

/// Where the delivery state lives. See the module docs for the invariants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends `msg` to the log of every destination, atomically with the
    /// dedupe check and the queue limit. Durable when it returns `Stored`.
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError>;

    /// Starts an enqueue whose place in the store's order is taken before
    /// this returns, so a connection can start its messages one after the
    /// other and await them together: group commit then carries many
    /// messages of one connection, and their order is kept. Backends that
    /// cannot promise the order give the message back (`Err`), and the
    /// caller awaits [`Store::enqueue`] instead, one at a time.
    #[allow(
        clippy::result_large_err,
        reason = "the message goes back to the caller, who sends it on: boxing it would cost an allocation per message"
    )]
    fn start_enqueue(&self, msg: NewMessage) -> Result<PendingEnqueue, NewMessage> {
        Err(msg)
    }

    /// Starts an ack in the store's order, like [`Store::start_enqueue`], so
    /// a connection's 200s keep their order (and so do the 300s they cause)
    /// without waiting for each other's commits.
    fn start_ack(&self, ack: AckRequest) -> Result<PendingAck, AckRequest> {
        Err(ack)
    }

    /// Up to `limit` entries of `channel` with `seq > after` that `device` has
    /// not acked and that have not expired at `now`, in log order.
    async fn read(
        &self,
        channel: &Channel,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Records a 200. The oldest entry with this id that the device has not
    /// acked is the one acked. On the first ack of a message by any device of
    /// the channel, appends `receipt` to the sender's log (durably) unless the
    /// message came from the system.
    async fn ack(&self, ack: AckRequest) -> Result<Acked, StoreError>;

    /// Marks entries (receipts, once written to a connection) as acked by
    /// `device`. Seqs that are gone are ignored. Need not be durable when it
    /// returns: losing it in a crash only sends those receipts again.
    async fn ack_seqs(
        &self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
    ) -> Result<(), StoreError>;

    /// Registers `device` as a known device of `channel`, seen at `now`:
    /// from now on entries are kept until it acks them too, and it is not
    /// forgotten before `now + forget_after`.
    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        forget_after: Millis,
    ) -> Result<(), StoreError>;

    /// [`Store::touch_device`] for many devices: what a node does for its
    /// live connections now and then, so that a device connected for longer
    /// than `forget_after` is never forgotten.
    async fn touch_devices(
        &self,
        devices: &[(Channel, Device)],
        now: Millis,
        forget_after: Millis,
    ) -> Result<(), StoreError> {
        for (channel, device) in devices {
            self.touch_device(channel, device, now, forget_after)
                .await?;
        }
        Ok(())
    }

    /// Forgets the devices last seen at or before `now - forget_after`
    /// (dropping the entries that only they still needed), then the
    /// channels left with no device and no entry. Backends whose state
    /// expires by itself (Redis key lifetimes) may do nothing here.
    async fn forget(&self, now: Millis, forget_after: Millis) -> Result<Forgotten, StoreError>;

    /// Payload bytes of every retained entry, for metrics; `None` where the
    /// backend does not know.
    fn retained_bytes(&self) -> Option<u64> {
        None
    }

    /// Channels the store keeps any state for, for metrics (forgetting at
    /// work shows here); `None` where that would be expensive to count.
    fn channel_count(&self) -> Option<u64> {
        None
    }

    /// Messages of `channel` not yet acked by any device and not expired.
    async fn pending_count(&self, channel: &Channel, now: Millis) -> Result<u64, StoreError>;

    /// Whether any device of `channel` acked the entry at `seq`.
    async fn ack_state(&self, channel: &Channel, seq: Seq) -> Result<AckState, StoreError>;

    /// Whether `sender` (`None`: the system) has a live dedupe record for
    /// `id` at `now`: a resend of a message stored within the dedupe window.
    /// A route hook is not asked again about such a resend (protocol.md
    /// section 10).
    async fn is_duplicate(
        &self,
        sender: Option<&Channel>,
        id: &MessageId,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Claims up to `limit` message copies whose `notify_at` is at or
    /// before `now`, that no device acked and that have not expired: each is
    /// handed to this caller and to no other until `lease_until`, and comes
    /// due again then unless [`Store::finish_undelivered`] marked it done
    /// (so a node that dies mid-call leaves it to another, or to itself
    /// after a restart: at least once). Copies found acked, gone or expired
    /// leave the due index here. Oldest due first.
    async fn take_undelivered(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Result<Vec<Undelivered>, StoreError>;

    /// Marks claimed copies as done: they are never due again. Durable when
    /// it returns (a crash before that only makes the call again).
    async fn finish_undelivered(&self, done: &[(Channel, Seq)]) -> Result<(), StoreError>;

    /// Adds `member` to `group` (durably). Returns false if it was a member
    /// already.
    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError>;

    /// Removes `member` from `group` (durably). Returns false if it was not
    /// a member.
    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError>;

    /// The members of `group`, sorted; empty for an unknown group.
    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError>;

    /// The current epoch of `channel`'s log; `None` where seqs never go
    /// back (the memory and embedded stores: their counters are never lost
    /// while a connection can hold a cursor) or the channel has no counter
    /// yet.
    async fn epoch(&self, _channel: &Channel) -> Result<Option<Epoch>, StoreError> {
        Ok(None)
    }

    /// Whether the backend answers now, for `/healthz`. Stores inside the
    /// process are always healthy; a networked store pings its server.
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Pending messages over all channels, for metrics; `None` where that
    /// would be expensive to compute.
    fn pending_total(&self) -> Option<u64> {
        None
    }

    /// Drops expired entries and dedupe records. Returns how many entries
    /// were dropped.
    async fn expire(&self, now: Millis) -> Result<u64, StoreError>;
}
