//! The TLS listener with a real process and real certificate files:
//! `wss://` and HTTPS on one address, a reload on SIGHUP while a `wss://`
//! client stays connected, and the start refused for bad files.

mod common;

use std::path::Path;
use std::sync::Arc;

use bachata_testkit::client::WAIT;
use bachata_testkit::tls::TestCa;
use common::Logged;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

/// `bachata serve` on the memory store with the TLS files.
async fn spawn(cert: &Path, key: &Path) -> Logged {
    let args = [
        "--store".to_owned(),
        "memory".to_owned(),
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
    ];
    let server = common::spawn_logged(&args, &[]).await;
    assert!(server.ready.contains("tls=true"), "{}", server.ready);
    server
}

/// A TLS connection to `localhost:port` that trusts only `ca` (rustls with
/// *ring*, deprecated from rustls 0.23.48 for lacking post-quantum key
/// exchange: see `src/tls.rs`).
#[allow(deprecated)]
async fn tls_to(
    port: u16,
    ca: &TestCa,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca.ca_pem()) {
        roots.add(cert).expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `wss://` connection as `channel`, past its ready message.
async fn wss(port: u16, ca: &TestCa, channel: &str) -> Wss {
    let tls = tls_to(port, ca).await.expect("TLS handshake");
    let url = format!("wss://localhost:{port}/messages?channel={channel}");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("in time")
        .expect("WebSocket handshake");
    let ready = next_json(&mut ws).await;
    assert_eq!(ready["type"], 1000, "{ready}");
    ws
}

async fn next_json(ws: &mut Wss) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// Sends SIGHUP and waits for the log line that says what came of it.
async fn hang_up(server: &mut Logged, outcome: &str) {
    let pid = server.child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(sent.success());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = server.lines.recv().await {
            if line.contains(outcome) {
                return;
            }
        }
        panic!("the server stopped");
    })
    .await
    .unwrap_or_else(|_| panic!("no {outcome:?} in time"));
}

fn install(ca: &TestCa, dir: &Path) {
    std::fs::copy(ca.cert_file(), dir.join("cert.pem")).expect("copy cert");
    std::fs::copy(ca.key_file(), dir.join("key.pem")).expect("copy key");
}

#[tokio::test]
async fn wss_and_https_on_one_listener_and_a_reload_on_sighup() {
    let dir = tempfile::tempdir().expect("dir");
    let (first, second) = (TestCa::new(), TestCa::new());
    install(&first, dir.path());
    let mut server = spawn(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).await;
    let port = server.addr.port();

    // wss:// carries the protocol.
    let mut alice = wss(port, &first, "alice").await;
    alice
        .send(Message::Text(r#"{"type":1001}"#.into()))
        .await
        .expect("send");
    assert_eq!(next_json(&mut alice).await["type"], 1002);
    // HTTPS on the same port.
    let mut https = tls_to(port, &first).await.expect("TLS");
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    https.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP to the TLS port gets nothing served.
    let mut plain = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // New files, SIGHUP: the server says it reloaded them.
    install(&second, dir.path());
    hang_up(&mut server, "TLS certificate reloaded").await;

    // The open connection goes on; new ones get the new certificate.
    alice
        .send(Message::Text(r#"{"type":1001}"#.into()))
        .await
        .expect("send");
    assert_eq!(next_json(&mut alice).await["type"], 1002);
    let _bob = wss(port, &second, "bob").await;
    assert!(
        tls_to(port, &first).await.is_err(),
        "the old certificate is no longer served"
    );

    // A reload with files that do not go together keeps the certificate.
    std::fs::copy(first.key_file(), dir.path().join("key.pem")).expect("copy");
    hang_up(&mut server, "TLS certificate not reloaded").await;
    let _carol = wss(port, &second, "carol").await;
}

/// The Rust client (through `bachata send`) over `wss://`: with `--ca` it
/// trusts a private CA; without it, the system's roots, which do not know
/// the test CA.
#[tokio::test]
async fn the_cli_sends_over_wss_trusting_the_ca_it_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new();
    install(&ca, dir.path());
    let server = spawn(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).await;
    let url = format!("wss://localhost:{}", server.addr.port());
    let send = |ca_file: Option<std::path::PathBuf>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bachata"));
        command
            .args([
                "send",
                "--url",
                &url,
                "--channel",
                "alice",
                "--to",
                "bob",
                "--timeout",
                "5",
            ])
            .env("BACHATA_LOG", "warn")
            .kill_on_drop(true);
        if let Some(file) = ca_file {
            command.arg("--ca").arg(file);
        }
        command.arg("hi over TLS");
        command.output()
    };
    let out = tokio::time::timeout(WAIT, send(Some(ca.ca_file())))
        .await
        .expect("in time")
        .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""stored":true"#), "{stdout}");
    let out = tokio::time::timeout(WAIT, send(None))
        .await
        .expect("in time")
        .expect("ran");
    assert_eq!(out.status.code(), Some(4), "an unknown CA cannot connect");
    drop(server);
}

/// What `serve` (and `check-config`) refuses at start, with the reason.
#[tokio::test]
async fn bad_tls_files_refuse_to_start_with_the_reason() {
    let (good, other, expired) = (TestCa::new(), TestCa::new(), TestCa::expired());
    let missing = good.dir().join("nowhere.pem");
    let cases: [(&Path, &Path, &str); 4] = [
        (&missing, &good.key_file(), "cannot read --tls-cert"),
        (&good.cert_file(), &missing, "cannot read --tls-key"),
        (&good.cert_file(), &other.key_file(), "do not go together"),
        (&expired.cert_file(), &expired.key_file(), "expired"),
    ];
    for (cert, key, reason) in cases {
        for command in ["serve", "check-config"] {
            let out = Command::new(env!("CARGO_BIN_EXE_bachata"))
                .args([
                    command,
                    "--listen",
                    "127.0.0.1:0",
                    "--store",
                    "memory",
                    "--tls-cert",
                ])
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .env("BACHATA_LOG", "warn")
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(WAIT, out)
                .await
                .expect("exits in time")
                .expect("ran");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command} {reason}: {err}");
            assert!(
                err.contains(reason),
                "{command}: {reason} missing from {err}"
            );
        }
    }
    // One without the other.
    let out = Command::new(env!("CARGO_BIN_EXE_bachata"))
        .args(["check-config", "--tls-cert"])
        .arg(good.cert_file())
        .output()
        .await
        .expect("ran");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert and tls_key go together"));
}
