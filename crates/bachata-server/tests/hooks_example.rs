//! `examples/hooks/app.py` (Python, standard library only) run as a real
//! process against a server: cookie login, the connect hook, rooms through
//! the route hook (masking, `app_muted`, `forbidden`), and the undelivered
//! webhook's print. CI runs it with the rest of the tests (it needs only
//! `python3`).

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bachata_testkit::client::{TestClient, refused};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const KEY: &str = "hooks-example-test-key";
const WAIT: Duration = Duration::from_secs(10);

/// The example application, on a free port; its address and its output.
async fn start_app() -> (Child, SocketAddr, Lines<BufReader<ChildStdout>>) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = Command::new("python3")
        .current_dir(root)
        .args(["examples/hooks/app.py", "--port", "0", "--api-key", KEY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 examples/hooks/app.py (install python3)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the app starts")
        .expect("read")
        .expect("a line");
    let url = first
        .split_whitespace()
        .last()
        .expect("its URL")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    (child, url.parse().expect("address"), lines)
}

/// A POST with a form body; the status, the `Set-Cookie` value if any, and
/// the body.
async fn post(addr: SocketAddr, path: &str, form: &str, headers: &str) -> (u16, String, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n{headers}\r\n{form}",
        form.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("an answer")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    (status, cookie, body.to_owned())
}

/// Logs `name` in; the session cookie (`session=...`).
async fn login(app: SocketAddr, name: &str) -> String {
    let (status, cookie, body) = post(app, "/login", &format!("name={name}"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(cookie.starts_with("session="), "{cookie}");
    cookie
}

fn messages(
    server: SocketAddr,
    cookie: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    bachata_testkit::client::with_cookie(&format!("ws://{server}/messages"), cookie)
}

#[tokio::test]
async fn the_python_example_runs_rooms_with_moderation() {
    let (_app, app, mut output) = start_app().await;
    let hook = |path: &str| Some(format!("http://{app}{path}"));
    let s = common::start_with(|c| {
        c.connect_hook = hook("/hooks/connect");
        c.route_hook = hook("/hooks/route");
        c.route_hook_types = Some("room".into());
        c.undelivered_webhook = hook("/hooks/undelivered");
        c.undelivered_after = Duration::from_millis(500);
        c.api_key = Some(KEY.into());
    })
    .await;

    // No session, no connection: the hook's 401 and reason.
    let (status, body) = refused(format!("ws://{}/messages?channel=alice", s.addr())).await;
    assert_eq!(status, 401);
    assert!(body.contains("log in first"), "{body}");

    let (alice_cookie, bob_cookie) = (login(app, "alice").await, login(app, "bob").await);
    let mut alice = TestClient::try_connect_request(messages(s.addr(), &alice_cookie))
        .await
        .expect("alice connects");
    let mut bob = TestClient::try_connect_request(messages(s.addr(), &bob_cookie))
        .await
        .expect("bob connects");
    assert_eq!(alice.ready["channel"], "alice", "named by the cookie");
    assert_eq!(bob.ready["channel"], "bob");

    // A room message before joining is forbidden by the application.
    let room = |id: &str, text: &str| json!({"type": "room", "id": id, "dest": "general", "data": {"text": text}});
    alice.send(room("r0", "hello")).await;
    let reply = alice.recv().await;
    assert_eq!(
        (reply["type"].clone(), reply["error"].clone()),
        (json!(400), json!("forbidden"))
    );

    for cookie in [&alice_cookie, &bob_cookie] {
        let (status, _, body) = post(
            app,
            "/join",
            "room=general",
            &format!("Cookie: {cookie}\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    alice.send(room("r1", "hello darn world")).await;
    alice.expect(100, "r1").await;
    let got = bob.recv().await;
    assert_eq!(got["id"], "r1");
    assert_eq!(got["from"], "alice");
    assert_eq!(
        got["data"],
        json!({"text": "hello **** world"}),
        "masked by the app"
    );
    assert!(
        alice.sync().await.iter().all(|m| m["id"] != "r1"),
        "not to the sender"
    );

    // Muted by the application: its own error code.
    let (status, _, body) = post(
        app,
        "/mute",
        "user=alice",
        &format!("Authorization: Bearer {KEY}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    alice.send(room("r2", "hi")).await;
    let reply = alice.recv().await;
    assert_eq!(reply["error"], "app_muted", "{reply}");
    assert_eq!(reply["reason"], "you are muted");

    // Other types pass to bachata's routes; one nobody acks is pushed.
    alice
        .send(json!({"type": "direct", "id": "d1", "dest": "dave", "data": "ping"}))
        .await;
    alice.expect(100, "d1").await;
    let pushed = tokio::time::timeout(WAIT, async {
        loop {
            let line = output.next_line().await.expect("read").expect("a line");
            if line.starts_with("push to dave") {
                return line;
            }
        }
    })
    .await
    .expect("the undelivered webhook reached the app");
    assert!(
        pushed.contains("d1") && pushed.contains("alice"),
        "{pushed}"
    );
}
