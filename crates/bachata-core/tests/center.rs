//! The messages center and sessions in process, on the memory store:
//! behaviour that is hard to reach through a socket (overflowing event
//! queues, a failing store).

use std::sync::Arc;

use async_trait::async_trait;
use bachata_core::{
    AckRequest, AckState, Acked, DeliveryConfig, Device, Enqueued, Entry, Forgotten, MemoryStore,
    MessagesCenter, Millis, NewMessage, Rejection, Seq, Session, Store, StoreError, Undelivered,
};
use bachata_proto::{Channel, DataMessage, DeviceId, ErrorCode, GroupId, MessageId};
use bytes::Bytes;
use serde_json::Value;

fn ch(s: &str) -> Channel {
    Channel::new(s).expect("valid channel")
}

fn direct(id: &str, dest: &str) -> DataMessage {
    let mut m = DataMessage::new("direct");
    m.id = Some(MessageId::new(id).expect("valid id"));
    m.dest = Some(dest.to_owned());
    m
}

fn id_of(payload: &Bytes) -> String {
    let v: Value = serde_json::from_slice(payload).expect("payload is JSON");
    v["id"].as_str().map(str::to_owned).unwrap_or_default()
}

fn center(inflight: usize) -> Arc<MessagesCenter> {
    MessagesCenter::builder(Arc::new(MemoryStore::new()))
        .config(DeliveryConfig {
            inflight,
            ..DeliveryConfig::default()
        })
        .build()
}

/// Drives a session the way the server does until nothing more comes
/// without an ack; returns the ids it would have sent.
async fn drain(session: &mut Session) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        while session.wants_read() {
            out.extend(session.read().await.expect("read").iter().map(id_of));
        }
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), session.recv()).await;
        match next {
            Ok(event) => out.extend(session.on_event(event).as_ref().map(id_of)),
            _ => return out,
        }
    }
}

#[tokio::test]
async fn a_session_whose_event_queue_overflowed_catches_up_from_the_store() {
    let c = center(10_000);
    let alice = ch("alice");
    let mut bob = c.open_session(ch("bob"), None).await.expect("session");
    assert!(drain(&mut bob).await.is_empty());
    // 3000 messages while bob's task does not look at its queue (1024).
    for i in 0..3000 {
        c.submit(Some(&alice), direct(&format!("m{i}"), "bob"))
            .await
            .expect("accepted");
    }
    let got = drain(&mut bob).await;
    let want: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "all, in order, once");
}

#[tokio::test]
async fn acks_lost_in_an_overflowed_queue_do_not_stall_the_window() {
    let c = center(2);
    let alice = ch("alice");
    let device: Device = Some(DeviceId::new("phone").expect("valid"));
    let mut tab_a = c.open_session(ch("bob"), device.clone()).await.expect("a");
    let mut tab_b = c.open_session(ch("bob"), device.clone()).await.expect("b");
    for i in 0..2 {
        c.submit(Some(&alice), direct(&format!("m{i}"), "bob"))
            .await
            .expect("accepted");
    }
    assert_eq!(drain(&mut tab_b).await, ["m0", "m1"], "window of 2 full");
    // Flood tab B's queue, then ack on tab A: B's Acked events are dropped.
    for i in 2..1100 {
        c.submit(Some(&alice), direct(&format!("m{i}"), "bob"))
            .await
            .expect("accepted");
    }
    assert_eq!(drain(&mut tab_a).await, ["m0", "m1"]);
    for id in ["m0", "m1"] {
        c.ack(&ch("bob"), &device, MessageId::new(id).expect("id"))
            .await
            .expect("ack");
    }
    let got = drain(&mut tab_b).await;
    assert_eq!(got, ["m2", "m3"], "B resynced its window from the store");
}

/// A store whose every call fails, as a dead disk would.
struct DeadStore;

#[async_trait]
impl Store for DeadStore {
    async fn enqueue(&self, _: NewMessage) -> Result<Enqueued, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn read(
        &self,
        _: &Channel,
        _: &Device,
        _: Seq,
        _: usize,
        _: Millis,
    ) -> Result<Vec<Entry>, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn ack(&self, _: AckRequest) -> Result<Acked, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn ack_seqs(&self, _: &Channel, _: &Device, _: &[Seq]) -> Result<(), StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn touch_device(
        &self,
        _: &Channel,
        _: &Device,
        _: Millis,
        _: Millis,
    ) -> Result<(), StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn forget(&self, _: Millis, _: Millis) -> Result<Forgotten, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn pending_count(&self, _: &Channel, _: Millis) -> Result<u64, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn expire(&self, _: Millis) -> Result<u64, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn ack_state(&self, _: &Channel, _: Seq) -> Result<AckState, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn is_duplicate(
        &self,
        _: Option<&Channel>,
        _: &bachata_proto::MessageId,
        _: Millis,
    ) -> Result<bool, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn take_undelivered(
        &self,
        _: Millis,
        _: Millis,
        _: usize,
    ) -> Result<Vec<Undelivered>, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn finish_undelivered(&self, _: &[(Channel, Seq)]) -> Result<(), StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn add_member(&self, _: &GroupId, _: &Channel) -> Result<bool, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn remove_member(&self, _: &GroupId, _: &Channel) -> Result<bool, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
    async fn members(&self, _: &GroupId) -> Result<Vec<Channel>, StoreError> {
        Err(StoreError::backend("disk on fire"))
    }
}

#[tokio::test]
async fn a_failing_store_means_unavailable_never_a_100() {
    let c = MessagesCenter::builder(Arc::new(DeadStore)).build();
    let err = c
        .submit(Some(&ch("alice")), direct("m1", "bob"))
        .await
        .expect_err("refused");
    assert_eq!(
        err,
        Rejection {
            id: Some(MessageId::new("m1").expect("id")),
            code: ErrorCode::Unavailable,
            reason: "storage is unavailable; retry later".into(),
            app_code: None,
        }
    );
    assert!(c.open_session(ch("bob"), None).await.is_err());
    assert!(
        c.ack(&ch("bob"), &None, MessageId::new("m1").expect("id"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_failing_store_refuses_group_messages_as_unavailable() {
    let c = MessagesCenter::builder(Arc::new(DeadStore)).build();
    let mut m = DataMessage::new("group");
    m.id = Some(MessageId::new("g1").expect("id"));
    m.dest = Some("team".into());
    let err = c.submit(Some(&ch("alice")), m).await.expect_err("refused");
    assert_eq!(err.code, ErrorCode::Unavailable);
}
