//! [`MemoryStore`]: the delivery state in memory only (`--store memory`).
//!
//! Everything is lost when the process exits; a 100 means "accepted by this
//! process". For ephemeral deployments and tests.

use async_trait::async_trait;
use bachata_proto::{Channel, GroupId, MessageId};
use parking_lot::Mutex;

use crate::memstate::{Discard, MemState};
use crate::store::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, Forgotten, Millis, NewMessage, Seq,
    Store, StoreError, Undelivered,
};

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemState>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        Ok(self.state.lock().enqueue(&msg, &mut Discard))
    }

    fn start_enqueue(&self, msg: NewMessage) -> Result<crate::store::PendingEnqueue, NewMessage> {
        let outcome = self.state.lock().enqueue(&msg, &mut Discard);
        Ok(Box::pin(std::future::ready(Ok(outcome))))
    }

    fn start_ack(&self, ack: AckRequest) -> Result<crate::store::PendingAck, AckRequest> {
        let acked = self.state.lock().ack(&ack, &mut Discard);
        Ok(Box::pin(std::future::ready(Ok(acked))))
    }

    async fn read(
        &self,
        channel: &Channel,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.state.lock().read(channel, device, after, limit, now))
    }

    async fn ack(&self, ack: AckRequest) -> Result<Acked, StoreError> {
        Ok(self.state.lock().ack(&ack, &mut Discard))
    }

    async fn ack_seqs(
        &self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        self.state
            .lock()
            .ack_seqs(channel, device, seqs, &mut Discard);
        Ok(())
    }

    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        _forget_after: Millis,
    ) -> Result<(), StoreError> {
        self.state
            .lock()
            .touch_device(channel, device, now, &mut Discard);
        Ok(())
    }

    async fn forget(&self, now: Millis, forget_after: Millis) -> Result<Forgotten, StoreError> {
        Ok(self
            .state
            .lock()
            .forget(now.saturating_sub(forget_after), &mut Discard))
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.state.lock().retained_bytes())
    }

    fn channel_count(&self) -> Option<u64> {
        Some(self.state.lock().channel_count())
    }

    async fn pending_count(&self, channel: &Channel, now: Millis) -> Result<u64, StoreError> {
        Ok(self.state.lock().pending_count(channel, now))
    }

    async fn ack_state(&self, channel: &Channel, seq: Seq) -> Result<AckState, StoreError> {
        Ok(self.state.lock().ack_state(channel, seq))
    }

    async fn is_duplicate(
        &self,
        sender: Option<&Channel>,
        id: &MessageId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self.state.lock().is_duplicate(sender, id, now))
    }

    async fn take_undelivered(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Result<Vec<Undelivered>, StoreError> {
        Ok(self.state.lock().take_undelivered(now, lease_until, limit))
    }

    async fn finish_undelivered(&self, done: &[(Channel, Seq)]) -> Result<(), StoreError> {
        self.state.lock().finish_undelivered(done, &mut Discard);
        Ok(())
    }

    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        Ok(self.state.lock().add_member(group, member, &mut Discard))
    }

    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        Ok(self.state.lock().remove_member(group, member, &mut Discard))
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError> {
        Ok(self.state.lock().members(group))
    }

    fn pending_total(&self) -> Option<u64> {
        Some(self.state.lock().pending_total())
    }

    async fn expire(&self, now: Millis) -> Result<u64, StoreError> {
        Ok(self.state.lock().expire(now, &mut Discard))
    }
}
