//! Post-process hooks: code that runs after a message is queued or acked,
//! such as "notify by another means if not delivered within N seconds".

use bachata_proto::{Channel, MessageId};

use crate::store::{Millis, Seq};

/// A message that was durably queued.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: MessageId,
    pub from: Option<Channel>,
    pub kind: String,
    pub time: i64,
    /// Each destination channel and the message's position in its log.
    pub destinations: Vec<(Channel, Seq)>,
    pub now: Millis,
}

/// A message that a device of `channel` acked for the first time.
#[derive(Debug, Clone)]
pub struct FirstAck {
    pub channel: Channel,
    pub seq: Seq,
    pub id: MessageId,
}

/// Runs after the store made a message durable. Hooks are called inline on
/// the sender's connection task: they must return quickly and do slow work
/// (HTTP calls) on tasks of their own, so they never delay delivery.
pub trait PostProcess: Send + Sync + 'static {
    /// After a data message with an id was queued for its destinations.
    fn queued(&self, _msg: &Queued) {}

    /// After the first ack of a message by any device of a destination,
    /// when that ack queued a 300 (so not for messages by system, which get
    /// no 300). Runs before the 300 is handed to the sender's connections.
    fn first_ack(&self, _ack: &FirstAck) {}
}
