//! The route hook (`--route-hook URL`, `--route-hook-types`; protocol.md
//! section 10): a client's data message of those types is POSTed before the
//! route chain; the answer names the channels, passes to the chain, or
//! refuses (`forbidden` or an `app_*` code), and may replace `data`. No
//! usable answer is 400 `unavailable`, nothing stored
//! ([`RouteHookClient`]). The calls go through the shared
//! [`HookClient`](crate::hooks::HookClient).
//!
//! # Batched calls
//! `--route-hook-batch N` makes calls carry up to N messages.
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

use bachata_core::{Device, HookRoute, HookVerdict, RouteHook};
use bachata_proto::{Channel, DataMessage};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::hooks::{HookClient, HookFailure, MAX_ANSWER};

/// A connection's messages out with a batching route hook at once.
pub(crate) const BATCHED_PER_CONNECTION: usize = 16;

/// Channels one route answer may name at most.
pub(crate) const MAX_CHANNELS: usize = 10_000;

/// The message types that go to the route hook: every type, or those listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookTypes {
    All,
    Only(Vec<String>),
}

impl HookTypes {
    /// `*` (or nothing) for every type, else a comma list.
    pub(crate) fn parse(list: Option<&str>) -> HookTypes {
        let types: Vec<String> = list
            .unwrap_or("*")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if types.is_empty() || types.iter().any(|t| t == "*") {
            HookTypes::All
        } else {
            HookTypes::Only(types)
        }
    }

    fn contains(&self, kind: &str) -> bool {
        match self {
            HookTypes::All => true,
            HookTypes::Only(types) => types.iter().any(|t| t == kind),
        }
    }
}

/// A 200 answer of the route hook: exactly one of `channels`, `pass` and
/// `error`, and optionally `data`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteAnswer {
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    pass: Option<bool>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
}

/// `--route-hook`: see the module docs.
#[derive(Debug)]
pub(crate) struct RouteHookClient {
    client: Arc<HookClient>,
    types: HookTypes,
    /// With `--route-hook-batch` above 1: calls carry many messages.
    batcher: Option<Batcher>,
}

impl RouteHookClient {
    /// `batch`: messages per call at most (1: each alone). Needs a tokio
    /// runtime when `batch` is above 1.
    pub(crate) fn new(
        client: HookClient,
        types: HookTypes,
        batch: usize,
        concurrency: usize,
    ) -> RouteHookClient {
        let client = Arc::new(client);
        let batcher = (batch > 1).then(|| Batcher::start(client.clone(), batch, concurrency));
        RouteHookClient {
            client,
            types,
            batcher,
        }
    }
}

#[async_trait::async_trait]
impl RouteHook for RouteHookClient {
    fn wants(&self, kind: &str) -> bool {
        self.types.contains(kind)
    }

    /// Batched, a connection's messages wait in the queue rather than hold
    /// a call each: more of them may be out (measured best at 16,
    /// docs/performance.md).
    fn in_flight_per_connection(&self) -> usize {
        if self.batcher.is_some() {
            BATCHED_PER_CONNECTION
        } else {
            bachata_core::HOOK_CALLS_PER_CONNECTION
        }
    }

    async fn route(&self, sender: &Channel, device: &Device, msg: &DataMessage) -> HookVerdict {
        let unavailable = |why: String| {
            let _ = self.client.warn(&why);
            HookVerdict {
                route: HookRoute::Unavailable(why),
                data: None,
            }
        };
        let request = match route_request(sender, device, msg) {
            Ok(request) => request,
            Err(e) => return unavailable(format!("the request as JSON: {e}")),
        };
        if let Some(batcher) = &self.batcher {
            return batcher.ask(request).await.unwrap_or_else(unavailable);
        }
        let (status, body) = match self.client.post_body(request).await {
            Ok(answer) => answer,
            Err(failure) => return unavailable(failure.to_string()),
        };
        if status != StatusCode::OK {
            return unavailable(format!("the route hook answered {status}"));
        }
        match routed(&body) {
            Ok(verdict) => verdict,
            Err(why) => unavailable(format!("the route hook's answer: {why}")),
        }
    }
}

/// What the route hook is told about `msg`,
/// `{"from": ..., "device": ..., "message": ...}`, written once: the
/// message as the server serializes it goes in as it is (it is not parsed
/// again to be embedded).
fn route_request(
    sender: &Channel,
    device: &Device,
    msg: &DataMessage,
) -> Result<Vec<u8>, serde_json::Error> {
    let message = msg.to_json();
    let mut out = Vec::with_capacity(message.len() + 64);
    out.extend_from_slice(br#"{"from":"#);
    serde_json::to_writer(&mut out, sender.as_str())?;
    out.extend_from_slice(br#","device":"#);
    serde_json::to_writer(&mut out, &device.as_ref().map(|d| d.as_str()))?;
    out.extend_from_slice(br#","message":"#);
    out.extend_from_slice(message.as_bytes());
    out.push(b'}');
    Ok(out)
}

/// The verdict in a 200 answer of the route hook.
pub(crate) fn routed(body: &[u8]) -> Result<HookVerdict, String> {
    let answer: RouteAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let route = match (answer.channels, answer.pass, answer.error) {
        (Some(channels), None, None) => {
            if channels.len() > MAX_CHANNELS {
                return Err(format!("more than {MAX_CHANNELS} channels"));
            }
            HookRoute::Channels(
                channels
                    .iter()
                    .map(|c| Channel::new(c).map_err(|e| format!("channel {c:?}: {e}")))
                    .collect::<Result<_, _>>()?,
            )
        }
        (None, Some(true), None) => HookRoute::Pass,
        (None, None, Some(code)) => {
            if !is_app_code(&code) {
                return Err(format!(
                    "error {code:?}: must be \"forbidden\" or app_ followed by letters, digits \
                     or _ (at most 64 bytes)"
                ));
            }
            HookRoute::Reject {
                code,
                reason: answer
                    .reason
                    .unwrap_or_else(|| "refused by the application".to_owned()),
            }
        }
        _ => return Err("exactly one of channels, pass: true and error".to_owned()),
    };
    Ok(HookVerdict {
        route,
        data: answer.data,
    })
}

/// `forbidden`, or `app_` and `[a-z0-9_]` up to 64 bytes in all.
fn is_app_code(code: &str) -> bool {
    code == "forbidden"
        || (code.len() <= 64
            && code.len() > "app_".len()
            && code.starts_with("app_")
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

/// Answer bytes one batch call may read at most (64 KiB per message, up to
/// this).
pub(crate) const MAX_BATCH_ANSWER: usize = 4 * 1024 * 1024;

/// Requests the queue holds at most.
const MAX_QUEUE: usize = 65_536;

/// What a message gets: the application's verdict, or why there is none.
type Verdict = Result<HookVerdict, String>;

struct Item {
    /// The request's JSON ([`route_request`]).
    request: Vec<u8>,
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
    pub(crate) async fn ask(&self, request: Vec<u8>) -> Verdict {
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
    let size: usize = batch.iter().map(|i| i.request.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 16);
    body.extend_from_slice(br#"{"batch":["#);
    for (i, item) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item.request);
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
    use serde_json::json;
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
        let request = || br#"{"from":"a"}"#.to_vec();
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
    fn the_request_is_the_sender_the_device_and_the_message_as_received() {
        let mut msg = DataMessage::new("chat");
        msg.id = Some(bachata_proto::MessageId::new("m\"1").expect("id"));
        msg.dest = Some("room-7".into());
        let sender = Channel::new("al\"ice é").expect("channel");
        for (device, expected) in [(None, json!(null)), (Some("phone"), json!("phone"))] {
            let device = device.map(|d| bachata_proto::DeviceId::new(d).expect("device"));
            let request = route_request(&sender, &device, &msg).expect("JSON");
            let request: serde_json::Value = serde_json::from_slice(&request).expect("valid JSON");
            assert_eq!(
                request,
                json!({
                    "from": "al\"ice é",
                    "device": expected,
                    "message": serde_json::from_str::<serde_json::Value>(&msg.to_json()).expect("message"),
                })
            );
        }
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

    #[test]
    fn route_answers_are_checked() {
        let route = |body: &str| routed(body.as_bytes()).map(|v| v.route);
        assert_eq!(route(r#"{"pass": true}"#), Ok(HookRoute::Pass));
        assert_eq!(
            route(r#"{"channels": []}"#),
            Ok(HookRoute::Channels(Vec::new()))
        );
        assert!(matches!(
            route(r#"{"error": "app_muted", "reason": "r"}"#),
            Ok(HookRoute::Reject { code, .. }) if code == "app_muted"
        ));
        assert!(matches!(
            route(r#"{"error": "forbidden"}"#),
            Ok(HookRoute::Reject { code, .. }) if code == "forbidden"
        ));
        let data = routed(br#"{"pass": true, "data": {"text": "***"}}"#).expect("valid");
        assert_eq!(
            data.data.map(|d| d.get().to_owned()),
            Some(r#"{"text": "***"}"#.into())
        );
        let many: Vec<String> = (0..=MAX_CHANNELS).map(|i| format!("c{i}")).collect();
        let too_many = json!({"channels": many}).to_string();
        assert!(route(&too_many).is_err(), "past MAX_CHANNELS");
        for bad in [
            r#"{}"#,
            r#"{"pass": false}"#,
            r#"{"pass": true, "channels": ["a"]}"#,
            r#"{"channels": [""]}"#,
            r#"{"error": "queue_full"}"#,
            r#"{"error": "app_"}"#,
            r#"{"error": "app_Muted"}"#,
            r#"{"pass": true, "other": 1}"#,
        ] {
            assert!(route(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn hook_types() {
        assert_eq!(HookTypes::parse(None), HookTypes::All);
        assert_eq!(HookTypes::parse(Some("chat, *")), HookTypes::All);
        let only = HookTypes::parse(Some("chat, room"));
        assert!(only.contains("room") && !only.contains("typing"));
    }
}
