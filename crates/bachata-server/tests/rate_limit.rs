//! The per-connection rate limit: a burst beyond it gets 400 rate_limited,
//! never a disconnect, and other connections are not affected.

mod common;

use bachata_testkit::client::{Closed, TestClient};
use common::start_with;
use serde_json::json;

#[tokio::test]
async fn a_burst_over_the_limit_is_refused_not_disconnected() {
    let s = start_with(|c| {
        c.rate_limit = Some(2);
        c.rate_burst = Some(5);
    })
    .await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for i in 0..20 {
        alice.send_direct(&format!("m{i}"), "bob", json!(i)).await;
    }
    let mut stored = 0;
    let mut limited = Vec::new();
    for _ in 0..20 {
        let v = alice.recv().await;
        match v["type"].as_i64() {
            Some(100) => stored += 1,
            Some(400) => {
                assert_eq!(v["error"], "rate_limited", "{v}");
                limited.push(v["data"].as_str().expect("id").to_owned());
            }
            _ => panic!("unexpected {v}"),
        }
    }
    // The burst of 5 passes (plus what refilled meanwhile, at 2/s).
    assert!((5..15).contains(&stored), "{stored} stored");
    assert_eq!(stored + limited.len(), 20);
    // Still connected; pings and acks are not limited.
    assert!(alice.sync().await.is_empty());
    // Another connection has its own bucket.
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    carol.send_direct("c1", "bob", json!(1)).await;
    carol.expect(100, "c1").await;
    // The refused ids can be resent later (here after waiting for a token).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let id = &limited[0];
    alice.send_direct(id, "bob", json!(0)).await;
    alice.expect(100, id).await;
}

/// Frames the server cannot read take tokens too (they cost the server as
/// much as messages do): with the bucket emptied by junk, a message is
/// refused, and junk past the bucket closes the connection with 1008.
#[tokio::test]
async fn invalid_frames_count_against_the_rate_limit() {
    let s = start_with(|c| {
        c.rate_limit = Some(1);
        c.rate_burst = Some(3);
    })
    .await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for _ in 0..3 {
        alice.send_text("{not json").await;
        assert_eq!(alice.recv().await["error"], "invalid_json");
    }
    alice.send_direct("m1", "bob", json!(1)).await;
    let refused = alice.recv().await;
    assert_eq!(refused["error"], "rate_limited", "{refused}");
    alice.send_text("{not json").await;
    assert_eq!(alice.closed().await, Closed::Code(1008));
}
