//! Decoding what the scripts return.
//!
//! An entry is stored (by `append` in `lua/common.lua`) as
//! `"<kind> <expires_at> <sender_len> <id_len> <seq>\n" sender id payload`,
//! kind `m` for a data message (sender length 0: sent by the system) and `r`
//! for a receipt.

use bachata_core::{Entry, EntryKind, Seq, StoreError};
use bachata_proto::{Channel, MessageId};
use bytes::Bytes;
use redis::{RedisError, Value};

/// A Redis error as a store error: a script's `BACHATA_CORRUPT` error
/// (`corrupt` in `lua/common.lua`) is corrupt data, anything else a
/// backend failure; the Redis error is the source either way.
pub(crate) fn map_error(what: &str, e: RedisError) -> StoreError {
    let what = format!("redis {what}");
    if e.code() == Some(CORRUPT_CODE) {
        StoreError::corrupt_because(what, e)
    } else {
        StoreError::backend_because(what, e)
    }
}

/// Runs one call against Redis within `timeout`, mapping its error (shared
/// by the store and presence).
pub(crate) async fn bounded<T>(
    what: &str,
    timeout: std::time::Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(map_error(what, e)),
        Err(_) => Err(StoreError::backend(format!(
            "redis {what}: timed out after {timeout:?}"
        ))),
    }
}

/// The error code of the scripts' corrupt-data errors.
const CORRUPT_CODE: &str = "BACHATA_CORRUPT";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(format!("redis: {what}"))
}

/// The elements of an array reply.
pub(crate) fn array(value: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format_args!(
            "{what}: expected an array, got {}",
            kind(&other)
        ))),
    }
}

/// An integer, sent as an integer reply or as decimal text.
pub(crate) fn int(value: &Value, what: &str) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(format_args!("{what}: not an integer"))),
        Value::SimpleString(s) => s
            .parse()
            .map_err(|_| corrupt(format_args!("{what}: not an integer"))),
        other => Err(corrupt(format_args!(
            "{what}: expected an integer, got {}",
            kind(other)
        ))),
    }
}

/// A seq: a positive integer.
pub(crate) fn seq(value: &Value, what: &str) -> Result<Seq, StoreError> {
    let n = int(value, what)?;
    Seq::try_from(n)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| corrupt(format_args!("{what}: bad seq {n}")))
}

/// The bytes of a string reply.
pub(crate) fn bytes(value: Value, what: &str) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(corrupt(format_args!(
            "{what}: expected a string, got {}",
            kind(&other)
        ))),
    }
}

/// A channel name as stored (a group member, a receipt's sender).
pub(crate) fn channel(value: Value, what: &str) -> Result<Channel, StoreError> {
    let raw = bytes(value, what)?;
    let text = std::str::from_utf8(&raw).map_err(|_| corrupt(format_args!("{what}: not UTF-8")))?;
    Channel::new(text).map_err(|e| corrupt(format_args!("{what}: {e}")))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Okay => "OK",
        _ => "another type",
    }
}

/// Decodes a stored entry.
pub(crate) fn entry(seq: Seq, raw: Vec<u8>) -> Result<Entry, StoreError> {
    let bad = || corrupt(format_args!("entry {seq}: malformed"));
    let nl = raw.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
    let header = std::str::from_utf8(&raw[..nl]).map_err(|_| bad())?;
    let mut parts = header.split(' ');
    let (Some(kind), Some(_expires_at), Some(slen), Some(ilen), Some(own_seq), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if own_seq.parse::<Seq>().ok() != Some(seq) {
        return Err(bad());
    }
    let slen: usize = slen.parse().map_err(|_| bad())?;
    let ilen: usize = ilen.parse().map_err(|_| bad())?;
    let start = nl + 1;
    let id_start = start.checked_add(slen).ok_or_else(bad)?;
    let body = id_start.checked_add(ilen).ok_or_else(bad)?;
    if body > raw.len() {
        return Err(bad());
    }
    let text = |range: std::ops::Range<usize>| std::str::from_utf8(&raw[range]).map_err(|_| bad());
    let kind = match kind {
        "m" => {
            let sender = match slen {
                0 => None,
                _ => Some(
                    Channel::new(text(start..id_start)?)
                        .map_err(|e| corrupt(format_args!("entry {seq}: sender: {e}")))?,
                ),
            };
            let id = MessageId::new(text(id_start..body)?)
                .map_err(|e| corrupt(format_args!("entry {seq}: id: {e}")))?;
            EntryKind::Message { sender, id }
        }
        "r" if slen == 0 && ilen == 0 => EntryKind::Receipt,
        _ => return Err(bad()),
    };
    let payload = Bytes::from(raw).slice(body..);
    Ok(Entry { seq, kind, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_messages_and_receipts() {
        let e = entry(3, b"m 17 5 4 3\naliceid\n1{\"x\":1}".to_vec()).expect("entry");
        assert_eq!(e.seq, 3);
        assert_eq!(
            e.kind,
            EntryKind::Message {
                sender: Some(Channel::new("alice").expect("channel")),
                id: MessageId::new("id\n1").expect("id"),
            }
        );
        assert_eq!(&e.payload[..], b"{\"x\":1}");

        let e = entry(4, b"m 17 0 2 4\nm1".to_vec()).expect("entry");
        assert_eq!(
            e.kind,
            EntryKind::Message {
                sender: None,
                id: MessageId::new("m1").expect("id"),
            }
        );
        assert!(e.payload.is_empty());

        let e = entry(5, b"r 17 0 0 5\n{\"type\":300}".to_vec()).expect("entry");
        assert_eq!(e.kind, EntryKind::Receipt);
        assert_eq!(&e.payload[..], b"{\"type\":300}");
    }

    #[test]
    fn malformed_entries_are_corrupt() {
        for raw in [
            &b""[..],
            b"m 17 5 4 1",
            b"m 17 5 40 1\nalice",
            b"x 17 0 0 1\n",
            b"r 17 1 0 1\na",
            b"m 17 0 0 1\n",
            b"m 17 1 1 1 1\nab",
            b"m 17 99999999999999999999999 0 1\n",
            b"m 17 0 1 2\nx",
            b"m 17 0 1\nx",
        ] {
            assert!(
                matches!(entry(1, raw.to_vec()), Err(StoreError::Corrupt { .. })),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
