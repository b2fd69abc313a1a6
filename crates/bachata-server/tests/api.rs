//! protocol.md section 7, the HTTP API, through a real server on port 0 and a raw
//! HTTP/1.1 client over loopback (there is no HTTP client crate among the
//! dev-dependencies): auth, publish, groups, channels, errors, OpenAPI.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bachata_testkit::client::TestClient;
use common::{SHORT, start, start_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "k3y-for-tests";
const WAIT: Duration = Duration::from_secs(10);

/// An HTTP response, read to the end of the connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Checks the status and the JSON error shape; returns `reason`.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        let reason = v["reason"].as_str().expect("reason is a string");
        assert!(!reason.is_empty(), "{v}");
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
        reason.to_owned()
    }

    /// Checks for a 200 and returns the JSON body.
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        self.json()
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
/// A `Content-Length` is added unless `headers` has a `Transfer-Encoding`
/// (then `body` must be encoded already).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    tokio::time::timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let chunked = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
        let bodiless = body.is_empty() && matches!(method, "GET" | "HEAD");
        if !chunked && !bodiless {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        stream.write_all(&raw).await.expect("write request");
        let mut response = Vec::new();
        // A server that answers before reading all of a large body may reset
        // the connection; what was read before the reset is the answer.
        if let Err(e) = stream.read_to_end(&mut response).await {
            assert!(!response.is_empty(), "read response: {e}");
        }
        parse_response(&response)
    })
    .await
    .expect("HTTP request timed out")
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("headers are text");
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        assert!(rest.len() >= len, "body shorter than Content-Length");
        rest[..len].to_vec()
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = std::str::from_utf8(&rest[..eol]).expect("chunk size");
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size is hex");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("body is UTF-8"),
    }
}

/// A request with `Authorization: Bearer <key>` when `key` is given.
async fn api(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> Resp {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    request(addr, method, path, &headers, body.as_bytes()).await
}

async fn publish(addr: SocketAddr, key: Option<&str>, body: Value) -> Resp {
    api(addr, "POST", "/api/publish", key, &body.to_string()).await
}

/// One request per protected endpoint: (method, path, body).
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("POST", "/api/publish", r#"{"type":"direct","dest":"x"}"#),
    ("PUT", "/api/groups/g/members/a", ""),
    ("DELETE", "/api/groups/g/members/a", ""),
    ("GET", "/api/groups/g", ""),
    ("GET", "/api/channels/a", ""),
];

// ---------------------------------------------------------------------------
// Auth

#[tokio::test]
async fn with_a_key_every_endpoint_needs_it() {
    let s = start_with(|c| c.api_key = Some(KEY.into())).await;
    let addr = s.addr();
    for &(method, path, body) in ENDPOINTS {
        let what = format!("{method} {path}");
        let r = api(addr, method, path, None, body).await;
        let reason = r.error(401, "unauthorized");
        assert!(reason.contains("Bearer"), "{what}: {reason}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");

        api(addr, method, path, Some("wrong"), body)
            .await
            .error(401, "unauthorized");
        // Same length, one byte off; a prefix; the key repeated.
        let off_by_one = format!("{}X", &KEY[..KEY.len() - 1]);
        for wrong in [off_by_one.as_str(), &KEY[..3], &KEY.repeat(2)] {
            api(addr, method, path, Some(wrong), body)
                .await
                .error(401, "unauthorized");
        }
        let basic = format!("Basic {KEY}");
        let headers = [("Authorization", basic.as_str())];
        request(addr, method, path, &headers, body.as_bytes())
            .await
            .error(401, "unauthorized");

        let r = api(addr, method, path, Some(KEY), body).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        // The scheme is case-insensitive (RFC 9110).
        let lower = format!("bearer {KEY}");
        let headers = [("Authorization", lower.as_str())];
        let r = request(addr, method, path, &headers, body.as_bytes()).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
    }
    // The document itself needs no key.
    let r = api(addr, "GET", "/api/openapi.json", None, "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn without_a_key_loopback_anonymous_is_open() {
    let s = start().await; // 127.0.0.1, no JWT: anonymous on loopback
    for &(method, path, body) in ENDPOINTS {
        let r = api(s.addr(), method, path, None, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        // A key that nobody configured is ignored, not refused.
        let r = api(s.addr(), method, path, Some("anything"), body).await;
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
    }
}

#[tokio::test]
async fn without_a_key_and_with_jwt_the_api_is_off() {
    let s = start_with(|c| c.jwt_secret = Some("a-jwt-secret-of-at-least-32-bytes".into())).await;
    for &(method, path, body) in ENDPOINTS {
        for key in [None, Some("anything")] {
            let reason = api(s.addr(), method, path, key, body)
                .await
                .error(403, "forbidden");
            assert!(reason.contains("--api-key"), "{reason}");
        }
    }
    let r = api(s.addr(), "GET", "/api/openapi.json", None, "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn without_a_key_on_a_public_address_the_api_is_off() {
    let s = start_with(|c| {
        c.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        c.insecure = true;
    })
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], s.addr().port()));
    for &(method, path, body) in ENDPOINTS {
        api(addr, method, path, None, body)
            .await
            .error(403, "forbidden");
    }
}

#[tokio::test]
async fn a_key_works_with_jwt_too() {
    let s = start_with(|c| {
        c.jwt_secret = Some("a-jwt-secret-of-at-least-32-bytes".into());
        c.api_key = Some(KEY.into());
    })
    .await;
    for &(method, path, body) in ENDPOINTS {
        let r = api(s.addr(), method, path, Some(KEY), body).await;
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        api(s.addr(), method, path, None, body)
            .await
            .error(401, "unauthorized");
    }
}

// ---------------------------------------------------------------------------
// Publish

#[tokio::test]
async fn publish_reaches_an_online_client_as_system() {
    let s = start_with(|c| c.api_key = Some(KEY.into())).await;
    let addr = s.addr();
    let mut bob = TestClient::connect(addr, "bob").await;
    let mut alice = TestClient::connect(addr, "alice").await;

    let body = json!({"id": "m1", "type": "direct", "dest": "bob", "from": "mallory",
                      "data": {"text": "hi"}, "x": [1, 2]});
    let r = publish(addr, Some(KEY), body.clone()).await.ok();
    assert_eq!(r, json!({"id": "m1", "channels": ["bob"]}));

    let m = bob.recv().await;
    assert_eq!(m["id"], "m1", "{m}");
    assert_eq!(m["type"], "direct");
    assert_eq!(m["dest"], "bob");
    assert_eq!(m["data"], json!({"text": "hi"}));
    assert_eq!(m["x"], json!([1, 2]), "other fields are forwarded");
    assert!(m.get("from").is_none(), "sent by system, no from: {m}");
    assert!(m["time"].is_i64(), "time is stamped: {m}");

    // The ack produces no 300 anywhere: the system has no channel.
    bob.ack("m1").await;
    assert_eq!(bob.sync().await, Vec::<Value>::new());
    assert_eq!(alice.sync().await, Vec::<Value>::new());

    // A resend within the dedupe window is accepted, not delivered twice.
    let r = publish(addr, Some(KEY), body).await.ok();
    assert_eq!(r, json!({"id": "m1", "channels": ["bob"]}));
    assert!(bob.next_within(SHORT).await.is_none(), "delivered twice");

    // Without id: live only, `id` is null.
    let r = publish(
        addr,
        Some(KEY),
        json!({"type": "direct", "dest": "bob", "data": 2}),
    )
    .await
    .ok();
    assert_eq!(r, json!({"id": null, "channels": ["bob"]}));
    let m = bob.recv().await;
    assert_eq!(m["data"], 2);
    assert!(m.get("id").is_none() && m.get("from").is_none(), "{m}");
    assert!(alice.next_within(SHORT).await.is_none());
}

#[tokio::test]
async fn publish_to_a_group_reaches_every_member() {
    let s = start().await;
    let addr = s.addr();
    for member in ["c", "a", "b"] {
        let path = format!("/api/groups/team/members/{member}");
        assert_eq!(api(addr, "PUT", &path, None, "").await.ok()["added"], true);
    }
    let mut clients = Vec::new();
    for member in ["a", "b", "c"] {
        clients.push(TestClient::connect(addr, member).await);
    }
    let mut outsider = TestClient::connect(addr, "d").await;

    let body = json!({"id": "g1", "type": "group", "dest": "team", "data": "hello"});
    let r = publish(addr, None, body).await.ok();
    assert_eq!(r, json!({"id": "g1", "channels": ["a", "b", "c"]}));
    for client in &mut clients {
        let m = client.recv().await;
        assert_eq!(m["id"], "g1");
        assert_eq!(m["data"], "hello");
        assert!(m.get("from").is_none(), "{m}");
        client.ack("g1").await;
    }
    for client in &mut clients {
        assert_eq!(client.sync().await, Vec::<Value>::new(), "no 300s");
    }
    assert!(outsider.next_within(SHORT).await.is_none());

    // A group without members takes the message and delivers it nowhere.
    let body = json!({"id": "g2", "type": "group", "dest": "nobody"});
    let r = publish(addr, None, body).await.ok();
    assert_eq!(r, json!({"id": "g2", "channels": []}));
}

#[tokio::test]
async fn publish_errors_map_to_statuses() {
    let s = start().await;
    let addr = s.addr();
    let post = |body: &'static str| api(addr, "POST", "/api/publish", None, body);

    post("{not json").await.error(400, "invalid_json");
    post("").await.error(400, "invalid_json");
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    api(addr, "POST", "/api/publish", None, &deep)
        .await
        .error(400, "invalid_json");
    let r = request(addr, "POST", "/api/publish", &[], b"{\"type\":\"\xff\"}").await;
    let reason = r.error(400, "invalid_json");
    assert!(reason.contains("UTF-8"), "{reason}");

    post("[1]").await.error(400, "invalid_message");
    post(r#"{"type":"direct","dest":"bob","time":"now"}"#)
        .await
        .error(400, "invalid_message");
    post(r#"{"type":"direct","type":"direct","dest":"bob"}"#)
        .await
        .error(400, "invalid_message");
    post(r#"{"type":"direct","dest":""}"#)
        .await
        .error(400, "invalid_message");
    post(r#"{"type":"group","data":1}"#)
        .await
        .error(400, "invalid_message");
    let reason = post(r#"{"type":1001}"#).await.error(400, "invalid_message");
    assert!(reason.contains("WebSocket"), "{reason}");
    post(r#"{"type":200,"data":"m1"}"#)
        .await
        .error(400, "invalid_message");

    post(r#"{"id":"n1","type":"chat","data":1}"#)
        .await
        .error(422, "no_route");
}

#[tokio::test]
async fn a_full_queue_is_429() {
    let s = start_with(|c| c.queue_limit = 1).await;
    let addr = s.addr();
    let msg = |id: &str| json!({"id": id, "type": "direct", "dest": "carol"});
    publish(addr, None, msg("q1")).await.ok();
    let r = publish(addr, None, msg("q2")).await;
    let reason = r.error(429, "queue_full");
    assert!(reason.contains("carol"), "{reason}");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn the_body_limit_is_max_frame_bytes() {
    const LIMIT: usize = 256;
    let s = start_with(|c| c.max_frame_bytes = LIMIT).await;
    let addr = s.addr();
    let sized = |n: usize| {
        let empty = r#"{"type":"direct","dest":"bob","data":""}"#;
        format!(
            r#"{{"type":"direct","dest":"bob","data":"{}"}}"#,
            "x".repeat(n - empty.len())
        )
    };
    let at_limit = sized(LIMIT);
    assert_eq!(at_limit.len(), LIMIT);
    let r = api(addr, "POST", "/api/publish", None, &at_limit).await;
    assert_eq!(r.status, 200, "{r:?}");

    let over = sized(LIMIT + 1);
    let reason = api(addr, "POST", "/api/publish", None, &over)
        .await
        .error(413, "too_large");
    assert!(reason.contains("256"), "{reason}");
    let big = sized(100_000);
    api(addr, "POST", "/api/publish", None, &big)
        .await
        .error(413, "too_large");

    // Without Content-Length (chunked) the limit holds while streaming.
    let chunked = |text: &str| {
        let (a, b) = text.split_at(text.len() / 2);
        format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
    };
    let te = [("Transfer-Encoding", "chunked")];
    let r = request(addr, "POST", "/api/publish", &te, chunked(&over).as_bytes()).await;
    r.error(413, "too_large");
    let r = request(
        addr,
        "POST",
        "/api/publish",
        &te,
        chunked(&at_limit).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

// ---------------------------------------------------------------------------
// Groups

#[tokio::test]
async fn membership_round_trip() {
    let s = start_with(|c| c.api_key = Some(KEY.into())).await;
    let addr = s.addr();
    let call = |method: &'static str, path: &'static str| api(addr, method, path, Some(KEY), "");

    let empty = call("GET", "/api/groups/team").await.ok();
    assert_eq!(empty, json!({"group": "team", "members": []}));

    let r = call("PUT", "/api/groups/team/members/bob").await.ok();
    assert_eq!(r, json!({"group": "team", "channel": "bob", "added": true}));
    let r = call("PUT", "/api/groups/team/members/bob").await.ok();
    assert_eq!(
        r,
        json!({"group": "team", "channel": "bob", "added": false})
    );
    call("PUT", "/api/groups/team/members/alice").await.ok();
    // Path segments are percent-decoded.
    let r = call("PUT", "/api/groups/team/members/%C3%BC%20x")
        .await
        .ok();
    assert_eq!(r["channel"], "ü x");

    let r = call("GET", "/api/groups/team").await.ok();
    assert_eq!(
        r,
        json!({"group": "team", "members": ["alice", "bob", "ü x"]})
    );

    let r = call("DELETE", "/api/groups/team/members/bob").await.ok();
    assert_eq!(
        r,
        json!({"group": "team", "channel": "bob", "removed": true})
    );
    let r = call("DELETE", "/api/groups/team/members/bob").await.ok();
    assert_eq!(
        r,
        json!({"group": "team", "channel": "bob", "removed": false})
    );
    let r = call("GET", "/api/groups/team").await.ok();
    assert_eq!(r["members"], json!(["alice", "ü x"]));
    // Another group is separate.
    let r = call("GET", "/api/groups/other").await.ok();
    assert_eq!(r["members"], json!([]));

    // Invalid names.
    let reason = call("PUT", "/api/groups/team/members/a%0Ab")
        .await
        .error(400, "invalid_message");
    assert!(reason.contains("channel"), "{reason}");
    let long = format!("/api/groups/{}", "g".repeat(129));
    let reason = api(addr, "GET", &long, Some(KEY), "")
        .await
        .error(400, "invalid_message");
    assert!(reason.contains("group"), "{reason}");
    call("DELETE", "/api/groups/team/members/%FF")
        .await
        .error(400, "invalid_message");
}

// ---------------------------------------------------------------------------
// Channels

#[tokio::test]
async fn channel_info_shows_devices_and_pending() {
    let s = start().await;
    let addr = s.addr();
    let info = |channel: &'static str| {
        let path = format!("/api/channels/{channel}");
        async move { api(addr, "GET", &path, None, "").await.ok() }
    };

    let _default = TestClient::connect(addr, "bob").await;
    let _phone = TestClient::connect_device(addr, "bob", "phone").await;
    let laptop1 = TestClient::connect_device(addr, "bob", "laptop").await;
    let _laptop2 = TestClient::connect_device(addr, "bob", "laptop").await;
    assert_eq!(
        info("bob").await,
        json!({"channel": "bob", "online": 4,
               "devices": {"": 1, "laptop": 2, "phone": 1}, "pending": 0})
    );

    // A closed connection leaves (the hub forgets it when its task ends).
    laptop1.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = info("bob").await;
        if v["online"] == 3 {
            assert_eq!(v["devices"], json!({"": 1, "laptop": 1, "phone": 1}));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Messages to an offline channel are pending; id-less ones are not kept.
    assert_eq!(
        info("carol").await,
        json!({"channel": "carol", "online": 0, "devices": {}, "pending": 0})
    );
    for id in ["p1", "p2"] {
        publish(
            addr,
            None,
            json!({"id": id, "type": "direct", "dest": "carol"}),
        )
        .await
        .ok();
    }
    publish(addr, None, json!({"type": "direct", "dest": "carol"}))
        .await
        .ok();
    assert_eq!(info("carol").await["pending"], 2);

    let mut carol = TestClient::connect(addr, "carol").await;
    expect_data(&mut carol, "p1").await;
    expect_data(&mut carol, "p2").await;
    carol.ack("p1").await;
    carol.sync().await;
    let v = info("carol").await;
    assert_eq!(v["pending"], 1, "{v}");
    assert_eq!(v["online"], 1, "{v}");

    api(addr, "GET", "/api/channels/a%01", None, "")
        .await
        .error(400, "invalid_message");
}

async fn expect_data(client: &mut TestClient, id: &str) {
    let m = client.recv().await;
    assert_eq!(m["id"], id, "{m}");
}

// ---------------------------------------------------------------------------
// Routing errors and the document

#[tokio::test]
async fn unknown_paths_and_methods_are_json() {
    let s = start_with(|c| c.api_key = Some(KEY.into())).await;
    let addr = s.addr();
    for path in [
        "/api/nope",
        "/api/groups",
        "/api/groups/g/members",
        "/api/",
        "/api",
    ] {
        let r = api(addr, "GET", path, Some(KEY), "").await;
        eprintln!("{path}: {r:?}");
    }
    let r = api(addr, "GET", "/api/publish", Some(KEY), "").await;
    r.error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = api(addr, "POST", "/api/groups/g", Some(KEY), "").await;
    r.error(405, "method_not_allowed");
    assert!(
        r.header("allow").is_some_and(|a| a.contains("GET")),
        "{r:?}"
    );
    let r = api(addr, "GET", "/api/groups/g/members/a", Some(KEY), "").await;
    r.error(405, "method_not_allowed");
    let allow = r.header("allow").expect("allow");
    assert!(allow.contains("PUT") && allow.contains("DELETE"), "{allow}");
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let s = start_with(|c| c.api_key = Some(KEY.into())).await;
    let r = api(s.addr(), "GET", "/api/openapi.json", None, "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let doc = r.json();
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with('3'), "{version}");
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/publish", "post"),
        ("/api/groups/{group}/members/{channel}", "put"),
        ("/api/groups/{group}/members/{channel}", "delete"),
        ("/api/groups/{group}", "get"),
        ("/api/channels/{channel}", "get"),
        ("/api/openapi.json", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing");
        if path == "/api/openapi.json" {
            assert!(op.get("security").is_none(), "needs no key");
        } else {
            assert_eq!(op["security"], json!([{"api_key": []}]), "{path}");
            assert!(op["responses"]["401"].is_object(), "{path}");
        }
    }
    assert_eq!(paths.as_object().map(|p| p.len()), Some(5));
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let publish = &paths["/api/publish"]["post"];
    for status in ["200", "400", "413", "422", "429", "503"] {
        assert!(publish["responses"][status].is_object(), "{status}");
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["PublishRequest"]["properties"]["type"].is_object());
    assert_eq!(schemas["ErrorBody"]["required"], json!(["error", "reason"]));
}
