//! An example of extending bachata in Rust: a route and a hook of our own.
//!
//! - [`SupportRoute`]: messages of type `"support"` go to every channel on
//!   the support rota (agents), whoever sends them; no `dest` needed. A user
//!   who is an agent cannot write to the rota (to keep the example's rule
//!   visible: a route may refuse a message with a 400 code).
//! - [`CountingHook`]: a post-process hook that counts queued messages and
//!   first acks, the way a real hook would feed an analytics pipeline or a
//!   push-notification service.
//!
//! `main.rs` starts a full bachata server with both, through
//! [`bachata_server::start_with`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bachata_core::{Decision, FirstAck, PostProcess, Queued, Route, RouteContext};
use bachata_proto::{Channel, DataMessage, ErrorCode};

/// Routes `"support"` messages to the agents on the rota.
#[derive(Debug, Clone)]
pub struct SupportRoute {
    agents: Vec<Channel>,
}

impl SupportRoute {
    pub fn new(agents: Vec<Channel>) -> Self {
        SupportRoute { agents }
    }
}

#[async_trait]
impl Route for SupportRoute {
    fn name(&self) -> &str {
        "support"
    }

    async fn route(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision {
        self.decide(ctx, msg)
    }

    /// This route never waits (no store, no network), so it answers here:
    /// the chain then skips `route`'s boxed future, an allocation per
    /// message (docs/performance.md, "Efficiency").
    fn route_now(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Option<Decision> {
        Some(self.decide(ctx, msg))
    }
}

impl SupportRoute {
    fn decide(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision {
        if msg.kind != "support" {
            // Not ours: the built-in group and direct routes come next.
            return Decision::Pass;
        }
        if ctx.sender.is_some_and(|s| self.agents.contains(s)) {
            return Decision::Reject {
                code: ErrorCode::Forbidden,
                reason: "agents answer with direct messages".into(),
            };
        }
        // Stop: the message is fully routed; no later route sees it.
        Decision::Stop(self.agents.clone())
    }
}

/// Counts what happens; shared with whoever wants to read the numbers.
#[derive(Debug, Default, Clone)]
pub struct CountingHook {
    pub queued: Arc<AtomicU64>,
    pub first_acks: Arc<AtomicU64>,
}

impl PostProcess for CountingHook {
    fn queued(&self, msg: &Queued) {
        // Hooks run on the sender's connection task: only quick work here.
        self.queued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %msg.id, destinations = msg.destinations.len(), "queued");
    }

    fn first_ack(&self, ack: &FirstAck) {
        self.first_acks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %ack.id, channel = %ack.channel, "delivered");
    }
}
