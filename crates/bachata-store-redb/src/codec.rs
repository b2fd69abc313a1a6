//! The on-disk encoding of a log entry (the value of the `entries` table).
//!
//! ```text
//! u8 version (1) | u8 kind (0 message, 1 receipt) | u64 LE expires_at
//! kind 0: u8 has_sender | [u16 LE len | sender] | u16 LE len | id
//! payload (the rest)
//! ```
//! Decoding checks every length, so a corrupt value is an error, never a
//! panic.

use bachata_core::EntryKind;
use bachata_core::memstate::StoredEntry;
use bachata_proto::{Channel, MessageId};
use bytes::Bytes;

const VERSION: u8 = 1;

pub fn encode(entry: &StoredEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + entry.payload.len());
    out.push(VERSION);
    match &entry.kind {
        EntryKind::Message { sender, id } => {
            out.push(0);
            out.extend_from_slice(&entry.expires_at.to_le_bytes());
            match sender {
                Some(sender) => {
                    out.push(1);
                    push_str(&mut out, sender.as_str());
                }
                None => out.push(0),
            }
            push_str(&mut out, id.as_str());
        }
        EntryKind::Receipt => {
            out.push(1);
            out.extend_from_slice(&entry.expires_at.to_le_bytes());
        }
    }
    out.extend_from_slice(&entry.payload);
    out
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

    fn str(&mut self) -> Result<&'a str, String> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let len = u16::from_le_bytes(b) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|e| e.to_string())
    }
}

pub fn decode(bytes: &[u8]) -> Result<StoredEntry, String> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown entry version {version}"));
    }
    let kind = r.u8()?;
    let expires_at = r.u64()?;
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
    })
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
            },
            StoredEntry {
                kind: EntryKind::Message {
                    sender: None,
                    id: MessageId::new("m2").expect("valid"),
                },
                payload: Bytes::new(),
                expires_at: u64::MAX,
                acked_by: Vec::new(),
            },
            StoredEntry {
                kind: EntryKind::Receipt,
                payload: Bytes::from_static(b"{}"),
                expires_at: 7,
                acked_by: Vec::new(),
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
}
