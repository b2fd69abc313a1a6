//! The Bachata messages center: the route chain, the reliable delivery state
//! machine, the `Store` trait every backend implements, and hooks.
//!
//! It knows no socket and no disk: the server feeds it parsed frames and
//! sends what sessions hand back; a store backend keeps the state.
//!
//! - [`MessagesCenter`] accepts messages ([`MessagesCenter::submit`]) and
//!   acks, and opens a [`Session`] per connection.
//! - [`Route`] is a link of the chain; [`GroupRoute`] and [`DirectRoute`]
//!   are built in.
//! - [`Store`] is where the state lives; [`MemoryStore`] keeps it in memory,
//!   and [`memstate`] is the state machine that the embedded store persists.
//! - [`PostProcess`] hooks run after a message is queued or first acked;
//!   a [`RouteHook`] (the server's HTTP route hook) is asked before the
//!   route chain.

pub mod bus;
mod center;
mod hook;
mod hub;
mod memory;
pub mod memstate;
mod presence;
mod route;
mod session;
mod stats;
mod store;

pub use bus::{Bus, BusEvent};
pub use center::{
    Accepted, CenterBuilder, DeliveryConfig, MessagesCenter, PendingSubmit, Rejection, SubmitOrder,
};
pub use hook::{
    FirstAck, HOOK_CALLS_PER_CONNECTION, HookRoute, HookVerdict, PostProcess, Queued, RouteHook,
};
pub use hub::{Event, Hub};
pub use memory::MemoryStore;
pub use presence::{DeviceCounts, Presence, merge_counts};
pub use route::{Decision, DirectRoute, GroupRoute, Route, RouteContext, Routed, run_chain};
pub use session::Session;
pub use stats::Stats;
pub use store::{
    AckRequest, AckState, Acked, BoxError, Device, Enqueued, Entry, EntryKind, Epoch, Forgotten,
    Millis, NewMessage, PendingAck, PendingEnqueue, Seq, Store, StoreError, Undelivered,
    now_millis,
};
