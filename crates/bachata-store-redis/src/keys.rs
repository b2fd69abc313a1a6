//! Key names (see the crate docs for the schema).
//!
//! Every name that a user chose (channel, group, sender) goes into the hash
//! tag as lowercase hex, so `{`, `}` and `:` in a name can neither end the tag
//! early nor collide with another name's keys. The same naming is repeated in
//! `lua/common.lua` (`channel_keys`) for the receipt's sender: keep both in
//! step.

use bachata_core::Device;
use bachata_proto::{Channel, GroupId, MessageId};

/// The prefix of every key.
pub(crate) const PREFIX: &str = "bachata:";

/// The global index of channels with entries, scored by (a lower bound of)
/// their earliest expiry (standalone Redis).
pub(crate) const EXPIRING: &str = "bachata:expiring";

/// Shards of the expiry index in Redis Cluster mode.
pub(crate) const EXPIRING_SHARDS: u32 = 16;

/// The shard of the expiry index (Redis Cluster mode) that holds a channel:
/// `bachata:expiring:{<n>}`, `n` the FNV-1a hash of the channel's tag modulo
/// [`EXPIRING_SHARDS`]. Every node must agree on it: never change the hash.
pub(crate) fn expiring_shard(tag: &str) -> String {
    let hash = tag.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    shard_key(hash % EXPIRING_SHARDS)
}

/// The undelivered webhook's due index (standalone Redis): message copies
/// as `"<tag> <seq>"`, scored by when the webhook is due for them (or by
/// the lease of the node that claimed them).
pub(crate) const UNDELIVERED: &str = "bachata:undelivered";

/// The shard of the undelivered webhook's due index (Redis Cluster mode)
/// that holds a channel's copies: `bachata:undelivered:{<n>}`, `n` as for
/// the expiry index.
pub(crate) fn undelivered_shard(tag: &str) -> String {
    let expiring = expiring_shard(tag);
    format!("{UNDELIVERED}{}", &expiring[EXPIRING.len()..])
}

/// Every shard of the undelivered webhook's due index (Redis Cluster mode).
pub(crate) fn undelivered_shards() -> impl Iterator<Item = String> {
    expiring_shards().map(|s| format!("{UNDELIVERED}{}", &s[EXPIRING.len()..]))
}

/// The count of retained payload bytes over all channels (standalone
/// Redis; kept by the scripts).
pub(crate) const RETAINED: &str = "bachata:retained";

/// The count of messages no device acked, over all channels (standalone
/// Redis; kept by the scripts, for the `bachata_pending_messages` metric).
pub(crate) const PENDING: &str = "bachata:pending";

/// The shard of the retained bytes count that counts a channel's entries
/// (Redis Cluster mode: `bachata:retained:{<n>}`, `n` as for the expiry
/// index); the node adds what each script reports.
pub(crate) fn retained_shard(tag: &str) -> String {
    let expiring = expiring_shard(tag);
    format!("{RETAINED}{}", &expiring[EXPIRING.len()..])
}

/// Every shard of the retained bytes count (Redis Cluster mode).
pub(crate) fn retained_shards() -> impl Iterator<Item = String> {
    expiring_shards().map(|s| format!("{RETAINED}{}", &s[EXPIRING.len()..]))
}

/// Every shard of the expiry index (Redis Cluster mode).
pub(crate) fn expiring_shards() -> impl Iterator<Item = String> {
    (0..EXPIRING_SHARDS).map(shard_key)
}

fn shard_key(n: u32) -> String {
    format!("{EXPIRING}:{{{n}}}")
}

/// Every node's connection counts of a channel (see `presence.rs`).
pub(crate) fn online(channel: &Channel) -> String {
    format!("{PREFIX}{{{}}}:online", tag(channel))
}

/// The tag of a channel: its name as lowercase hex (never empty).
pub(crate) fn tag(channel: &Channel) -> String {
    let mut out = Vec::with_capacity(2 * channel.as_str().len());
    push_hex(&mut out, channel.as_str().as_bytes());
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `bytes` as lowercase hex (the `hex` crate's encoder goes one
/// `char` at a time, which showed in the server's profile: every request
/// names its channels' keys).
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// The suffixes of a channel's keys in script order (see
/// [`ChannelKeys::all`]).
const SUFFIXES: [&str; 8] = [
    "seq", "log", "exp", "unacked", "epoch", "acks", "ids", "devices",
];

/// Hands the eight keys of `channel`, in script order, to `key`, building
/// each in `buf` (no allocation per key; the batch writer's hot path).
pub(crate) fn each_channel_key(channel: &Channel, buf: &mut Vec<u8>, mut key: impl FnMut(&[u8])) {
    buf.clear();
    buf.extend_from_slice(PREFIX.as_bytes());
    buf.push(b'{');
    push_hex(buf, channel.as_str().as_bytes());
    buf.extend_from_slice(b"}:");
    let stem = buf.len();
    for suffix in SUFFIXES {
        buf.truncate(stem);
        buf.extend_from_slice(suffix.as_bytes());
        key(buf);
    }
}

/// The keys of one channel, in the order the scripts take them
/// (`keys_at` in `lua/common.lua`).
#[derive(Debug, Clone)]
pub(crate) struct ChannelKeys {
    pub tag: String,
    pub seq: String,
    pub log: String,
    pub exp: String,
    pub unacked: String,
    /// This life of the channel's counter (protocol.md section 8).
    pub epoch: String,
    pub acks: String,
    pub ids: String,
    pub devices: String,
    /// Reservations of queue room by enqueues in progress (Redis Cluster
    /// mode); not among [`ChannelKeys::all`].
    pub resv: String,
}

impl ChannelKeys {
    pub(crate) fn new(channel: &Channel) -> Self {
        Self::from_tag(tag(channel))
    }

    pub(crate) fn from_tag(tag: String) -> Self {
        let p = format!("{PREFIX}{{{tag}}}:");
        let [seq, log, exp, unacked, epoch, acks, ids, devices] =
            SUFFIXES.map(|s| format!("{p}{s}"));
        ChannelKeys {
            seq,
            log,
            exp,
            unacked,
            epoch,
            acks,
            ids,
            devices,
            resv: format!("{p}resv"),
            tag,
        }
    }

    /// The eight keys in script order.
    pub(crate) fn all(&self) -> [&str; 8] {
        [
            &self.seq,
            &self.log,
            &self.exp,
            &self.unacked,
            &self.epoch,
            &self.acks,
            &self.ids,
            &self.devices,
        ]
    }
}

/// `bachata:g:{<hex group>}:members`, a SET of channel names.
pub(crate) fn members(group: &GroupId) -> String {
    format!("{PREFIX}g:{{{}}}:members", hex::encode(group.as_str()))
}

/// The dedupe record of `(sender, id)`: `bachata:d:{<hex sender>}:<id>` for
/// a channel, `bachata:d:{-<hex id>}:<id>` for the system (spread over
/// slots by id instead of piling every system message onto one slot). The
/// id after the tag is raw bytes: key names are binary-safe, and nothing
/// after the first `}` changes the slot.
pub(crate) fn dedupe(sender: Option<&Channel>, id: &MessageId) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    key.extend_from_slice(PREFIX.as_bytes());
    key.extend_from_slice(b"d:{");
    match sender {
        Some(sender) => push_hex(&mut key, sender.as_str().as_bytes()),
        None => {
            key.push(b'-');
            push_hex(&mut key, id.as_str().as_bytes());
        }
    }
    key.extend_from_slice(b"}:");
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The marker of a message in one destination's log (Redis Cluster mode):
/// `bachata:{<dest tag>}:got:<hex sender, or - for the system>:<id>`. Holds
/// `"<dedupe_until> <seq> <attempt>"`, so that a retried enqueue finds the
/// message it appended before its dedupe record was written.
pub(crate) fn got(dest: &ChannelKeys, sender: Option<&Channel>, id: &MessageId) -> Vec<u8> {
    let sender = sender.map_or_else(|| "-".to_owned(), |s| hex::encode(s.as_str()));
    let mut key = format!("{PREFIX}{{{}}}:got:{sender}:", dest.tag).into_bytes();
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The marker of a receipt appended to the sender's log for the entry `seq`
/// of `receiver` (Redis Cluster mode):
/// `bachata:{<sender tag>}:rcpt:<hex receiver>:<seq>`, holding the receipt's
/// seq, so that a retried append returns the same receipt.
pub(crate) fn receipt_marker(sender: &ChannelKeys, receiver: &Channel, seq: u64) -> String {
    format!(
        "{PREFIX}{{{}}}:rcpt:{}:{seq}",
        sender.tag,
        hex::encode(receiver.as_str())
    )
}

/// The device's field in `devices` and in ack lists: its name, "" for the
/// default device.
pub(crate) fn device(device: &Device) -> &str {
    bachata_core::memstate::device_key(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot-deciding part of a key: between the first `{` and the next
    /// `}`, as Redis Cluster reads it.
    fn hash_tag(key: &[u8]) -> &[u8] {
        let open = key.iter().position(|b| *b == b'{').expect("a tag");
        let len = key[open + 1..]
            .iter()
            .position(|b| *b == b'}')
            .expect("a closed tag");
        &key[open + 1..open + 1 + len]
    }

    #[test]
    fn channel_keys_share_one_tag_even_with_braces_in_the_name() {
        let ch = Channel::new("a}b{c:d").expect("channel");
        let keys = ChannelKeys::new(&ch);
        for key in keys.all() {
            assert_eq!(hash_tag(key.as_bytes()), b"617d627b633a64", "{key}");
        }
        assert_eq!(keys.seq, "bachata:{617d627b633a64}:seq");
        let sender = dedupe(Some(&ch), &MessageId::new("x}{").expect("id"));
        assert_eq!(hash_tag(&sender), b"617d627b633a64");
    }

    #[test]
    fn the_batch_writers_keys_are_the_channel_keys() {
        for name in ["bob", "a}b{c:d", "\u{e9}t\u{e9}"] {
            let channel = Channel::new(name).expect("channel");
            let mut written = Vec::new();
            each_channel_key(&channel, &mut Vec::new(), |k| written.push(k.to_vec()));
            let keys = ChannelKeys::new(&channel);
            let expected: Vec<Vec<u8>> = keys.all().iter().map(|k| k.as_bytes().to_vec()).collect();
            assert_eq!(written, expected);
            assert_eq!(keys.tag, hex::encode(name));
        }
    }

    #[test]
    fn cluster_keys_of_a_channel_share_its_tag() {
        let ch = Channel::new("a}b{c:d").expect("channel");
        let keys = ChannelKeys::new(&ch);
        let id = MessageId::new("x}{").expect("id");
        let alice = Channel::new("alice").expect("channel");
        assert_eq!(hash_tag(keys.resv.as_bytes()), b"617d627b633a64");
        assert_eq!(hash_tag(&got(&keys, Some(&alice), &id)), b"617d627b633a64");
        assert_eq!(
            got(&keys, None, &id),
            b"bachata:{617d627b633a64}:got:-:x}{".to_vec()
        );
        let marker = receipt_marker(&keys, &alice, 7);
        assert_eq!(marker, "bachata:{617d627b633a64}:rcpt:616c696365:7");
    }

    #[test]
    fn expiry_shards_are_stable() {
        let shards: Vec<String> = expiring_shards().collect();
        assert_eq!(shards.len(), 16);
        assert_eq!(shards[0], "bachata:expiring:{0}");
        // FNV-1a("626f62") = 0x237287ad (the tag of "bob").
        assert_eq!(expiring_shard("626f62"), "bachata:expiring:{13}");
        for tag in ["", "61", "626f62", "ffff"] {
            assert!(shards.contains(&expiring_shard(tag)), "{tag}");
        }
    }

    #[test]
    fn system_dedupe_keys_are_spread_by_id() {
        let id = MessageId::new("m1").expect("id");
        assert_eq!(dedupe(None, &id), b"bachata:d:{-6d31}:m1");
        let g = GroupId::new("team").expect("group");
        assert_eq!(members(&g), "bachata:g:{7465616d}:members");
    }
}
