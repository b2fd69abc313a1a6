//! A route hook for `pairs --route-hook-pass`: an axum server in the bench's
//! own process that answers every call `{"pass": true}`, so that a run
//! measures what the hook's round trip costs the server (issue 13: a route
//! hook must keep at least half the hookless throughput). With a delay it
//! plays an application that takes that long per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

/// The running hook: its URL and how many calls it answered.
pub(crate) struct PassHook {
    pub(crate) url: String,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PassHook {
    /// Serves on a free loopback port until dropped; each answer comes
    /// `delay` after its call.
    pub(crate) async fn start(delay: std::time::Duration) -> anyhow::Result<PassHook> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the route hook")?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/route",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        answer(&body),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(PassHook {
            url: format!("http://{addr}/route"),
            calls,
            task,
        })
    }

    /// Calls answered (a batch call counts once).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A batch call (`--route-hook-batch`, `{"batch": [...]}`) gets one pass
/// per message; a single call one pass.
fn answer(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Batch {
        batch: Vec<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Batch>(body) {
        Ok(b) => {
            let mut out = String::with_capacity(16 + 14 * b.batch.len());
            out.push_str(r#"{"results":["#);
            for i in 0..b.batch.len() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"pass":true}"#);
            }
            out.push_str("]}");
            out
        }
        Err(_) => r#"{"pass":true}"#.to_owned(),
    }
}

impl Drop for PassHook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn answers_pass() {
        let hook = PassHook::start(std::time::Duration::ZERO)
            .await
            .expect("start");
        let addr = hook
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/route")
            .to_owned();
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let body = r#"{"from":"a","device":null,"message":{}}"#;
        let request = format!(
            "POST /route HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(r#"{"pass":true}"#), "{answer}");
        assert_eq!(hook.calls(), 1);
    }
}
