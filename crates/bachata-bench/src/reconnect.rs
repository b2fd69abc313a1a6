//! The `reconnect` scenario: a storm of reconnects with pending messages.
//! Each round, S sender connections (online throughout) queue M messages
//! for each of R offline receiver channels and wait for every 100; then all
//! R receivers connect at once (at most C handshakes and connections at a
//! time), each must get exactly its M pending messages in order, acks them,
//! waits for the pong of a ping (so its acks are processed) and
//! disconnects. Rounds repeat up to a count and a duration.
//!
//! Exactness: each receiver gets exactly this round's messages, in order
//! (anything left from an earlier round is a duplicate); every sender gets
//! one 300 per message; at the end no receiver has anything pending (asked
//! through the HTTP API where it is reachable).
//!
//! There is no null baseline: the null relay stores nothing, so it has no
//! pending messages to drain.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::{Frame, barrier};
use crate::pairs::{Latency, Ws, connect, histogram};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `ws://host:port`
    pub url: String,
    /// `host:port` and key of the HTTP API, for the final pending check.
    pub api: Option<(String, Option<String>)>,
    pub receivers: usize,
    pub senders: usize,
    /// Pending messages per receiver and round.
    pub messages: usize,
    pub rounds: usize,
    /// No new round starts after this.
    pub duration: Duration,
    /// Receivers connecting or connected at once.
    pub concurrency: usize,
    /// 100s each sender waits for at once while queueing.
    pub window: usize,
    pub payload: usize,
    /// Channel name prefix.
    pub prefix: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub receivers: usize,
    pub messages_per_receiver: usize,
    pub rounds: usize,
    pub reconnects: u64,
    /// Wall time of the storms only (connect .. last disconnect).
    pub storm_seconds: f64,
    pub reconnects_per_sec: f64,
    /// Connect -> the last pending message received.
    pub time_to_drain: Latency,
    /// Connect -> the ready message (1000).
    pub time_to_ready: Latency,
    /// Messages queued for offline receivers (each got its 100).
    pub queued: u64,
    pub queue_seconds: f64,
    pub queued_per_sec: f64,
    /// 300s the senders got (must be `queued`).
    pub receipts: u64,
    /// The server's CPU seconds during the storms, when known.
    pub storm_cpu_seconds: Option<f64>,
    /// Losses, duplicates, reorders and rejections; empty on a correct run.
    pub exactness_errors: Vec<String>,
}

/// `(round, receiver, k)` of an id `<sender>/<round>.<receiver>.<k>`.
fn split_id(id: &str) -> Option<(usize, usize, usize)> {
    let (_, rest) = id.rsplit_once('/')?;
    let mut parts = rest.split('.').map(str::parse::<usize>);
    let (Some(Ok(round)), Some(Ok(i)), Some(Ok(k)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((round, i, k))
}

/// Asks a sender to queue one round's messages; the answer comes once every
/// one of them got its 100.
struct Queue {
    round: usize,
    done: oneshot::Sender<()>,
}

struct SenderResult {
    stored: u64,
    receipts: u64,
    errors: Vec<String>,
}

/// What the rounds add up to.
struct Tally {
    to_drain: Histogram<u64>,
    to_ready: Histogram<u64>,
    errors: Vec<String>,
    /// Rounds that ran their storm.
    rounds: usize,
    reconnects: u64,
    storm_seconds: f64,
    queue_seconds: f64,
    /// `None` once a CPU reading failed.
    storm_cpu: Option<f64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            to_drain: histogram(),
            to_ready: histogram(),
            errors: Vec::new(),
            rounds: 0,
            reconnects: 0,
            storm_seconds: 0.0,
            queue_seconds: 0.0,
            storm_cpu: Some(0.0),
        }
    }
}

/// Runs the scenario. `server_cpu` reads the server's CPU seconds.
pub(crate) async fn run(
    opts: &Options,
    server_cpu: impl Fn() -> Option<f64>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.senders >= 1 && opts.receivers >= 1,
        "need senders and receivers"
    );
    let opts = Arc::new(opts.clone());
    let mut queues = Vec::new();
    let mut senders = Vec::new();
    for j in 0..opts.senders {
        let ws = connect(&opts.url, &format!("{}s{j}", opts.prefix)).await?;
        let (tx, rx) = mpsc::channel(1);
        queues.push(tx);
        senders.push(tokio::spawn(sender_loop(ws, j, opts.clone(), rx)));
    }
    let started = Instant::now();
    let mut t = Tally::new();
    let limit = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    while t.rounds < opts.rounds && (t.rounds == 0 || started.elapsed() < opts.duration) {
        let round = t.rounds;
        let queue_start = Instant::now();
        queue_round(&queues, round, &mut t.errors).await?;
        t.queue_seconds += queue_start.elapsed().as_secs_f64();
        if !t.errors.is_empty() {
            break;
        }
        let cpu_before = server_cpu();
        let storm_start = Instant::now();
        storm(&opts, &limit, round, &mut t).await?;
        t.storm_seconds += storm_start.elapsed().as_secs_f64();
        t.storm_cpu = t
            .storm_cpu
            .zip(cpu_before.zip(server_cpu()))
            .map(|(sum, (b, a))| sum + a - b);
        t.rounds += 1;
    }
    drop(queues);
    let (mut queued, mut receipts) = (0, 0);
    for s in senders {
        match s.await? {
            Ok(r) => {
                queued += r.stored;
                receipts += r.receipts;
                t.errors.extend(r.errors);
            }
            Err(e) => t.errors.push(format!("sender: {e:#}")),
        }
    }
    let expected = (t.rounds * opts.receivers * opts.messages) as u64;
    if queued != expected || receipts != expected {
        t.errors.push(format!(
            "{queued} messages stored and {receipts} 300s for {expected} sent"
        ));
    }
    check_nothing_pending(&opts, &mut t.errors).await?;
    Ok(Report {
        receivers: opts.receivers,
        messages_per_receiver: opts.messages,
        rounds: t.rounds,
        reconnects: t.reconnects,
        storm_seconds: t.storm_seconds,
        reconnects_per_sec: t.reconnects as f64 / t.storm_seconds.max(1e-9),
        time_to_drain: Latency::of(&t.to_drain),
        time_to_ready: Latency::of(&t.to_ready),
        queued,
        queue_seconds: t.queue_seconds,
        queued_per_sec: queued as f64 / t.queue_seconds.max(1e-9),
        receipts,
        storm_cpu_seconds: t.storm_cpu,
        exactness_errors: t.errors,
    })
}

/// Queues `round`'s messages while every receiver is offline: asks every
/// sender at once, then waits until each has every 100. A sender that
/// ended meanwhile is an error here (its result says why).
async fn queue_round(
    queues: &[mpsc::Sender<Queue>],
    round: usize,
    errors: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut waits = Vec::new();
    for q in queues {
        let (done, wait) = oneshot::channel();
        q.send(Queue { round, done })
            .await
            .map_err(|_| anyhow::anyhow!("a sender ended early"))?;
        waits.push(wait);
    }
    for wait in waits {
        if wait.await.is_err() {
            errors.push(format!("round {round}: a sender failed while queueing"));
        }
    }
    Ok(())
}

/// The storm: every receiver connects at once (at most `limit` at a time)
/// and drains `round`'s messages; their timings and errors go to `t`.
async fn storm(
    opts: &Arc<Options>,
    limit: &Arc<Semaphore>,
    round: usize,
    t: &mut Tally,
) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(opts.receivers);
    for i in 0..opts.receivers {
        let (opts, limit) = (opts.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            receive_once(&opts, round, i).await
        }));
    }
    for task in tasks {
        match task.await? {
            Ok(r) => {
                let _ = t.to_drain.record(r.drain_us.max(1));
                let _ = t.to_ready.record(r.ready_us.max(1));
                t.errors.extend(r.errors);
                t.reconnects += 1;
            }
            Err(e) => t.errors.push(format!("round {round}: {e:#}")),
        }
    }
    Ok(())
}

/// Asks the HTTP API (when there is one) that no receiver has anything
/// pending.
async fn check_nothing_pending(opts: &Options, errors: &mut Vec<String>) -> anyhow::Result<()> {
    let Some((addr, key)) = &opts.api else {
        return Ok(());
    };
    for i in 0..opts.receivers {
        let path = format!("/api/channels/{}r{i}", opts.prefix);
        let (status, body) = crate::http::request(addr, "GET", &path, key.as_deref()).await?;
        let pending = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["pending"].as_u64());
        if status != 200 || pending != Some(0) {
            errors.push(format!("GET {path}: {status} {body} (pending must be 0)"));
        }
    }
    Ok(())
}

/// Nothing useful for this long ends a sender (a WebSocket ping is not
/// useful).
const STALL: Duration = Duration::from_secs(30);

/// The state of one sender connection, shared by the steps of its loop.
struct Sender {
    ws: Ws,
    /// This sender's index: it queues for receivers `i % senders == j`.
    j: usize,
    /// `<prefix>s<j>`
    me: String,
    pad: String,
    opts: Arc<Options>,
    queue_rx: mpsc::Receiver<Queue>,
    /// Messages not fed yet: (id, receiver).
    to_send: VecDeque<(String, usize)>,
    /// The answer to the round being queued.
    current: Option<oneshot::Sender<()>>,
    awaiting_100: usize,
    awaiting_300: HashSet<String>,
    /// No more rounds will come.
    closed: bool,
    stall_at: Instant,
    r: SenderResult,
}

impl Sender {
    /// Feeds queued messages until `window` wait for their 100, then
    /// flushes once.
    async fn feed_window(&mut self) -> anyhow::Result<()> {
        let mut fed = false;
        while self.awaiting_100 < self.opts.window
            && let Some((id, i)) = self.to_send.pop_front()
        {
            let frame = format!(
                r#"{{"id":"{id}","type":"direct","dest":"{}r{i}","data":{{"p":"{}"}}}}"#,
                self.opts.prefix, self.pad
            );
            self.ws.feed(Message::Text(frame.into())).await?;
            self.awaiting_300.insert(id);
            self.awaiting_100 += 1;
            fed = true;
        }
        if fed {
            self.ws.flush().await?;
        }
        Ok(())
    }

    /// Answers the round's request once every message has its 100.
    fn answer_when_queued(&mut self) {
        if self.to_send.is_empty()
            && self.awaiting_100 == 0
            && let Some(done) = self.current.take()
        {
            let _ = done.send(());
        }
    }

    /// Takes a round's request (its messages, k-major, so every receiver's
    /// log fills at once) or, with `None`, the end of the rounds.
    fn on_request(&mut self, q: Option<Queue>) {
        match q {
            Some(Queue { round, done }) => {
                let (me, opts) = (&self.me, &self.opts);
                for k in 0..opts.messages {
                    for i in (self.j..opts.receivers).step_by(opts.senders) {
                        self.to_send.push_back((format!("{me}/{round}.{i}.{k}"), i));
                    }
                }
                self.current = Some(done);
            }
            None => self.closed = true,
        }
        self.stall_at = Instant::now() + STALL;
    }

    /// Counts a 100, a 300 or a 400; anything else unexpected is an error.
    fn on_text(&mut self, text: &str) -> anyhow::Result<()> {
        let me = &self.me;
        let frame: Frame<'_> = serde_json::from_str(text)?;
        let id = frame.data.map(|d| d.get().trim_matches('"'));
        self.stall_at = Instant::now() + STALL;
        match (frame.kind.get(), id) {
            ("100", Some(_)) => {
                self.awaiting_100 = self.awaiting_100.saturating_sub(1);
                self.r.stored += 1;
            }
            ("300", Some(id)) => {
                if self.awaiting_300.remove(id) {
                    self.r.receipts += 1;
                } else {
                    self.r
                        .errors
                        .push(format!("{me}: unexpected or second 300 for {id}"));
                }
            }
            ("400", _) => {
                self.r.errors.push(format!("{me}: rejected: {text}"));
                self.awaiting_100 = self.awaiting_100.saturating_sub(1);
            }
            ("1000" | "1002", _) => {}
            _ => self.r.errors.push(format!("{me}: unexpected frame {text}")),
        }
        Ok(())
    }

    fn report_stall(&mut self) {
        self.r.errors.push(format!(
            "{}: nothing for 30 s with {} messages unsent, {} without a 100, {} without a 300",
            self.me,
            self.to_send.len(),
            self.awaiting_100,
            self.awaiting_300.len()
        ));
    }
}

/// One sender connection, online for the whole run: queues each round's
/// messages for its receivers (`i % senders == j`) with up to `window`
/// awaiting their 100, and counts the 300s as receivers ack.
async fn sender_loop(
    ws: Ws,
    j: usize,
    opts: Arc<Options>,
    queue_rx: mpsc::Receiver<Queue>,
) -> anyhow::Result<SenderResult> {
    let mut s = Sender {
        ws,
        j,
        me: format!("{}s{j}", opts.prefix),
        pad: "x".repeat(opts.payload.saturating_sub(30)),
        opts,
        queue_rx,
        to_send: VecDeque::new(),
        current: None,
        awaiting_100: 0,
        awaiting_300: HashSet::new(),
        closed: false,
        stall_at: Instant::now() + STALL,
        r: SenderResult {
            stored: 0,
            receipts: 0,
            errors: Vec::new(),
        },
    };
    loop {
        s.feed_window().await?;
        s.answer_when_queued();
        if s.closed && s.current.is_none() && s.awaiting_300.is_empty() {
            break;
        }
        let idle = s.current.is_none() && !s.closed;
        tokio::select! {
            q = s.queue_rx.recv(), if idle => s.on_request(q),
            frame = s.ws.next() => match frame {
                Some(Ok(Message::Text(t))) => s.on_text(t.as_str())?,
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("{}: {e}", s.me),
                None => anyhow::bail!("{}: connection closed", s.me),
            },
            () = tokio::time::sleep_until(s.stall_at) => {
                if idle {
                    s.stall_at = Instant::now() + STALL;
                    continue;
                }
                s.report_stall();
                break;
            }
        }
    }
    let _ = s.ws.close(None).await;
    Ok(s.r)
}

struct ReceiverOutcome {
    ready_us: u64,
    drain_us: u64,
    errors: Vec<String>,
}

/// Receiver `i` in `round`: connect, get exactly the round's M messages in
/// order, ack each, ping/pong, disconnect.
async fn receive_once(opts: &Options, round: usize, i: usize) -> anyhow::Result<ReceiverOutcome> {
    let me = format!("{}r{i}", opts.prefix);
    let start = Instant::now();
    let mut ws = connect(&opts.url, &me).await?;
    let ready_us = start.elapsed().as_micros() as u64;
    let mut out = ReceiverOutcome {
        ready_us,
        drain_us: ready_us,
        errors: Vec::new(),
    };
    let mut k = 0;
    while k < opts.messages {
        let text = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => anyhow::bail!("{me}: connection ended after {k} messages: {other:?}"),
            Err(_) => {
                out.errors.push(format!(
                    "{me}: round {round}: {k} of {} pending messages after 30 s",
                    opts.messages
                ));
                break;
            }
        };
        let frame: Frame<'_> = serde_json::from_str(text.as_str())?;
        if !frame.kind.get().starts_with('"') {
            continue;
        }
        let Some(id) = frame.id else {
            out.errors.push(format!("{me}: data message without id"));
            continue;
        };
        match split_id(id) {
            Some((r, ri, rk)) if r == round && ri == i => {
                if rk == k {
                    k += 1;
                } else if rk < k {
                    out.errors
                        .push(format!("{me}: round {round}: duplicate {id}"));
                } else {
                    out.errors.push(format!(
                        "{me}: round {round}: {id} arrived while message {k} was expected (loss or reorder)"
                    ));
                    k = rk + 1;
                }
            }
            Some((r, ..)) if r < round => {
                out.errors.push(format!(
                    "{me}: round {round}: duplicate {id} from round {r}"
                ));
            }
            _ => out
                .errors
                .push(format!("{me}: round {round}: unexpected id {id}")),
        }
        if k == opts.messages {
            out.drain_us = start.elapsed().as_micros() as u64;
        }
        ws.send(Message::Text(
            format!(r#"{{"type":200,"data":"{id}"}}"#).into(),
        ))
        .await?;
    }
    barrier(&mut ws, &me, &mut out.errors).await?;
    let _ = ws.close(None).await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::split_id;

    #[test]
    fn ids_name_round_receiver_and_number() {
        assert_eq!(split_id("rc-s1/2.17.9"), Some((2, 17, 9)));
        assert_eq!(split_id("rc-s1/2.17"), None);
        assert_eq!(split_id("rc-s1/2.17.9.1"), None);
    }
}
