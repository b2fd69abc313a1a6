//! The `fanout` scenario: one group of N member connections; the first S
//! members also send group messages, each keeping W messages in flight until
//! it has the 300 of every other member. Every member acks at once. A
//! message is delivered to N - 1 members (all but its sender), so one
//! message is N - 1 deliveries.
//!
//! Every run checks exactness: each member must get each sender's ids
//! exactly once and in order, every sender one 300 per member and message,
//! and no message may be rejected.
//!
//! Member channels are named `<group>.m<i>`: that is how the null relay,
//! which keeps no groups, knows the members (see `relay.rs`); a bachata
//! server gets the group through its HTTP API first ([`create_group`]).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::pairs::{Latency, Ws, connect, histogram, micros};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `ws://host:port`
    pub url: String,
    /// The group id; member channels are `<group>.m<i>`.
    pub group: String,
    pub members: usize,
    pub senders: usize,
    pub window: usize,
    pub payload: usize,
    pub duration: Duration,
    /// Upper bound of messages per sender.
    pub max_per_sender: u64,
}

impl Options {
    fn member(&self, i: usize) -> String {
        format!("{}.m{i}", self.group)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub members: usize,
    pub senders: usize,
    /// Messages that completed the whole cycle (a 300 from every member).
    pub messages: u64,
    /// Data messages received by members (checked in order, each acked).
    pub deliveries: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub send_to_100: Latency,
    /// Per delivery: from send to a member receiving it.
    pub send_to_receive: Latency,
    /// Per receipt: from send to each member's 300.
    pub send_to_300: Latency,
    /// Losses, duplicates, reorders and rejections; empty on a correct run.
    pub exactness_errors: Vec<String>,
}

/// Puts members `<group>.m0..m<n>` in `group` through the server's HTTP API
/// (`PUT /api/groups/{group}/members/{channel}`) and checks the member list.
pub(crate) async fn create_group(
    addr: &str,
    api_key: Option<&str>,
    group: &str,
    members: usize,
) -> anyhow::Result<()> {
    for i in 0..members {
        let path = format!("/api/groups/{group}/members/{group}.m{i}");
        let (status, body) = crate::http::request(addr, "PUT", &path, api_key).await?;
        anyhow::ensure!(status == 200, "PUT {path}: {status} {body}");
    }
    let path = format!("/api/groups/{group}");
    let (status, body) = crate::http::request(addr, "GET", &path, api_key).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
    let listed: serde_json::Value = serde_json::from_str(&body)?;
    let n = listed["members"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(n == members, "group {group} has {n} members, not {members}");
    Ok(())
}

/// The fields of a server frame the bench reads, borrowed from its text.
#[derive(Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a RawValue,
    #[serde(borrow)]
    pub id: Option<&'a str>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// `("<group>.m<j>", n)` of an id `<group>.m<j>/<n>`.
fn split_id(id: &str) -> Option<(usize, u64)> {
    let (channel, n) = id.rsplit_once('/')?;
    let (_, j) = channel.rsplit_once(".m")?;
    Some((j.parse().ok()?, n.parse().ok()?))
}

struct MemberResult {
    to_100: Histogram<u64>,
    to_300: Histogram<u64>,
    to_receive: Histogram<u64>,
    completed: u64,
    deliveries: u64,
    errors: Vec<String>,
}

/// How many messages each sender sent (`None` while it still sends), shared
/// by every member: a member is done receiving once it has them all.
type Totals = Vec<Option<u64>>;

/// What every member of a run starts from.
#[derive(Clone)]
struct Shared {
    opts: Options,
    /// The time base of the `t` stamps in the messages.
    origin: Instant,
    /// When the senders stop sending.
    deadline: Instant,
    totals_tx: watch::Sender<Totals>,
    totals_rx: watch::Receiver<Totals>,
}

/// Runs the scenario. The group must exist on a bachata server.
pub(crate) async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.members >= 2, "a group needs at least 2 members");
    anyhow::ensure!(
        (1..=opts.members).contains(&opts.senders),
        "senders must be 1..=members"
    );
    let origin = Instant::now();
    let mut conns = Vec::with_capacity(opts.members);
    for i in 0..opts.members {
        conns.push(connect(&opts.url, &opts.member(i)).await?);
    }
    let started = Instant::now();
    let (totals_tx, totals_rx) = watch::channel(vec![None::<u64>; opts.senders]);
    let shared = Shared {
        opts: opts.clone(),
        origin,
        deadline: started + opts.duration,
        totals_tx,
        totals_rx,
    };
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(member_loop(ws, i, shared.clone())));
    }
    drop(shared);
    let (mut to_100, mut to_300, mut to_receive) = (histogram(), histogram(), histogram());
    let (mut messages, mut deliveries) = (0, 0);
    let mut errors = Vec::new();
    for task in tasks {
        let r = task.await??;
        let _ = to_100.add(&r.to_100);
        let _ = to_300.add(&r.to_300);
        let _ = to_receive.add(&r.to_receive);
        messages += r.completed;
        deliveries += r.deliveries;
        errors.extend(r.errors);
    }
    let expected = messages * (opts.members as u64 - 1);
    if deliveries != expected {
        errors.push(format!(
            "{deliveries} deliveries for {messages} completed messages x {} receiving members = {expected}",
            opts.members - 1
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        members: opts.members,
        senders: opts.senders,
        messages,
        deliveries,
        seconds,
        msgs_per_sec: messages as f64 / seconds,
        deliveries_per_sec: deliveries as f64 / seconds,
        send_to_100: Latency::of(&to_100),
        send_to_receive: Latency::of(&to_receive),
        send_to_300: Latency::of(&to_300),
        exactness_errors: errors,
    })
}

/// The state of one member connection, shared by the steps of its loop.
struct Member {
    ws: Ws,
    /// This member's index; the first `senders` members send.
    me: usize,
    /// `<group>.m<me>`
    name: String,
    is_sender: bool,
    /// Members that get each message: all but its sender.
    receivers: u32,
    pad: String,
    opts: Options,
    origin: Instant,
    deadline: Instant,
    /// End of the drain after `deadline`.
    drain_until: Instant,
    totals_tx: watch::Sender<Totals>,
    totals_rx: watch::Receiver<Totals>,
    /// Own messages in flight: number -> (sent at, 300s so far).
    in_flight: HashMap<u64, (u64, u32)>,
    /// Next expected number from each sender.
    expected: Vec<u64>,
    /// Number of the next own message.
    next: u64,
    /// Whether the receivers know how many messages to expect from me.
    published: bool,
    /// Frames fed but not flushed yet (acks, sends).
    unflushed: usize,
    r: MemberResult,
}

/// What to do after waiting for the next frame.
enum Wait {
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    /// Something else changed (totals, the deadline): look again.
    Again,
    /// The drain timed out (recorded as an error).
    Stop,
}

impl Member {
    fn new(ws: Ws, me: usize, shared: Shared) -> Self {
        let Shared {
            opts,
            origin,
            deadline,
            totals_tx,
            totals_rx,
        } = shared;
        Member {
            ws,
            me,
            name: opts.member(me),
            is_sender: me < opts.senders,
            receivers: opts.members as u32 - 1,
            pad: "x".repeat(opts.payload.saturating_sub(30)),
            origin,
            deadline,
            drain_until: deadline + Duration::from_secs(30),
            totals_tx,
            totals_rx,
            in_flight: HashMap::new(),
            expected: vec![0u64; opts.senders],
            next: 0,
            published: me >= opts.senders,
            unflushed: 0,
            r: MemberResult {
                to_100: histogram(),
                to_300: histogram(),
                to_receive: histogram(),
                completed: 0,
                deliveries: 0,
                errors: Vec::new(),
            },
            opts,
        }
    }

    /// Whether this member still sends new messages.
    fn sending(&self) -> bool {
        self.is_sender && Instant::now() < self.deadline && self.next < self.opts.max_per_sender
    }

    /// Feeds own messages (unflushed) until `window` are in flight.
    async fn fill_window(&mut self) -> anyhow::Result<()> {
        let (name, dest, pad) = (&self.name, &self.opts.group, &self.pad);
        while self.in_flight.len() < self.opts.window && self.next < self.opts.max_per_sender {
            let now = micros(self.origin);
            let next = self.next;
            let frame = format!(
                r#"{{"id":"{name}/{next}","type":"group","dest":"{dest}","data":{{"t":{now},"p":"{pad}"}}}}"#
            );
            self.ws.feed(Message::Text(frame.into())).await?;
            self.in_flight.insert(next, (now, 0));
            self.next += 1;
            self.unflushed += 1;
        }
        Ok(())
    }

    /// Tells the receivers how many messages to expect from me.
    fn publish_total(&mut self) {
        let (me, next) = (self.me, self.next);
        self.totals_tx.send_modify(|t| t[me] = Some(next));
        self.published = true;
    }

    /// Whether every other sender published its total and I got them all.
    /// Marks the totals seen.
    fn done_receiving(&mut self) -> bool {
        let totals = self.totals_rx.borrow_and_update();
        (0..self.opts.senders)
            .filter(|&j| j != self.me)
            .all(|j| totals[j].is_some_and(|t| self.expected[j] >= t))
    }

    /// The next frame. Flushes first unless another frame is already
    /// waiting to be read (and fewer than 64 are unflushed), so acks and
    /// messages go out in few writes; then waits for a frame, a new total
    /// or the deadline (while sending) or the drain's end.
    async fn next_frame(&mut self, sending: bool) -> anyhow::Result<Wait> {
        if self.unflushed > 0 {
            if self.unflushed < 64
                && let Some(frame) = self.ws.next().now_or_never()
            {
                return Ok(Wait::Frame(frame));
            }
            self.ws.flush().await?;
            self.unflushed = 0;
        }
        let wait_until = if sending {
            self.deadline
        } else {
            self.drain_until
        };
        Ok(tokio::select! {
            frame = self.ws.next() => Wait::Frame(frame),
            _ = self.totals_rx.changed() => Wait::Again,
            () = tokio::time::sleep_until(wait_until) => {
                if sending {
                    return Ok(Wait::Again);
                }
                self.r.errors.push(format!(
                    "{}: drain timed out: {} own messages without every 300; expected from senders {:?}",
                    self.name,
                    self.in_flight.len(),
                    self.expected
                ));
                Wait::Stop
            }
        })
    }

    /// Handles a text frame: another member's message or a reply to mine.
    async fn on_text(&mut self, text: &str) -> anyhow::Result<()> {
        let frame: Frame<'_> = serde_json::from_str(text)?;
        let now = micros(self.origin);
        let kind = frame.kind.get();
        if kind.starts_with('"') {
            return self.on_message(&frame, now).await;
        }
        self.on_reply(kind, &frame, now, text);
        Ok(())
    }

    /// A data message from another member: checks it is the next one from
    /// its sender and feeds its ack.
    async fn on_message(&mut self, frame: &Frame<'_>, now: u64) -> anyhow::Result<()> {
        let name = &self.name;
        let Some(id) = frame.id else {
            self.r
                .errors
                .push(format!("{name}: data message without id"));
            return Ok(());
        };
        if let Some(data) = frame.data
            && let Ok(stamp) = serde_json::from_str::<Stamp>(data.get())
        {
            let _ = self.r.to_receive.record(now.saturating_sub(stamp.t).max(1));
        }
        self.r.deliveries += 1;
        match split_id(id) {
            Some((j, _)) if j == self.me => {
                self.r.errors.push(format!("{name}: got own message {id}"));
            }
            Some((j, n)) if j < self.opts.senders => {
                let want = &mut self.expected[j];
                if n == *want {
                    *want += 1;
                } else if n < *want {
                    self.r.errors.push(format!("{name}: duplicate {id}"));
                } else {
                    self.r.errors.push(format!(
                        "{name}: {id} arrived while {want} was expected (loss or reorder)"
                    ));
                    *want = n + 1;
                }
            }
            _ => self.r.errors.push(format!("{name}: unexpected id {id}")),
        }
        self.ws
            .feed(Message::Text(
                format!(r#"{{"type":200,"data":"{id}"}}"#).into(),
            ))
            .await?;
        self.unflushed += 1;
        Ok(())
    }

    /// A 100, 300 or 400 for one of my messages, or a ready or pong.
    fn on_reply(&mut self, kind: &str, frame: &Frame<'_>, now: u64, text: &str) {
        let name = &self.name;
        let id = frame.data.map(|d| d.get().trim_matches('"'));
        let n = id
            .and_then(split_id)
            .filter(|(j, _)| *j == self.me)
            .map(|(_, n)| n);
        let r = &mut self.r;
        match (kind, n) {
            ("100", Some(n)) => {
                if let Some((t, _)) = self.in_flight.get(&n) {
                    let _ = r.to_100.record(now.saturating_sub(*t).max(1));
                }
            }
            ("300", Some(n)) => match self.in_flight.get_mut(&n) {
                Some((t, count)) => {
                    let _ = r.to_300.record(now.saturating_sub(*t).max(1));
                    *count += 1;
                    if *count == self.receivers {
                        self.in_flight.remove(&n);
                        r.completed += 1;
                    }
                }
                None => r
                    .errors
                    .push(format!("{name}: a 300 for {n} after one from every member")),
            },
            ("400", _) => {
                r.errors.push(format!("{name}: rejected: {text}"));
                if let Some(n) = n {
                    self.in_flight.remove(&n);
                }
            }
            ("1000" | "1002", _) => {}
            _ => r.errors.push(format!("{name}: unexpected frame {text}")),
        }
    }
}

/// One member connection: sends when it is one of the first `senders`
/// members, and receives and acks every other sender's messages.
async fn member_loop(ws: Ws, me: usize, shared: Shared) -> anyhow::Result<MemberResult> {
    let mut m = Member::new(ws, me, shared);
    loop {
        let sending = m.sending();
        if sending && m.in_flight.len() < m.opts.window {
            m.fill_window().await?;
        }
        if !sending && !m.published {
            m.publish_total();
        }
        // Every turn, also when it cannot end the loop yet: reading the
        // totals marks them seen, so `totals_rx.changed()` waits for news.
        let done_receiving = m.done_receiving();
        if m.published && m.in_flight.is_empty() && done_receiving {
            break;
        }
        let frame = match m.next_frame(sending).await? {
            Wait::Frame(frame) => frame,
            Wait::Again => continue,
            Wait::Stop => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("{}: {e}", m.name),
            None => anyhow::bail!("{}: connection closed", m.name),
        };
        m.on_text(text.as_str()).await?;
    }
    barrier(&mut m.ws, &m.name, &mut m.r.errors).await?;
    let _ = m.ws.close(None).await;
    Ok(m.r)
}

/// Sends a ping and reads until its pong. A ping is a barrier: the pong
/// comes after every 200 sent before it was processed, so closing after it
/// loses no ack. A data message arriving meanwhile is one too many.
pub(crate) async fn barrier(
    ws: &mut Ws,
    name: &str,
    errors: &mut Vec<String>,
) -> anyhow::Result<()> {
    ws.send(Message::Text(r#"{"type":1001}"#.into())).await?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => anyhow::bail!("{name}: connection ended before the pong: {other:?}"),
            Err(_) => anyhow::bail!("{name}: no pong within 10 s"),
        };
        let frame: Frame<'_> = serde_json::from_str(text.as_str())?;
        match frame.kind.get() {
            "1002" => return Ok(()),
            kind if kind.starts_with('"') => {
                errors.push(format!("{name}: one message too many: {}", text.as_str()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_id;

    #[test]
    fn ids_name_sender_and_number() {
        assert_eq!(split_id("bachata-f.m12/7"), Some((12, 7)));
        assert_eq!(split_id("g.m0/0"), Some((0, 0)));
        assert_eq!(split_id("g.x/0"), None);
        assert_eq!(split_id("g.m1"), None);
    }
}
