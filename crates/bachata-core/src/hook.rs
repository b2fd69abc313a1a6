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

/// What an application's route hook decided about a message (protocol.md
/// section 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookRoute {
    /// Deliver to exactly these channels (none: `no_route`).
    Channels(Vec<Channel>),
    /// Go on with the route chain.
    Pass,
    /// Refuse: the sender gets a 400 with this code (`forbidden` or an
    /// application's own `app_*`) and reason.
    Reject { code: String, reason: String },
    /// No usable answer (a timeout, a 5xx, a malformed answer, too many
    /// calls in flight): the sender gets 400 `unavailable`, nothing is
    /// stored, and a resend asks again.
    Unavailable(String),
}

/// A route hook's answer: where the message goes, and the `data` that
/// replaces the message's own, if any.
#[derive(Debug, Clone)]
pub struct HookVerdict {
    pub route: HookRoute,
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// Hook calls one connection has in flight at most (the center's
/// `submit_in_order`) unless the hook says otherwise
/// ([`RouteHook::in_flight_per_connection`]); its next messages wait their
/// turn. A connection's pipeline of submits is bounded besides (the
/// server's `MAX_PIPELINE`), so nothing waits without bound.
pub const HOOK_CALLS_PER_CONNECTION: usize = 4;

/// Asks an application where a client's message goes, before the route
/// chain (the server's `--route-hook`). Only messages from clients go to it
/// (not the HTTP API's, which the application sends itself), signature
/// checked first, and a resend of an id stored within the dedupe window is
/// answered from the dedupe record without asking again.
#[async_trait::async_trait]
pub trait RouteHook: Send + Sync + 'static {
    /// Whether messages of this `type` go to the hook.
    fn wants(&self, kind: &str) -> bool;

    /// How many of one connection's messages may be out with the hook at
    /// once (see `MessagesCenter::submit_in_order`). A hook that carries
    /// many messages per call is worth more.
    fn in_flight_per_connection(&self) -> usize {
        HOOK_CALLS_PER_CONNECTION
    }

    /// The decision about `msg` (as received: before `from` and `time`
    /// are stamped) from `device` of `sender`.
    async fn route(
        &self,
        sender: &Channel,
        device: &crate::store::Device,
        msg: &bachata_proto::DataMessage,
    ) -> HookVerdict;
}
