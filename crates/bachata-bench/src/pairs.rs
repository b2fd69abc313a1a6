//! The `pairs` scenario: P sender/receiver pairs, each sender keeping W
//! messages in flight until their 300, each receiver acking at once; the
//! full reliable cycle 100 -> deliver -> 200 -> 300.
//!
//! Every run checks exactness: each receiver must get its sender's ids
//! exactly once and in order, and every id that got a 100 must arrive.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a receiver waits for its next message before it reports a
/// stall.
const STALL: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `ws://host:port` of the senders' node.
    pub url: String,
    /// `ws://host:port` of the receivers' node (another node of the same
    /// Redis, or `url`).
    pub receiver_url: String,
    pub pairs: usize,
    pub window: usize,
    pub payload: usize,
    pub duration: Duration,
    /// Upper bound of messages per pair.
    pub max_per_pair: u64,
    /// Channel name prefix, so runs against one server never mix.
    pub prefix: String,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub count: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            count: h.len(),
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Messages that completed the whole cycle (got their 300).
    pub delivered: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub send_to_100: Latency,
    pub send_to_receive: Latency,
    pub send_to_300: Latency,
    pub rejected: u64,
    /// Losses, duplicates and reorders; empty on a correct run.
    pub exactness_errors: Vec<String>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("constant bounds are valid"),
    }
}

pub(crate) async fn connect(url: &str, channel: &str) -> anyhow::Result<Ws> {
    let endpoint = format!("{url}/messages?channel={channel}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(endpoint),
    )
    .await??;
    let ready = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
    match ready {
        Some(Ok(Message::Text(t))) if t.as_str().contains("1000") => Ok(ws),
        other => anyhow::bail!("no ready message for {channel}: {other:?}"),
    }
}

struct SenderResult {
    to_100: Histogram<u64>,
    to_300: Histogram<u64>,
    stored: u64,
    delivered: u64,
    rejected: u64,
    errors: Vec<String>,
}

impl SenderResult {
    /// Counts a reply to one of the messages in `sent_at` (number -> sent
    /// at): a 100 stores it, a 300 completes it, a 400 rejects it.
    fn on_reply(
        &mut self,
        text: &str,
        sent_at: &mut HashMap<u64, u64>,
        origin: Instant,
    ) -> anyhow::Result<()> {
        let v: Value = serde_json::from_str(text)?;
        let n = v["data"]
            .as_str()
            .and_then(|id| id.rsplit_once('/'))
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let now = micros(origin);
        match (v["type"].as_i64(), n) {
            (Some(100), Some(n)) => {
                if let Some(t) = sent_at.get(&n) {
                    let _ = self.to_100.record(now.saturating_sub(*t).max(1));
                }
                self.stored += 1;
            }
            (Some(300), Some(n)) => {
                if let Some(t) = sent_at.remove(&n) {
                    let _ = self.to_300.record(now.saturating_sub(t).max(1));
                    self.delivered += 1;
                }
            }
            (Some(400), Some(n)) => {
                sent_at.remove(&n);
                self.rejected += 1;
            }
            _ => {}
        }
        Ok(())
    }
}

struct ReceiverResult {
    to_receive: Histogram<u64>,
    errors: Vec<String>,
}

/// Runs the scenario.
pub(crate) async fn run(opts: &Options) -> anyhow::Result<Report> {
    let origin = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..opts.pairs {
        receivers.push(connect(&opts.receiver_url, &format!("{}r{i}", opts.prefix)).await?);
    }
    for i in 0..opts.pairs {
        senders.push(connect(&opts.url, &format!("{}s{i}", opts.prefix)).await?);
    }
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut tasks = Vec::new();
    for (i, (sender, receiver)) in senders.into_iter().zip(receivers).enumerate() {
        let (done_tx, done_rx) = oneshot::channel();
        let opts = opts.clone();
        let send = tokio::spawn(send_loop(
            sender,
            i,
            opts.clone(),
            origin,
            deadline,
            done_tx,
        ));
        let recv = tokio::spawn(receive_loop(receiver, i, opts, origin, done_rx));
        tasks.push((send, recv));
    }
    let (mut to_100, mut to_300, mut to_receive) = (histogram(), histogram(), histogram());
    let (mut delivered, mut rejected) = (0, 0);
    let mut errors = Vec::new();
    for (send, recv) in tasks {
        let s = send.await??;
        let r = recv.await??;
        let _ = to_100.add(&s.to_100);
        let _ = to_300.add(&s.to_300);
        let _ = to_receive.add(&r.to_receive);
        delivered += s.delivered;
        rejected += s.rejected;
        errors.extend(s.errors);
        errors.extend(r.errors);
        let _ = s.stored;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        delivered,
        seconds,
        msgs_per_sec: delivered as f64 / seconds,
        send_to_100: Latency::of(&to_100),
        send_to_receive: Latency::of(&to_receive),
        send_to_300: Latency::of(&to_300),
        rejected,
        exactness_errors: errors,
    })
}

pub(crate) fn micros(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// The sender of pair `pair`: keeps `window` messages waiting for their 300
/// until `deadline`, then drains (at most 30 s) and tells the receiver how
/// many it sent.
async fn send_loop(
    mut ws: Ws,
    pair: usize,
    opts: Options,
    origin: Instant,
    deadline: Instant,
    done: oneshot::Sender<u64>,
) -> anyhow::Result<SenderResult> {
    let me = format!("{}s{pair}", opts.prefix);
    let dest = format!("{}r{pair}", opts.prefix);
    let pad = "x".repeat(opts.payload.saturating_sub(30));
    let mut sent_at: HashMap<u64, u64> = HashMap::new();
    let mut result = SenderResult {
        to_100: histogram(),
        to_300: histogram(),
        stored: 0,
        delivered: 0,
        rejected: 0,
        errors: Vec::new(),
    };
    let mut next = 0u64;
    let drain_until = deadline + Duration::from_secs(30);
    loop {
        let sending = Instant::now() < deadline && next < opts.max_per_pair;
        if sending && sent_at.len() < opts.window {
            while sent_at.len() < opts.window && next < opts.max_per_pair {
                let now = micros(origin);
                let frame = format!(
                    r#"{{"id":"{me}/{next}","type":"direct","dest":"{dest}","data":{{"t":{now},"p":"{pad}"}}}}"#
                );
                ws.feed(Message::Text(frame.into())).await?;
                sent_at.insert(next, now);
                next += 1;
            }
            ws.flush().await?;
        }
        if !sending && sent_at.is_empty() {
            break;
        }
        let wait_until = if sending { deadline } else { drain_until };
        let frame = match tokio::time::timeout_at(wait_until, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => anyhow::bail!("{me}: connection closed"),
            Err(_) if sending => continue,
            Err(_) => {
                result.errors.push(format!(
                    "{me}: {} messages without a 300 after the drain",
                    sent_at.len()
                ));
                break;
            }
        };
        result.on_reply(frame.as_str(), &mut sent_at, origin)?;
    }
    let _ = done.send(next);
    let _ = ws.close(None).await;
    Ok(result)
}

async fn receive_loop(
    mut ws: Ws,
    pair: usize,
    opts: Options,
    origin: Instant,
    mut done: oneshot::Receiver<u64>,
) -> anyhow::Result<ReceiverResult> {
    let me = format!("{}r{pair}", opts.prefix);
    let mut result = ReceiverResult {
        to_receive: histogram(),
        errors: Vec::new(),
    };
    let mut expected = 0u64;
    let mut total: Option<u64> = None;
    // Only messages count as progress: the server's pings must not keep a
    // stalled run waiting.
    let mut last_message = Instant::now();
    loop {
        if total.is_some_and(|t| expected >= t) {
            break;
        }
        let frame = tokio::select! {
            frame = ws.next() => frame,
            sent = &mut done, if total.is_none() => {
                total = Some(sent.unwrap_or(0));
                continue;
            }
            () = tokio::time::sleep_until(last_message + STALL) => {
                result.errors.push(format!("{me}: nothing for 30 s; expected id {expected}"));
                break;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => anyhow::bail!("{me}: connection closed"),
        };
        let v: Value = serde_json::from_str(text.as_str())?;
        let Some(id) = v["id"].as_str() else { continue };
        last_message = Instant::now();
        let now = micros(origin);
        if let Some(t) = v["data"]["t"].as_u64() {
            let _ = result.to_receive.record(now.saturating_sub(t).max(1));
        }
        match id.rsplit_once('/').and_then(|(_, n)| n.parse::<u64>().ok()) {
            Some(n) if n == expected => expected += 1,
            Some(n) if n < expected => result.errors.push(format!("{me}: duplicate {id}")),
            Some(n) => {
                result.errors.push(format!(
                    "{me}: {id} arrived while {expected} was expected (loss or reorder)"
                ));
                expected = n + 1;
            }
            None => result.errors.push(format!("{me}: unexpected id {id}")),
        }
        let ack = format!(r#"{{"type":200,"data":"{id}"}}"#);
        ws.send(Message::Text(ack.into())).await?;
    }
    let _ = ws.close(None).await;
    Ok(result)
}
