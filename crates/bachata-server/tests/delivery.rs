//! protocol.md section 5, reliable delivery, through a real server and real
//! WebSocket clients over loopback.

mod common;

use std::time::Duration;

use bachata_server::StoreKind;
use bachata_testkit::client::{Closed, TestClient};
use common::{start, start_embedded, start_with};
use serde_json::json;

#[tokio::test]
async fn online_delivery_with_100_200_300() {
    let s = start_embedded().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send_direct("m1", "bob", json!({"text": "hi"})).await;
    alice.expect(100, "m1").await;
    let m = bob.recv().await;
    assert_eq!(m["id"], "m1");
    assert_eq!(m["data"], json!({"text": "hi"}));
    bob.ack("m1").await;
    let done = alice.recv().await;
    assert_eq!(done, json!({"type": 300, "data": "m1", "from": "bob"}));
}

#[tokio::test]
async fn offline_receiver_gets_messages_on_connect_in_order() {
    let s = start_embedded().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for i in 0..20 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 0..20 {
        let m = bob.recv().await;
        assert_eq!(m["id"], format!("m{i}"));
        assert_eq!(m["from"], "alice");
    }
}

#[tokio::test]
async fn unacked_messages_come_again_on_reconnect_before_newer_ones() {
    let s = start_embedded().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    alice.send_direct("m2", "bob", json!(2)).await;
    alice.expect(100, "m2").await;
    assert_eq!(bob.recv().await["id"], "m1");
    assert_eq!(bob.recv().await["id"], "m2");
    bob.ack("m2").await; // only m2
    assert_eq!(
        alice.recv().await,
        json!({"type": 300, "data": "m2", "from": "bob"})
    );
    bob.close().await;
    alice.send_direct("m3", "bob", json!(3)).await;
    alice.expect(100, "m3").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m1", "unacked first");
    assert_eq!(bob.recv().await["id"], "m3", "then what is new");
    alice.send_direct("m4", "bob", json!(4)).await;
    alice.expect(100, "m4").await;
    assert_eq!(bob.recv().await["id"], "m4");
    assert!(
        bob.sync().await.is_empty(),
        "m2 was acked and never comes again"
    );
}

#[tokio::test]
async fn each_device_gets_every_message_and_the_sender_one_300() {
    let s = start_embedded().await;
    let addr = s.addr();
    // Both devices have been seen before.
    let phone = TestClient::connect_device(addr, "bob", "phone").await;
    phone.close().await;
    let mut laptop = TestClient::connect_device(addr, "bob", "laptop").await;
    let mut alice = TestClient::connect(addr, "alice").await;
    alice.send_direct("m1", "bob", json!("hi")).await;
    alice.expect(100, "m1").await;
    assert_eq!(laptop.recv().await["id"], "m1");
    laptop.ack("m1").await;
    assert_eq!(
        alice.recv().await,
        json!({"type": 300, "data": "m1", "from": "bob"})
    );
    // The phone was offline while the laptop read it: it still gets it.
    let mut phone = TestClient::connect_device(addr, "bob", "phone").await;
    assert_eq!(phone.recv().await["id"], "m1");
    phone.ack("m1").await;
    phone.sync().await;
    assert!(alice.sync().await.is_empty(), "no second 300");
    // Acked by both: gone for both.
    let mut phone = TestClient::connect_device(addr, "bob", "phone").await;
    assert!(phone.sync().await.is_empty());
    let mut laptop2 = TestClient::connect_device(addr, "bob", "laptop").await;
    assert!(laptop2.sync().await.is_empty());
}

#[tokio::test]
async fn two_connections_of_one_device_both_get_messages_in_the_same_order() {
    let s = start().await;
    let mut tab1 = TestClient::connect(s.addr(), "bob").await;
    let mut tab2 = TestClient::connect(s.addr(), "bob").await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    for i in 0..10 {
        alice.send_direct(&format!("a{i}"), "bob", json!(i)).await;
        carol.send_direct(&format!("c{i}"), "bob", json!(i)).await;
    }
    let mut seen1 = Vec::new();
    let mut seen2 = Vec::new();
    for _ in 0..20 {
        seen1.push(tab1.recv().await["id"].clone());
        seen2.push(tab2.recv().await["id"].clone());
    }
    assert_eq!(seen1, seen2);
}

#[tokio::test]
async fn an_ack_from_another_channel_changes_nothing() {
    let s = start().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    assert_eq!(bob.recv().await["id"], "m1");
    carol.ack("m1").await;
    carol.ack("nonexistent").await;
    assert!(carol.sync().await.is_empty(), "unknown ids are ignored");
    assert!(alice.sync().await.is_empty(), "no 300 from carol's ack");
    bob.close().await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m1", "still pending for bob");
}

#[tokio::test]
async fn a_300_is_kept_for_an_offline_sender() {
    let s = start_embedded().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    alice.close().await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m1");
    bob.ack("m1").await;
    bob.sync().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    assert_eq!(
        alice.recv().await,
        json!({"type": 300, "data": "m1", "from": "bob"})
    );
    alice.close().await;
    // Delivered once: not again on the next connection.
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    assert!(alice.sync().await.is_empty());
}

#[tokio::test]
async fn a_resent_id_is_stored_once_and_gets_100_again() {
    let s = start().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    assert_eq!(bob.recv().await["id"], "m1");
    assert!(bob.sync().await.is_empty(), "delivered once");
    // The same id from another sender is another message.
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    carol.send_direct("m1", "bob", json!(2)).await;
    carol.expect(100, "m1").await;
    assert_eq!(bob.recv().await["from"], "carol");
}

#[tokio::test]
async fn a_message_without_id_goes_to_live_connections_only() {
    let s = start().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice
        .send(json!({"type": "typing", "dest": "bob", "data": true}))
        .await;
    let m = bob.recv().await;
    assert_eq!(m["type"], "typing");
    assert_eq!(m["from"], "alice");
    assert!(
        alice.sync().await.is_empty(),
        "no 100 for a message without id"
    );
    alice
        .send(json!({"type": "typing", "dest": "carol", "data": true}))
        .await;
    assert!(alice.sync().await.is_empty());
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    assert!(
        carol.sync().await.is_empty(),
        "not stored for offline channels"
    );
}

#[tokio::test]
async fn the_inflight_window_holds_messages_until_acks_arrive() {
    let s = start_with(|c| c.inflight = 2).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for i in 0..5 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m0");
    assert_eq!(bob.recv().await["id"], "m1");
    assert!(bob.sync().await.is_empty(), "window of 2 is full");
    bob.ack("m0").await;
    assert_eq!(bob.recv().await["id"], "m2");
    bob.ack("m1").await;
    bob.ack("m2").await;
    assert_eq!(bob.recv().await["id"], "m3");
    assert_eq!(bob.recv().await["id"], "m4");
    for i in 0..3 {
        alice.expect(300, &format!("m{i}")).await;
    }
    // Live messages respect the window too.
    alice.send_direct("m5", "bob", json!(5)).await;
    alice.expect(100, "m5").await;
    assert!(bob.sync().await.is_empty());
    bob.ack("m3").await;
    assert_eq!(bob.recv().await["id"], "m5");
}

#[tokio::test]
async fn a_full_queue_refuses_with_queue_full_and_frees_on_ack() {
    let s = start_with(|c| c.queue_limit = 3).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for i in 0..3 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
        alice.expect(100, &format!("m{i}")).await;
    }
    alice.send_direct("m3", "bob", json!(3)).await;
    let v = alice.recv().await;
    assert_eq!(v["type"], 400);
    assert_eq!(v["error"], "queue_full");
    assert_eq!(v["data"], "m3");
    // Other channels are not affected.
    alice.send_direct("x", "carol", json!(0)).await;
    alice.expect(100, "x").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "m0");
    bob.ack("m0").await;
    bob.sync().await;
    alice.recv().await; // the 300
    alice.send_direct("m3", "bob", json!(3)).await;
    alice.expect(100, "m3").await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let s = start_with(|c| c.message_ttl = Duration::from_millis(400)).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("old", "bob", json!(1)).await;
    alice.expect(100, "old").await;
    // Waiting for time to pass is the behaviour under test, not a sync.
    tokio::time::sleep(Duration::from_millis(600)).await;
    alice.send_direct("new", "bob", json!(2)).await;
    alice.expect(100, "new").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "new");
    assert!(bob.sync().await.is_empty());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4008_and_loses_nothing() {
    let s = start_with(|c| {
        c.slow_consumer_timeout = Duration::from_millis(500);
        c.max_frame_bytes = 1 << 20;
        c.inflight = 10_000;
        c.store = StoreKind::Embedded;
    })
    .await;
    let addr = s.addr();
    let mut bob = TestClient::connect(addr, "bob").await;
    // ~40 MB to a client that does not read: more than socket buffers hold.
    let sender = tokio::spawn(async move {
        let mut alice = TestClient::connect(addr, "alice").await;
        let chunk = "x".repeat(500_000);
        for i in 0..80 {
            alice
                .send_direct(&format!("m{i}"), "bob", json!(chunk))
                .await;
            alice.expect(100, &format!("m{i}")).await;
        }
    });
    // Wait until the server gave up on bob, then read: buffered frames,
    // then the close frame.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = bachata_testkit::http::get(addr, "/metrics").await;
        if metrics.contains("bachata_slow_consumers_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never closed as slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = 0;
    let closed = loop {
        match bob.next().await {
            Ok(_) => got += 1,
            Err(c) => break c,
        }
    };
    assert_eq!(closed, Closed::Code(4008));
    assert!(got < 80, "some messages were still queued when it closed");
    sender.await.expect("sender finished");
    // Nothing lost: everything unacked comes again.
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 0..80 {
        let m = bob.recv().await;
        assert_eq!(m["id"], format!("m{i}"));
        bob.ack(&format!("m{i}")).await;
    }
}
