//! protocol.md sections 2 and 3 through a real server and a real WebSocket client
//! over loopback: connecting, ready, ping, parsing, 400s and closes.

mod common;

use bachata_testkit::client::{Closed, TestClient, refused, url};
use bachata_testkit::http;
use bachata_testkit::raw::{RawSocket, frame, opcode};
use common::{start, start_with};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ready_names_channel_and_device() {
    let s = start().await;
    let c = TestClient::connect(s.addr(), "alice").await;
    assert_eq!(c.ready, json!({"channel": "alice"}));
    let c = TestClient::connect_device(s.addr(), "alice", "phone").await;
    assert_eq!(c.ready, json!({"channel": "alice", "device": "phone"}));
    let c = TestClient::connect(s.addr(), "ünï cødé/#?").await;
    assert_eq!(c.ready, json!({"channel": "ünï cødé/#?"}));
}

#[tokio::test]
async fn bad_handshakes_get_401_with_a_reason() {
    let s = start().await;
    let addr = s.addr();
    let (status, body) = refused(format!("ws://{addr}/messages")).await;
    assert_eq!(status, 401);
    assert!(body.contains("channel"), "{body}");
    let (status, body) = refused(url(addr, &"x".repeat(129), None)).await;
    assert_eq!(status, 401);
    assert!(body.contains("invalid channel"), "{body}");
    let (status, _) = refused(url(addr, "a\u{1}b", None)).await;
    assert_eq!(status, 401);
    let (status, body) = refused(url(addr, "alice", Some(&"d".repeat(65)))).await;
    assert_eq!(status, 401);
    assert!(body.contains("invalid device"), "{body}");
}

#[tokio::test]
async fn the_upgrade_follows_rfc_6455_and_refuses_what_is_not_one() {
    let s = start().await;
    let addr = s.addr();
    // The RFC's own example key and answer (section 1.3).
    let (mut socket, head) =
        RawSocket::connect_with_early_data(addr, "/messages?channel=alice", &[]).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    let (op, ready) = socket.read_frame().await.expect("read").expect("ready");
    assert_eq!(op, opcode::TEXT);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ready).expect("json")["type"],
        1000,
        "ready"
    );

    let request = |method: &str, headers: &str| {
        format!("{method} /messages?channel=alice HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n")
    };
    let upgrade = "Connection: Upgrade, close\r\nUpgrade: websocket\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let version = "Sec-WebSocket-Version: 13\r\n";
    for (method, headers, status, reason) in [
        ("GET", "Connection: close\r\n".to_owned(), 400, "Connection"),
        (
            "GET",
            format!("{upgrade}{key}Sec-WebSocket-Version: 8\r\n"),
            426,
            "Sec-WebSocket-Version",
        ),
        (
            "GET",
            format!("{upgrade}{version}"),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            "GET",
            format!("Connection: Upgrade, close\r\nUpgrade: h2c\r\n{key}{version}"),
            400,
            "Upgrade",
        ),
        (
            "POST",
            format!("{upgrade}{key}{version}Content-Length: 0\r\n"),
            405,
            "",
        ),
    ] {
        let (got, body) = http::send(addr, &request(method, &headers)).await;
        assert_eq!(got, status, "{method} {headers:?}: {body}");
        assert!(body.contains(reason), "{method} {headers:?}: {body}");
    }
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_read() {
    // A client may write its first frames before the 101 arrives: hyper
    // has read them with the request, and the WebSocket must get them.
    let s = start().await;
    let ping = frame(opcode::TEXT, br#"{"type":1001}"#);
    let (mut socket, _) =
        RawSocket::connect_with_early_data(s.addr(), "/messages?channel=eager", &ping).await;
    let mut texts = Vec::new();
    for _ in 0..2 {
        let (op, payload) = socket.read_frame().await.expect("read").expect("a frame");
        assert_eq!(op, opcode::TEXT);
        texts.push(
            serde_json::from_slice::<serde_json::Value>(&payload).expect("json")["type"].clone(),
        );
    }
    assert_eq!(texts, [json!(1000), json!(1002)], "ready, then the pong");
}

#[tokio::test]
async fn ping_gets_pong() {
    let s = start().await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    c.send(json!({"type": 1001})).await;
    assert_eq!(c.recv().await, json!({"type": 1002}));
    // A pong from the client needs no answer.
    c.send(json!({"type": 1002})).await;
    assert!(c.sync().await.is_empty());
}

async fn expect_400(c: &mut TestClient, frame: &str, code: &str, id: serde_json::Value) {
    c.send_text(frame).await;
    let v = c.recv().await;
    assert_eq!(v["type"], 400, "{frame} -> {v}");
    assert_eq!(v["error"], code, "{frame} -> {v}");
    assert_eq!(v["data"], id, "{frame} -> {v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

#[tokio::test]
async fn every_bad_frame_gets_a_400_and_the_connection_stays() {
    let s = start().await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    let null = serde_json::Value::Null;
    expect_400(&mut c, "{", "invalid_json", null.clone()).await;
    expect_400(&mut c, "hello", "invalid_json", null.clone()).await;
    expect_400(&mut c, "[1,2]", "invalid_message", null.clone()).await;
    expect_400(&mut c, "{}", "invalid_message", null.clone()).await;
    expect_400(&mut c, r#"{"type":true}"#, "invalid_message", null.clone()).await;
    expect_400(&mut c, r#"{"type":2.5}"#, "invalid_message", null.clone()).await;
    expect_400(
        &mut c,
        r#"{"id":"m1","type":"direct","dest":"bob","time":"noon"}"#,
        "invalid_message",
        json!("m1"),
    )
    .await;
    expect_400(
        &mut c,
        r#"{"id":7,"type":"direct","dest":"bob"}"#,
        "invalid_message",
        null.clone(),
    )
    .await;
    expect_400(
        &mut c,
        r#"{"id":"m2","type":"direct","dest":5}"#,
        "invalid_message",
        json!("m2"),
    )
    .await;
    expect_400(
        &mut c,
        r#"{"id":"m3","type":"direct","dest":""}"#,
        "invalid_message",
        json!("m3"),
    )
    .await;
    expect_400(
        &mut c,
        r#"{"id":"m4","type":"direct"}"#,
        "no_route",
        json!("m4"),
    )
    .await;
    expect_400(&mut c, r#"{"type":200}"#, "invalid_message", null.clone()).await;
    for t in [100, 300, 400, 1000, 42] {
        expect_400(
            &mut c,
            &format!(r#"{{"type":{t},"data":"x"}}"#),
            "invalid_message",
            null.clone(),
        )
        .await;
    }
    // Still fully usable.
    c.send_direct("ok", "bob", json!("hi")).await;
    c.expect(100, "ok").await;
}

#[tokio::test]
async fn binary_frames_are_read_as_utf8_text() {
    let s = start().await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    c.send_raw(Message::Binary(br#"{"type":1001}"#.to_vec().into()))
        .await;
    assert_eq!(c.recv().await, json!({"type": 1002}));
    c.send_raw(Message::Binary(vec![b'{', 0xff, 0xfe, b'}'].into()))
        .await;
    assert_eq!(c.closed().await, Closed::Code(1007));
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let s = start_with(|c| c.max_frame_bytes = 1024).await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    let big = format!(
        r#"{{"type":"direct","dest":"bob","data":"{}"}}"#,
        "x".repeat(2000)
    );
    c.send_text(&big).await;
    assert_eq!(c.closed().await, Closed::Code(1009));
    // The server is fine.
    let mut c = TestClient::connect(s.addr(), "alice").await;
    assert!(c.sync().await.is_empty());
}

#[tokio::test]
async fn deep_nesting_does_not_hurt_the_server() {
    // Within the frame limit: a clear 400.
    let s = start_with(|c| c.max_frame_bytes = 1 << 20).await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    c.send_text(&deep).await;
    let v = c.recv().await;
    assert_eq!(v["error"], "invalid_json", "{v}");
    let deep_data = format!(
        r#"{{"id":"d","type":"direct","dest":"bob","data":{}}}"#,
        "{\"a\":".repeat(100_000)
    );
    c.send_text(&deep_data).await;
    assert_eq!(c.recv().await["error"], "invalid_json");
    assert!(c.sync().await.is_empty());
    // Over the default frame limit: closed with 1009, server still up.
    let s = start().await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    c.send_text(&deep).await;
    assert_eq!(c.closed().await, Closed::Code(1009));
    let mut c = TestClient::connect(s.addr(), "alice").await;
    assert!(c.sync().await.is_empty());
}

#[tokio::test]
async fn server_sets_from_and_time_and_keeps_other_fields() {
    let s = start().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice
        .send_text(r#"{"id":"m1","type":"direct","dest":"bob","from":"mallory","data":{"text":"hi", "n": 1.50},"extra":[1,{"x":null}]}"#)
        .await;
    alice.expect(100, "m1").await;
    let m = bob.recv().await;
    assert_eq!(m["from"], "alice", "from cannot be spoofed: {m}");
    assert!(
        m["time"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
        "{m}"
    );
    assert_eq!(m["data"], json!({"text": "hi", "n": 1.50}));
    assert_eq!(m["extra"], json!([1, {"x": null}]));
    assert_eq!(m["type"], "direct");
    assert_eq!(m["dest"], "bob");
    alice
        .send(json!({"id":"m2","type":"direct","dest":"bob","time": 1234}))
        .await;
    alice.expect(100, "m2").await;
    assert_eq!(bob.recv().await["time"], 1234, "a given time is kept");
}

#[tokio::test]
async fn health_and_metrics() {
    let s = start().await;
    let (status, body) = http::get(s.addr(), "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    let (status, body) = http::get(s.addr(), "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "bachata_connections 1",
        "bachata_messages_received_total 1",
        "bachata_messages_delivered_total",
        "bachata_messages_acked_total",
        "bachata_pending_messages 1",
    ] {
        assert!(body.contains(name), "{name} missing in:\n{body}");
    }
    let (status, body) = http::get(s.addr(), "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("bachata"));
}

#[tokio::test]
async fn embedded_store_commit_latency_is_measured() {
    let s = common::start_embedded().await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    let (_, body) = http::get(s.addr(), "/metrics").await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("bachata_store_commit_seconds_count") && !l.ends_with(" 0")),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let s = start().await;
    let mut c = TestClient::connect(s.addr(), "alice").await;
    let server = s.server;
    let stop = tokio::spawn(server.shutdown());
    assert_eq!(c.closed().await, Closed::Code(1001));
    drop(c);
    tokio::time::timeout(std::time::Duration::from_secs(10), stop)
        .await
        .expect("shutdown finishes in time")
        .expect("shutdown task");
}

#[tokio::test]
async fn the_server_pings_and_closes_silent_connections() {
    let s = start_with(|c| c.ping_interval = std::time::Duration::from_millis(100)).await;
    // A client that answers pings (tungstenite does while reading) stays.
    let mut live = TestClient::connect(s.addr(), "alice").await;
    assert!(
        live.next_within(std::time::Duration::from_millis(600))
            .await
            .is_none(),
        "nothing but pings in 6 intervals, and still open"
    );
    assert!(live.sync().await.is_empty());
    // A raw socket that never reads, so never pongs, is closed.
    let (mut silent, _) = tokio_tungstenite::connect_async(url(s.addr(), "bob", None))
        .await
        .expect("connect");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    use futures_util::StreamExt;
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), silent.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert!(pings >= 2, "{pings} pings");
    assert_eq!(code, 1001);
}
