//! The route chain (protocol.md section 4), after the seed's `BaseRoute`.

use std::sync::Arc;

use async_trait::async_trait;
use bachata_proto::{Channel, DataMessage, ErrorCode, GroupId};

use crate::store::Store;

/// What a route decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not this route's message: ask the next route.
    Pass,
    /// Deliver to these channels too, and let later routes add more.
    Add(Vec<Channel>),
    /// Deliver to these channels (and those added before) and ask no further
    /// route.
    Stop(Vec<Channel>),
    /// Refuse the message: the sender gets a 400 with this code.
    Reject { code: ErrorCode, reason: String },
}

/// Who sent the message being routed.
#[derive(Debug, Clone)]
pub struct RouteContext<'a> {
    /// The sender's channel; `None` for messages by system (HTTP API).
    pub sender: Option<&'a Channel>,
}

/// One link of the chain. Implement it to add routes of your own; see the
/// `examples/` crate.
#[async_trait]
pub trait Route: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Looks at a message (already stamped with `from` and `time`).
    async fn route(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision;

    /// The decision, when it needs no waiting (no store, no network);
    /// `None` (the default) asks [`Route::route`]. The chain asks this
    /// first: an `async` route's future is boxed, one allocation per route
    /// per message, which routes that only look at the message (or pass on
    /// most messages, like the group route on non-group types) avoid here.
    /// When it answers, it must answer what `route` would.
    fn route_now(&self, _ctx: &RouteContext<'_>, _msg: &DataMessage) -> Option<Decision> {
        None
    }
}

/// The built-in direct route: any message with a `dest` goes to channel
/// `dest`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectRoute;

#[async_trait]
impl Route for DirectRoute {
    fn name(&self) -> &str {
        "direct"
    }

    async fn route(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision {
        self.decide(ctx, msg)
    }

    fn route_now(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Option<Decision> {
        Some(self.decide(ctx, msg))
    }
}

impl DirectRoute {
    fn decide(&self, _ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision {
        let Some(dest) = &msg.dest else {
            return Decision::Pass;
        };
        match Channel::new(dest) {
            Ok(channel) => Decision::Stop(vec![channel]),
            Err(e) => Decision::Reject {
                code: ErrorCode::InvalidMessage,
                reason: format!("dest: {e}"),
            },
        }
    }
}

/// The built-in group route: a message of type `"group"` goes to every
/// member of group `dest` but the sender, who must be a member
/// (protocol.md section 4). Membership lives in the store, so every node of a
/// cluster sees the same groups. Messages by system (HTTP API) need no
/// membership.
#[derive(Clone)]
pub struct GroupRoute {
    store: Arc<dyn Store>,
}

impl GroupRoute {
    /// The `type` this route takes.
    pub const KIND: &'static str = "group";

    pub fn new(store: Arc<dyn Store>) -> Self {
        GroupRoute { store }
    }
}

impl std::fmt::Debug for GroupRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupRoute")
    }
}

#[async_trait]
impl Route for GroupRoute {
    fn name(&self) -> &str {
        "group"
    }

    /// Other types pass without a look at the store.
    fn route_now(&self, _ctx: &RouteContext<'_>, msg: &DataMessage) -> Option<Decision> {
        (msg.kind != Self::KIND).then_some(Decision::Pass)
    }

    async fn route(&self, ctx: &RouteContext<'_>, msg: &DataMessage) -> Decision {
        if msg.kind != Self::KIND {
            return Decision::Pass;
        }
        let reject = |code, reason: String| Decision::Reject { code, reason };
        let Some(dest) = &msg.dest else {
            return reject(
                ErrorCode::InvalidMessage,
                "a group message needs dest = the group id".into(),
            );
        };
        let group = match GroupId::new(dest) {
            Ok(group) => group,
            Err(e) => return reject(ErrorCode::InvalidMessage, format!("dest: {e}")),
        };
        let members = match self.store.members(&group).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(error = %e, %group, "cannot read group members");
                return reject(
                    ErrorCode::Unavailable,
                    "storage is unavailable; retry later".into(),
                );
            }
        };
        match ctx.sender {
            Some(sender) if !members.contains(sender) => reject(
                ErrorCode::Forbidden,
                format!("{sender} is not a member of group {group}"),
            ),
            sender => Decision::Stop(members.into_iter().filter(|m| Some(m) != sender).collect()),
        }
    }
}

/// The result of running the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Distinct destination channels, in the order routes named them.
    To(Vec<Channel>),
    /// No route took the message.
    NoRoute,
    /// A route refused it.
    Rejected { code: ErrorCode, reason: String },
}

/// Runs `routes` in order over `msg`.
pub async fn run_chain(
    routes: &[Arc<dyn Route>],
    ctx: &RouteContext<'_>,
    msg: &DataMessage,
) -> Routed {
    let mut channels: Vec<Channel> = Vec::new();
    // Destinations already taken, for groups of any size: merging with
    // `Vec::contains` made a 1000-member group cost 2.8 ms (criterion,
    // benches/route.rs).
    let mut seen: foldhash::HashSet<Channel> = foldhash::HashSet::default();
    let mut taken = false;
    let mut add = |channels: &mut Vec<Channel>, more: Vec<Channel>| {
        for c in more {
            // A scan is cheaper than hashing for a few destinations.
            let new = if channels.len() < 16 {
                !channels.contains(&c)
            } else {
                if seen.is_empty() {
                    seen.extend(channels.iter().cloned());
                }
                seen.insert(c.clone())
            };
            if new {
                channels.push(c);
            }
        }
    };
    for route in routes {
        let decision = match route.route_now(ctx, msg) {
            Some(decision) => decision,
            None => route.route(ctx, msg).await,
        };
        match decision {
            Decision::Pass => {}
            Decision::Add(more) => {
                taken = true;
                add(&mut channels, more);
            }
            // The common case, one route naming one channel: its list is
            // the result (no second vector).
            Decision::Stop(more) if channels.is_empty() && more.len() <= 1 => {
                return Routed::To(more);
            }
            Decision::Stop(more) => {
                add(&mut channels, more);
                return Routed::To(channels);
            }
            Decision::Reject { code, reason } => return Routed::Rejected { code, reason },
        }
    }
    if taken {
        Routed::To(channels)
    } else {
        Routed::NoRoute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Decision);

    #[async_trait]
    impl Route for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        async fn route(&self, _: &RouteContext<'_>, _: &DataMessage) -> Decision {
            self.0.clone()
        }
    }

    fn ch(s: &str) -> Channel {
        Channel::new(s).expect("valid")
    }

    fn msg(dest: Option<&str>) -> DataMessage {
        let mut m = DataMessage::new("direct");
        m.dest = dest.map(str::to_owned);
        m
    }

    #[tokio::test]
    async fn the_direct_route_decides_now_what_it_decides_later() {
        let ctx = RouteContext { sender: None };
        let long = "x".repeat(200);
        for dest in [Some("bob"), None, Some(""), Some(long.as_str())] {
            let m = msg(dest);
            let now = DirectRoute.route_now(&ctx, &m);
            assert_eq!(now, Some(DirectRoute.route(&ctx, &m).await), "{dest:?}");
        }
    }

    #[tokio::test]
    async fn a_stop_after_an_add_merges_and_a_lone_stop_is_the_result() {
        let ctx = RouteContext { sender: None };
        let routes: Vec<Arc<dyn Route>> = vec![
            Arc::new(Fixed(Decision::Add(vec![ch("a")]))),
            Arc::new(Fixed(Decision::Stop(vec![ch("a"), ch("b")]))),
        ];
        assert_eq!(
            run_chain(&routes, &ctx, &msg(None)).await,
            Routed::To(vec![ch("a"), ch("b")])
        );
        let routes: Vec<Arc<dyn Route>> = vec![
            Arc::new(Fixed(Decision::Pass)),
            Arc::new(DirectRoute),
            Arc::new(Fixed(Decision::Add(vec![ch("never")]))),
        ];
        assert_eq!(
            run_chain(&routes, &ctx, &msg(Some("bob"))).await,
            Routed::To(vec![ch("bob")])
        );
        assert_eq!(
            run_chain(&routes[..2], &ctx, &msg(None)).await,
            Routed::NoRoute
        );
    }

    #[tokio::test]
    async fn large_destination_lists_are_merged_without_duplicates_in_order() {
        let ctx = RouteContext { sender: None };
        let first: Vec<Channel> = (0..40).map(|i| ch(&format!("m{i}"))).collect();
        let second: Vec<Channel> = (20..60).map(|i| ch(&format!("m{i}"))).collect();
        let routes: Vec<Arc<dyn Route>> = vec![
            Arc::new(Fixed(Decision::Add(first))),
            Arc::new(Fixed(Decision::Add(second))),
        ];
        let expected: Vec<Channel> = (0..60).map(|i| ch(&format!("m{i}"))).collect();
        assert_eq!(
            run_chain(&routes, &ctx, &msg(None)).await,
            Routed::To(expected)
        );
    }

    #[tokio::test]
    async fn chain_semantics() {
        let ctx = RouteContext { sender: None };
        let direct: Arc<dyn Route> = Arc::new(DirectRoute);
        assert_eq!(
            run_chain(std::slice::from_ref(&direct), &ctx, &msg(Some("bob"))).await,
            Routed::To(vec![ch("bob")])
        );
        assert_eq!(
            run_chain(std::slice::from_ref(&direct), &ctx, &msg(None)).await,
            Routed::NoRoute
        );
        assert!(matches!(
            run_chain(std::slice::from_ref(&direct), &ctx, &msg(Some(""))).await,
            Routed::Rejected {
                code: ErrorCode::InvalidMessage,
                ..
            }
        ));
        // Add accumulates and continues; Stop ends the chain; duplicates go.
        let routes: Vec<Arc<dyn Route>> = vec![
            Arc::new(Fixed(Decision::Add(vec![ch("a"), ch("b")]))),
            Arc::new(Fixed(Decision::Pass)),
            Arc::new(Fixed(Decision::Stop(vec![ch("b"), ch("c")]))),
            Arc::new(Fixed(Decision::Add(vec![ch("never")]))),
        ];
        assert_eq!(
            run_chain(&routes, &ctx, &msg(None)).await,
            Routed::To(vec![ch("a"), ch("b"), ch("c")])
        );
        let routes: Vec<Arc<dyn Route>> = vec![
            Arc::new(Fixed(Decision::Reject {
                code: ErrorCode::Forbidden,
                reason: "no".into(),
            })),
            direct,
        ];
        assert!(matches!(
            run_chain(&routes, &ctx, &msg(Some("bob"))).await,
            Routed::Rejected {
                code: ErrorCode::Forbidden,
                ..
            }
        ));
    }
}
