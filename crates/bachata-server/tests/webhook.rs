//! The undelivered-message webhook (`--undelivered-webhook`), through a real
//! server, real WebSocket clients, and a local HTTP receiver.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bachata_proto::{Channel, DataMessage, GroupId, MessageId};
use bachata_testkit::client::TestClient;
use bachata_testkit::redis::RedisServer;
use common::{TestServer, kill9, redis_args, spawn_bachata, start_with};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The deadline used by these tests.
const AFTER: Duration = Duration::from_millis(300);
/// How long to wait for a POST that must come (retries included).
const WAIT: Duration = Duration::from_secs(10);

/// A local HTTP server recording the JSON bodies it is POSTed.
struct Receiver {
    url: String,
    bodies: mpsc::UnboundedReceiver<Value>,
    /// How many requests it got, answered or not.
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Value>,
    hits: Arc<AtomicUsize>,
    /// The first `fail_first` requests get a 500.
    fail_first: usize,
}

async fn record(State(state): State<ReceiverState>, body: String) -> StatusCode {
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    if n < state.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let value = serde_json::from_str(&body).expect("webhook body is JSON");
    let _ = state.tx.send(value);
    StatusCode::NO_CONTENT
}

/// Starts a receiver whose first `fail_first` requests fail with a 500.
async fn receiver(fail_first: usize) -> Receiver {
    let (tx, bodies) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/hook", post(record))
        .with_state(ReceiverState {
            tx,
            hits: hits.clone(),
            fail_first,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url: format!("http://{addr}/hook"),
        bodies,
        hits,
    }
}

impl Receiver {
    /// The next POSTed body; fails the test if none comes within [`WAIT`].
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.bodies.recv())
            .await
            .expect("timed out waiting for a webhook POST")
            .expect("receiver stopped")
    }

    /// Asserts no further POST comes within three deadlines.
    async fn assert_no_more(&mut self) {
        if let Ok(Some(extra)) = tokio::time::timeout(AFTER * 3, self.bodies.recv()).await {
            panic!("unexpected extra webhook POST: {extra}");
        }
    }
}

async fn server_with_webhook(url: &str) -> TestServer {
    let url = url.to_owned();
    start_with(|c| {
        c.undelivered_webhook = Some(url);
        c.undelivered_after = AFTER;
    })
    .await
}

/// The value of an unlabelled counter in `/metrics`.
async fn counter(addr: SocketAddr, name: &str) -> u64 {
    let (status, body) = bachata_testkit::http::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = format!("{name}_total ");
    body.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
        .trim()
        .parse()
        .expect("counter value")
}

/// Polls a counter until it reaches `want` (metrics are updated by a task
/// of the server, after the receiver answered).
async fn wait_counter(addr: SocketAddr, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = counter(addr, name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unacked_message_to_an_offline_channel_fires_exactly_one_post() {
    let mut hook = receiver(0).await;
    let s = server_with_webhook(&hook.url).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!({"text": "hi"})).await;
    alice.expect(100, "m1").await;

    let body = hook.next().await;
    let time = body["time"].as_i64().expect("time is an integer");
    assert!(time > 1_600_000_000_000, "time is Unix ms: {body}");
    assert_eq!(
        body,
        json!({"id": "m1", "from": "alice", "dest": "bob", "type": "direct", "time": time})
    );
    hook.assert_no_more().await;
    wait_counter(s.addr(), "bachata_webhook_sent", 1).await;
    assert_eq!(counter(s.addr(), "bachata_webhook_failed").await, 0);
}

#[tokio::test]
async fn message_acked_before_the_deadline_fires_nothing() {
    let mut hook = receiver(0).await;
    let s = server_with_webhook(&hook.url).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    assert_eq!(bob.recv().await["id"], "m1");
    bob.ack("m1").await;
    alice.expect(300, "m1").await; // the ack is stored
    // Received but never acked: the only one that may fire. Its timer is
    // behind m1's, so once it fired, m1's was checked and skipped.
    alice.send_direct("m2", "bob", json!(2)).await;
    alice.expect(100, "m2").await;
    assert_eq!(bob.recv().await["id"], "m2");

    let body = hook.next().await;
    assert_eq!(body["id"], "m2", "m1 was acked in time: {body}");
    assert_eq!(body["dest"], "bob");
    hook.assert_no_more().await;
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let mut hook = receiver(2).await;
    let s = server_with_webhook(&hook.url).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;

    let body = hook.next().await;
    assert_eq!(body["id"], "m1");
    assert_eq!(hook.hits.load(Ordering::SeqCst), 3, "two 500s, then a 2xx");
    wait_counter(s.addr(), "bachata_webhook_sent", 1).await;
    assert_eq!(counter(s.addr(), "bachata_webhook_failed").await, 0);
    hook.assert_no_more().await;
}

#[tokio::test]
async fn unreachable_webhook_counts_a_failure_and_never_blocks_delivery() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let s = server_with_webhook(&format!("http://{closed}/hook")).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send_direct("lost", "carol", json!(0)).await;
    alice.expect(100, "lost").await;

    // While its POST is retried and given up, messages keep flowing.
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for i in 0..20 {
        let id = format!("m{i}");
        alice.send_direct(&id, "bob", json!(i)).await;
        alice.expect(100, &id).await;
        assert_eq!(bob.recv().await["id"], id);
        bob.ack(&id).await;
        alice.expect(300, &id).await;
    }
    wait_counter(s.addr(), "bachata_webhook_failed", 1).await;
    assert_eq!(counter(s.addr(), "bachata_webhook_sent").await, 0);
    // Still flowing after the failure.
    alice.send_direct("after", "bob", json!("x")).await;
    alice.expect(100, "after").await;
    assert_eq!(bob.recv().await["id"], "after");
}

#[tokio::test]
async fn group_message_fires_once_per_unacked_member_and_system_messages_have_no_from() {
    let mut hook = receiver(0).await;
    let s = server_with_webhook(&hook.url).await;
    let store = s.server.center().store().clone();
    let group = GroupId::new("team").expect("group id");
    for member in ["alice", "bob", "carol"] {
        let member = Channel::new(member).expect("channel");
        store.add_member(&group, &member).await.expect("add member");
    }
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice
        .send(json!({"id": "g1", "type": "group", "dest": "team", "data": "hello"}))
        .await;
    alice.expect(100, "g1").await;
    assert_eq!(bob.recv().await["id"], "g1");
    bob.ack("g1").await;
    alice.expect(300, "g1").await;

    // By system: `from` is null.
    let mut sys = DataMessage::new("direct");
    sys.id = Some(MessageId::new("s1").expect("id"));
    sys.dest = Some("dave".into());
    sys.time = Some(1_234);
    s.server
        .center()
        .submit(None, sys)
        .await
        .expect("system message accepted");

    // g1 is for bob and carol (not the sender); bob acked it. The two POSTs
    // run concurrently: order them by id.
    let mut bodies = [hook.next().await, hook.next().await];
    bodies.sort_by_key(|b| b["id"].as_str().unwrap_or_default().to_owned());
    let [group_post, system_post] = bodies;
    assert_eq!(group_post["id"], "g1", "{group_post}");
    assert_eq!(group_post["dest"], "carol", "bob acked it: {group_post}");
    assert_eq!(group_post["from"], "alice");
    assert_eq!(group_post["type"], "group");
    assert_eq!(
        system_post,
        json!({"id": "s1", "from": null, "dest": "dave", "type": "direct", "time": 1234})
    );
    hook.assert_no_more().await;
}

#[tokio::test]
async fn invalid_webhook_url_is_refused_at_start() {
    let mut config = common::config();
    config.undelivered_webhook = Some("http://exa mple.com/hook".into());
    let e = bachata_server::start(config)
        .await
        .expect_err("invalid URL refused");
    assert!(e.to_string().contains("undelivered_webhook"), "{e}");
}

/// The arguments of a real `bachata serve` with the webhook.
fn webhook_args(hook: &Receiver, after: &str) -> Vec<String> {
    vec![
        "--undelivered-webhook".into(),
        hook.url.clone(),
        "--undelivered-after".into(),
        after.into(),
    ]
}

/// [`webhook_args`] on the embedded store in `dir`.
fn embedded_webhook_args(hook: &Receiver, after: &str, dir: &tempfile::TempDir) -> Vec<String> {
    let mut args = webhook_args(hook, after);
    args.extend([
        "--data-dir".into(),
        dir.path().to_string_lossy().into_owned(),
    ]);
    args
}

/// Spawns `bachata serve` with `args`; alice's m1 to bob is stored (100).
async fn spawn_and_store_m1(args: &[String]) -> (tokio::process::Child, SocketAddr) {
    let (child, addr) = spawn_bachata(args).await;
    let mut alice = TestClient::connect(addr, "alice").await;
    alice.send_direct("m1", "bob", json!("hi")).await;
    alice.expect(100, "m1").await;
    (child, addr)
}

/// The test: a message stored, the server SIGKILLed before the
/// call was due, restarted on the same data: the call is made, once,
/// within `--undelivered-after` of the restart (what is due lives in the
/// store, not in the process that stored it).
#[tokio::test]
async fn a_call_due_after_a_sigkill_is_made_once_after_the_restart() {
    let mut hook = receiver(0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let args = embedded_webhook_args(&hook, "2s", &dir);
    let (child, _addr) = spawn_and_store_m1(&args).await;
    kill9(child).await;
    assert_eq!(
        hook.hits.load(Ordering::SeqCst),
        0,
        "killed before it was due"
    );

    let (_child, _addr) = spawn_bachata(&args).await;
    let restarted = tokio::time::Instant::now();
    let body = hook.next().await;
    // Due 2 s after the send, which came before the restart; one poll
    // (200 ms) and a loaded machine's slack on top.
    assert!(
        restarted.elapsed() < Duration::from_secs(2) + Duration::from_secs(3),
        "called {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(body["id"], "m1");
    assert_eq!(body["from"], "alice");
    assert_eq!(body["dest"], "bob");
    assert_eq!(body["type"], "direct");
    hook.assert_no_more().await;
}

/// A copy whose call was made is not made again after a restart: the
/// store remembers it (its due time is cleared durably).
#[tokio::test]
async fn a_call_made_before_a_sigkill_is_not_made_again() {
    let mut hook = receiver(0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let args = embedded_webhook_args(&hook, "300ms", &dir);
    let (child, addr) = spawn_and_store_m1(&args).await;
    assert_eq!(hook.next().await["id"], "m1");
    // A call counts as sent once the store recorded it as made.
    wait_counter(addr, "bachata_webhook_sent", 1).await;
    kill9(child).await;
    let (_child, _addr) = spawn_bachata(&args).await;
    hook.assert_no_more().await;
    assert_eq!(hook.hits.load(Ordering::SeqCst), 1);
}

/// Two nodes on one Redis, both with the webhook: each call is made once,
/// by one of them; and when the node that stored a message dies before
/// its call is due, the other makes it.
#[tokio::test]
async fn two_nodes_on_redis_make_each_call_once_even_when_the_storing_node_dies() {
    let mut hook = receiver(0).await;
    let redis = RedisServer::start();
    let mut args = redis_args(&redis);
    args.extend(webhook_args(&hook, "1s"));
    let (node_a, addr_a) = spawn_bachata(&args).await;
    let (_node_b, _addr_b) = spawn_bachata(&args).await;
    let mut alice = TestClient::connect(addr_a, "alice").await;
    for (id, dest) in [("m1", "bob"), ("m2", "carol"), ("m3", "dave")] {
        alice.send_direct(id, dest, json!(id)).await;
        alice.expect(100, id).await;
    }
    let mut got: Vec<String> = Vec::new();
    for _ in 0..3 {
        got.push(hook.next().await["id"].as_str().expect("id").to_owned());
    }
    got.sort();
    assert_eq!(got, ["m1", "m2", "m3"]);
    hook.assert_no_more().await;

    alice.send_direct("m4", "bob", json!(4)).await;
    alice.expect(100, "m4").await;
    kill9(node_a).await;
    let body = hook.next().await;
    assert_eq!(
        (body["id"].as_str(), body["dest"].as_str()),
        (Some("m4"), Some("bob"))
    );
    hook.assert_no_more().await;
    assert_eq!(hook.hits.load(Ordering::SeqCst), 4, "one call per copy");
}
