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
/// their earliest expiry.
pub(crate) const EXPIRING: &str = "bachata:expiring";

/// The tag of a channel: its name as lowercase hex (never empty).
pub(crate) fn tag(channel: &Channel) -> String {
    hex::encode(channel.as_str())
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
    pub ent: String,
    pub acks: String,
    pub ids: String,
    pub devices: String,
}

impl ChannelKeys {
    pub fn new(channel: &Channel) -> Self {
        Self::from_tag(tag(channel))
    }

    pub fn from_tag(tag: String) -> Self {
        let p = format!("{PREFIX}{{{tag}}}:");
        ChannelKeys {
            seq: format!("{p}seq"),
            log: format!("{p}log"),
            exp: format!("{p}exp"),
            unacked: format!("{p}unacked"),
            ent: format!("{p}ent"),
            acks: format!("{p}acks"),
            ids: format!("{p}ids"),
            devices: format!("{p}devices"),
            tag,
        }
    }

    /// The eight keys in script order.
    pub fn all(&self) -> [&str; 8] {
        [
            &self.seq,
            &self.log,
            &self.exp,
            &self.unacked,
            &self.ent,
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
    let tag = match sender {
        Some(sender) => hex::encode(sender.as_str()),
        None => format!("-{}", hex::encode(id.as_str())),
    };
    let mut key = format!("{PREFIX}d:{{{tag}}}:").into_bytes();
    key.extend_from_slice(id.as_str().as_bytes());
    key
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
    fn system_dedupe_keys_are_spread_by_id() {
        let id = MessageId::new("m1").expect("id");
        assert_eq!(dedupe(None, &id), b"bachata:d:{-6d31}:m1");
        let g = GroupId::new("team").expect("group");
        assert_eq!(members(&g), "bachata:g:{7465616d}:members");
    }
}
