//! The messages center: stamps, routes, stores and announces messages, and
//! opens delivery sessions for connections. It knows no socket and no disk.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use bachata_proto::{Channel, DataMessage, ErrorCode, MessageId, delivered};
use bytes::Bytes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use crate::bus::{Bus, BusEvent, RESYNC_EVERY};
use crate::hook::{FirstAck, HOOK_CALLS_PER_CONNECTION, HookRoute, PostProcess, Queued, RouteHook};
use crate::hub::Hub;
use crate::presence::{DeviceCounts, Presence, counts_of, merge_counts, report_presence};
use crate::route::{DirectRoute, GroupRoute, Route, RouteContext, Routed, run_chain};
use crate::session::Session;
use crate::stats::Stats;
use crate::store::{
    AckRequest, Acked, Device, Enqueued, Forgotten, Millis, NewMessage, Store, StoreError,
    now_millis,
};

/// Delivery policy (protocol.md section 5).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Pending messages expire after this long.
    pub message_ttl: Duration,
    /// A resent id within this window is not stored twice.
    pub dedupe_window: Duration,
    /// A channel holding this many pending messages refuses more.
    pub queue_limit: u64,
    /// Unacked messages outstanding on one connection.
    pub inflight: usize,
    /// Payload bytes of pending messages the store keeps at most, over all
    /// channels (protocol.md section 9).
    pub max_retained_bytes: u64,
    /// Devices and channels unseen for this long, with nothing pending, are
    /// forgotten (protocol.md section 9).
    pub forget_after: Duration,
    /// With the undelivered webhook: each stored copy is due for it this
    /// long after it was stored, unless a device acked it
    /// ([`NewMessage::notify_at`]).
    pub undelivered_after: Option<Duration>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            message_ttl: Duration::from_secs(7 * 24 * 3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            queue_limit: 10_000,
            inflight: 256,
            max_retained_bytes: u64::MAX,
            forget_after: Duration::from_secs(30 * 24 * 3600),
            undelivered_after: None,
        }
    }
}

/// A message the sender gets a 400 for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: Option<MessageId>,
    pub code: ErrorCode,
    pub reason: String,
    /// An application's own code (`app_*`, from a route hook), sent as the
    /// `error` instead of `code`'s (which is then `forbidden`).
    pub app_code: Option<String>,
}

impl Rejection {
    pub fn new(id: Option<MessageId>, code: ErrorCode, reason: impl Into<String>) -> Self {
        Rejection {
            id,
            code,
            reason: reason.into(),
            app_code: None,
        }
    }

    /// The `error` the sender gets.
    pub fn wire_code(&self) -> &str {
        self.app_code.as_deref().unwrap_or(self.code.as_str())
    }

    /// The 400 frame.
    pub fn to_frame(&self) -> String {
        bachata_proto::rejected_as(self.id.as_ref(), self.wire_code(), &self.reason)
    }
}

/// What happened to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored durably for every destination (or a duplicate of a stored
    /// one): the sender gets a 100 for this id.
    Stored {
        id: MessageId,
        channels: Vec<Channel>,
    },
    /// No id: handed to the live connections of these channels, at most once.
    Live { channels: Vec<Channel> },
}

/// The outcome of [`MessagesCenter::submit_pipelined`], still on its way.
pub type PendingSubmit = Pin<Box<dyn Future<Output = Result<Accepted, Rejection>> + Send>>;

/// One connection's submits that have not taken their place in the store's
/// order yet, oldest first (see [`MessagesCenter::submit_in_order`]).
#[derive(Debug, Default)]
pub struct SubmitOrder {
    waiting: VecDeque<(Option<MessageId>, Arc<Semaphore>)>,
}

impl SubmitOrder {
    /// Forgets the submits at the front that have their place.
    fn prune(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|(_, placed)| placed.is_closed())
        {
            self.waiting.pop_front();
        }
    }
}

/// A submit's "I have my place in the store's order (or none to take)":
/// a semaphore without permits, closed when this is dropped, whatever path
/// the submit took (stored, refused, cancelled with its connection). Those
/// behind it wait on it with `acquire`, which fails once it is closed.
struct Placed(Arc<Semaphore>);

impl Placed {
    fn new() -> Self {
        Placed(Arc::new(Semaphore::new(0)))
    }

    fn signal(&self) -> Arc<Semaphore> {
        self.0.clone()
    }

    async fn wait(placed: &Semaphore) {
        // No permit is ever added: this returns when the semaphore closes.
        let _ = placed.acquire().await;
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A routed message, ready for the store or already done with.
enum Prepared {
    /// Nothing to store (no id, or no destination).
    Done(Accepted),
    Store(Box<(NewMessage, StoreContext)>),
}

/// What the route hook made of a message.
enum HookOutcome {
    /// A resend of an id stored within the dedupe window: not asked again.
    Duplicate(MessageId),
    /// Exactly these channels (none: `no_route`).
    Channels(Vec<Channel>),
    /// The route chain decides.
    Pass,
}

/// What `finish` needs to announce a stored message.
struct StoreContext {
    sender: Option<Channel>,
    id: MessageId,
    channels: Vec<Channel>,
    payload: Bytes,
    kind: String,
    time: i64,
    now: Millis,
}

/// Builds a [`MessagesCenter`] with the routes and hooks of your choice.
pub struct CenterBuilder {
    store: Arc<dyn Store>,
    routes: Vec<Arc<dyn Route>>,
    hooks: Vec<Arc<dyn PostProcess>>,
    config: DeliveryConfig,
    sign_key: Option<Arc<[u8]>>,
    bus: Option<Arc<dyn Bus>>,
    presence: Option<Arc<dyn Presence>>,
    route_hook: Option<Arc<dyn RouteHook>>,
}

impl CenterBuilder {
    /// Asks an application where clients' messages go, before the route
    /// chain (see [`RouteHook`]).
    pub fn route_hook(mut self, hook: Arc<dyn RouteHook>) -> Self {
        self.route_hook = Some(hook);
        self
    }

    /// Shares this node's connection counts with the other nodes of its
    /// store, and counts theirs in [`MessagesCenter::online`]. `build` must
    /// then run inside a tokio runtime: it spawns the task that writes the
    /// counts.
    pub fn presence(mut self, presence: Arc<dyn Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Connects this node to the others that share its store. `build` must
    /// then run inside a tokio runtime: it spawns the task that feeds the
    /// bus's events to local connections.
    pub fn bus(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Adds a route at the end of the chain (before the built-in group and
    /// direct routes, which are always last, in that order).
    pub fn route(mut self, route: impl Route) -> Self {
        self.routes.push(Arc::new(route));
        self
    }

    pub fn hook(mut self, hook: impl PostProcess) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    pub fn config(mut self, config: DeliveryConfig) -> Self {
        self.config = config;
        self
    }

    /// Turns signatures on (protocol.md section 6): every data message from a
    /// client must carry a `sign` made with its channel's secret, derived
    /// from this key.
    pub fn sign_key(mut self, key: Option<&[u8]>) -> Self {
        self.sign_key = key.map(Arc::from);
        self
    }

    pub fn build(mut self) -> Arc<MessagesCenter> {
        self.routes
            .push(Arc::new(GroupRoute::new(self.store.clone())));
        self.routes.push(Arc::new(DirectRoute));
        let center = Arc::new(MessagesCenter {
            store: self.store,
            routes: self.routes,
            hooks: self.hooks,
            hub: if self.presence.is_some() {
                Hub::tracking_changes()
            } else {
                Hub::new()
            },
            bus: self.bus,
            presence: self.presence,
            presence_writes: Arc::default(),
            route_hook: self.route_hook,
            config: self.config,
            stats: Arc::new(Stats::default()),
            sign_key: self.sign_key,
        });
        if let Some(bus) = &center.bus {
            tokio::spawn(listen_to_bus(bus.subscribe(), Arc::downgrade(&center)));
        }
        if let Some(presence) = &center.presence {
            tokio::spawn(report_presence(
                presence.clone(),
                Arc::downgrade(&center.hub),
                center.presence_writes.clone(),
            ));
        }
        center
    }
}

/// See the module docs.
pub struct MessagesCenter {
    store: Arc<dyn Store>,
    routes: Vec<Arc<dyn Route>>,
    hooks: Vec<Arc<dyn PostProcess>>,
    hub: Arc<Hub>,
    config: DeliveryConfig,
    stats: Arc<Stats>,
    sign_key: Option<Arc<[u8]>>,
    bus: Option<Arc<dyn Bus>>,
    presence: Option<Arc<dyn Presence>>,
    /// Held by whoever takes the changed counts and writes them (the
    /// presence task, [`MessagesCenter::flush_presence`]), so that a flush
    /// waits for a write under way instead of finding nothing left to take.
    presence_writes: Arc<tokio::sync::Mutex<()>>,
    route_hook: Option<Arc<dyn RouteHook>>,
}

/// Feeds other nodes' events to the local hub until the bus closes or the
/// center is gone; resyncs every session every [`RESYNC_EVERY`] too.
async fn listen_to_bus(
    mut events: tokio::sync::mpsc::Receiver<BusEvent>,
    center: Weak<MessagesCenter>,
) {
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // The hub's mark when the bus lost its connection: the sessions a
    // restart of the store may have left behind are older.
    let mut lost_at: Option<u64> = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = resync.tick() => BusEvent::Resync,
        };
        let Some(center) = center.upgrade() else {
            return;
        };
        let hub = &center.hub;
        match event {
            BusEvent::Entry { channel, entry } => hub.entry(&channel, &entry),
            BusEvent::Acked {
                channel,
                device,
                seq,
            } => hub.acked(&channel, &device, seq),
            BusEvent::Live { channel, payload } => {
                hub.live(&channel, &payload);
            }
            BusEvent::Resync => hub.resync_all(),
            BusEvent::Lost => {
                lost_at.get_or_insert_with(|| hub.mark());
            }
            BusEvent::Reset => {
                // The store may have lost its devices too: register the
                // live ones again, so that their acks remove entries.
                if let Err(e) = center.refresh_live_devices().await {
                    tracing::warn!(error = %e, "cannot register the live devices again");
                }
                hub.reset_older(lost_at.take().unwrap_or(u64::MAX));
            }
        }
    }
}

impl std::fmt::Debug for MessagesCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagesCenter")
            .field(
                "routes",
                &self.routes.iter().map(|r| r.name()).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as Millis
}

impl MessagesCenter {
    pub fn builder(store: Arc<dyn Store>) -> CenterBuilder {
        CenterBuilder {
            store,
            routes: Vec::new(),
            hooks: Vec::new(),
            config: DeliveryConfig::default(),
            sign_key: None,
            bus: None,
            presence: None,
            route_hook: None,
        }
    }

    /// The signing secret of `channel`, when signatures are on.
    pub fn channel_secret(&self, channel: &Channel) -> Option<String> {
        self.sign_key
            .as_deref()
            .map(|key| bachata_proto::sign::channel_secret(key, channel.as_str()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The live connections of `channel` per device: this node's, and with
    /// presence across nodes (see [`CenterBuilder::presence`]) every other
    /// node's too.
    pub async fn online(&self, channel: &Channel) -> Result<DeviceCounts, StoreError> {
        let here = self.hub.online(channel);
        match &self.presence {
            Some(presence) => Ok(merge_counts(here, presence.others(channel).await?)),
            None => Ok(here),
        }
    }

    /// Writes at once the connection counts that changed since the presence
    /// task last wrote them (on shutdown, after the connections closed:
    /// every count left is then zero, and the other nodes stop counting
    /// this one's connections without waiting for their time to live).
    pub async fn flush_presence(&self) {
        let Some(presence) = &self.presence else {
            return;
        };
        // The presence task may have taken the last changes (connections
        // that just closed) and be writing them: wait for that write, or a
        // node that exits right after this call leaves its old counts
        // behind until they expire.
        let _writing = self.presence_writes.lock().await;
        let counts = counts_of(&self.hub, self.hub.take_changed());
        if counts.is_empty() {
            return;
        }
        if let Err(e) = presence.report(counts).await {
            tracing::warn!(error = %e, "cannot clear this node's connection counts");
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// Accepts a data message from `sender` (`None`: by system): stamps
    /// `from` and `time`, routes it, stores it durably, and wakes its
    /// receivers. `Ok` means the sender may be told 100.
    pub async fn submit(
        self: &Arc<Self>,
        sender: Option<&Channel>,
        msg: DataMessage,
    ) -> Result<Accepted, Rejection> {
        self.submit_pipelined(sender, msg).await.await
    }

    /// Like [`MessagesCenter::submit`], for a connection that sends many
    /// messages: returns once the message has its place in the store's
    /// order, with a future for the outcome. A connection that calls this
    /// for each frame in turn and awaits the futures together keeps its
    /// messages in order while one durable commit carries many of them.
    pub async fn submit_pipelined(
        self: &Arc<Self>,
        sender: Option<&Channel>,
        msg: DataMessage,
    ) -> PendingSubmit {
        self.submit_pipelined_from(sender.map(|s| (s, &None)), msg)
            .await
    }

    /// [`MessagesCenter::submit_pipelined`] for a message from `device` of
    /// a client's channel (`None`: by system), which a route hook is told.
    pub async fn submit_pipelined_from(
        self: &Arc<Self>,
        from: Option<(&Channel, &Device)>,
        mut msg: DataMessage,
    ) -> PendingSubmit {
        let prepared = self.prepare(from, &mut msg).await;
        self.place(prepared).await
    }

    /// [`MessagesCenter::submit_pipelined_from`] for a connection whose
    /// messages a route hook is asked about: the hook calls of its messages
    /// run side by side (up to [`RouteHook::in_flight_per_connection`]),
    /// and `order` makes each message take its place in the store's order
    /// only after the one sent before it did. So the order the connection sent is the
    /// order of its 100s and of delivery (protocol.md section 10), however
    /// long each call takes, and one slow call no longer holds up the
    /// calls behind it. A message no hook is asked about, with nothing
    /// waiting ahead of it, goes straight through.
    ///
    /// The returned future does the work (the hook call included): poll it
    /// with the connection's other submits, in order (a `FuturesOrdered`).
    pub async fn submit_in_order(
        self: &Arc<Self>,
        channel: &Channel,
        device: &Device,
        msg: DataMessage,
        order: &mut SubmitOrder,
    ) -> PendingSubmit {
        order.prune();
        let hooked = self
            .route_hook
            .as_ref()
            .is_some_and(|hook| hook.wants(&msg.kind));
        let bound = self
            .route_hook
            .as_ref()
            .map_or(HOOK_CALLS_PER_CONNECTION, |hook| {
                hook.in_flight_per_connection().max(1)
            });
        if !hooked && order.waiting.is_empty() {
            return self
                .submit_pipelined_from(Some((channel, device)), msg)
                .await;
        }
        let ahead = order.waiting.back().map(|(_, placed)| placed.clone());
        // Before the hook call: a resend of an id still waiting ahead waits
        // until that one has its place (the store then knows the id, so the
        // hook sees it once); past the per-connection bound of calls, a
        // message waits until the call that many places ahead is over.
        let before_call = if msg.id.is_some() && order.waiting.iter().any(|(id, _)| *id == msg.id) {
            ahead.clone()
        } else {
            order
                .waiting
                .len()
                .checked_sub(bound)
                .map(|i| order.waiting[i].1.clone())
        };
        let mine = Placed::new();
        order.waiting.push_back((msg.id.clone(), mine.signal()));
        let center = self.clone();
        let (channel, device) = (channel.clone(), device.clone());
        Box::pin(async move {
            let mut msg = msg;
            if let Some(placed) = before_call {
                Placed::wait(&placed).await;
            }
            let prepared = center.prepare(Some((&channel, &device)), &mut msg).await;
            if let Some(placed) = ahead {
                Placed::wait(&placed).await;
            }
            let outcome = center.place(prepared).await;
            drop(mine);
            outcome.await
        })
    }

    /// Takes a prepared message's place in the store's order; returns its
    /// outcome to come (counted in the stats).
    async fn place(self: &Arc<Self>, prepared: Result<Prepared, Rejection>) -> PendingSubmit {
        let result = match prepared {
            Err(rejection) => Err(rejection),
            Ok(Prepared::Done(accepted)) => Ok(accepted),
            Ok(Prepared::Store(prepared)) => {
                let (request, ctx) = *prepared;
                match self.store.start_enqueue(request) {
                    Ok(pending) => {
                        let center = self.clone();
                        return Box::pin(async move {
                            let result = center.finish(ctx, pending.await);
                            center.count(&result);
                            result
                        });
                    }
                    Err(request) => {
                        let outcome = self.store.enqueue(request).await;
                        self.finish(ctx, outcome)
                    }
                }
            }
        };
        self.count(&result);
        Box::pin(std::future::ready(result))
    }

    fn count(&self, result: &Result<Accepted, Rejection>) {
        let counter = match result {
            Ok(_) => &self.stats.received,
            Err(_) => &self.stats.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks, stamps and routes a message; builds its store request.
    async fn prepare(
        &self,
        from: Option<(&Channel, &Device)>,
        msg: &mut DataMessage,
    ) -> Result<Prepared, Rejection> {
        let sender = from.map(|(s, _)| s);
        let secret = sender.and_then(|s| self.channel_secret(s));
        if let Some(secret) = secret
            && !bachata_proto::sign::verify(&secret, msg)
        {
            let reason = if msg.sign.is_some() {
                "sign does not match the message"
            } else {
                "sign is missing: signatures are required on this server"
            };
            return Err(Rejection::new(
                msg.id.clone(),
                ErrorCode::BadSignature,
                reason,
            ));
        }
        let now = now_millis();
        let hooked = match (from, &self.route_hook) {
            (Some((sender, device)), Some(hook)) if hook.wants(&msg.kind) => {
                self.ask_hook(hook.as_ref(), sender, device, msg, now)
                    .await?
            }
            _ => HookOutcome::Pass,
        };
        let hooked = match hooked {
            HookOutcome::Duplicate(id) => {
                // A resend of a stored message: its 100 again, no new copy.
                return Ok(Prepared::Done(Accepted::Stored {
                    id,
                    channels: Vec::new(),
                }));
            }
            HookOutcome::Channels(channels) => Some(channels),
            HookOutcome::Pass => None,
        };
        msg.from = sender.map(|c| c.as_str().to_owned());
        if msg.time.is_none() {
            msg.time = Some(now as i64);
        }
        let id = msg.id.clone();
        let routed = match hooked {
            Some(channels) if channels.is_empty() => Routed::NoRoute,
            Some(channels) => Routed::To(channels),
            None => run_chain(&self.routes, &RouteContext { sender }, msg).await,
        };
        let channels = match routed {
            Routed::To(channels) => channels,
            Routed::NoRoute => {
                return Err(Rejection::new(
                    id,
                    ErrorCode::NoRoute,
                    format!(
                        "no route takes messages of type {:?} without dest",
                        msg.kind
                    ),
                ));
            }
            Routed::Rejected { code, reason } => return Err(Rejection::new(id, code, reason)),
        };
        let payload = Bytes::from(msg.to_json());
        let Some(id) = id else {
            for channel in &channels {
                self.hub.live(channel, &payload);
                self.publish(BusEvent::Live {
                    channel: channel.clone(),
                    payload: payload.clone(),
                });
            }
            return Ok(Prepared::Done(Accepted::Live { channels }));
        };
        if channels.is_empty() {
            return Ok(Prepared::Done(Accepted::Stored { id, channels }));
        }
        let request = NewMessage {
            sender: sender.cloned(),
            id: id.clone(),
            destinations: channels.clone(),
            payload: payload.clone(),
            now,
            expires_at: now.saturating_add(millis(self.config.message_ttl)),
            dedupe_until: now.saturating_add(millis(self.config.dedupe_window)),
            queue_limit: self.config.queue_limit,
            retained_limit: self.config.max_retained_bytes,
            forget_after: millis(self.config.forget_after),
            notify_at: self
                .config
                .undelivered_after
                .map(|after| now.saturating_add(millis(after))),
        };
        let ctx = StoreContext {
            sender: sender.cloned(),
            id,
            channels,
            payload,
            kind: msg.kind.clone(),
            time: msg.time.unwrap_or(now as i64),
            now,
        };
        Ok(Prepared::Store(Box::new((request, ctx))))
    }

    /// Asks the route hook about `msg` (unless it is a resend of a stored
    /// id); puts the hook's `data` in place of the message's.
    async fn ask_hook(
        &self,
        hook: &dyn RouteHook,
        sender: &Channel,
        device: &Device,
        msg: &mut DataMessage,
        now: Millis,
    ) -> Result<HookOutcome, Rejection> {
        let unavailable = |id: &Option<MessageId>, why: String| {
            Rejection::new(id.clone(), ErrorCode::Unavailable, why)
        };
        if let Some(id) = &msg.id {
            match self.store.is_duplicate(Some(sender), id, now).await {
                Ok(true) => return Ok(HookOutcome::Duplicate(id.clone())),
                Ok(false) => {}
                Err(e) => return Err(unavailable(&msg.id, format!("store unavailable: {e}"))),
            }
        }
        let verdict = hook.route(sender, device, msg).await;
        if let Some(data) = verdict.data {
            msg.data = Some(data);
        }
        match verdict.route {
            HookRoute::Pass => Ok(HookOutcome::Pass),
            HookRoute::Channels(channels) => Ok(HookOutcome::Channels(channels)),
            HookRoute::Reject { code, reason } => {
                let mut rejection = Rejection::new(msg.id.clone(), ErrorCode::Forbidden, reason);
                if code != ErrorCode::Forbidden.as_str() {
                    rejection.app_code = Some(code);
                }
                Err(rejection)
            }
            HookRoute::Unavailable(why) => Err(unavailable(&msg.id, why)),
        }
    }

    /// Turns the store's answer into the sender's, and announces a stored
    /// message to its receivers and the hooks.
    fn finish(
        &self,
        ctx: StoreContext,
        outcome: Result<Enqueued, StoreError>,
    ) -> Result<Accepted, Rejection> {
        let StoreContext {
            sender,
            id,
            channels,
            payload,
            kind,
            time,
            now,
        } = ctx;
        match outcome {
            Ok(Enqueued::Stored(seqs)) => {
                for (channel, seq) in &seqs {
                    let entry = crate::store::Entry {
                        seq: *seq,
                        kind: crate::store::EntryKind::Message {
                            sender: sender.clone(),
                            id: id.clone(),
                        },
                        payload: payload.clone(),
                    };
                    self.hub.entry(channel, &entry);
                    self.publish(BusEvent::Entry {
                        channel: channel.clone(),
                        entry,
                    });
                }
                if !self.hooks.is_empty() {
                    let queued = Queued {
                        id: id.clone(),
                        from: sender,
                        kind,
                        time,
                        destinations: seqs,
                        now,
                    };
                    for hook in &self.hooks {
                        hook.queued(&queued);
                    }
                }
                Ok(Accepted::Stored { id, channels })
            }
            Ok(Enqueued::Duplicate) => Ok(Accepted::Stored { id, channels }),
            Ok(Enqueued::QueueFull(channel)) => Err(Rejection::new(
                Some(id),
                ErrorCode::QueueFull,
                format!(
                    "channel {channel} holds {} pending messages; retry later",
                    self.config.queue_limit
                ),
            )),
            Ok(Enqueued::StoreFull) => Err(Rejection::new(
                Some(id),
                ErrorCode::StoreFull,
                "the server holds as many pending messages as it may (max_retained_bytes); \
                 retry later",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "enqueue failed");
                Err(Rejection::new(
                    Some(id),
                    ErrorCode::Unavailable,
                    "storage is unavailable; retry later",
                ))
            }
        }
    }

    /// Records a 200 from `device` of `channel`. Unknown ids are ignored.
    /// On the first ack of a message, the sender's channel is owed a 300,
    /// which is stored before this returns.
    pub async fn ack(
        self: &Arc<Self>,
        channel: &Channel,
        device: &Device,
        id: MessageId,
    ) -> Result<(), StoreError> {
        self.ack_pipelined(channel, device, id).await.await
    }

    /// Like [`MessagesCenter::ack`], but returns once the ack has its place
    /// in the store's order, with a future for the rest, so a connection's
    /// 200s (and the 300s they cause) keep their order while it does not
    /// wait for each commit. Where the store cannot promise the order, the
    /// ack is done before this returns.
    pub async fn ack_pipelined(
        self: &Arc<Self>,
        channel: &Channel,
        device: &Device,
        id: MessageId,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> {
        let request = self.ack_request(channel, device, id);
        let receipt = request.receipt.clone();
        let id = request.id.clone();
        match self.store.start_ack(request) {
            Ok(pending) => {
                let (center, channel, device) = (self.clone(), channel.clone(), device.clone());
                Box::pin(async move {
                    let acked = pending.await?;
                    center.acked(&channel, &device, id, acked, receipt);
                    Ok(())
                })
            }
            Err(request) => {
                let result = self.store.ack(request).await.map(|acked| {
                    self.acked(channel, device, id, acked, receipt);
                });
                Box::pin(std::future::ready(result))
            }
        }
    }

    fn ack_request(&self, channel: &Channel, device: &Device, id: MessageId) -> AckRequest {
        let now = now_millis();
        AckRequest {
            channel: channel.clone(),
            device: device.clone(),
            receipt: Bytes::from(delivered(&id, channel)),
            id,
            now,
            receipt_expires_at: now.saturating_add(millis(self.config.message_ttl)),
            forget_after: millis(self.config.forget_after),
        }
    }

    /// Announces a recorded ack: frees windows, hands the 300 to the sender.
    fn acked(
        &self,
        channel: &Channel,
        device: &Device,
        id: MessageId,
        acked: Acked,
        receipt: Bytes,
    ) {
        let Some(seq) = acked.seq else {
            return;
        };
        self.stats.acked.fetch_add(1, Ordering::Relaxed);
        self.hub.acked(channel, device, seq);
        self.publish(BusEvent::Acked {
            channel: channel.clone(),
            device: device.clone(),
            seq,
        });
        let Some((sender, rseq)) = acked.receipt else {
            return;
        };
        // Hooks first, so that whoever sees the 300 can rely on them having
        // run.
        let first = FirstAck {
            channel: channel.clone(),
            seq,
            id,
        };
        for hook in &self.hooks {
            hook.first_ack(&first);
        }
        let entry = crate::store::Entry {
            seq: rseq,
            kind: crate::store::EntryKind::Receipt,
            payload: receipt,
        };
        self.hub.entry(&sender, &entry);
        self.publish(BusEvent::Entry {
            channel: sender,
            entry,
        });
    }

    /// Registers a connection of `device` on `channel` and returns its
    /// delivery session. The device becomes known to the channel first, so
    /// entries are kept for it from now on.
    pub async fn open_session(
        self: &Arc<Self>,
        channel: Channel,
        device: Device,
    ) -> Result<Session, StoreError> {
        let forget_after = millis(self.config.forget_after);
        let touched = self
            .store
            .touch_device(&channel, &device, now_millis(), forget_after);
        // Both at once: one round trip on a networked store.
        let ((), epoch) = tokio::try_join!(touched, self.store.epoch(&channel))?;
        let sub = self.hub.subscribe(&channel, &device);
        Ok(Session::new(
            self.store.clone(),
            self.config.inflight,
            self.stats.clone(),
            channel,
            device,
            sub,
            epoch,
        ))
    }

    fn publish(&self, event: BusEvent) {
        if let Some(bus) = &self.bus {
            bus.publish(event);
        }
    }

    /// Drops expired entries; call it periodically.
    pub async fn expire(&self) -> Result<u64, StoreError> {
        self.store.expire(now_millis()).await
    }

    /// Marks the devices of this node's live connections as seen now, so
    /// that [`MessagesCenter::forget`] (here or on another node) never takes
    /// a device in use. Call it at least a few times per `forget_after`.
    pub async fn refresh_live_devices(&self) -> Result<usize, StoreError> {
        let live = self.hub.live_devices();
        self.store
            .touch_devices(&live, now_millis(), millis(self.config.forget_after))
            .await?;
        Ok(live.len())
    }

    /// Forgets devices and channels unseen for `forget_after` with nothing
    /// pending (protocol.md section 9); call it periodically.
    pub async fn forget(&self) -> Result<Forgotten, StoreError> {
        self.store
            .forget(now_millis(), millis(self.config.forget_after))
            .await
    }
}
