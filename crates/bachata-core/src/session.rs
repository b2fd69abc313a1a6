//! One connection's delivery: which entries of its channel to send, in log
//! order, within the in-flight window (protocol.md section 5).
//!
//! The session starts by reading the store from the beginning of the log, so
//! a (re)connecting device first gets everything it has not acked. After it
//! has caught up, new entries come from the hub and are sent straight away
//! when they are the next in sequence; on any gap (a lagged queue, a full
//! window, a race between two senders) it goes back to reading the store.
//!
//! The caller (the server's connection task) drives it:
//! ```text
//! loop {
//!     while session.wants_read() { send(session.read().await?) }
//!     select! {
//!         frame from client => ...session.ack(id).await...,
//!         event = session.recv() => if let Some(out) = session.on_event(event) { send(out) },
//!     }
//!     after a flush: session.written().await
//! }
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bachata_proto::Channel;
use bytes::Bytes;

use crate::hub::{Event, Subscription};
use crate::stats::Stats;
use crate::store::{Device, Entry, Epoch, Seq, Store, StoreError, now_millis};

/// See the module docs.
pub struct Session {
    /// Where the channel's log is read and receipts are marked written.
    store: Arc<dyn Store>,
    /// Unacked messages outstanding on this connection at most.
    window: usize,
    stats: Arc<Stats>,
    channel: Channel,
    device: Device,
    sub: Subscription,
    /// Highest seq sent (or skipped as acked) on this connection.
    cursor: Seq,
    /// True when the last store read reached the end of the log, so the
    /// next entry in sequence may come from the hub.
    caught_up: bool,
    /// Sent, not yet acked messages.
    inflight: BTreeSet<Seq>,
    /// Receipts sent since the last `written()`; acked for this device once
    /// the frames are flushed.
    receipts: Vec<Seq>,
    /// The epoch of the log this session reads (protocol.md section 8);
    /// `None` until the store names one.
    epoch: Option<Epoch>,
    /// The log may have started a new life (an entry with seq 1 came while
    /// the cursor is past it): compare the epoch before the next read.
    verify: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("channel", &self.channel)
            .field("device", &self.device)
            .field("cursor", &self.cursor)
            .field("caught_up", &self.caught_up)
            .field("inflight", &self.inflight.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        window: usize,
        stats: Arc<Stats>,
        channel: Channel,
        device: Device,
        sub: Subscription,
        epoch: Option<Epoch>,
    ) -> Self {
        Session {
            store,
            window,
            stats,
            channel,
            device,
            sub,
            cursor: 0,
            caught_up: false,
            inflight: BTreeSet::new(),
            receipts: Vec::new(),
            epoch,
            verify: false,
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    /// True when entries may be waiting in the store and the window has
    /// room for them, or when the event queue overflowed and the session
    /// must catch up with the store.
    pub fn wants_read(&self) -> bool {
        self.sub.inbox.lagged.load(Ordering::Acquire)
            || self.sub.inbox.reset.load(Ordering::Acquire)
            || self.verify
            || (!self.caught_up && self.room() > 0)
    }

    /// Reads the next entries this device has not acked, up to the window,
    /// and returns the frames to send.
    pub async fn read(&mut self) -> Result<Vec<Bytes>, StoreError> {
        if self.sub.inbox.reset.swap(false, Ordering::AcqRel) {
            self.start_over(None);
        }
        // Clear first: an event that lags the queue after this point sets it
        // again and is read by the next call.
        let lagged = self.sub.inbox.lagged.swap(false, Ordering::AcqRel);
        if lagged || std::mem::take(&mut self.verify) {
            self.check_epoch().await?;
        }
        if lagged {
            // Dropped events may have been entries or acks.
            self.caught_up = false;
            if !self.inflight.is_empty() {
                self.resync_inflight().await?;
            }
        }
        let limit = self.room();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries = self
            .store
            .read(
                &self.channel,
                &self.device,
                self.cursor,
                limit,
                now_millis(),
            )
            .await?;
        self.caught_up = entries.len() < limit;
        Ok(entries.into_iter().map(|e| self.take(e)).collect())
    }

    /// Starts over from the head of the log (a new epoch, or a store that
    /// may have lost writes): everything the device has not acked is sent
    /// again, in log order (delivery is at least once).
    fn start_over(&mut self, epoch: Option<Epoch>) {
        self.cursor = 0;
        self.caught_up = false;
        self.inflight.clear();
        // Receipts written under the old seqs must not ack the new ones.
        self.receipts.clear();
        if epoch.is_some() {
            self.epoch = epoch;
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts over if the log's epoch is not the one this session read.
    async fn check_epoch(&mut self) -> Result<(), StoreError> {
        let now = self.store.epoch(&self.channel).await?;
        match (self.epoch, now) {
            (Some(old), Some(new)) if old != new => self.start_over(Some(new)),
            (None, Some(new)) => self.epoch = Some(new),
            _ => {}
        }
        Ok(())
    }

    /// A lagged queue may have dropped `Acked` events: keep in flight only
    /// what the store still has unacked for this device.
    async fn resync_inflight(&mut self) -> Result<(), StoreError> {
        let unacked: BTreeSet<Seq> = self
            .store
            .read(&self.channel, &self.device, 0, usize::MAX, now_millis())
            .await?
            .into_iter()
            .map(|e| e.seq)
            .take_while(|seq| *seq <= self.cursor)
            .collect();
        self.inflight.retain(|seq| unacked.contains(seq));
        Ok(())
    }

    fn take(&mut self, entry: Entry) -> Bytes {
        self.cursor = self.cursor.max(entry.seq);
        if entry.needs_ack() {
            self.inflight.insert(entry.seq);
        } else {
            self.receipts.push(entry.seq);
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        entry.payload
    }

    /// Waits for the next hub event. Cancel-safe.
    pub async fn recv(&mut self) -> Event {
        self.sub.inbox.recv().await
    }

    /// [`Session::recv`] as a poll, for a caller that waits on several
    /// sources in one poll of its own: the task's waker is kept for the
    /// next event, and nothing else is.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Event> {
        self.sub.inbox.poll_recv(cx)
    }

    /// Whether the server is shutting down (`Hub::close_all`). Read it
    /// after a `poll_recv` that returned `Pending`: the task is then woken
    /// when the flag is set later.
    pub fn server_closing(&self) -> bool {
        self.sub.is_closing()
    }

    /// The next hub event if one is already queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.sub.inbox.try_recv()
    }

    /// Applies a hub event; returns a frame to send now, if any.
    pub fn on_event(&mut self, event: Event) -> Option<Bytes> {
        match event {
            Event::Entry(entry) => {
                if entry.seq <= self.cursor {
                    // The first entry of a log this session is past: a
                    // new life of the counter, or a late event. The next
                    // read compares epochs.
                    self.verify |= entry.seq == 1;
                    None
                } else if self.caught_up && entry.seq == self.cursor + 1 && self.room() > 0 {
                    Some(self.take(entry))
                } else {
                    self.caught_up = false;
                    None
                }
            }
            Event::Acked { seq, .. } => {
                self.inflight.remove(&seq);
                None
            }
            Event::Live(payload) => Some(payload),
            Event::Wake(seq) => {
                if seq > self.cursor {
                    self.caught_up = false;
                }
                self.verify |= seq == 1 && self.cursor >= 1;
                None
            }
        }
    }

    /// Call after the frames returned so far were written to the socket:
    /// receipts among them count as delivered to this device. `None` when
    /// there is nothing to record; the future can run in the background.
    pub fn written(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), StoreError>> + Send + 'static> {
        if self.receipts.is_empty() {
            return None;
        }
        let seqs = std::mem::take(&mut self.receipts);
        let (store, channel, device) = (
            self.store.clone(),
            self.channel.clone(),
            self.device.clone(),
        );
        Some(async move { store.ack_seqs(&channel, &device, &seqs).await })
    }
}
