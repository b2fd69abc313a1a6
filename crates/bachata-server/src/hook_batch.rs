//! `--route-hook-batch N`: route hook calls that carry up to N messages.
//!
//! One HTTP exchange per message costs the server ~50 us of CPU
//! (docs/performance.md); carried together, many messages share it. Each
//! message's request (the object a single call would POST) goes into a
//! bounded queue. One task takes a place among `--hook-concurrency`, then
//! every request waiting (up to N), and POSTs them as
//! `{"batch": [request, ...]}`; the `200` answer is
//! `{"results": [answer, ...]}`, one single-call answer per request, in
//! order. A call with no usable answer (a timeout, another status, a
//! malformed body, a wrong count) is `unavailable` for each of its
//! messages; a malformed item is `unavailable` for its message alone.
//!
//! Nothing waits without bound: the queue is bounded (a full queue refuses
//! at once, counted as busy), and each message waits at most
//! `--hook-timeout` for its answer, in the queue and in the call together.
//! Requests whose sender gave up are dropped before a call is made.

use std::sync::Arc;

use bachata_core::HookVerdict;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::hooks::{HookClient, HookFailure, MAX_ANSWER, routed};

/// Answer bytes one batch call may read at most (64 KiB per message, up to
/// this).
pub(crate) const MAX_BATCH_ANSWER: usize = 4 * 1024 * 1024;

/// Requests the queue holds at most.
const MAX_QUEUE: usize = 65_536;

/// What a message gets: the application's verdict, or why there is none.
type Verdict = Result<HookVerdict, String>;

struct Item {
    request: Box<RawValue>,
    reply: oneshot::Sender<Verdict>,
}

/// The queue into the batching task (see the module docs).
#[derive(Debug)]
pub(crate) struct Batcher {
    queue: mpsc::Sender<Item>,
    client: Arc<HookClient>,
}

impl Batcher {
    /// Starts the task that makes the calls, `max` requests per call at
    /// most, `concurrency` calls at a time (the client's bound). Needs a
    /// tokio runtime.
    pub(crate) fn start(client: Arc<HookClient>, max: usize, concurrency: usize) -> Batcher {
        let capacity = max.saturating_mul(concurrency).clamp(1, MAX_QUEUE);
        let (queue, rx) = mpsc::channel(capacity);
        tokio::spawn(run(client.clone(), max.max(1), rx));
        Batcher { queue, client }
    }

    /// The application's verdict on one message's request.
    pub(crate) async fn ask(&self, request: Box<RawValue>) -> Verdict {
        let (reply, answer) = oneshot::channel();
        if self.queue.try_send(Item { request, reply }).is_err() {
            self.client.busy();
            return Err(HookFailure::Busy("route").to_string());
        }
        match tokio::time::timeout(self.client.timeout(), answer).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(_)) => Err("the route hook's batching task stopped".to_owned()),
            Err(_) => Err(HookFailure::Timeout("route").to_string()),
        }
    }
}

/// Takes a place, then what is waiting, and calls; until the queue closes.
async fn run(client: Arc<HookClient>, max: usize, mut queue: mpsc::Receiver<Item>) {
    let mut items = Vec::with_capacity(max);
    loop {
        let Some(place) = client.place().await else {
            return;
        };
        if queue.recv_many(&mut items, max).await == 0 {
            return;
        }
        items.retain(|item| !item.reply.is_closed());
        if items.is_empty() {
            continue;
        }
        let batch = std::mem::replace(&mut items, Vec::with_capacity(max));
        let client = client.clone();
        tokio::spawn(async move {
            let _place = place;
            call(&client, batch).await;
        });
    }
}

/// One call with `batch`; answers each item.
async fn call(client: &HookClient, batch: Vec<Item>) {
    let size: usize = batch.iter().map(|i| i.request.get().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 16);
    body.extend_from_slice(br#"{"batch":["#);
    for (i, item) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.request.get().as_bytes());
    }
    body.extend_from_slice(b"]}");
    let limit = MAX_ANSWER.saturating_mul(batch.len()).min(MAX_BATCH_ANSWER);
    let verdicts = match client.call(body, limit).await {
        Ok((StatusCode::OK, answer)) => results(&answer, batch.len()),
        Ok((status, _)) => Err(format!("the route hook answered {status}")),
        Err(failure) => Err(failure.to_string()),
    };
    match verdicts {
        Ok(verdicts) => {
            for (item, verdict) in batch.into_iter().zip(verdicts) {
                let _ = item.reply.send(verdict);
            }
        }
        Err(why) => {
            for item in batch {
                let _ = item.reply.send(Err(why.clone()));
            }
        }
    }
}

/// A batch call's `200` answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Results<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
}

/// The verdict on each of `n` messages in a batch answer.
fn results(body: &[u8], n: usize) -> Result<Vec<Verdict>, String> {
    let answer: Results<'_> =
        serde_json::from_slice(body).map_err(|e| format!("the route hook's answer: {e}"))?;
    if answer.results.len() != n {
        return Err(format!(
            "the route hook's answer: {} results for {n} messages",
            answer.results.len()
        ));
    }
    Ok(answer
        .results
        .iter()
        .map(|item| {
            routed(item.get().as_bytes()).map_err(|why| format!("the route hook's answer: {why}"))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookSettings;
    use crate::metrics::Metrics;
    use bachata_core::HookRoute;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// A hook that records each call's batch size and holds the first call
    /// until `go`.
    #[derive(Default)]
    struct Held {
        sizes: Mutex<Vec<usize>>,
        go: Notify,
    }

    async fn held_hook(held: Arc<Held>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/route",
            axum::routing::post(move |body: axum::body::Bytes| {
                let held = held.clone();
                async move {
                    let batch: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    let n = batch["batch"].as_array().expect("a batch").len();
                    let first = {
                        let mut sizes = held.sizes.lock().expect("lock");
                        sizes.push(n);
                        sizes.len() == 1
                    };
                    if first {
                        held.go.notified().await;
                    }
                    let results: Vec<serde_json::Value> =
                        (0..n).map(|_| serde_json::json!({"pass": true})).collect();
                    axum::Json(serde_json::json!({ "results": results }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/route")
    }

    #[tokio::test]
    async fn requests_waiting_for_a_place_go_in_one_call() {
        let held = Arc::new(Held::default());
        let url = held_hook(held.clone()).await;
        let settings = HookSettings {
            timeout: std::time::Duration::from_secs(10),
            concurrency: 1,
            api_key: None,
        };
        let client =
            HookClient::new("route", &url, &settings, &mut Metrics::new()).expect("client");
        let batcher = Arc::new(Batcher::start(Arc::new(client), 8, 1));
        let request = || RawValue::from_string(r#"{"from":"a"}"#.to_owned()).expect("raw");
        let ask = |batcher: &Arc<Batcher>| {
            let (batcher, request) = (batcher.clone(), request());
            tokio::spawn(async move { batcher.ask(request).await })
        };
        let first = ask(&batcher);
        // The first call is out (and holds the only place) once the hook saw it.
        while held.sizes.lock().expect("lock").is_empty() {
            tokio::task::yield_now().await;
        }
        let (second, third) = (ask(&batcher), ask(&batcher));
        // Both wait in the queue...
        while batcher.queue.max_capacity() - batcher.queue.capacity() < 2 {
            tokio::task::yield_now().await;
        }
        // ... and go together once the first call is answered.
        held.go.notify_one();
        for asked in [first, second, third] {
            let verdict = asked.await.expect("task").expect("a verdict");
            assert!(matches!(verdict.route, HookRoute::Pass));
        }
        assert_eq!(*held.sizes.lock().expect("lock"), [1, 2]);
    }

    #[test]
    fn batch_answers_are_read_item_by_item() {
        let body = br#"{"results": [{"pass": true}, {"channels": ["bob"]}, {"pass": "yes"}]}"#;
        let verdicts = results(body, 3).expect("three results");
        assert!(matches!(
            verdicts[0].as_ref().map(|v| &v.route),
            Ok(HookRoute::Pass)
        ));
        assert!(matches!(
            verdicts[1].as_ref().map(|v| &v.route),
            Ok(HookRoute::Channels(c)) if c.len() == 1
        ));
        assert!(verdicts[2].is_err(), "a malformed item fails alone");
        assert!(results(body, 2).is_err(), "a wrong count fails the call");
        assert!(
            results(br#"{"results": [], "x": 1}"#, 0).is_err(),
            "unknown field"
        );
        assert!(results(b"[]", 0).is_err());
    }
}
