//! The Rust client against a real server on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bachata_client::{Client, ClientConfig, ClientError, Outgoing, State};
use bachata_proto::{DataMessage, ErrorCode};
use bachata_server::{Config, RunningServer, StoreKind};
use serde_json::json;

async fn server_at(listen: SocketAddr, dir: &Path) -> RunningServer {
    bachata_server::start(Config {
        listen,
        store: StoreKind::Embedded,
        data_dir: dir.to_owned(),
        ..Config::default()
    })
    .await
    .expect("server starts")
}

async fn server(dir: &Path) -> RunningServer {
    server_at(SocketAddr::from(([127, 0, 0, 1], 0)), dir).await
}

fn config(addr: SocketAddr, channel: &str) -> ClientConfig {
    let mut c = ClientConfig::channel(&format!("ws://{addr}"), channel);
    c.timeout = Duration::from_secs(5);
    c.min_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn send_resolves_on_100_and_300() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(dir.path()).await;
    let alice = Client::connect(config(s.addr(), "alice"))
        .await
        .expect("alice");
    assert_eq!(alice.ready()["channel"], "alice");
    let mut bob = Client::connect(config(s.addr(), "bob").device("phone"))
        .await
        .expect("bob");
    assert_eq!(bob.ready()["device"], "phone");
    let mut sent = alice
        .send(
            Outgoing::direct("bob", json!({"text": "hi"}))
                .id("m1")
                .expect("id"),
        )
        .await
        .expect("send");
    assert_eq!(sent.id(), "m1");
    sent.stored().await.expect("100");
    let got = bob
        .recv_within(Duration::from_secs(5))
        .await
        .expect("message");
    assert_eq!(got.id(), Some("m1"));
    assert_eq!(got.from(), Some("alice"));
    assert_eq!(got.message["data"], json!({"text": "hi"}));
    // recv() acked it: alice learns it was delivered, and to whom.
    assert_eq!(sent.delivered().await.expect("300"), "bob");
    // Generated ids are unique.
    let a = alice
        .send(Outgoing::direct("bob", json!(1)))
        .await
        .expect("send");
    let b = alice
        .send(Outgoing::direct("bob", json!(2)))
        .await
        .expect("send");
    assert_ne!(a.id(), b.id());
}

#[tokio::test]
async fn a_400_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(dir.path()).await;
    let alice = Client::connect(config(s.addr(), "alice"))
        .await
        .expect("alice");
    let mut no_dest = Outgoing {
        message: DataMessage::new("direct"),
    };
    no_dest.message.id = None;
    let mut sent = alice.send(no_dest).await.expect("send");
    let Err(ClientError::Rejected(rejected)) = sent.stored().await else {
        panic!("expected a rejection");
    };
    assert_eq!(rejected.error_code(), Some(ErrorCode::NoRoute));
    assert!(!rejected.reason.is_empty());
    let mut group = alice
        .send(Outgoing::group("nobody-here", json!("x")))
        .await
        .expect("send");
    match group.stored().await {
        Err(ClientError::Rejected(r)) => assert_eq!(r.code, "forbidden"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_handshake_is_an_error_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(dir.path()).await;
    let err = Client::connect(config(s.addr(), &"x".repeat(200)))
        .await
        .expect_err("refused");
    match err {
        ClientError::Refused { status, reason } => {
            assert_eq!(status, 401);
            assert!(reason.contains("channel"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody listening: a connect error, within the timeout.
    let mut c = config(SocketAddr::from(([127, 0, 0, 1], 1)), "a");
    c.timeout = Duration::from_secs(2);
    assert!(matches!(
        Client::connect(c).await,
        Err(ClientError::Connect(_) | ClientError::Timeout(_))
    ));
}

#[tokio::test]
async fn reconnects_resends_unconfirmed_and_dedupes_redeliveries() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(dir.path()).await;
    let addr = s.addr();
    let alice = Client::connect(config(addr, "alice")).await.expect("alice");
    let mut bob = Client::connect(config(addr, "bob")).await.expect("bob");
    let mut m1 = alice
        .send(Outgoing::direct("bob", json!(1)).id("m1").expect("id"))
        .await
        .expect("send");
    m1.stored().await.expect("100");
    // The server goes down and comes back on the same port. Whether or not
    // bob's client had m1 before, it gets it exactly once afterwards.
    s.shutdown().await;
    // Sent while the server is down: resent after the reconnect.
    let mut m2 = alice
        .send(Outgoing::direct("bob", json!(2)).id("m2").expect("id"))
        .await
        .expect("send");
    let s = server_at(addr, dir.path()).await;
    m2.stored().await.expect("100 after the reconnect");
    // m1 comes once, then m2.
    let first = bob.recv_within(Duration::from_secs(5)).await.expect("m1");
    assert_eq!(first.id(), Some("m1"));
    let second = bob.recv_within(Duration::from_secs(5)).await.expect("m2");
    assert_eq!(second.id(), Some("m2"));
    assert!(matches!(
        bob.recv_within(Duration::from_millis(300)).await,
        Err(ClientError::Timeout(_))
    ));
    assert_eq!(m2.delivered().await.expect("300"), "bob");
    assert_eq!(m1.delivered().await.expect("300"), "bob");
    assert_eq!(alice.state(), State::Open);
    assert_eq!(
        alice.close().await,
        Some(1000),
        "the server answers our close frame, echoing its code"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn waits_time_out() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(dir.path()).await;
    let alice = Client::connect(config(s.addr(), "alice"))
        .await
        .expect("alice");
    let mut sent = alice
        .send(Outgoing::direct("offline", json!(1)))
        .await
        .expect("send");
    sent.stored().await.expect("100");
    assert_eq!(
        sent.delivered_within(Duration::from_millis(200)).await,
        Err(ClientError::Timeout("the 300 (delivered)"))
    );
}

/// A peer that delivers the same message twice, as a server does when the
/// first 200 was lost: the application sees it once, and the client acks
/// both copies.
#[tokio::test]
async fn redelivered_ids_are_handed_over_once_and_acked_again() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        let ready = json!({"type": 1000, "data": {"channel": "bob"}}).to_string();
        ws.send(Message::Text(ready.into())).await.expect("ready");
        let m = json!({"id": "m1", "type": "direct", "from": "alice", "dest": "bob"}).to_string();
        for _ in 0..2 {
            ws.send(Message::Text(m.clone().into()))
                .await
                .expect("send");
        }
        let mut acks = 0;
        while acks < 2 {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("an ack in time")
                .expect("open")
                .expect("frame");
            let v: serde_json::Value =
                serde_json::from_str(frame.to_text().expect("text")).expect("json");
            if v["type"] == 200 {
                assert_eq!(v["data"], "m1");
                acks += 1;
            }
        }
        acks
    });
    let mut bob = Client::connect(config(addr, "bob")).await.expect("bob");
    let got = bob.recv_within(Duration::from_secs(5)).await.expect("m1");
    assert_eq!(got.id(), Some("m1"));
    assert_eq!(peer.await.expect("peer"), 2, "both copies acked");
    assert!(matches!(
        bob.recv_within(Duration::from_millis(200)).await,
        Err(ClientError::Timeout(_) | ClientError::Closed)
    ));
}
