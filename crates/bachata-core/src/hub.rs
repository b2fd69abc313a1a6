//! The local registry of live connections, by channel: how a new entry or
//! an ack reaches the connections that care, without polling the store.
//!
//! The store stays the truth. A connection whose event queue is full is
//! marked lagged instead of blocking the sender, and re-reads the store; so
//! memory stays bounded and nothing stored is lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bachata_proto::Channel;
use bytes::Bytes;
use foldhash::{HashMap, HashSet};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::store::{Device, Entry, Seq};

/// Events queued per connection before it counts as lagged.
const EVENT_QUEUE: usize = 1024;

/// What the hub tells a connection.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new entry of the connection's channel log.
    Entry(Entry),
    /// A device of the channel acked `seq` (on any of its connections).
    Acked { device: Device, seq: Seq },
    /// A message without id: delivered at most once, live only.
    Live(Bytes),
    /// Another node appended `seq` to the channel: read the store.
    Wake(Seq),
}

/// One connection's event queue: bounded, and allocated only once events
/// flow (a tokio mpsc channel allocates a 32-slot block up front, ~2.6 KB
/// per idle connection).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    /// Set when an event found the queue full and was dropped.
    pub(crate) lagged: AtomicBool,
    /// Set by [`Hub::reset_older`]: the store may have lost writes, the
    /// session starts over from the log's head.
    pub(crate) reset: AtomicBool,
}

/// The events and the one task waiting for them, under one lock. An inbox
/// has a single reader, its connection, so a waker slot is all the waiting
/// needs: a `Notify` cost its `notify_one` and a ~100-byte wait future in
/// every connection's task.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    waiting: Option<Waker>,
}

impl Inbox {
    /// Queues an event; `false` when the queue is full.
    fn push(&self, event: Event) -> bool {
        let waiting = {
            let mut queue = self.queue.lock();
            if queue.events.len() >= EVENT_QUEUE {
                return false;
            }
            queue.events.push_back(event);
            queue.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
        true
    }

    /// Queues an event, or marks the connection lagged when full.
    fn push_or_lag(&self, event: Event) {
        if !self.push(event) {
            self.lagged.store(true, Ordering::Release);
        }
    }

    pub(crate) fn try_recv(&self) -> Option<Event> {
        self.queue.lock().events.pop_front()
    }

    /// The next event, or `Pending` with the task's waker kept for the
    /// next push. Cancel-safe: an event is taken only by the poll that
    /// returns it (a waker left behind wakes its task once, for nothing).
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let mut queue = self.queue.lock();
        if let Some(event) = queue.events.pop_front() {
            return Poll::Ready(event);
        }
        match &mut queue.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Wakes the connection waiting on this inbox, if one is, with no
    /// event (see [`Hub::close_all`]).
    fn wake_reader(&self) {
        let waiting = self.queue.lock().waiting.take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Waits for the next event (see [`Inbox::poll_recv`]).
    pub(crate) async fn recv(&self) -> Event {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    device: Device,
    inbox: Arc<Inbox>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Hub {
    channels: RwLock<HashMap<Channel, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// Live (id-less) messages that found a full queue and were dropped.
    pub live_dropped: AtomicU64,
    /// With presence across nodes: the channels whose connections changed
    /// since the presence task last took them, and its wake-up.
    changes: Option<Arc<Changes>>,
    /// Set by [`Hub::close_all`]: the server is shutting down.
    closing: AtomicBool,
}

/// See [`Hub::track_changes`].
#[derive(Debug, Default)]
pub(crate) struct Changes {
    changed: Mutex<HashSet<Channel>>,
    notify: Notify,
}

impl Changes {
    fn mark(&self, channel: &Channel) {
        if self.changed.lock().insert(channel.clone()) {
            self.notify.notify_one();
        }
    }

    /// Resolves when a channel was marked since the last call.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A live connection's registration; removed from the hub on drop.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    channel: Channel,
    id: u64,
    pub(crate) inbox: Arc<Inbox>,
}

impl Subscription {
    /// Whether the server is shutting down ([`Hub::close_all`]).
    pub fn is_closing(&self) -> bool {
        self.hub.closing.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(changes) = &self.hub.changes {
            changes.mark(&self.channel);
        }
        let mut channels = self.hub.channels.write();
        if let Some(subs) = channels.get_mut(&self.channel) {
            subs.retain(|s| s.id != self.id);
            if subs.is_empty() {
                channels.remove(&self.channel);
                // A table keeps its largest size: after a burst of
                // connections (ever new channel names, say) give the room
                // back once it is mostly empty.
                if channels.capacity() > 64 && channels.len() < channels.capacity() / 4 {
                    channels.shrink_to_fit();
                }
            }
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// A hub that records which channels' connections change, for the
    /// presence task (see `presence.rs`).
    pub(crate) fn tracking_changes() -> Arc<Self> {
        Arc::new(Hub {
            changes: Some(Arc::default()),
            ..Hub::default()
        })
    }

    /// The record of changed channels (see [`Hub::tracking_changes`]); a new
    /// empty one on a hub that does not track them.
    pub(crate) fn track_changes(&self) -> Arc<Changes> {
        self.changes.clone().unwrap_or_default()
    }

    /// The channels whose connections changed since the last call.
    pub(crate) fn take_changed(&self) -> Vec<Channel> {
        match &self.changes {
            Some(changes) => changes.changed.lock().drain().collect(),
            None => Vec::new(),
        }
    }

    /// Every channel with a live connection here.
    pub(crate) fn channels_with_connections(&self) -> Vec<Channel> {
        self.channels.read().keys().cloned().collect()
    }

    pub fn subscribe(self: &Arc<Self>, channel: &Channel, device: &Device) -> Subscription {
        let inbox = Arc::new(Inbox::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.channels
            .write()
            .entry(channel.clone())
            // Most channels have one connection: room for four (what a
            // first push makes) was 96 bytes more per idle connection.
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Subscriber {
                id,
                device: device.clone(),
                inbox: inbox.clone(),
            });
        if let Some(changes) = &self.changes {
            changes.mark(channel);
        }
        Subscription {
            hub: self.clone(),
            channel: channel.clone(),
            id,
            inbox,
        }
    }

    /// Tells every connection of `channel` about a new entry.
    pub fn entry(&self, channel: &Channel, entry: &Entry) {
        self.each(
            channel,
            |_| true,
            |sub| sub.inbox.push_or_lag(Event::Entry(entry.clone())),
        );
    }

    /// Tells the connections of `device` that it acked `seq`.
    pub fn acked(&self, channel: &Channel, device: &Device, seq: Seq) {
        self.each(
            channel,
            |sub| &sub.device == device,
            |sub| {
                sub.inbox.push_or_lag(Event::Acked {
                    device: device.clone(),
                    seq,
                });
            },
        );
    }

    /// Tells every connection of `channel` that the store has entries up to
    /// `seq` (from another node).
    pub fn wake(&self, channel: &Channel, seq: Seq) {
        self.each(
            channel,
            |_| true,
            |sub| sub.inbox.push_or_lag(Event::Wake(seq)),
        );
    }

    /// Tells every connection, and every one that subscribes from now on,
    /// that the server is shutting down ([`Subscription::is_closing`]).
    /// For good: a hub is not reopened (a server builds its own center and
    /// hub at each start).
    ///
    /// A flag that a connection reads when its inbox is empty, and a
    /// wake-up through the inbox it already waits on: a wait on the
    /// shutdown token of its own was 72 bytes of every connection's task.
    pub fn close_all(&self) {
        // Set before any inbox's lock is taken: a connection that registers
        // its waker after this pass reads the flag after its registration,
        // under the same lock, and sees it (see `Session::poll_recv`).
        self.closing.store(true, Ordering::SeqCst);
        let channels = self.channels.read();
        for sub in channels.values().flatten() {
            sub.inbox.wake_reader();
        }
    }

    /// Makes every connection re-read the store (lost bus events).
    pub fn resync_all(&self) {
        let channels = self.channels.read();
        for sub in channels.values().flatten() {
            sub.inbox.lagged.store(true, Ordering::Release);
            // An empty wake-up gets an idle session to look at the flag.
            let _ = sub.inbox.push(Event::Wake(0));
        }
    }

    /// Marks this moment: the connections subscribed so far are older than
    /// the mark (see [`Hub::reset_older`]).
    pub fn mark(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Makes every connection subscribed before `mark` start over from the
    /// head of its log: the store may have lost writes since, and its seqs
    /// gone back (protocol.md section 8).
    pub fn reset_older(&self, mark: u64) {
        let channels = self.channels.read();
        for sub in channels.values().flatten().filter(|s| s.id < mark) {
            sub.inbox.reset.store(true, Ordering::Release);
            let _ = sub.inbox.push(Event::Wake(0));
        }
    }

    /// Sends an id-less message to the live connections of `channel`.
    /// Returns how many connections took it.
    pub fn live(&self, channel: &Channel, payload: &Bytes) -> usize {
        let mut sent = 0;
        self.each(
            channel,
            |_| true,
            |sub| {
                if sub.inbox.push(Event::Live(payload.clone())) {
                    sent += 1;
                } else {
                    self.live_dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
        );
        sent
    }

    /// Live connections of `channel`, per device.
    pub fn online(&self, channel: &Channel) -> Vec<(Device, usize)> {
        let channels = self.channels.read();
        let mut out: Vec<(Device, usize)> = Vec::new();
        for sub in channels.get(channel).into_iter().flatten() {
            match out.iter_mut().find(|(d, _)| d == &sub.device) {
                Some((_, n)) => *n += 1,
                None => out.push((sub.device.clone(), 1)),
            }
        }
        out
    }

    /// All live connections.
    /// Each (channel, device) with a live connection here, once.
    pub fn live_devices(&self) -> Vec<(Channel, Device)> {
        let channels = self.channels.read();
        let mut live = Vec::new();
        for (channel, subs) in channels.iter() {
            let start = live.len();
            for sub in subs {
                let seen = live[start..]
                    .iter()
                    .any(|(_, d): &(Channel, Device)| *d == sub.device);
                if !seen {
                    live.push((channel.clone(), sub.device.clone()));
                }
            }
        }
        live
    }

    pub fn connections(&self) -> usize {
        self.channels.read().values().map(Vec::len).sum()
    }

    fn each(
        &self,
        channel: &Channel,
        filter: impl Fn(&Subscriber) -> bool,
        mut f: impl FnMut(&Subscriber),
    ) {
        let channels = self.channels.read();
        for sub in channels.get(channel).into_iter().flatten() {
            if filter(sub) {
                f(sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Channel {
        Channel::new("bob").expect("valid")
    }

    /// The event that a task waiting on `inbox` gets once `push` ran (the
    /// task waits first).
    async fn woken_by(inbox: &Arc<Inbox>, push: impl FnOnce()) -> Event {
        let inbox = inbox.clone();
        let waiter = tokio::spawn(async move { inbox.recv().await });
        tokio::task::yield_now().await;
        push();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task")
    }

    #[tokio::test]
    async fn close_all_wakes_waiting_connections_and_tells_later_ones() {
        let hub = Hub::new();
        let sub = Arc::new(hub.subscribe(&channel(), &None));
        assert!(!sub.is_closing());
        // A connection waits as `ws.rs` does: its inbox first, then the flag.
        let waiting = sub.clone();
        let waiter = tokio::spawn(async move {
            std::future::poll_fn(|cx| match waiting.inbox.poll_recv(cx) {
                Poll::Ready(_) => Poll::Ready(false),
                Poll::Pending if waiting.is_closing() => Poll::Ready(true),
                Poll::Pending => Poll::Pending,
            })
            .await
        });
        tokio::task::yield_now().await;
        hub.close_all();
        let closing = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken without an event")
            .expect("task");
        assert!(closing, "woken by the flag, not an event");
        assert!(sub.inbox.try_recv().is_none(), "no event was queued");
        let later = hub.subscribe(&Channel::new("late").expect("valid"), &None);
        assert!(later.is_closing(), "a connection opened during shutdown");
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_a_waiting_connection_wakes() {
        let hub = Hub::new();
        let sub = hub.subscribe(&channel(), &None);
        let first = woken_by(&sub.inbox, || {
            hub.wake(&channel(), 1);
            hub.wake(&channel(), 2);
        })
        .await;
        assert!(matches!(first, Event::Wake(1)));
        assert!(matches!(sub.inbox.try_recv(), Some(Event::Wake(2))));
        assert!(sub.inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_wait_given_up_loses_no_event_and_the_next_wait_is_woken() {
        let hub = Hub::new();
        let sub = hub.subscribe(&channel(), &None);
        // A wait that registers its waker and is dropped (a select picked
        // another branch) takes nothing.
        let gave_up = tokio::time::timeout(std::time::Duration::ZERO, sub.inbox.recv()).await;
        assert!(gave_up.is_err());
        hub.wake(&channel(), 1);
        assert!(matches!(sub.inbox.recv().await, Event::Wake(1)));
        // A new waiter is woken by the next push.
        let next = woken_by(&sub.inbox, || hub.wake(&channel(), 2)).await;
        assert!(matches!(next, Event::Wake(2)));
    }

    #[test]
    fn a_full_queue_marks_the_connection_lagged_instead_of_growing() {
        let hub = Hub::new();
        let sub = hub.subscribe(&channel(), &None);
        for seq in 0..EVENT_QUEUE as u64 {
            hub.wake(&channel(), seq);
        }
        assert!(!sub.inbox.lagged.load(Ordering::Acquire));
        hub.wake(&channel(), u64::MAX);
        assert!(sub.inbox.lagged.load(Ordering::Acquire));
        assert_eq!(sub.inbox.queue.lock().events.len(), EVENT_QUEUE);
        // A live message that finds the queue full is counted as dropped.
        assert_eq!(hub.live(&channel(), &Bytes::from_static(b"{}")), 0);
        assert_eq!(hub.live_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_dropped_subscription_leaves_the_hub() {
        let hub = Hub::new();
        let sub = hub.subscribe(&channel(), &None);
        assert_eq!(hub.connections(), 1);
        drop(sub);
        assert_eq!(hub.connections(), 0);
    }
}
