//! The on-disk encodings: a log entry (the value of the `entries` table)
//! and a batch of [`Change`]s (the value of a `wal` row).
//!
//! An entry:
//! ```text
//! u8 version (1 or 2) | u8 kind (0 message, 1 receipt) | u64 LE expires_at
//! version 2: u64 LE notify_at (the undelivered webhook's due time)
//! kind 0: u8 has_sender | [u16 LE len | sender] | u16 LE len | id
//! payload (the rest)
//! ```
//! Version 2 is written only for entries with a `notify_at` (format 2), so
//! the entries of a server without the webhook keep their bytes.
//! A batch of changes: `u8 version (1)`, then per change a `u8` tag and its
//! fields (strings as `u16 LE len | bytes`, numbers as `u64 LE`, an entry
//! as `u32 LE len | entry`).
//!
//! Decoding checks every length, so a corrupt value is an error, never a
//! panic.

use bachata_core::EntryKind;
use bachata_core::memstate::{Change, StoredEntry};
use bachata_proto::{Channel, GroupId, MessageId};
use bytes::Bytes;

const VERSION: u8 = 1;
/// An entry with a `notify_at`.
const ENTRY_NOTIFY: u8 = 2;

pub(crate) fn encode(entry: &StoredEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + entry.payload.len());
    encode_into(entry, &mut out);
    out
}

fn encode_into(entry: &StoredEntry, out: &mut Vec<u8>) {
    out.push(if entry.notify_at.is_some() {
        ENTRY_NOTIFY
    } else {
        VERSION
    });
    match &entry.kind {
        EntryKind::Message { sender, id } => {
            out.push(0);
            out.extend_from_slice(&entry.expires_at.to_le_bytes());
            if let Some(at) = entry.notify_at {
                out.extend_from_slice(&at.to_le_bytes());
            }
            match sender {
                Some(sender) => {
                    out.push(1);
                    push_str(out, sender.as_str());
                }
                None => out.push(0),
            }
            push_str(out, id.as_str());
        }
        EntryKind::Receipt => {
            out.push(1);
            out.extend_from_slice(&entry.expires_at.to_le_bytes());
            if let Some(at) = entry.notify_at {
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
    }
    out.extend_from_slice(&entry.payload);
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Channels and ids are at most 128 bytes, far below u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("entry is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let len = u16::from_le_bytes(b) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|e| e.to_string())
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<StoredEntry, String> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION && version != ENTRY_NOTIFY {
        return Err(format!("unknown entry version {version}"));
    }
    let kind = r.u8()?;
    let expires_at = r.u64()?;
    let notify_at = if version == ENTRY_NOTIFY {
        Some(r.u64()?)
    } else {
        None
    };
    let kind = match kind {
        0 => {
            let sender = match r.u8()? {
                0 => None,
                _ => Some(Channel::new(r.str()?).map_err(|e| e.to_string())?),
            };
            let id = MessageId::new(r.str()?).map_err(|e| e.to_string())?;
            EntryKind::Message { sender, id }
        }
        1 => EntryKind::Receipt,
        other => return Err(format!("unknown entry kind {other}")),
    };
    Ok(StoredEntry {
        kind,
        payload: Bytes::copy_from_slice(r.0),
        expires_at,
        acked_by: Vec::new(),
        notify_at,
    })
}

mod tag {
    pub(super) const PUT_ENTRY: u8 = 1;
    pub(super) const DEL_ENTRY: u8 = 2;
    pub(super) const PUT_ACK: u8 = 3;
    pub(super) const PUT_DEVICE: u8 = 4;
    pub(super) const PUT_DEDUPE: u8 = 5;
    // 6 was a dedupe record's removal in development versions before
    // format 1; never reuse it.
    pub(super) const PUT_MEMBER: u8 = 7;
    pub(super) const DEL_MEMBER: u8 = 8;
    pub(super) const DEL_DEVICE: u8 = 9;
    pub(super) const DEL_CHANNEL: u8 = 10;
    /// Format 2.
    pub(super) const NOTIFIED: u8 = 11;
}

/// Appends the encoding of `changes` (one log record) to `out`.
pub(crate) fn encode_changes(changes: &[Change], out: &mut Vec<u8>) {
    out.push(VERSION);
    for change in changes {
        match change {
            Change::PutEntry {
                channel,
                seq,
                entry,
            } => {
                out.push(tag::PUT_ENTRY);
                push_str(out, channel.as_str());
                out.extend_from_slice(&seq.to_le_bytes());
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                encode_into(entry, out);
                // Frames are capped far below 4 GiB by max_frame_bytes.
                let len = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            Change::DelEntry {
                channel,
                seq,
                acked_by,
            } => {
                out.push(tag::DEL_ENTRY);
                push_str(out, channel.as_str());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&(acked_by.len() as u64).to_le_bytes());
                for device in acked_by {
                    push_str(out, device);
                }
            }
            Change::PutAck {
                channel,
                seq,
                device,
            } => {
                out.push(tag::PUT_ACK);
                push_str(out, channel.as_str());
                out.extend_from_slice(&seq.to_le_bytes());
                push_str(out, device);
            }
            Change::PutDevice {
                channel,
                device,
                last_seen,
            } => {
                out.push(tag::PUT_DEVICE);
                push_str(out, channel.as_str());
                push_str(out, device);
                out.extend_from_slice(&last_seen.to_le_bytes());
            }
            Change::DelDevice { channel, device } => {
                out.push(tag::DEL_DEVICE);
                push_str(out, channel.as_str());
                push_str(out, device);
            }
            Change::DelChannel { channel } => {
                out.push(tag::DEL_CHANNEL);
                push_str(out, channel.as_str());
            }
            Change::PutDedupe { sender, id, until } => {
                out.push(tag::PUT_DEDUPE);
                push_str(out, sender);
                push_str(out, id.as_str());
                out.extend_from_slice(&until.to_le_bytes());
            }
            Change::PutMember { group, member } => {
                out.push(tag::PUT_MEMBER);
                push_str(out, group.as_str());
                push_str(out, member.as_str());
            }
            Change::DelMember { group, member } => {
                out.push(tag::DEL_MEMBER);
                push_str(out, group.as_str());
                push_str(out, member.as_str());
            }
            Change::Notified { channel, seq } => {
                out.push(tag::NOTIFIED);
                push_str(out, channel.as_str());
                out.extend_from_slice(&seq.to_le_bytes());
            }
        }
    }
}

/// Decodes one log record, calling `f` with each change in order.
pub(crate) fn decode_changes(bytes: &[u8], mut f: impl FnMut(Change)) -> Result<(), String> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown wal version {version}"));
    }
    let channel = |s: &str| Channel::new(s).map_err(|e| e.to_string());
    let id = |s: &str| MessageId::new(s).map_err(|e| e.to_string());
    let group = |s: &str| GroupId::new(s).map_err(|e| e.to_string());
    while !r.0.is_empty() {
        let change = match r.u8()? {
            tag::PUT_ENTRY => {
                let c = channel(r.str()?)?;
                let seq = r.u64()?;
                let len = r.u32()? as usize;
                Change::PutEntry {
                    channel: c,
                    seq,
                    entry: decode(r.take(len)?)?,
                }
            }
            tag::DEL_ENTRY => {
                let c = channel(r.str()?)?;
                let seq = r.u64()?;
                let n = r.u64()?;
                let mut acked_by = Vec::new();
                for _ in 0..n {
                    acked_by.push(r.str()?.to_owned());
                }
                Change::DelEntry {
                    channel: c,
                    seq,
                    acked_by,
                }
            }
            tag::PUT_ACK => Change::PutAck {
                channel: channel(r.str()?)?,
                seq: r.u64()?,
                device: r.str()?.to_owned(),
            },
            tag::PUT_DEVICE => Change::PutDevice {
                channel: channel(r.str()?)?,
                device: r.str()?.to_owned(),
                last_seen: r.u64()?,
            },
            tag::DEL_DEVICE => Change::DelDevice {
                channel: channel(r.str()?)?,
                device: r.str()?.to_owned(),
            },
            tag::DEL_CHANNEL => Change::DelChannel {
                channel: channel(r.str()?)?,
            },
            tag::PUT_DEDUPE => Change::PutDedupe {
                sender: r.str()?.to_owned(),
                id: id(r.str()?)?,
                until: r.u64()?,
            },
            tag::PUT_MEMBER => Change::PutMember {
                group: group(r.str()?)?,
                member: channel(r.str()?)?,
            },
            tag::DEL_MEMBER => Change::DelMember {
                group: group(r.str()?)?,
                member: channel(r.str()?)?,
            },
            tag::NOTIFIED => Change::Notified {
                channel: channel(r.str()?)?,
                seq: r.u64()?,
            },
            other => return Err(format!("unknown wal change tag {other}")),
        };
        f(change);
    }
    Ok(())
}

/// Encodes a dedupe segment: `u8 version (1)`, then per record the sender
/// and the id as strings and the deadline as `u64 LE`.
pub(crate) fn encode_dedupe(records: &[(String, MessageId, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + records.len() * 32);
    out.push(VERSION);
    for (sender, id, until) in records {
        push_str(&mut out, sender);
        push_str(&mut out, id.as_str());
        out.extend_from_slice(&until.to_le_bytes());
    }
    out
}

/// Decodes a dedupe segment, calling `f` with each record.
pub(crate) fn decode_dedupe(
    bytes: &[u8],
    mut f: impl FnMut(&str, MessageId, u64),
) -> Result<(), String> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown dedupe segment version {version}"));
    }
    while !r.0.is_empty() {
        let sender = r.str()?;
        let id = MessageId::new(r.str()?).map_err(|e| e.to_string())?;
        f(sender, id, r.u64()?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let entries = [
            StoredEntry {
                kind: EntryKind::Message {
                    sender: Some(Channel::new("alice").expect("valid")),
                    id: MessageId::new("m1").expect("valid"),
                },
                payload: Bytes::from_static(br#"{"type":"direct"}"#),
                expires_at: 42,
                acked_by: Vec::new(),
                notify_at: None,
            },
            StoredEntry {
                kind: EntryKind::Message {
                    sender: None,
                    id: MessageId::new("m2").expect("valid"),
                },
                payload: Bytes::new(),
                expires_at: u64::MAX,
                acked_by: Vec::new(),
                notify_at: Some(41),
            },
            StoredEntry {
                kind: EntryKind::Receipt,
                payload: Bytes::from_static(b"{}"),
                expires_at: 7,
                acked_by: Vec::new(),
                notify_at: None,
            },
        ];
        for entry in entries {
            let bytes = encode(&entry);
            assert_eq!(decode(&bytes), Ok(entry.clone()));
            // Every truncation is an error or a shorter payload, never a panic.
            for n in 0..bytes.len() {
                let _ = decode(&bytes[..n]);
            }
        }
        assert!(decode(&[9, 0]).is_err());
        assert!(decode(&[1, 5, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn changes_round_trip_and_corruption() {
        let ch = |s: &str| Channel::new(s).expect("valid");
        let changes = vec![
            Change::PutEntry {
                channel: ch("bob"),
                seq: 7,
                entry: StoredEntry {
                    kind: EntryKind::Message {
                        sender: Some(ch("alice")),
                        id: MessageId::new("m1").expect("valid"),
                    },
                    payload: Bytes::from_static(br#"{"type":"direct","data":"hi"}"#),
                    expires_at: 99,
                    acked_by: Vec::new(),
                    notify_at: None,
                },
            },
            Change::PutAck {
                channel: ch("bob"),
                seq: 7,
                device: String::new(),
            },
            Change::DelEntry {
                channel: ch("bob"),
                seq: 7,
                acked_by: vec![String::new(), "phone".into()],
            },
            Change::PutDevice {
                channel: ch("bob"),
                device: "phone".into(),
                last_seen: 5,
            },
            Change::DelDevice {
                channel: ch("bob"),
                device: "laptop".into(),
            },
            Change::DelChannel {
                channel: ch("dave"),
            },
            Change::PutDedupe {
                sender: "alice".into(),
                id: MessageId::new("m1").expect("valid"),
                until: 1000,
            },
            Change::PutMember {
                group: GroupId::new("g").expect("valid"),
                member: ch("bob"),
            },
            Change::DelMember {
                group: GroupId::new("g").expect("valid"),
                member: ch("carol"),
            },
            Change::Notified {
                channel: ch("bob"),
                seq: 8,
            },
        ];
        let mut bytes = Vec::new();
        encode_changes(&changes, &mut bytes);
        let mut decoded = Vec::new();
        decode_changes(&bytes, |c| decoded.push(c)).expect("decodes");
        assert_eq!(decoded, changes);
        // Every truncation decodes to an error or a prefix, never a panic.
        for n in 0..bytes.len() {
            let mut prefix = Vec::new();
            if decode_changes(&bytes[..n], |c| prefix.push(c)).is_ok() {
                assert_eq!(prefix[..], changes[..prefix.len()]);
            }
        }
        assert!(decode_changes(&[1, 99], |_| {}).is_err());
        assert!(decode_changes(&[2], |_| {}).is_err());
    }

    #[test]
    fn dedupe_segments_round_trip_and_corruption() {
        let records = vec![
            ("alice".to_owned(), MessageId::new("m1").expect("valid"), 5),
            (
                String::new(),
                MessageId::new("m2").expect("valid"),
                u64::MAX,
            ),
        ];
        let bytes = encode_dedupe(&records);
        let mut decoded = Vec::new();
        decode_dedupe(&bytes, |s, id, until| {
            decoded.push((s.to_owned(), id, until))
        })
        .expect("decodes");
        assert_eq!(decoded, records);
        for n in 0..bytes.len() {
            let _ = decode_dedupe(&bytes[..n], |_, _, _| {});
        }
        assert!(decode_dedupe(&[7], |_, _, _| {}).is_err());
    }
}
