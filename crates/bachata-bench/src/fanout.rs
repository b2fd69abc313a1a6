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
    let deadline = started + opts.duration;
    // How many messages each sender sent, once it stopped sending.
    let (totals_tx, totals_rx) = watch::channel(vec![None::<u64>; opts.senders]);
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(member_loop(
            ws,
            i,
            opts.clone(),
            origin,
            deadline,
            totals_tx.clone(),
            totals_rx.clone(),
        )));
    }
    drop(totals_tx);
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

/// One member connection: sends when it is one of the first `senders`
/// members, and receives and acks every other sender's messages.
async fn member_loop(
    mut ws: Ws,
    me: usize,
    opts: Options,
    origin: Instant,
    deadline: Instant,
    totals_tx: watch::Sender<Vec<Option<u64>>>,
    mut totals_rx: watch::Receiver<Vec<Option<u64>>>,
) -> anyhow::Result<MemberResult> {
    let name = opts.member(me);
    let is_sender = me < opts.senders;
    let receivers = opts.members as u32 - 1;
    let dest = &opts.group;
    let pad = "x".repeat(opts.payload.saturating_sub(30));
    // Own messages in flight: number -> (sent at, 300s so far).
    let mut in_flight: HashMap<u64, (u64, u32)> = HashMap::new();
    // Next expected number from each sender.
    let mut expected = vec![0u64; opts.senders];
    let mut r = MemberResult {
        to_100: histogram(),
        to_300: histogram(),
        to_receive: histogram(),
        completed: 0,
        deliveries: 0,
        errors: Vec::new(),
    };
    let mut next = 0u64;
    let mut published = !is_sender;
    let drain_until = deadline + Duration::from_secs(30);
    // Frames fed but not flushed yet (acks, sends).
    let mut unflushed = 0usize;
    loop {
        let sending = is_sender && Instant::now() < deadline && next < opts.max_per_sender;
        if sending && in_flight.len() < opts.window {
            while in_flight.len() < opts.window && next < opts.max_per_sender {
                let now = micros(origin);
                let frame = format!(
                    r#"{{"id":"{name}/{next}","type":"group","dest":"{dest}","data":{{"t":{now},"p":"{pad}"}}}}"#
                );
                ws.feed(Message::Text(frame.into())).await?;
                in_flight.insert(next, (now, 0));
                next += 1;
                unflushed += 1;
            }
        }
        if !sending && !published {
            // Receivers now know how many messages to expect from me.
            totals_tx.send_modify(|t| t[me] = Some(next));
            published = true;
        }
        let done_receiving = {
            let totals = totals_rx.borrow_and_update();
            (0..opts.senders)
                .filter(|&j| j != me)
                .all(|j| totals[j].is_some_and(|t| expected[j] >= t))
        };
        if published && in_flight.is_empty() && done_receiving {
            break;
        }
        // Flush when nothing more is waiting to be read (or after 64
        // frames), so acks and messages go out in few writes.
        let ready = if unflushed == 0 {
            None
        } else if let Some(frame) = (unflushed < 64).then(|| ws.next().now_or_never()).flatten() {
            Some(frame)
        } else {
            ws.flush().await?;
            unflushed = 0;
            None
        };
        let frame = match ready {
            Some(frame) => frame,
            None => {
                let wait_until = if sending { deadline } else { drain_until };
                tokio::select! {
                    frame = ws.next() => frame,
                    _ = totals_rx.changed() => continue,
                    () = tokio::time::sleep_until(wait_until) => {
                        if sending {
                            continue;
                        }
                        r.errors.push(format!(
                            "{name}: drain timed out: {} own messages without every 300; expected from senders {expected:?}",
                            in_flight.len()
                        ));
                        break;
                    }
                }
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("{name}: {e}"),
            None => anyhow::bail!("{name}: connection closed"),
        };
        let frame: Frame<'_> = serde_json::from_str(text.as_str())?;
        let now = micros(origin);
        let kind = frame.kind.get();
        if kind.starts_with('"') {
            // A data message from another member.
            let Some(id) = frame.id else {
                r.errors.push(format!("{name}: data message without id"));
                continue;
            };
            if let Some(data) = frame.data
                && let Ok(stamp) = serde_json::from_str::<Stamp>(data.get())
            {
                let _ = r.to_receive.record(now.saturating_sub(stamp.t).max(1));
            }
            r.deliveries += 1;
            match split_id(id) {
                Some((j, _)) if j == me => r.errors.push(format!("{name}: got own message {id}")),
                Some((j, n)) if j < opts.senders => {
                    let want = &mut expected[j];
                    if n == *want {
                        *want += 1;
                    } else if n < *want {
                        r.errors.push(format!("{name}: duplicate {id}"));
                    } else {
                        r.errors.push(format!(
                            "{name}: {id} arrived while {want} was expected (loss or reorder)"
                        ));
                        *want = n + 1;
                    }
                }
                _ => r.errors.push(format!("{name}: unexpected id {id}")),
            }
            ws.feed(Message::Text(
                format!(r#"{{"type":200,"data":"{id}"}}"#).into(),
            ))
            .await?;
            unflushed += 1;
            continue;
        }
        let id = frame.data.map(|d| d.get().trim_matches('"'));
        let n = id
            .and_then(split_id)
            .filter(|(j, _)| *j == me)
            .map(|(_, n)| n);
        match (kind, n) {
            ("100", Some(n)) => {
                if let Some((t, _)) = in_flight.get(&n) {
                    let _ = r.to_100.record(now.saturating_sub(*t).max(1));
                }
            }
            ("300", Some(n)) => match in_flight.get_mut(&n) {
                Some((t, count)) => {
                    let _ = r.to_300.record(now.saturating_sub(*t).max(1));
                    *count += 1;
                    if *count == receivers {
                        in_flight.remove(&n);
                        r.completed += 1;
                    }
                }
                None => r
                    .errors
                    .push(format!("{name}: a 300 for {n} after one from every member")),
            },
            ("400", _) => {
                r.errors
                    .push(format!("{name}: rejected: {}", text.as_str()));
                if let Some(n) = n {
                    in_flight.remove(&n);
                }
            }
            ("1000" | "1002", _) => {}
            _ => r
                .errors
                .push(format!("{name}: unexpected frame {}", text.as_str())),
        }
    }
    barrier(&mut ws, &name, &mut r.errors).await?;
    let _ = ws.close(None).await;
    Ok(r)
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
