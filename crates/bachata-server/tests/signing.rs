//! Message signatures through a real server (protocol.md section 6).

mod common;

use bachata_proto::sign::{channel_secret, message_signature};
use bachata_proto::{DataMessage, Inbound, Limits, parse_frame};
use bachata_testkit::client::TestClient;
use common::{start, start_with};
use serde_json::json;

const KEY: &str = "server-sign-key";

/// Signs the frame text exactly as a client would: over the `data` text as
/// written in the frame.
fn signed(text: &str, secret: &str) -> String {
    let Ok(Inbound::Data(mut m)) = parse_frame(text, &Limits::default()) else {
        panic!("not a data message: {text}");
    };
    m.sign = Some(message_signature(secret, &m));
    m.to_json()
}

#[tokio::test]
async fn the_ready_message_carries_the_channel_secret() {
    let s = start_with(|c| c.sign_key = Some(KEY.into())).await;
    let c = TestClient::connect(s.addr(), "alice").await;
    assert_eq!(
        c.ready,
        json!({"channel": "alice", "secret": channel_secret(KEY.as_bytes(), "alice")})
    );
    // Without a sign key there is no secret.
    let s = start().await;
    let c = TestClient::connect(s.addr(), "alice").await;
    assert!(c.ready.get("secret").is_none());
}

#[tokio::test]
async fn correct_wrong_and_missing_signatures() {
    let s = start_with(|c| c.sign_key = Some(KEY.into())).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    let secret = alice.ready["secret"].as_str().expect("secret").to_owned();

    // Correct, with data written with unusual spacing: the exact text counts.
    let text = r#"{"id":"m1","type":"direct","dest":"bob","data":{ "text" : "hi",  "n":1.0 }}"#;
    alice.send_text(&signed(text, &secret)).await;
    alice.expect(100, "m1").await;
    let m = bob.recv().await;
    assert_eq!(m["id"], "m1");
    // Transport messages need no sign.
    bob.ack("m1").await;
    alice.expect(300, "m1").await;

    // Wrong: signed with another channel's secret.
    let bobs = channel_secret(KEY.as_bytes(), "bob");
    let text = r#"{"id":"m2","type":"direct","dest":"bob","data":"x"}"#;
    alice.send_text(&signed(text, &bobs)).await;
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_i64(), v["error"].as_str()),
        (Some(400), Some("bad_signature"))
    );
    assert_eq!(v["data"], "m2");

    // Wrong: the signed data was changed on the way.
    let good = signed(
        r#"{"id":"m3","type":"direct","dest":"bob","data":"x"}"#,
        &secret,
    );
    alice
        .send_text(&good.replace(r#""data":"x""#, r#""data":"y""#))
        .await;
    assert_eq!(alice.recv().await["error"], "bad_signature");

    // Wrong: dest changed.
    alice
        .send_text(&good.replace(r#""dest":"bob""#, r#""dest":"carol""#))
        .await;
    assert_eq!(alice.recv().await["error"], "bad_signature");

    // Missing.
    alice
        .send(json!({"id": "m4", "type": "direct", "dest": "bob", "data": "x"}))
        .await;
    let v = alice.recv().await;
    assert_eq!(v["error"], "bad_signature");
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains("missing")),
        "{v}"
    );

    // None of the refused messages went anywhere.
    assert!(bob.sync().await.is_empty());
    // A message without id is checked too.
    alice.send(json!({"type": "typing", "dest": "bob"})).await;
    assert_eq!(alice.recv().await["error"], "bad_signature");
}

#[tokio::test]
async fn absent_fields_sign_as_empty_strings() {
    let s = start_with(|c| c.sign_key = Some(KEY.into())).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let secret = alice.ready["secret"].as_str().expect("secret").to_owned();
    let mut m = DataMessage::new("direct");
    m.dest = Some("bob".into());
    m.sign = Some(message_signature(&secret, &m));
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send_text(&m.to_json()).await;
    assert_eq!(bob.recv().await["type"], "direct");
}
