//! Presence across nodes: who is connected to a channel on any node that
//! shares this node's store, for `GET /api/channels/{channel}`
//! (protocol.md section 7).
//!
//! Each node writes its own connection counts, per channel and device, to a
//! shared place (Redis: `RedisPresence`) whenever they change, and writes
//! them all again every [`Presence::refresh_every`]. A count that is not
//! written again within the implementation's time to live stops counting:
//! a node that dies (SIGKILL, a lost machine) drops out of every channel's
//! count by itself. Reading a channel sums this node's live count (exact)
//! and the other nodes' last written ones.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bachata_proto::Channel;

use crate::hub::Hub;
use crate::store::{Device, StoreError};

/// One channel's connections on one node, per device (an empty list: none).
pub type DeviceCounts = Vec<(Device, usize)>;

/// Where the nodes of one store share their connection counts.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// How often this node writes every count again; well within the time
    /// after which the others stop counting a count nobody wrote again.
    fn refresh_every(&self) -> Duration;

    /// Writes this node's connections of each channel (an empty list
    /// removes the node from that channel).
    async fn report(&self, counts: Vec<(Channel, DeviceCounts)>) -> Result<(), StoreError>;

    /// The other nodes' live connections of `channel`, per device.
    async fn others(&self, channel: &Channel) -> Result<DeviceCounts, StoreError>;
}

/// At most this many channels per [`Presence::report`] call.
const REPORT_BATCH: usize = 512;

/// Keeps the shared counts of this node up to date until the hub is gone:
/// the channels whose connections changed as soon as they change (coalesced
/// while a write is under way), every channel every `refresh_every`.
///
/// `writing` is held from taking the changes to the end of their write (see
/// [`crate::MessagesCenter::flush_presence`]).
pub(crate) async fn report_presence(
    presence: Arc<dyn Presence>,
    hub: Weak<Hub>,
    writing: Arc<tokio::sync::Mutex<()>>,
) {
    let Some(changes) = hub.upgrade().map(|h| h.track_changes()) else {
        return;
    };
    let mut refresh = tokio::time::interval(presence.refresh_every());
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let everything = tokio::select! {
            () = changes.notified() => false,
            _ = refresh.tick() => true,
        };
        let _writing = writing.lock().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let channels = if everything {
            hub.take_changed();
            hub.channels_with_connections()
        } else {
            hub.take_changed()
        };
        let counts = counts_of(&hub, channels);
        drop(hub);
        for batch in counts.chunks(REPORT_BATCH) {
            if let Err(e) = presence.report(batch.to_vec()).await {
                // The next refresh writes every count again.
                tracing::warn!(error = %e, "cannot share this node's connection counts");
                break;
            }
        }
    }
}

/// This node's live connections of each of `channels`.
pub(crate) fn counts_of(hub: &Hub, channels: Vec<Channel>) -> Vec<(Channel, DeviceCounts)> {
    channels
        .into_iter()
        .map(|c| {
            let online = hub.online(&c);
            (c, online)
        })
        .collect()
}

/// `a` and `b` added up, per device.
pub fn merge_counts(mut a: DeviceCounts, b: DeviceCounts) -> DeviceCounts {
    for (device, n) in b {
        match a.iter_mut().find(|(d, _)| *d == device) {
            Some((_, m)) => *m += n,
            None => a.push((device, n)),
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ch(name: &str) -> Channel {
        Channel::new(name).expect("channel")
    }

    fn dev(name: &str) -> Device {
        Some(bachata_proto::DeviceId::new(name).expect("device"))
    }

    #[derive(Default)]
    struct Recorded {
        reports: Mutex<Vec<(Channel, DeviceCounts)>>,
        notify: tokio::sync::Notify,
        /// When set, each write waits for a permit (a test holds one under
        /// way), after telling `started`.
        permits: Option<tokio::sync::Semaphore>,
        started: tokio::sync::Notify,
    }

    #[async_trait]
    impl Presence for Recorded {
        fn refresh_every(&self) -> Duration {
            Duration::from_secs(3600)
        }
        async fn report(&self, counts: Vec<(Channel, DeviceCounts)>) -> Result<(), StoreError> {
            if let Some(permits) = &self.permits {
                self.started.notify_one();
                permits.acquire().await.expect("open").forget();
            }
            self.reports.lock().expect("lock").extend(counts);
            self.notify.notify_one();
            Ok(())
        }
        async fn others(&self, _: &Channel) -> Result<DeviceCounts, StoreError> {
            Ok(Vec::new())
        }
    }

    impl Recorded {
        /// Waits until the last report for `channel` is `want`.
        async fn until(&self, channel: &Channel, want: &DeviceCounts) {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let notified = self.notify.notified();
                    let last = self
                        .reports
                        .lock()
                        .expect("lock")
                        .iter()
                        .rev()
                        .find(|(c, _)| c == channel)
                        .map(|(_, n)| n.clone());
                    if last.as_ref() == Some(want) {
                        return;
                    }
                    notified.await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no report of {want:?} for {channel}"));
        }
    }

    #[tokio::test]
    async fn connects_and_disconnects_are_reported_and_the_last_one_leaves_an_empty_count() {
        let hub = Hub::tracking_changes();
        let presence = Arc::new(Recorded::default());
        tokio::spawn(report_presence(
            presence.clone(),
            Arc::downgrade(&hub),
            Arc::default(),
        ));
        // The first refresh tick reports an empty hub.
        let phone = hub.subscribe(&ch("bob"), &dev("phone"));
        let phone2 = hub.subscribe(&ch("bob"), &dev("phone"));
        let laptop = hub.subscribe(&ch("bob"), &None);
        presence
            .until(&ch("bob"), &vec![(dev("phone"), 2), (None, 1)])
            .await;
        drop(phone);
        drop(laptop);
        presence.until(&ch("bob"), &vec![(dev("phone"), 1)]).await;
        drop(phone2);
        presence.until(&ch("bob"), &Vec::new()).await;
    }

    /// A graceful stop flushes the counts right after its connections
    /// closed. The presence task may have taken that change already and be
    /// writing it: the flush must wait for that write, not return at once
    /// with nothing left to take (and let the process exit before the
    /// write lands, leaving the node counted until its counts expire).
    #[tokio::test]
    async fn a_flush_waits_for_the_write_under_way() {
        let presence = Arc::new(Recorded {
            permits: Some(tokio::sync::Semaphore::new(0)),
            ..Recorded::default()
        });
        let center = crate::MessagesCenter::builder(Arc::new(crate::MemoryStore::new()))
            .presence(presence.clone())
            .build();
        let session = center.open_session(ch("bob"), None).await.expect("session");
        let permits = presence.permits.as_ref().expect("gated");
        permits.add_permits(1);
        presence.until(&ch("bob"), &vec![(None, 1)]).await;
        // The connection closes; the presence task takes the change and
        // its write waits for a permit.
        let started = presence.started.notified();
        drop(session);
        tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .expect("the presence task writes the change");
        let flushing = center.clone();
        let mut flush = tokio::spawn(async move { flushing.flush_presence().await });
        let early = tokio::time::timeout(Duration::from_millis(200), &mut flush).await;
        assert!(
            early.is_err(),
            "the flush returned while a write was under way"
        );
        permits.add_permits(16);
        tokio::time::timeout(Duration::from_secs(5), flush)
            .await
            .expect("the flush ends once the write did")
            .expect("task");
        presence.until(&ch("bob"), &Vec::new()).await;
    }

    #[test]
    fn merge_adds_per_device() {
        let merged = merge_counts(
            vec![(None, 1), (dev("phone"), 2)],
            vec![(dev("phone"), 3), (dev("tv"), 1)],
        );
        assert_eq!(merged, vec![(None, 1), (dev("phone"), 5), (dev("tv"), 1)]);
    }
}
