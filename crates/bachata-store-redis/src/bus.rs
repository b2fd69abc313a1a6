//! [`RedisBus`]: the wake-ups between bachata nodes that share one Redis,
//! over Redis pub/sub.
//!
//! Every node publishes to one pub/sub channel, [`BUS_CHANNEL`], and
//! subscribes to it; events carry the publishing node's id, so a node skips
//! its own.
//!
//! On a Redis Cluster (a `redis+cluster://` URL), a `PUBLISH` on any node
//! reaches the subscribers of every node (classic pub/sub is broadcast over
//! the cluster bus). So a node publishes through its cluster connection and
//! subscribes on one node at a time: the first seed of the URL, and on every
//! reconnect the next one, so a dead node is left behind.
//!
//! Pub/sub is fire-and-forget: a node that is disconnected misses events.
//! That is fine because the log in Redis stays the truth: after
//! every (re)subscribe the bus emits [`BusEvent::Resync`], which makes every
//! local session re-read the store, and the center resyncs periodically too.
//!
//! On standalone Redis the bus also notices that Redis restarted: before
//! each subscribe it reads the server's `run_id`, and when that changed it
//! emits [`BusEvent::Reset`] first, so every local session starts over from
//! the head of its log (protocol.md section 8). A restart may have lost the
//! last writes (no persistence, or `appendfsync everysec`), so seqs may have
//! gone back without the channel's epoch changing; starting over sends the
//! unacked messages again rather than leave new ones behind a cursor.
//!
//! Wire format of one pub/sub message: the publishing node's id and a
//! newline, then one record per event, each `<length> <record>` (length in
//! bytes, decimal), names hex-encoded so they never contain a space or a
//! newline:
//! ```text
//! E <channel-hex> <seq> m <sender-hex or -> <id-hex>\n<payload>   a message entry
//! E <channel-hex> <seq> r - -\n<payload>                          a 300 receipt entry
//! A <channel-hex> <device-hex or -> <seq>                         an ack
//! L <channel-hex>\n<payload>                                      a message without id
//! ```
//! A node publishes everything that gathered as one message (one `PUBLISH`
//! per batch). Every node of one Redis must run the same version.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use bachata_core::{Bus, BusEvent, Entry, EntryKind};
use bachata_proto::{Channel, DeviceId, MessageId};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::conn::{Conn, cluster_seeds};
use crate::conn::{RedisStoreError, RedisStoreOptions, client, connect_conn, node_id};
use crate::keys::push_hex;

/// The pub/sub channel all nodes share.
pub const BUS_CHANNEL: &str = "bachata:bus";

/// Events queued for publishing; beyond this, events are dropped (the
/// periodic resync covers them) rather than slowing senders down.
const OUTGOING: usize = 65_536;
/// Events from other nodes waiting for the center.
const INCOMING: usize = 65_536;

/// See the module docs.
pub struct RedisBus {
    node: String,
    outgoing: mpsc::Sender<BusEvent>,
    incoming: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to Redis at `url` (`redis://...` or `redis+cluster://...`,
    /// as for [`RedisStore::connect`](crate::RedisStore::connect)) and starts
    /// publishing and listening. Must run inside a tokio runtime; the tasks
    /// end when the bus is dropped.
    pub async fn connect(url: &str) -> Result<RedisBus, RedisStoreError> {
        RedisBus::connect_with(url, &RedisStoreOptions::default()).await
    }

    /// [`RedisBus::connect`] with connection settings (a certificate
    /// authority for `rediss://`, say).
    pub async fn connect_with(
        url: &str,
        options: &RedisStoreOptions,
    ) -> Result<RedisBus, RedisStoreError> {
        // Where to subscribe: the server, or each seed of a cluster in turn.
        let seeds = cluster_seeds(url)?.unwrap_or_else(|| vec![url.to_owned()]);
        let subscribers = seeds
            .iter()
            .map(|seed| client(seed, options))
            .collect::<Result<Vec<_>, _>>()?;
        let publisher = connect_conn(url, options).await?;
        let node = node_id();
        let (outgoing, to_publish) = mpsc::channel(OUTGOING);
        let (from_others, incoming) = mpsc::channel(INCOMING);
        tokio::spawn(publish_loop(publisher, node.clone(), to_publish));
        tokio::spawn(subscribe_loop(subscribers, node.clone(), from_others));
        Ok(RedisBus {
            node,
            outgoing,
            incoming: Mutex::new(Some(incoming)),
        })
    }
}

impl Bus for RedisBus {
    fn publish(&self, event: BusEvent) {
        // Full: drop it; the resync re-reads what it would have announced.
        let _ = self.outgoing.try_send(event);
    }

    fn subscribe(&self) -> mpsc::Receiver<BusEvent> {
        let taken = self.incoming.lock().ok().and_then(|mut r| r.take());
        taken.unwrap_or_else(|| {
            // A second subscriber gets a closed channel rather than a panic.
            mpsc::channel(1).1
        })
    }
}

/// Appends one event's record to `out` (`false`: the event is local to
/// each node and has none): `<body length> <body>`, the body written in
/// place after a reserved length field (no allocation per event; the
/// publisher encodes every entry of the node).
fn encode(event: &BusEvent, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    // Room for the length, fixed-width for now, moved up once known.
    out.extend_from_slice(&[b' '; LEN_FIELD]);
    let body = out.len();
    let name = |out: &mut Vec<u8>, name: Option<&str>| match name {
        Some(name) => push_hex(out, name.as_bytes()),
        None => out.push(b'-'),
    };
    match event {
        BusEvent::Entry { channel, entry } => {
            out.extend_from_slice(b"E ");
            push_hex(out, channel.as_str().as_bytes());
            let _ = write!(out, " {} ", entry.seq);
            match &entry.kind {
                EntryKind::Message { sender, id } => {
                    out.extend_from_slice(b"m ");
                    name(out, sender.as_ref().map(|s| s.as_str()));
                    out.push(b' ');
                    push_hex(out, id.as_str().as_bytes());
                }
                EntryKind::Receipt => out.extend_from_slice(b"r - -"),
            }
            out.push(b'\n');
            out.extend_from_slice(&entry.payload);
        }
        BusEvent::Acked {
            channel,
            device,
            seq,
        } => {
            out.extend_from_slice(b"A ");
            push_hex(out, channel.as_str().as_bytes());
            out.push(b' ');
            name(out, device.as_ref().map(|d| d.as_str()));
            let _ = write!(out, " {seq}");
        }
        BusEvent::Live { channel, payload } => {
            out.extend_from_slice(b"L ");
            push_hex(out, channel.as_str().as_bytes());
            out.push(b'\n');
            out.extend_from_slice(payload);
        }
        // Resync, loss and reset are local to each node.
        BusEvent::Resync | BusEvent::Lost | BusEvent::Reset => {
            out.truncate(start);
            return false;
        }
    }
    let len = (out.len() - body).to_string();
    // `<len> ` replaces the reserved field's end; its unused start goes.
    let field_start = body - len.len() - 1;
    out[field_start..body - 1].copy_from_slice(len.as_bytes());
    out.drain(start..field_start);
    true
}

/// Bytes reserved for a record's length and its space (a record of up to
/// 10^19 bytes).
const LEN_FIELD: usize = 21;

fn unhex(field: &[u8]) -> Option<String> {
    String::from_utf8(hex::decode(field).ok()?).ok()
}

/// Decodes one message: the events in it, none when it is our own (or
/// malformed from its first bad record on: a record is never half read).
fn decode(own: &str, bytes: &[u8]) -> Vec<BusEvent> {
    let mut events = Vec::new();
    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
        return events;
    };
    if &bytes[..nl] == own.as_bytes() {
        return events;
    }
    let mut rest = &bytes[nl + 1..];
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|b| *b == b' ') else {
            break;
        };
        let len = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|n| n.parse::<usize>().ok());
        let Some(record) = len.and_then(|len| rest.get(space + 1..space + 1 + len)) else {
            break;
        };
        match decode_record(record) {
            Some(event) => events.push(event),
            None => break,
        }
        rest = &rest[space + 1 + record.len()..];
    }
    events
}

fn decode_record(record: &[u8]) -> Option<BusEvent> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
    let (head, payload) = match record.iter().position(|b| *b == b'\n') {
        Some(nl) => (&record[..nl], Some(&record[nl + 1..])),
        None => (record, None),
    };
    let fields: Vec<&[u8]> = head.split(|b| *b == b' ').collect();
    match (fields.as_slice(), payload) {
        ([b"E", channel, seq, kind, sender, id], Some(payload)) => {
            let kind = match (*kind, *sender, *id) {
                (b"m", sender, id) => EntryKind::Message {
                    sender: match sender {
                        b"-" => None,
                        hex => Some(Channel::new(&unhex(hex)?).ok()?),
                    },
                    id: MessageId::new(&unhex(id)?).ok()?,
                },
                (b"r", b"-", b"-") => EntryKind::Receipt,
                _ => return None,
            };
            Some(BusEvent::Entry {
                channel: Channel::new(&unhex(channel)?).ok()?,
                entry: Entry {
                    seq: number(seq)?,
                    kind,
                    payload: Bytes::copy_from_slice(payload),
                },
            })
        }
        ([b"A", channel, device, seq], None) => Some(BusEvent::Acked {
            channel: Channel::new(&unhex(channel)?).ok()?,
            device: match *device {
                b"-" => None,
                hex => Some(DeviceId::new(&unhex(hex)?).ok()?),
            },
            seq: number(seq)?,
        }),
        ([b"L", channel], Some(payload)) => Some(BusEvent::Live {
            channel: Channel::new(&unhex(channel)?).ok()?,
            payload: Bytes::copy_from_slice(payload),
        }),
        _ => None,
    }
}

async fn publish_loop(mut conn: Conn, node: String, mut events: mpsc::Receiver<BusEvent>) {
    let mut batch = Vec::new();
    let mut failing = false;
    while events.recv_many(&mut batch, 512).await > 0 {
        // One message for the batch (up to MESSAGE_BYTES): one PUBLISH for
        // Redis to fan out instead of one per event.
        let mut pipe = redis::pipe();
        let header = format!("{node}\n").into_bytes();
        let mut message = header.clone();
        for event in batch.drain(..) {
            encode(&event, &mut message);
            if message.len() >= MESSAGE_BYTES {
                let full = std::mem::replace(&mut message, header.clone());
                pipe.cmd("PUBLISH").arg(BUS_CHANNEL).arg(full).ignore();
            }
        }
        if message.len() > header.len() {
            pipe.cmd("PUBLISH").arg(BUS_CHANNEL).arg(message).ignore();
        }
        if pipe.is_empty() {
            continue;
        }
        // A publish on a connection that just broke fails while it
        // reconnects (Redis restarted, say): try again a few times, so that
        // the other nodes do not wait for their periodic resync.
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=PUBLISH_TRIES {
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    failing = false;
                    break;
                }
                Err(e) if attempt == PUBLISH_TRIES => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "cannot publish wake-ups to other nodes");
                    }
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// A message is published once it holds this many bytes: a subscriber
/// whose output buffer passes Redis's pub/sub limit (32 MB by default) is
/// disconnected, so messages stay far below it.
const MESSAGE_BYTES: usize = 1 << 20;

/// Attempts of one publish (50 ms, then twice as long each time: about
/// 1.5 s in all) before its events are dropped.
const PUBLISH_TRIES: u32 = 5;

/// Subscribes through `clients[0]`; after a failure or a lost connection,
/// through the next one (round robin), with a backoff.
async fn subscribe_loop(clients: Vec<redis::Client>, node: String, events: mpsc::Sender<BusEvent>) {
    let mut backoff = Duration::from_millis(100);
    let mut next = 0;
    // The run_id of the Redis last subscribed to (standalone Redis only:
    // the seeds of a cluster are different servers).
    let mut last_run: Option<String> = None;
    let standalone = clients.len() == 1;
    loop {
        let client = &clients[next % clients.len()];
        next += 1;
        let run = async {
            let run_id = if standalone {
                Some(run_id(client).await?)
            } else {
                None
            };
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(BUS_CHANNEL).await?;
            Ok::<_, redis::RedisError>((run_id, pubsub.into_on_message()))
        };
        let stream = tokio::select! {
            result = run => result,
            () = events.closed() => return,
        };
        match stream {
            Ok((run, mut stream)) => {
                backoff = Duration::from_millis(100);
                if let Some(run) = run {
                    let restarted = last_run.as_ref().is_some_and(|last| *last != run);
                    last_run = Some(run);
                    if restarted {
                        tracing::warn!(
                            "Redis restarted; every connection starts over from the head of its log"
                        );
                        if events.send(BusEvent::Reset).await.is_err() {
                            return;
                        }
                    }
                }
                // Whatever was published while we were away is in the store.
                if events.send(BusEvent::Resync).await.is_err() {
                    return;
                }
                loop {
                    let message = tokio::select! {
                        message = stream.next() => message,
                        () = events.closed() => return,
                    };
                    let Some(message) = message else { break };
                    for event in decode(&node, message.get_payload_bytes()) {
                        if events.try_send(event).is_err() {
                            // Overloaded: drop, and have everyone re-read.
                            let _ = events.try_send(BusEvent::Resync);
                            break;
                        }
                    }
                }
                tracing::warn!("lost the pub/sub connection to Redis; reconnecting");
                if events.send(BusEvent::Lost).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis pub/sub"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = events.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The `run_id` of the Redis behind `client`: a new one at every start.
async fn run_id(client: &redis::Client) -> Result<String, redis::RedisError> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "INFO server has no run_id"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> Channel {
        Channel::new(s).expect("channel")
    }

    #[test]
    fn events_round_trip_in_one_message_and_own_events_are_skipped() {
        let events = vec![
            BusEvent::Entry {
                channel: ch("a b{c}"),
                entry: Entry {
                    seq: 42,
                    kind: EntryKind::Message {
                        sender: Some(ch("al ice")),
                        id: MessageId::new("m 1\nx").expect("id"),
                    },
                    payload: Bytes::from_static(b"{\"x\":\"a\nb 1\"}"),
                },
            },
            BusEvent::Entry {
                channel: ch("bob"),
                entry: Entry {
                    seq: 43,
                    kind: EntryKind::Message {
                        sender: None,
                        id: MessageId::new("s1").expect("id"),
                    },
                    payload: Bytes::new(),
                },
            },
            BusEvent::Entry {
                channel: ch("alice"),
                entry: Entry {
                    seq: 7,
                    kind: EntryKind::Receipt,
                    payload: Bytes::from_static(b"{\"type\":300}"),
                },
            },
            BusEvent::Acked {
                channel: ch("bob"),
                device: Some(DeviceId::new("my phone").expect("device")),
                seq: 7,
            },
            BusEvent::Acked {
                channel: ch("bob"),
                device: None,
                seq: 8,
            },
            BusEvent::Live {
                channel: ch("bob"),
                payload: Bytes::from_static(b"{\"type\":\"x y\"}"),
            },
        ];
        let mut message = b"n1\n".to_vec();
        for event in &events {
            assert!(encode(event, &mut message));
        }
        assert_eq!(decode("n2", &message), events);
        // The wire form of two records, byte for byte.
        let mut two = Vec::new();
        assert!(encode(&events[4], &mut two));
        assert!(encode(&events[5], &mut two));
        assert_eq!(
            two,
            b"12 A 626f62 - 823 L 626f62\n{\"type\":\"x y\"}".to_vec()
        );
        assert!(decode("n1", &message).is_empty(), "own events");
        for local in [BusEvent::Resync, BusEvent::Lost, BusEvent::Reset] {
            assert!(!encode(&local, &mut message), "{local:?}");
        }
        for junk in [
            &b""[..],
            b"n2",
            b"n2\nE",
            b"n2\n9 A 62 - 1",
            b"n2\n8 A 62 - x",
            b"n2\n8 Q 62 - 1",
            b"n2\n8 A zz - 1",
            b"n2\n5 L 62",
            b"n2\n17 E 62 1 m - 6d31",
            b"n2\n18 E 62 1 x - 6d31\n",
        ] {
            assert!(decode("n1", junk).is_empty(), "{junk:?}");
        }
        // A bad record ends the message: the good ones before it stand.
        let mut message = b"n2\n".to_vec();
        encode(&events[3], &mut message);
        message.extend_from_slice(b"3 A x");
        assert_eq!(decode("n1", &message), vec![events[3].clone()]);
    }
}
