//! JWT auth through a real server (protocol.md section 2): valid, expired, not yet valid,
//! wrongly signed and missing tokens; `?token=` and `Authorization: Bearer`;
//! HS256, RS256 and ES256.

mod common;

use std::path::PathBuf;

use bachata_testkit::client::{TestClient, refused};
use common::start_with;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret-of-at-least-32-bytes";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn hs256(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

#[tokio::test]
async fn valid_tokens_by_query_and_bearer_header() {
    let s = start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let token = hs256(json!({"sub": "alice", "exp": now() + 60}), SECRET);
    let c = TestClient::connect_url(&format!("ws://{}/messages?token={token}", s.addr())).await;
    assert_eq!(c.ready, json!({"channel": "alice"}));

    let token = hs256(
        json!({"sub": "bob", "device": "phone", "exp": now() + 60}),
        SECRET,
    );
    let mut request = format!("ws://{}/messages", s.addr())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect with bearer");
    use futures_util::StreamExt;
    let ready = ws.next().await.expect("frame").expect("ok");
    let ready: Value = serde_json::from_str(ready.to_text().expect("text")).expect("json");
    assert_eq!(
        ready,
        json!({"type": 1000, "data": {"channel": "bob", "device": "phone"}})
    );
}

#[tokio::test]
async fn the_token_decides_the_channel_and_messages_flow() {
    let s = start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let url = |sub: &str| {
        let token = hs256(json!({"sub": sub, "exp": now() + 60}), SECRET);
        // A ?channel= that names the token's channel is fine.
        format!("ws://{}/messages?channel={sub}&token={token}", s.addr())
    };
    let mut alice = TestClient::connect_url(&url("alice")).await;
    let mut bob = TestClient::connect_url(&url("bob")).await;
    alice.send_direct("m1", "bob", json!(1)).await;
    alice.expect(100, "m1").await;
    assert_eq!(bob.recv().await["from"], "alice");
}

/// protocol.md section 9, tokens: a lifetime beyond `--max-token-lifetime`
/// (2^64-1 included), a repeated token, a token in both the query and a
/// header, and a `?channel=` other than the token's are all 401.
#[tokio::test]
async fn token_rules_leave_no_way_around_them() {
    let s = start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_token_lifetime = std::time::Duration::from_secs(3600);
    })
    .await;
    let addr = s.addr();
    let token = |exp: Value| hs256(json!({"sub": "alice", "exp": exp}), SECRET);
    let ok = token(json!(now() + 3500));
    for (url, reason) in [
        (
            format!("ws://{addr}/messages?token={}", token(json!(u64::MAX))),
            "max_token_lifetime",
        ),
        (
            format!("ws://{addr}/messages?token={}", token(json!(now() + 7200))),
            "max_token_lifetime",
        ),
        // (jsonwebtoken refuses an `exp` that is not an integer itself.)
        (
            format!("ws://{addr}/messages?token={}", token(json!(1e300))),
            "invalid token",
        ),
        (
            format!("ws://{addr}/messages?token={ok}&token={ok}"),
            "twice",
        ),
        (
            format!("ws://{addr}/messages?token={ok}&channel=mallory"),
            "differs",
        ),
    ] {
        let (status, body) = refused(url.clone()).await;
        assert_eq!(status, 401, "{url}");
        assert!(
            body.contains(reason),
            "{url}: expected {reason:?} in {body:?}"
        );
    }
    let mut request = format!("ws://{addr}/messages?token={ok}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ok}").parse().expect("header"),
    );
    let (status, body) = refused(request).await;
    assert_eq!(status, 401);
    assert!(body.contains("send it once"), "{body}");
    // Within the lifetime (and its leeway) the token works.
    let c = TestClient::connect_url(&format!("ws://{addr}/messages?token={ok}")).await;
    assert_eq!(c.ready, json!({"channel": "alice"}));
}

#[tokio::test]
async fn a_short_hs256_secret_refuses_to_start_unless_insecure() {
    let mut config = common::config();
    config.jwt_secret = Some("x".repeat(31));
    let e = bachata_server::start(config.clone())
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("at least 32"), "{e}");
    config.insecure = true;
    let s = bachata_server::start(config).await.expect("a test setup");
    s.shutdown().await;
}

/// Anonymous mode: a channel that is not UTF-8 once percent-decoded is
/// refused, not replaced by U+FFFD (which would connect to another
/// channel), and so is a repeated `channel`.
#[tokio::test]
async fn query_parameters_are_decoded_strictly() {
    let s = common::start().await;
    let addr = s.addr();
    for (query, reason) in [
        ("channel=%ff", "UTF-8"),
        ("channel=a%C3", "UTF-8"),
        ("channel=a&channel=b", "twice"),
        ("channel=a&device=%80", "UTF-8"),
    ] {
        let (status, body) = refused(format!("ws://{addr}/messages?{query}")).await;
        assert_eq!(status, 401, "{query}");
        assert!(body.contains(reason), "{query}: {body}");
    }
    let c = TestClient::connect_url(&format!("ws://{addr}/messages?channel=%C3%A1+b")).await;
    assert_eq!(c.ready, json!({"channel": "á b"}));
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_reason() {
    let s = start_with(|c| c.jwt_secret = Some(SECRET.into())).await;
    let addr = s.addr();
    let cases = [
        (None, "missing token"),
        (
            Some(hs256(json!({"sub": "a", "exp": now() - 60}), SECRET)),
            "expired",
        ),
        (
            Some(hs256(
                json!({"sub": "a", "exp": now() + 60}),
                "other-secret",
            )),
            "wrong signature",
        ),
        (
            Some(hs256(
                json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}),
                SECRET,
            )),
            "not valid yet",
        ),
        (
            Some(hs256(json!({"sub": "a"}), SECRET)),
            "missing a required claim",
        ),
        (
            Some(hs256(json!({"exp": now() + 60}), SECRET)),
            "missing a required claim",
        ),
        (
            Some(hs256(json!({"sub": "", "exp": now() + 60}), SECRET)),
            "sub",
        ),
        (Some("not.a.jwt".into()), "malformed"),
    ];
    for (token, reason) in cases {
        let url = match &token {
            Some(t) => format!("ws://{addr}/messages?token={t}"),
            None => format!("ws://{addr}/messages?channel=alice"),
        };
        let (status, body) = refused(url).await;
        assert_eq!(status, 401, "{reason}");
        assert!(body.contains(reason), "expected {reason:?} in {body:?}");
    }
    // Within the leeway an expired token still works.
    let token = hs256(json!({"sub": "a", "exp": now() - 2}), SECRET);
    TestClient::connect_url(&format!("ws://{addr}/messages?token={token}")).await;
    // The token's device and ?device= must agree.
    let token = hs256(
        json!({"sub": "a", "device": "phone", "exp": now() + 60}),
        SECRET,
    );
    let (status, body) = refused(format!("ws://{addr}/messages?token={token}&device=laptop")).await;
    assert_eq!(status, 401);
    assert!(body.contains("differs"), "{body}");
    // A token without device may name one.
    let token = hs256(json!({"sub": "a", "exp": now() + 60}), SECRET);
    let c =
        TestClient::connect_url(&format!("ws://{addr}/messages?token={token}&device=tab")).await;
    assert_eq!(c.ready, json!({"channel": "a", "device": "tab"}));
    // A malformed Authorization header.
    let mut request = format!("ws://{addr}/messages")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("authorization", "Basic abc".parse().expect("header"));
    let (status, body) = refused(request).await;
    assert_eq!(status, 401);
    assert!(body.contains("Bearer"), "{body}");
}

fn signed_with(alg: Algorithm, private_pem: &str, claims: Value) -> String {
    let pem = std::fs::read(key_file(private_pem)).expect("key file");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("private key");
    encode(&Header::new(alg), &claims, &key).expect("encode")
}

#[tokio::test]
async fn rs256_and_es256_with_a_public_key_file() {
    for (alg, public, private, other_private) in [
        (Algorithm::RS256, "rsa-public.pem", "rsa-private.pem", None),
        (
            Algorithm::ES256,
            "ec-public.pem",
            "ec-private.pem",
            Some("rsa-private.pem"),
        ),
    ] {
        let s = start_with(|c| c.jwt_public_key = Some(key_file(public))).await;
        let token = signed_with(alg, private, json!({"sub": "carol", "exp": now() + 60}));
        let c = TestClient::connect_url(&format!("ws://{}/messages?token={token}", s.addr())).await;
        assert_eq!(c.ready, json!({"channel": "carol"}), "{alg:?}");
        // An HS256 token made with the PEM text as secret is refused
        // (algorithm confusion).
        let pem = std::fs::read_to_string(key_file(public)).expect("pem");
        let forged = hs256(json!({"sub": "carol", "exp": now() + 60}), &pem);
        let (status, _) = refused(format!("ws://{}/messages?token={forged}", s.addr())).await;
        assert_eq!(status, 401, "{alg:?}");
        if let Some(other) = other_private {
            let wrong = signed_with(
                Algorithm::RS256,
                other,
                json!({"sub": "c", "exp": now() + 60}),
            );
            let (status, _) = refused(format!("ws://{}/messages?token={wrong}", s.addr())).await;
            assert_eq!(status, 401);
        }
    }
}

#[tokio::test]
async fn an_unreadable_public_key_stops_start_up_with_a_clear_error() {
    let mut config = common::config();
    config.jwt_public_key = Some(key_file("README.md"));
    let e = bachata_server::start(config).await.expect_err("refused");
    assert!(e.to_string().contains("PEM"), "{e}");
    let mut config = common::config();
    config.jwt_public_key = Some(key_file("missing.pem"));
    let e = bachata_server::start(config).await.expect_err("refused");
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
