//! The bus between server nodes that share one store (Redis): how a node
//! learns that a channel it has connections for got a new entry on another
//! node.
//!
//! The store stays the truth. A bus event is a hint: an `Entry` goes to the
//! local sessions of that channel as the local hub's entries do (sent when
//! it is the next in sequence, else the session reads the store from its
//! cursor); `Live` messages are never stored. A bus
//! may lose events (a pub/sub reconnect); it then sends [`BusEvent::Resync`],
//! and every local session re-reads the store. The center also resyncs every
//! [`RESYNC_EVERY`], which bounds how long a lost hint can delay a message.

use std::time::Duration;

use bachata_proto::Channel;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::store::{Device, Entry, Seq};

/// Period of the safety resync of every local session.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// `channel` got `entry` (a message or a 300). It carries the entry, so
    /// that a session that is caught up sends it without reading the store;
    /// one that is not reads the store from its cursor, as for any gap.
    Entry { channel: Channel, entry: Entry },
    /// `device` of `channel` acked `seq` (frees in-flight windows).
    Acked {
        channel: Channel,
        device: Device,
        seq: Seq,
    },
    /// A message without id for the live connections of `channel`.
    Live { channel: Channel, payload: Bytes },
    /// Events may have been lost: re-read everything from the store.
    Resync,
    /// The bus lost its connection to the store's server: what happens
    /// until it is back may include a restart (see [`BusEvent::Reset`]).
    Lost,
    /// The store's server restarted and may have lost writes: every session
    /// that existed when the bus lost its connection starts over from the
    /// head of its log (protocol.md section 8). Sessions opened since read
    /// the store as it is now.
    Reset,
}

/// A broadcast to the other nodes. Implementations: `RedisBus` (pub/sub).
pub trait Bus: Send + Sync + 'static {
    /// Sends `event` to every other node. Must not block: implementations
    /// queue it (and may drop it under overload; the periodic resync covers
    /// that).
    fn publish(&self, event: BusEvent);

    /// The events from other nodes (never this node's own). Called once, by
    /// the center.
    fn subscribe(&self) -> mpsc::Receiver<BusEvent>;
}
