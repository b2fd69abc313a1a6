//! `bachata send` and `bachata listen`, as real processes against a real
//! server.

mod common;

use std::process::Stdio;
use std::time::Duration;

use bachata_testkit::client::WAIT;
use common::start;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn bachata() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bachata"));
    c.env("BACHATA_LOG", "warn").kill_on_drop(true);
    c
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = bachata()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command ran");
    let status = tokio::time::timeout(WAIT, child.wait()).await;
    if status.is_err() {
        let _ = child.start_kill();
    }
    let out = child.wait_with_output().await.expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        status.is_ok(),
        "{args:?} did not finish in time; stderr:\n{stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[tokio::test]
async fn send_and_listen() {
    let s = start().await;
    let url = format!("ws://{}", s.addr());
    let mut listener = bachata()
        .args(["listen", "--url", &url, "--channel", "bob", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("listen");
    let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();

    // Offline first: stored, then printed when bob listens. Wait for bob's
    // connection by sending and reading the first line.
    let (code, out, err) = run(&[
        "send",
        "--url",
        &url,
        "--channel",
        "alice",
        "--to",
        "bob",
        "--id",
        "m1",
        "hi bob",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(report, serde_json::json!({"id": "m1", "stored": true}));
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line");
    let m: Value = serde_json::from_str(&line).expect("one JSON message per line");
    assert_eq!(m["id"], "m1");
    assert_eq!(m["from"], "alice");
    assert_eq!(m["data"], serde_json::json!({"text": "hi bob"}));

    // --wait-delivered: bob's listener acks, so the 300 comes.
    let (code, out, err) = run(&[
        "send",
        "--url",
        &url,
        "--channel",
        "alice",
        "--to",
        "bob",
        "--json",
        "--wait-delivered",
        r#"{"n": 2}"#,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(report["delivered_to"], "bob");
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("in time")
        .expect("read")
        .expect("line");
    assert_eq!(
        serde_json::from_str::<Value>(&line).expect("json")["data"]["n"],
        2
    );
    // --count 2: the listener exits by itself.
    let status = tokio::time::timeout(WAIT, listener.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn errors_have_exit_codes() {
    let s = start().await;
    let url = format!("ws://{}", s.addr());
    // 1: refused by the server (a group the sender is not in).
    let (code, _, err) = run(&["send", "--url", &url, "--group", "nope", "x"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("forbidden"), "{err}");
    // 2: usage.
    let (code, _, _) = run(&["send", "--url", &url, "x"]).await;
    assert_eq!(code, 2);
    let (code, _, err) = run(&["send", "--url", &url, "--to", "b", "--json", "{not json"]).await;
    assert_eq!(code, 2, "{err}");
    // 3: no 300 within the timeout (nobody listens).
    let (code, _, err) = run(&[
        "send",
        "--url",
        &url,
        "--to",
        "offline",
        "--wait-delivered",
        "--timeout",
        "300ms",
        "x",
    ])
    .await;
    assert_eq!(code, 3, "{err}");
    // 4: nobody at that address / handshake refused.
    let (code, _, _) = run(&[
        "send",
        "--url",
        "ws://127.0.0.1:1",
        "--to",
        "b",
        "--timeout",
        "2",
        "x",
    ])
    .await;
    assert_eq!(code, 4, "plain seconds are a valid --timeout");
    let long = "c".repeat(200);
    let (code, _, err) = run(&["send", "--url", &url, "--channel", &long, "--to", "b", "x"]).await;
    assert_eq!(code, 4);
    assert!(err.contains("401"), "{err}");
    let _ = Duration::ZERO;
}

/// The ready line says which store, data directory and auth mode are in
/// effect (a newcomer's first question), and no secret.
#[tokio::test]
async fn the_ready_line_names_the_store_the_data_dir_and_the_auth_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "a-jwt-secret-of-at-least-thirty-two-bytes!";
    let args = [
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
        "--jwt-secret".to_owned(),
        secret.to_owned(),
    ];
    let server = common::spawn_logged(&args, &[]).await;
    let line = server.ready;
    assert!(line.contains("store=embedded"), "{line}");
    assert!(
        line.contains(&format!("data_dir={}", dir.path().display())),
        "{line}"
    );
    assert!(line.contains("auth=jwt"), "{line}");
    assert!(!line.contains(secret), "{line}");
}

/// `serve --help` names each setting's `BACHATA_*` variable (that each flag
/// is a setting is checked in `config.rs`).
#[tokio::test]
async fn serve_help_names_each_settings_variable() {
    let (code, help, _) = run(&["serve", "--help"]).await;
    assert_eq!(code, 0);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '=']).next())
        .filter(|f| !matches!(*f, "config" | "help"))
        .collect();
    assert!(flags.len() > 30, "{help}");
    for flag in flags {
        let variable = format!(
            "[env: BACHATA_{}]",
            flag.replace('-', "_").to_ascii_uppercase()
        );
        assert!(help.contains(&variable), "{variable} missing:\n{help}");
    }
}

/// `--log-format json`: every line is one JSON object; connection events
/// carry the connection's number, channel and device; no secret is ever in
/// a line (the API key, the signing key, the API's bearer header).
#[tokio::test]
async fn json_logs_parse_line_by_line_and_hold_no_secret() {
    let api_key = "api-key-that-must-never-be-logged-0123456789";
    let sign_key = "sign-key-that-must-never-be-logged-0123456789";
    let args: Vec<String> = [
        "--store",
        "memory",
        "--log-format",
        "json",
        "--api-key",
        api_key,
        "--sign-key",
        sign_key,
    ]
    .map(str::to_owned)
    .to_vec();
    let mut server = common::spawn_logged(&args, &[("BACHATA_LOG", "debug")]).await;
    let (addr, mut seen) = (server.addr, server.before.clone());
    let mut alice = bachata_testkit::client::TestClient::connect(addr, "alice").await;
    alice
        .send(serde_json::json!({"id": "m1", "type": "direct", "dest": "bob"}))
        .await;
    assert_eq!(alice.recv().await["error"], "bad_signature");
    let (status, _) = bachata_testkit::http::send(
        addr,
        &format!(
            "GET /api/channels/bob HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);
    drop(alice);
    let pid = server.child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = server.lines.recv().await {
            seen.push(line);
        }
    })
    .await
    .expect("the server exits on SIGTERM");
    let mut connected = None;
    for line in &seen {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains(api_key) && !line.contains(sign_key),
            "a secret: {line}"
        );
        if event["fields"]["message"] == "connected" {
            connected = Some(event);
        }
    }
    let connected = connected.expect("a connected event at debug");
    assert_eq!(connected["fields"]["channel"], "alice", "{connected}");
    assert_eq!(connected["fields"]["device"], "", "{connected}");
    assert!(connected["fields"]["conn"].is_u64(), "{connected}");
}

#[tokio::test]
async fn version_names_the_version_and_the_commit() {
    let (code, out, _) = run(&["--version"]).await;
    assert_eq!(code, 0);
    let line = out.trim();
    let rest = line
        .strip_prefix(&format!("bachata {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        rest == "unknown" || (rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line}"
    );
}

/// docs/configuration.md and bachata.example.toml are generated from the
/// settings' definitions (`bachata config-reference`): they match the code,
/// so they match `serve --help`.
#[tokio::test]
async fn the_configuration_page_and_the_example_match_the_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for (args, file) in [
        (&["config-reference"][..], "docs/configuration.md"),
        (&["config-reference", "--toml"][..], "bachata.example.toml"),
    ] {
        let (code, generated, err) = run(args).await;
        assert_eq!(code, 0, "{err}");
        let committed = std::fs::read_to_string(format!("{root}/{file}")).expect("read");
        assert!(
            generated == committed,
            "{file} is out of date: run `cargo run -p bachata-server -- {} > {file}`",
            args.join(" ")
        );
    }
    // The example is a valid file (every key commented out: the defaults).
    let (code, out, err) = run(&[
        "check-config",
        "--config",
        &format!("{root}/bachata.example.toml"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queue_limit = 10000"), "{out}");
}

/// `check-config` prints the settings in effect, from every source, with
/// secrets masked; and fails with the errors `serve` would give.
#[tokio::test]
async fn check_config_prints_the_settings_in_effect_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("b.toml");
    std::fs::write(
        &file,
        "queue_limit = 7\napi_key = \"file-api-key-secret\"\n",
    )
    .expect("write");
    let secret = "jwt-secret-of-at-least-thirty-two-bytes-x";
    let mut command = bachata();
    command
        .args(["check-config", "--config"])
        .arg(&file)
        .args(["--jwt-secret", secret, "--store", "redis"])
        .args(["--redis-url", "redis://user:redis-password@127.0.0.1:1"])
        .env("BACHATA_INFLIGHT", "9");
    let out = command.output().await.expect("ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "queue_limit = 7",
        "inflight = 9",
        "store = \"redis\"",
        "jwt_secret = \"********\"",
        "api_key = \"********\"",
        "redis_url = \"redis://user:********@127.0.0.1:1\"",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for secret in [secret, "file-api-key-secret", "redis-password"] {
        assert!(!text.contains(secret), "{text}");
    }
    // The errors serve gives, and its exit code.
    let (code, _, err) = run(&["check-config", "--message-ttl", "soon"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("invalid --message-ttl"), "{err}");
    let (code, _, err) = run(&["check-config", "--jwt-public-key", "/nonexistent.pem"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("nonexistent.pem"), "{err}");
    let (code, _, err) = run(&["check-config", "--route-hook", "ftp://x"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("route_hook"), "{err}");
}

/// `check-config` makes the checks `serve` makes, from one place: a
/// setting `serve` refuses is refused by both, with the same reason. (It
/// once checked its own list and passed a `--max-connections` above the
/// open-file limit that `serve` refused.)
#[tokio::test]
async fn check_config_refuses_what_serve_refuses() {
    // Above any open-file limit Linux allows (at most 2^30).
    let too_many = ["--max-connections", "2000000000"];
    let cases: [(&[&str], &str); 3] = [
        (&too_many, "does not fit in the open-file limit"),
        (&["--route-hook", "ftp://x"], "route_hook"),
        (&["--allowed-origins", "not an origin"], "allowed_origins"),
    ];
    for (args, reason) in cases {
        let mut outcomes = Vec::new();
        for command in ["serve", "check-config"] {
            let mut all = vec![command, "--listen", "127.0.0.1:0", "--store", "memory"];
            all.extend_from_slice(args);
            let (code, _, err) = run(&all).await;
            assert_ne!(code, 0, "{command} {args:?}: {err}");
            assert!(
                err.contains(reason),
                "{command} {args:?}: {reason} missing from {err}"
            );
            outcomes.push(code);
        }
        assert_eq!(outcomes[0], outcomes[1], "{args:?}: the same exit code");
    }
    // The same settings within the limit pass.
    let (code, _, err) = run(&["check-config", "--max-connections", "100"]).await;
    assert_eq!(code, 0, "{err}");
}
