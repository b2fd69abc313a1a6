//! The connect and route hooks (protocol.md section 10) against a real hook
//! server: an axum application started by each test on a loopback port,
//! which records what it was asked and answers as the test tells it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bachata_testkit::client::{TestClient, refused};
use serde_json::{Value, json};
use tokio::sync::Notify;

const KEY: &str = "hook-test-api-key";

/// What the hook answers: a status and a JSON body, after an optional
/// pause (to time out) or a wait for the test's go (to hold a call open).
#[derive(Clone)]
struct Answer {
    status: StatusCode,
    body: Value,
    pause: Duration,
    hold: Option<Arc<Notify>>,
    /// Sent instead of `body` when set (JSON the test writes by hand).
    raw: Option<String>,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            body,
            pause: Duration::ZERO,
            hold: None,
            raw: None,
        }
    }
}

#[derive(Default)]
struct Hook {
    answer: Mutex<Option<Answer>>,
    /// Every request: its body, and whether its signature checked out.
    seen: Mutex<Vec<(Value, bool)>>,
    arrived: Notify,
    /// `(held, releaser)`: the route call about message `held` is answered
    /// only once the call about message `releaser` has arrived.
    held: Mutex<Option<(String, String)>>,
    released: Notify,
    release_arrived: std::sync::atomic::AtomicBool,
}

impl Hook {
    fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = Some(answer);
    }

    fn seen(&self) -> Vec<(Value, bool)> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn handle(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    let signed = headers
        .get("x-bachata-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == bachata_proto::sign::hmac_hex(KEY.as_bytes(), &body));
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let held = hook.held.lock().expect("lock").clone();
    if let Some((held, releaser)) = held {
        let id = &request["message"]["id"];
        if *id == releaser.as_str() {
            hook.release_arrived.store(true, Ordering::SeqCst);
            hook.released.notify_waiters();
        }
        if *id == held.as_str() {
            loop {
                let released = hook.released.notified();
                if hook.release_arrived.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
        }
    }
    hook.seen.lock().expect("lock").push((request, signed));
    hook.arrived.notify_one();
    let answer = hook.answer.lock().expect("lock").clone();
    let Some(answer) = answer else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Some(hold) = &answer.hold {
        hold.notified().await;
    }
    tokio::time::sleep(answer.pause).await;
    match answer.raw {
        Some(raw) => (answer.status, raw).into_response(),
        None => (answer.status, axum::Json(answer.body)).into_response(),
    }
}

/// Starts the hook application; its URL.
async fn hook_server(hook: Arc<Hook>) -> String {
    hook_server_at(hook, "/connect").await
}

/// Starts a hook application answering at `path`; its URL.
async fn hook_server_at(hook: Arc<Hook>, path: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let app = Router::new().route(path, post(handle)).with_state(hook);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}{path}")
}

async fn start(
    hook: &Arc<Hook>,
    tweak: impl FnOnce(&mut bachata_server::Config),
) -> common::TestServer {
    let url = hook_server(hook.clone()).await;
    common::start_with(move |c| {
        c.connect_hook = Some(url);
        c.api_key = Some(KEY.into());
        c.hook_timeout = Duration::from_millis(300);
        tweak(c);
    })
    .await
}

/// A `/messages` request with a session cookie (and the query given).
fn with_cookie(
    addr: SocketAddr,
    query: &str,
    cookie: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    bachata_testkit::client::with_cookie(&format!("ws://{addr}/messages{query}"), cookie)
}

#[tokio::test]
async fn the_hook_names_the_channel_and_its_groups() {
    let hook = Arc::new(Hook::default());
    hook.answer(Answer::ok(
        json!({"channel": "bob", "device": "phone", "groups": ["team"]}),
    ));
    let s = start(&hook, |_| {}).await;
    // `?channel=mallory` proves nothing with a hook: the answer decides.
    let bob = TestClient::try_connect_request(with_cookie(
        s.addr(),
        "?channel=mallory&token=opaque-1",
        "session=bob",
    ))
    .await
    .expect("accepted");
    assert_eq!(bob.ready, json!({"channel": "bob", "device": "phone"}));
    let seen = hook.seen();
    assert_eq!(seen.len(), 1);
    let (request, signed) = &seen[0];
    assert!(signed, "X-Bachata-Signature is HMAC-SHA256 of the body");
    assert_eq!(request["channel"], "mallory");
    assert_eq!(request["device"], Value::Null);
    assert_eq!(request["token"], "opaque-1");
    assert_eq!(request["headers"]["cookie"], "session=bob");
    assert!(
        request["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{request}"
    );
    // bob joined the group the hook named.
    let (status, body) = bachata_testkit::http::send(
        s.addr(),
        &format!(
            "GET /api/groups/team HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
             Connection: close\r\n\r\n",
            s.addr()
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"bob\""), "{body}");
}

#[tokio::test]
async fn refusals_carry_the_hooks_status_and_reason() {
    let hook = Arc::new(Hook::default());
    let s = start(&hook, |_| {}).await;
    for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
        hook.answer(Answer {
            status,
            ..Answer::ok(json!({"reason": "session expired"}))
        });
        let (got, body) = refused(with_cookie(s.addr(), "", "session=old")).await;
        assert_eq!(got, status.as_u16());
        assert!(body.contains("session expired"), "{body}");
    }
}

#[tokio::test]
async fn no_usable_answer_is_503() {
    let hook = Arc::new(Hook::default());
    let s = start(&hook, |_| {}).await;
    let cases = [
        // Slower than --hook-timeout (300 ms).
        Answer {
            pause: Duration::from_secs(2),
            ..Answer::ok(json!({"channel": "bob"}))
        },
        Answer {
            status: StatusCode::BAD_GATEWAY,
            ..Answer::ok(json!({}))
        },
        Answer::ok(json!({"channel": ""})),
        Answer::ok(json!({"user": "bob"})),
        Answer {
            status: StatusCode::NOT_FOUND,
            ..Answer::ok(json!({}))
        },
        // A valid answer, but larger than the 64 KiB an answer may have.
        Answer {
            raw: Some(format!("{{\"channel\": \"bob\"{}}}", " ".repeat(70_000))),
            ..Answer::ok(json!("padded"))
        },
    ];
    // The same answer, small, is accepted: the size alone refuses it.
    hook.answer(Answer {
        raw: Some(format!("{{\"channel\": \"bob\"{}}}", " ".repeat(1000))),
        ..Answer::ok(json!("padded"))
    });
    TestClient::try_connect_request(with_cookie(s.addr(), "", "session=bob"))
        .await
        .expect("accepted");
    for answer in cases {
        let body = answer.body.clone();
        hook.answer(answer);
        let (status, text) = refused(with_cookie(s.addr(), "", "session=bob")).await;
        assert_eq!(status, 503, "{body}: {text}");
    }
}

#[tokio::test]
async fn a_valid_jwt_skips_the_hook() {
    let hook = Arc::new(Hook::default());
    let secret = "a-jwt-secret-of-at-least-32-bytes!!";
    let s = start(&hook, |c| c.jwt_secret = Some(secret.into())).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode");
    let carol = TestClient::connect_url(&format!("ws://{}/messages?token={token}", s.addr())).await;
    assert_eq!(carol.ready["channel"], "carol");
    assert!(hook.seen().is_empty(), "the hook was not called");
    // Without one (or with a bad one), the hook decides.
    hook.answer(Answer::ok(json!({"channel": "dave"})));
    let dave =
        TestClient::try_connect_request(with_cookie(s.addr(), "?token=not-a-jwt", "session=dave"))
            .await
            .expect("accepted");
    assert_eq!(dave.ready["channel"], "dave");
    assert_eq!(hook.seen().len(), 1);
}

#[tokio::test]
async fn calls_beyond_the_concurrency_bound_are_refused_at_once() {
    let hook = Arc::new(Hook::default());
    let go = Arc::new(Notify::new());
    hook.answer(Answer {
        hold: Some(go.clone()),
        ..Answer::ok(json!({"channel": "bob"}))
    });
    let s = start(&hook, |c| {
        c.hook_concurrency = 1;
        c.hook_timeout = Duration::from_secs(10);
    })
    .await;
    let addr = s.addr();
    let first = tokio::spawn(async move {
        TestClient::try_connect_request(with_cookie(addr, "", "session=bob")).await
    });
    // The first call is at the hook, held there.
    tokio::time::timeout(Duration::from_secs(5), hook.arrived.notified())
        .await
        .expect("the first call arrives");
    let (status, _) = refused(with_cookie(addr, "", "session=bob")).await;
    assert_eq!(status, 503, "no queue behind a busy hook");
    go.notify_one();
    let bob = first.await.expect("task").expect("accepted");
    assert_eq!(bob.ready["channel"], "bob");
    assert_eq!(
        hook.seen().len(),
        1,
        "the refused call never reached the hook"
    );
    let (status, metrics) = bachata_testkit::http::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("bachata_hook_connect_busy_total 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Route hook

async fn start_routed(
    hook: &Arc<Hook>,
    tweak: impl FnOnce(&mut bachata_server::Config),
) -> common::TestServer {
    let url = hook_server_at(hook.clone(), "/route").await;
    common::start_with(move |c| {
        c.route_hook = Some(url);
        c.api_key = Some(KEY.into());
        c.hook_timeout = Duration::from_millis(300);
        tweak(c);
    })
    .await
}

fn chat(id: &str, dest: &str, text: &str) -> Value {
    json!({"type": "chat", "id": id, "dest": dest, "data": {"text": text}})
}

#[tokio::test]
async fn the_route_hook_names_channels_and_may_replace_data() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect_device(s.addr(), "alice", "phone").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    let mut carol = TestClient::connect(s.addr(), "carol").await;

    hook.answer(Answer::ok(json!({"channels": ["carol"]})));
    alice.send(chat("m1", "bob", "hi")).await;
    alice.expect(100, "m1").await;
    let m1 = carol.recv().await;
    assert_eq!(
        (m1["id"].clone(), m1["from"].clone()),
        (json!("m1"), json!("alice"))
    );
    assert!(bob.sync().await.is_empty(), "exactly the hook's channels");
    let seen = hook.seen();
    let (request, signed) = &seen[0];
    assert!(signed);
    assert_eq!(request["from"], "alice");
    assert_eq!(request["device"], "phone");
    assert_eq!(request["message"], chat("m1", "bob", "hi"), "as received");

    hook.answer(Answer::ok(json!({"pass": true, "data": {"text": "***"}})));
    alice.send(chat("m2", "bob", "a rude word")).await;
    alice.expect(100, "m2").await;
    let m2 = bob.recv().await;
    assert_eq!(m2["id"], "m2", "the built-in routes took it");
    assert_eq!(m2["data"], json!({"text": "***"}), "the hook's data");
}

#[tokio::test]
async fn the_route_hook_refuses_with_its_codes() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let cases = [
        (
            json!({"error": "app_muted", "reason": "you are muted"}),
            "app_muted",
        ),
        (json!({"error": "forbidden"}), "forbidden"),
        (json!({"channels": []}), "no_route"),
        // Not a code the application may use: no usable answer.
        (json!({"error": "queue_full"}), "unavailable"),
        (json!({"pass": true, "channels": ["bob"]}), "unavailable"),
    ];
    for (i, (answer, code)) in cases.into_iter().enumerate() {
        hook.answer(Answer::ok(answer.clone()));
        let id = format!("r{i}");
        alice.send(chat(&id, "bob", "x")).await;
        let reply = alice.recv().await;
        assert_eq!(reply["type"], 400, "{answer}: {reply}");
        assert_eq!(reply["data"], id.as_str());
        assert_eq!(reply["error"], code, "{answer}: {reply}");
    }
    let reply = {
        hook.answer(Answer::ok(
            json!({"error": "app_muted", "reason": "you are muted"}),
        ));
        alice.send(chat("again", "bob", "x")).await;
        alice.recv().await
    };
    assert_eq!(reply["reason"], "you are muted");
}

#[tokio::test]
async fn no_answer_stores_nothing_and_a_resend_is_asked_once() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    for answer in [
        // Slower than --hook-timeout (300 ms).
        Answer {
            pause: Duration::from_secs(2),
            ..Answer::ok(json!({"pass": true}))
        },
        Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..Answer::ok(json!({}))
        },
    ] {
        hook.answer(answer);
        alice.send(chat("m1", "bob", "hi")).await;
        let reply = alice.recv().await;
        assert_eq!(reply["error"], "unavailable", "{reply}");
    }
    assert!(bob.sync().await.is_empty(), "nothing stored");
    hook.answer(Answer::ok(json!({"pass": true})));
    alice.send(chat("m1", "bob", "hi")).await;
    alice.expect(100, "m1").await;
    assert_eq!(bob.recv().await["id"], "m1");
    assert_eq!(hook.seen().len(), 3);
    // A resend of the stored id: its 100 from the dedupe record, the hook
    // not asked, no second copy.
    alice.send(chat("m1", "bob", "hi")).await;
    alice.expect(100, "m1").await;
    assert_eq!(hook.seen().len(), 3, "the hook sees each stored id once");
    assert!(bob.sync().await.is_empty(), "delivered once");
}

#[tokio::test]
async fn only_the_listed_types_go_to_the_route_hook() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |c| c.route_hook_types = Some("chat, room".into())).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    hook.answer(Answer::ok(json!({"channels": []})));
    alice
        .send(json!({"type": "note", "id": "n1", "dest": "bob", "data": 1}))
        .await;
    alice.expect(100, "n1").await;
    assert_eq!(bob.recv().await["id"], "n1");
    assert!(hook.seen().is_empty(), "a note is not the hook's");
    alice.send(chat("c1", "bob", "x")).await;
    assert_eq!(alice.recv().await["error"], "no_route");
    assert_eq!(hook.seen().len(), 1);
}

#[tokio::test]
async fn a_slow_hook_call_keeps_the_connections_order() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    hook.answer(Answer::ok(json!({"pass": true})));
    // m1's call is answered only once m3's call has arrived: the calls of
    // one connection run side by side (asked one after the other, m1 would
    // time out), and the order still holds.
    *hook.held.lock().expect("lock") = Some(("m1".into(), "m3".into()));
    for id in ["m1", "m2", "m3"] {
        alice.send(chat(id, "bob", id)).await;
    }
    for id in ["m1", "m2", "m3"] {
        alice.expect(100, id).await;
    }
    for id in ["m1", "m2", "m3"] {
        assert_eq!(bob.recv().await["id"], id, "sent order, the slow one first");
    }
}

#[tokio::test]
async fn a_resend_while_its_first_call_is_out_is_asked_once() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    hook.answer(Answer::ok(json!({"pass": true})));
    // m1's call is held until m2's has arrived; the resend of m1 between
    // them waits for m1's place instead of asking again.
    *hook.held.lock().expect("lock") = Some(("m1".into(), "m2".into()));
    for id in ["m1", "m1", "m2"] {
        alice.send(chat(id, "bob", id)).await;
    }
    for id in ["m1", "m1", "m2"] {
        alice.expect(100, id).await;
    }
    for id in ["m1", "m2"] {
        assert_eq!(bob.recv().await["id"], id);
    }
    let asked: Vec<Value> = hook
        .seen()
        .into_iter()
        .map(|(request, _)| request["message"]["id"].clone())
        .collect();
    assert_eq!(
        asked,
        [json!("m2"), json!("m1")],
        "m1 once (answered after m2's call arrived)"
    );
    assert!(bob.sync().await.is_empty(), "m1 stored once");
}

#[tokio::test]
async fn one_connection_has_at_most_its_bound_of_calls_out() {
    let hook = Arc::new(Hook::default());
    let s = start_routed(&hook, |_| {}).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    hook.answer(Answer::ok(json!({"pass": true})));
    // m1's call would be answered once m{bound + 2}'s arrives; but that
    // one waits until m2 has its place, which waits for m1: m1's call times
    // out (300 ms) instead, and the rest goes on in order.
    let bound = bachata_core::HOOK_CALLS_PER_CONNECTION;
    let ids: Vec<String> = (1..=bound + 2).map(|i| format!("m{i}")).collect();
    *hook.held.lock().expect("lock") = Some(("m1".into(), ids[bound + 1].clone()));
    for id in &ids {
        alice.send(chat(id, "bob", id)).await;
    }
    let first = alice.recv().await;
    assert_eq!(
        (first["data"].as_str(), first["error"].as_str()),
        (Some("m1"), Some("unavailable")),
        "{first}"
    );
    for id in &ids[1..] {
        alice.expect(100, id).await;
        assert_eq!(bob.recv().await["id"], id.as_str());
    }
}

/// `--route-hook-batch`: the hook answers `{"results": [...]}`, one
/// single-call answer per message of `{"batch": [...]}`, each applied to its
/// own message; the batch body is signed like a single call.
async fn batch_hook(calls: Arc<Mutex<Vec<(usize, bool)>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/route",
        post(move |headers: HeaderMap, body: Bytes| {
            let calls = calls.clone();
            async move {
                let signed = headers
                    .get("x-bachata-signature")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|s| s == bachata_proto::sign::hmac_hex(KEY.as_bytes(), &body));
                let request: Value = serde_json::from_slice(&body).expect("JSON");
                let batch = request["batch"].as_array().expect("a batch").clone();
                calls.lock().expect("lock").push((batch.len(), signed));
                let results: Vec<Value> = batch
                    .iter()
                    .map(|item| {
                        let id = item["message"]["id"].as_str().unwrap_or_default();
                        if id.starts_with("mute") {
                            json!({"error": "app_muted", "reason": "muted"})
                        } else if id.starts_with("redact") {
                            json!({"pass": true, "data": "[redacted]"})
                        } else {
                            json!({"channels": [item["message"]["dest"]]})
                        }
                    })
                    .collect();
                axum::Json(json!({ "results": results }))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/route")
}

#[tokio::test]
async fn batched_calls_answer_each_message_on_its_own() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let url = batch_hook(calls.clone()).await;
    let s = common::start_with(move |c| {
        c.route_hook = Some(url);
        c.route_hook_batch = 16;
        c.api_key = Some(KEY.into());
    })
    .await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    let ids = ["m1", "mute1", "redact1", "m2", "mute2", "m3"];
    for id in ids {
        alice.send(chat(id, "bob", id)).await;
    }
    for id in ids {
        let reply = alice.recv().await;
        if id.starts_with("mute") {
            assert_eq!(
                (reply["data"].as_str(), reply["error"].as_str()),
                (Some(id), Some("app_muted")),
                "{reply}"
            );
        } else {
            assert_eq!(
                (reply["type"].as_u64(), reply["data"].as_str()),
                (Some(100), Some(id)),
                "{reply}"
            );
        }
    }
    for id in ["m1", "redact1", "m2", "m3"] {
        let got = bob.recv().await;
        assert_eq!(got["id"], id, "in the order sent");
        if id == "redact1" {
            assert_eq!(got["data"], "[redacted]");
        } else {
            assert_eq!(got["data"], json!({"text": id}));
        }
    }
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(
        calls.iter().map(|(n, _)| n).sum::<usize>(),
        ids.len(),
        "each message asked once: {calls:?}"
    );
    assert!(
        calls.iter().all(|(_, signed)| *signed),
        "every batch signed"
    );
}

#[tokio::test]
async fn a_batched_call_without_a_usable_answer_is_unavailable_for_each_message() {
    let hook = Arc::new(Hook::default());
    // The single-call hook answers `{"pass": true}`: not a batch answer.
    let s = start_routed(&hook, |c| c.route_hook_batch = 4).await;
    hook.answer(Answer::ok(json!({"pass": true})));
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    for id in ["m1", "m2"] {
        alice.send(chat(id, "bob", id)).await;
    }
    for id in ["m1", "m2"] {
        let reply = alice.recv().await;
        assert_eq!(
            (reply["data"].as_str(), reply["error"].as_str()),
            (Some(id), Some("unavailable")),
            "{reply}"
        );
    }
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert!(bob.sync().await.is_empty(), "nothing stored");
}
